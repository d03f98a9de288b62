r"""The loss of a model as a pure function of the selected parameters.

:class:`ModelFunction` turns ``(model, loss_fn)`` into :math:`\theta \mapsto L_b(\theta)` for
one batch, evaluated with ``torch.func.functional_call``: the model's own parameters are
never written, parameters outside the selection stay fixed, frozen parameters are simply
not selected, and the whole computation can run in a higher precision than the model.

``loss_fn`` forms (DESIGN.md, "data"):

- ``loss_fn(outputs, targets)`` for ``(inputs, targets)`` batches — a mean-reduced loss such
  as ``nn.CrossEntropyLoss()``; the strings ``"cross_entropy"``/``"ce"`` and ``"mse"`` name
  the built-in ones;
- ``loss_fn(model, batch)`` (a *closure*) for any other batch (dicts, tensors), or for pairs
  when wrapped as :class:`BatchLoss`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from landscape_fast.params import ParamSpace
    >>> model = nn.Linear(3, 2)
    >>> f = ModelFunction(model, "mse", ParamSpace(model))
    >>> theta = f.parameters()
    >>> batch = (torch.randn(4, 3), torch.randn(4, 2))
    >>> bool(f.loss(theta, batch) >= 0)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from landscape_fast.data import Batch, is_pair
from landscape_fast.params import ParamSpace


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error, the value of ``F.mse_loss`` (mean reduction).

    Written out because ``F.mse_loss`` breaks forward-over-reverse differentiation in torch
    2.13 ("ZeroTensors are immutable" in its backward's forward derivative).
    """
    if outputs.shape != targets.shape:
        raise ValueError(
            f"mse: outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} differ in "
            "shape; reshape the targets (broadcasting would silently change the loss)"
        )
    return (outputs - targets).square().mean()


_NAMED_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "ce": F.cross_entropy,
    "mse": mse,
}


class BatchLoss:
    """Mark ``fn(model, batch) -> scalar`` as a closure loss, also for ``(inputs, targets)``.

    Example:
        >>> import torch.nn.functional as F
        >>> loss = BatchLoss(lambda model, batch: F.mse_loss(model(batch[0]), batch[1]))
    """

    def __init__(self, fn: Callable[[nn.Module, Batch], torch.Tensor]) -> None:
        if not callable(fn):
            raise TypeError(f"BatchLoss needs a callable, got {type(fn).__name__}")
        self.fn = fn

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.fn(model, batch)


def resolve_loss(loss_fn: Any) -> Callable[..., torch.Tensor]:
    """A callable from ``loss_fn`` (a callable, or a built-in name)."""
    if isinstance(loss_fn, str):
        try:
            return _NAMED_LOSSES[loss_fn.lower()]
        except KeyError:
            raise ValueError(
                f"unknown loss {loss_fn!r}; use one of {sorted(_NAMED_LOSSES)} or pass a callable"
            ) from None
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable or a name, got {type(loss_fn).__name__}")
    return loss_fn


def cross_entropy_spec(loss_fn: Any) -> dict[str, Any] | None:
    """Settings of a plain mean-reduced softmax cross-entropy, or ``None`` for other losses.

    Recognizes ``nn.CrossEntropyLoss`` (no class weights, ``reduction="mean"``),
    ``F.cross_entropy`` and the names ``"ce"``/``"cross_entropy"``. Label smoothing does not
    change the Hessian with respect to the logits and is allowed.
    """
    if isinstance(loss_fn, str) and loss_fn.lower() in ("ce", "cross_entropy"):
        return {"ignore_index": -100, "label_smoothing": 0.0}
    if loss_fn is F.cross_entropy:
        return {"ignore_index": -100, "label_smoothing": 0.0}
    if (
        isinstance(loss_fn, nn.CrossEntropyLoss)
        and loss_fn.weight is None
        and loss_fn.reduction == "mean"
    ):
        return {"ignore_index": loss_fn.ignore_index, "label_smoothing": loss_fn.label_smoothing}
    return None


class _Forward(nn.Module):
    """``batch -> outputs`` (pair batches) or ``batch -> loss`` (closures), as one module.

    Wrapping lets ``functional_call`` substitute parameters for closures too; the user's
    model becomes the submodule ``m`` (no copy, nothing modified).
    """

    def __init__(self, model: nn.Module, closure: Callable[..., torch.Tensor] | None) -> None:
        super().__init__()
        self.m = model
        self.closure = closure

    def forward(self, batch: Batch) -> torch.Tensor:
        if self.closure is not None:
            return self.closure(self.m, batch)
        inputs = batch[0]
        if isinstance(inputs, dict):
            return self.m(**inputs)
        return self.m(inputs)


class ModelFunction:
    """Evaluate a model's batch loss (and outputs) at substituted parameter values.

    Args:
        model: The user's model.
        loss_fn: ``loss_fn(outputs, targets)``, a built-in name, or a :class:`BatchLoss`.
        space: The selected parameters (the variables :math:`\theta`).
        dtype: Compute dtype; parameters, buffers and floating inputs are cast to it when it
            differs from theirs (``None``: keep the model's dtypes).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Any,
        space: ParamSpace,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model
        self.space = space
        self.raw_loss = loss_fn
        is_closure = isinstance(loss_fn, BatchLoss)
        self.loss_fn = loss_fn if is_closure else resolve_loss(loss_fn)
        self.forced_closure = is_closure
        self.cross_entropy = None if is_closure else cross_entropy_spec(loss_fn)
        self.dtype = dtype
        self._pair_module = _Forward(model, None)
        self._closure_module = _Forward(model, self.loss_fn)
        selected = {id(p) for p in space.params}
        self._others = [
            (name, t)
            for name, t in model.named_parameters(remove_duplicate=False)
            if id(t) not in selected
        ]

    def _fixed_tensors(self) -> dict[str, torch.Tensor]:
        """Current values of everything that is not :math:`\theta` (read at every call).

        Unselected parameters are detached (they are constants here, and must not take part
        in autograd or function transforms); when the compute dtype differs, they and the
        floating buffers are cast to it.
        """
        fixed: dict[str, torch.Tensor] = {}
        for name, t in self._others:
            t = t.detach()
            if self.dtype is not None and t.is_floating_point() and t.dtype != self.dtype:
                t = t.to(self.dtype)
            fixed["m." + name] = t
        if self.dtype is not None:
            for name, b in self.model.named_buffers(remove_duplicate=False):
                if b is not None and b.is_floating_point() and b.dtype != self.dtype:
                    fixed["m." + name] = b.detach().to(self.dtype)
        return fixed

    def parameters(self, requires_grad: bool = True) -> list[torch.Tensor]:
        r"""Fresh leaves holding the current :math:`\theta` (no copy unless a cast is needed)."""
        out = []
        for p in self.space.params:
            t = p.detach()
            if self.dtype is not None and t.dtype != self.dtype:
                t = t.to(self.dtype)
            out.append(t.requires_grad_(requires_grad))
        return out

    def is_closure(self, batch: Batch) -> bool:
        """Whether ``batch`` is handled by a closure loss (anything but a plain pair)."""
        return self.forced_closure or not is_pair(batch)

    def _mapping(self, theta: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        mapping = self._fixed_tensors()
        mapping.update({"m." + n: t for n, t in zip(self.space.names, theta)})
        return mapping

    def outputs(self, theta: Sequence[torch.Tensor], batch: Batch) -> torch.Tensor:
        """Model outputs of a pair batch at :math:`\\theta`."""
        return functional_call(self._pair_module, self._mapping(theta), (batch,))

    def loss_on_outputs(
        self, outputs: torch.Tensor, batch: Batch, fused: bool = False
    ) -> torch.Tensor:
        """The pair loss ``loss_fn(outputs, targets)``.

        With ``fused=True`` a plain cross-entropy on ``(N, C)`` logits with class targets is
        computed by :func:`~landscape_fast.operators.fused_ce.fused_cross_entropy` (same value
        and gradient; its second derivative is the fused ``softmax_ce_hvp`` op).
        """
        targets = batch[1]
        spec = self.cross_entropy
        if (
            fused
            and spec is not None
            and spec["label_smoothing"] == 0.0
            and outputs.dim() == 2
            and targets.dim() == 1
            and not targets.is_floating_point()
        ):
            from landscape_fast.operators.fused_ce import fused_cross_entropy

            return fused_cross_entropy(outputs, targets, spec["ignore_index"])
        return self.loss_fn(outputs, targets)

    def loss(
        self, theta: Sequence[torch.Tensor], batch: Batch, fused: bool = False
    ) -> torch.Tensor:
        """The batch's mean loss :math:`L_b(\\theta)` (a scalar tensor).

        ``fused``: see :meth:`loss_on_outputs`.
        """
        if self.is_closure(batch):
            value = functional_call(self._closure_module, self._mapping(theta), (batch,))
        else:
            value = self.loss_on_outputs(self.outputs(theta, batch), batch, fused)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"the loss must be a scalar tensor (a mean over the batch), got {shape}; use a "
                "mean-reduced loss such as nn.CrossEntropyLoss() (reduction='mean')"
            )
        return value.reshape(())
