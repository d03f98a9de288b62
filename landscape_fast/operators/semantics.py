r"""Model semantics during curvature products, made explicit and always undone.

The loss a curvature operator differentiates depends on how BatchNorm, dropout and
attention behave, and the peers get this silently wrong (PyHessian forces ``eval()``,
double backward in train mode updates running statistics on every product). Here:

- ``batch_norm="eval"`` (default): running statistics, nothing mutated;
  ``batch_norm="batch"``: batch statistics, running statistics untouched (the modules run
  in training mode with ``track_running_stats`` off for the duration of the call);
- dropout is off unless ``dropout=True``; then each batch uses one fixed mask per pass
  (the RNG is seeded per batch), so the loss being differentiated is a fixed function;
- scaled-dot-product attention is routed to the math kernel (``"math"``), which has the
  double-backward and forward-mode derivatives the exact engines need; the
  finite-difference engine may keep the fused kernels (``"default"``).

:class:`ModelSemantics` is a context manager that applies these and restores the train/eval
mode of every module, every buffer (bit for bit) and ``track_running_stats`` on exit, also
when the body raises.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    >>> before = model[1].running_mean.clone()
    >>> with ModelSemantics(model, batch_norm="batch"):
    ...     _ = model(torch.randn(8, 3))
    >>> torch.equal(model[1].running_mean, before), model.training
    (True, True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

BATCH_NORM_MODES = ("eval", "batch")
_BN_TYPES = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)
_DROPOUT_TYPES = (nn.modules.dropout._DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout)


def check_batch_norm(batch_norm: str) -> str:
    """Validate a ``batch_norm=`` choice."""
    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(
            f"batch_norm must be one of {BATCH_NORM_MODES}, got {batch_norm!r}: 'eval' uses "
            "running statistics, 'batch' uses batch statistics without updating them"
        )
    return batch_norm


def has_batch_norm(model: nn.Module) -> bool:
    """Whether any submodule is a BatchNorm layer."""
    return any(isinstance(m, _BN_TYPES) for m in model.modules())


def has_dropout(model: nn.Module) -> bool:
    """Whether any submodule is a dropout layer with a non-zero rate."""
    return any(isinstance(m, _DROPOUT_TYPES) and m.p > 0 for m in model.modules())


@dataclass
class _Snapshot:
    training: list[tuple[nn.Module, bool]]
    track: list[tuple[nn.Module, bool]]
    buffers: list[tuple[torch.Tensor, torch.Tensor]]


class ModelSemantics:
    """Apply BatchNorm/dropout/attention semantics to ``model``; restore everything on exit.

    Args:
        model: The user's model (left exactly as it was after the ``with`` block).
        batch_norm: ``"eval"`` or ``"batch"`` (see the module docstring).
        dropout: Keep dropout layers active (with a fixed mask per batch, see
            :meth:`batch_rng`).
        attention: ``"math"`` routes ``scaled_dot_product_attention`` to the math kernel;
            ``"default"`` leaves PyTorch's choice.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        batch_norm: str = "eval",
        dropout: bool = False,
        attention: str = "math",
    ) -> None:
        self.model = model
        self.batch_norm = check_batch_norm(batch_norm)
        self.dropout = bool(dropout)
        if attention not in ("math", "default"):
            raise ValueError(f"attention must be 'math' or 'default', got {attention!r}")
        self.attention = attention
        self._stack: list[tuple[_Snapshot, contextlib.ExitStack]] = []

    def _snapshot(self) -> _Snapshot:
        modules = list(self.model.modules())
        return _Snapshot(
            training=[(m, m.training) for m in modules],
            track=[(m, m.track_running_stats) for m in modules if isinstance(m, _BN_TYPES)],
            buffers=[(b, b.detach().clone()) for b in self.model.buffers()],
        )

    @staticmethod
    def _restore(snap: _Snapshot) -> None:
        for m, training in snap.training:
            m.training = training
        for m, track in snap.track:
            m.track_running_stats = track
        with torch.no_grad():
            for buf, saved in snap.buffers:
                if not torch.equal(buf, saved) or buf.dtype != saved.dtype:
                    buf.copy_(saved)

    def __enter__(self) -> ModelSemantics:
        snap = self._snapshot()
        stack = contextlib.ExitStack()
        try:
            self.model.eval()
            for m in self.model.modules():
                if isinstance(m, _BN_TYPES) and self.batch_norm == "batch":
                    m.training = True
                    m.track_running_stats = False
                elif isinstance(m, _DROPOUT_TYPES) and self.dropout:
                    m.training = True
            if self.attention == "math":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        except BaseException:
            stack.close()
            self._restore(snap)
            raise
        self._stack.append((snap, stack))
        return self

    def __exit__(self, *exc: object) -> None:
        snap, stack = self._stack.pop()
        try:
            stack.close()
        finally:
            self._restore(snap)

    @contextlib.contextmanager
    def batch_rng(self, index: int, device: torch.device) -> Iterator[None]:
        """Fix the RNG for batch ``index`` (same dropout mask on every pass); restore after.

        A no-op unless dropout is active.
        """
        if not self.dropout:
            yield
            return
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0x5EED + index)
            yield


class ModelFingerprint:
    """An exact copy of a model's parameters and buffers, to tell whether anything changed.

    Cached curvature (kept graphs, per-sample gradients) is valid only at the point where it
    was built. Version counters miss writes through ``.data`` and say nothing about buffers
    (BatchNorm recalibration), so the values themselves are compared: one extra copy of the
    model's state and one pass over it per product, negligible next to the cached graphs.

    Example:
        >>> from torch import nn
        >>> model = nn.Linear(2, 2)
        >>> fp = ModelFingerprint(model)
        >>> fp.matches()
        True
        >>> model.weight.data.add_(1.0) is not None and fp.matches()
        False
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._saved = [
            (t, t.detach().clone())
            for t in (*model.parameters(), *(b for b in model.buffers() if b is not None))
        ]

    def matches(self) -> bool:
        """Whether every parameter and buffer still holds the saved value (and object)."""
        current = [*self.model.parameters(), *(b for b in self.model.buffers() if b is not None)]
        if len(current) != len(self._saved):
            return False
        return all(
            t is ref and t.shape == saved.shape and torch.equal(t.detach(), saved)
            for t, (ref, saved) in zip(current, self._saved)
        )
