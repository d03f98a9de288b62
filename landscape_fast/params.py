r"""``ParamSpace``: a model's trainable parameters as one flat vector space.

Curvature operators and solvers work on flat vectors :math:`v \in \mathbb{R}^p` and blocks
:math:`V \in \mathbb{R}^{k \times p}`; models hold a list of tensors
:math:`\theta = (\theta_1, \dots, \theta_n)`. ``ParamSpace`` is the bijection

.. math::

    \operatorname{flatten}(\theta) = [\operatorname{vec}\theta_1; \dots; \operatorname{vec}\theta_n]
    \in \mathbb{R}^p, \qquad p = \sum_i |\theta_i| ,

with zero-copy per-parameter views of any flat vector or ``(k, p)`` block, and named
slices per parameter and per layer (for block-diagonal curvature).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from landscape_fast import ParamSpace
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> space = ParamSpace(model)
    >>> space.numel, space.names
    (26, ('0.weight', '0.bias', '2.weight', '2.bias'))
    >>> V = torch.zeros(5, space.numel)
    >>> space.unflatten(V)["2.weight"].shape        # a view into V, no copy
    torch.Size([5, 2, 4])
    >>> ParamSpace(model, "2.*").numel
    10
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

ParamSelection = str | Iterable[str | torch.Tensor] | None


def _owner(name: str) -> str:
    """Name of the module that holds parameter ``name`` (``""`` for the root module)."""
    return name.rsplit(".", 1)[0] if "." in name else ""


class ParamSpace:
    """The (selected) trainable parameters of ``model`` as one flat space.

    Args:
        model: Any ``nn.Module``. Tied (shared) parameters count once, under their first name.
        params: ``None`` for every parameter with ``requires_grad``; else a name, a glob
            pattern (``"blocks.*.attn.*"``, matched with :func:`fnmatch.fnmatchcase`
            against the full dotted name), or an iterable of names, patterns and parameter
            tensors. Order always follows ``model.named_parameters()``.

    Raises:
        ValueError: If a pattern or tensor selects nothing, a selected parameter is
            frozen, nothing is selected, or the parameters span several devices.
        TypeError: If a selected parameter is not floating point.
    """

    def __init__(self, model: nn.Module, params: ParamSelection = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"ParamSpace needs an nn.Module, got {type(model).__name__}")
        named = list(model.named_parameters())
        chosen = self._select(named, params)
        if not chosen:
            raise ValueError(
                "ParamSpace: the model has no trainable parameters (every parameter has "
                "requires_grad=False, or the model has none)"
                if params is None
                else f"ParamSpace: the selection {params!r} matched no trainable parameter"
            )
        bad = [(n, p.dtype) for n, p in chosen if not p.is_floating_point()]
        if bad:
            raise TypeError(f"ParamSpace: parameters must be floating point; got {bad}")
        devices = sorted({str(p.device) for _, p in chosen})
        if len(devices) > 1:
            raise ValueError(
                f"ParamSpace: the selected parameters live on several devices {devices}; "
                "move the model to one device (model.to(device)) or select parameters on one"
            )
        self.model = model
        self.names: tuple[str, ...] = tuple(n for n, _ in chosen)
        self.params: tuple[nn.Parameter, ...] = tuple(p for _, p in chosen)
        self.shapes: tuple[torch.Size, ...] = tuple(p.shape for p in self.params)
        self.numels: tuple[int, ...] = tuple(p.numel() for p in self.params)
        offsets = [0]
        for n in self.numels:
            offsets.append(offsets[-1] + n)
        self.offsets: tuple[int, ...] = tuple(offsets)
        self.numel: int = offsets[-1]
        dtype = self.params[0].dtype
        for p in self.params[1:]:
            dtype = torch.promote_types(dtype, p.dtype)
        self.dtype: torch.dtype = dtype
        self.device: torch.device = self.params[0].device

    @staticmethod
    def _select(
        named: list[tuple[str, nn.Parameter]], params: ParamSelection
    ) -> list[tuple[str, nn.Parameter]]:
        if params is None:
            return [(n, p) for n, p in named if p.requires_grad]
        items = [params] if isinstance(params, str | torch.Tensor) else list(params)
        wanted: set[int] = set()
        for item in items:
            if isinstance(item, torch.Tensor):
                hits = [i for i, (_, p) in enumerate(named) if p is item]
                if not hits:
                    raise ValueError(
                        f"ParamSpace: a tensor of shape {tuple(item.shape)} in params= is not "
                        "a parameter of this model"
                    )
            elif isinstance(item, str):
                hits = [i for i, (n, _) in enumerate(named) if fnmatch.fnmatchcase(n, item)]
                if not hits:
                    sample = ", ".join(n for n, _ in named[:8])
                    more = ", ..." if len(named) > 8 else ""
                    raise ValueError(
                        f"ParamSpace: pattern {item!r} matches no parameter; names look like: "
                        f"{sample}{more}"
                    )
            else:
                raise TypeError(
                    f"ParamSpace: params= items must be names, glob patterns or parameters, "
                    f"got {type(item).__name__}"
                )
            frozen = [named[i][0] for i in hits if not named[i][1].requires_grad]
            if frozen:
                raise ValueError(
                    f"ParamSpace: {item if isinstance(item, str) else 'a tensor'!r} selects "
                    f"frozen parameters {frozen} (requires_grad=False); unfreeze them or "
                    "narrow the selection"
                )
            wanted.update(hits)
        return [named[i] for i in sorted(wanted)]

    # ------------------------------------------------------------------ structure
    def __len__(self) -> int:
        return len(self.params)

    def __repr__(self) -> str:
        return (
            f"ParamSpace(numel={self.numel}, tensors={len(self)}, layers={len(self.layers())}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    @property
    def slices(self) -> dict[str, slice]:
        """``{parameter name: slice of the flat vector}``."""
        return {n: slice(self.offsets[i], self.offsets[i + 1]) for i, n in enumerate(self.names)}

    def layers(self) -> dict[str, slice]:
        """``{module name: slice}`` grouping the parameters each module holds directly.

        Parameters of one module are contiguous in the flat vector, so each layer is one
        slice (its diagonal block of the Hessian is ``H[s, s]``). The root module is ``""``.
        """
        out: dict[str, slice] = {}
        for i, name in enumerate(self.names):
            owner = _owner(name)
            start = out[owner].start if owner in out else self.offsets[i]
            if owner in out and out[owner].stop != self.offsets[i]:
                raise RuntimeError(f"ParamSpace: parameters of {owner!r} are not contiguous")
            out[owner] = slice(start, self.offsets[i + 1])
        return out

    def summary(self) -> str:
        """A small table: one line per layer with its parameter count."""
        width = max([len(n) for n in self.layers()] + [6])
        lines = [f"{'layer':<{width}}  {'params':>10}  tensors"]
        for layer, s in self.layers().items():
            tensors = [n.rsplit(".", 1)[-1] for n in self.names if _owner(n) == layer]
            lines.append(
                f"{layer or '<root>':<{width}}  {s.stop - s.start:>10,}  {', '.join(tensors)}"
            )
        lines.append(f"{'total':<{width}}  {self.numel:>10,}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ conversions
    def _check_flat(self, flat: torch.Tensor, what: str) -> None:
        if not isinstance(flat, torch.Tensor):
            raise TypeError(f"ParamSpace.{what}: expected a tensor, got {type(flat).__name__}")
        if flat.dim() not in (1, 2) or flat.shape[-1] != self.numel:
            raise ValueError(
                f"ParamSpace.{what}: expected shape ({self.numel},) or (k, {self.numel}), got "
                f"{tuple(flat.shape)}"
            )

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views of a flat ``(p,)`` vector or ``(k, p)`` block (no copies).

        A vector gives tensors of each parameter's shape; a block gives ``(k, *shape)``.

        Raises:
            ValueError: If the shape is not ``(p,)`` or ``(k, p)``.
        """
        self._check_flat(flat, "views")
        lead = tuple(flat.shape[:-1])
        # Splitting only the last dimension is always a view, whatever the strides.
        return [
            flat[..., self.offsets[i] : self.offsets[i + 1]].view((*lead, *shape))
            for i, shape in enumerate(self.shapes)
        ]

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: view}`` of a flat vector or block (see :meth:`views`); no copies.

        The dict plugs straight into ``torch.func.functional_call(model, ..., args)``.
        """
        return dict(zip(self.names, self.views(flat)))

    def flatten(
        self,
        tensors: Sequence[torch.Tensor | None] | Mapping[str, torch.Tensor | None] | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Concatenate per-parameter tensors into one flat vector (a new tensor).

        Args:
            tensors: One tensor per parameter (a sequence in :attr:`names` order or a dict
                by name), each of the parameter's shape or ``(k, *shape)`` for a block;
                ``None`` entries (parameters that got no gradient) count as zeros. Default:
                the current parameter values.
            dtype: Result dtype (default :attr:`dtype`).
            device: Result device (default :attr:`device`).

        Returns:
            ``(p,)`` vector, or ``(k, p)`` if the tensors carry a leading block dimension.
        """
        if tensors is None:
            tensors = [p.detach() for p in self.params]
        elif isinstance(tensors, Mapping):
            unknown = set(tensors) - set(self.names)
            if unknown:
                raise ValueError(f"ParamSpace.flatten: unknown parameter names {sorted(unknown)}")
            tensors = [tensors.get(n) for n in self.names]
        else:
            tensors = list(tensors)
        if len(tensors) != len(self.params):
            raise ValueError(
                f"ParamSpace.flatten: expected {len(self.params)} tensors (one per parameter), "
                f"got {len(tensors)}"
            )
        dtype = dtype or self.dtype
        device = torch.device(device) if device is not None else self.device
        lead: tuple[int, ...] | None = None
        for t, shape, name in zip(tensors, self.shapes, self.names):
            if t is None:
                continue
            extra = tuple(t.shape[: t.dim() - len(shape)])
            if tuple(t.shape[len(extra) :]) != tuple(shape) or len(extra) > 1:
                raise ValueError(
                    f"ParamSpace.flatten: {name} has shape {tuple(t.shape)}; expected "
                    f"{tuple(shape)} or (k, *{tuple(shape)})"
                )
            if lead is not None and extra != lead:
                raise ValueError("ParamSpace.flatten: tensors disagree on the block size k")
            lead = extra
        lead = lead or ()
        out = torch.zeros(*lead, self.numel, dtype=dtype, device=device)
        for view, t in zip(self.views(out), tensors):
            if t is not None:
                view.copy_(t.detach())
        return out

    def flatten_grad(self, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The parameters' ``.grad`` as one flat vector; a missing gradient counts as zero."""
        return self.flatten([p.grad for p in self.params], dtype=dtype)

    @torch.no_grad()
    def assign_(self, flat: torch.Tensor) -> None:
        """Write a flat vector into the parameters (in place, outside autograd)."""
        if flat.dim() != 1:
            raise ValueError("ParamSpace.assign_: expected a (p,) vector")
        for p, v in zip(self.params, self.views(flat)):
            p.copy_(v)

    @torch.no_grad()
    def add_(self, flat: torch.Tensor, alpha: float = 1.0) -> None:
        """``θ ← θ + α v`` for a flat vector ``v`` (in place, outside autograd)."""
        if flat.dim() != 1:
            raise ValueError("ParamSpace.add_: expected a (p,) vector")
        for p, v in zip(self.params, self.views(flat)):
            p.add_(v.to(p.dtype), alpha=alpha)

    def zeros(self, k: int | None = None, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A zero vector ``(p,)`` or block ``(k, p)`` on the parameters' device."""
        shape = (self.numel,) if k is None else (k, self.numel)
        return torch.zeros(shape, dtype=dtype or self.dtype, device=self.device)
