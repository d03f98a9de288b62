r"""Per-sample gradient norms of ``nn.Linear`` parameters without forming the gradients.

For a linear layer :math:`z = W a + b` applied to the positions :math:`t` of sample
:math:`i` (inputs :math:`A_i \in \mathbb R^{T\times d_\text{in}}`, output gradients
:math:`\Delta_i = \partial\ell_i/\partial Z_i \in \mathbb R^{T\times d_\text{out}}`), the
per-sample gradients are :math:`\nabla_W\ell_i = \Delta_i^\top A_i` and
:math:`\nabla_b\ell_i = \Delta_i^\top\mathbf 1`, so (Goodfellow 2015; the "ghost norm" of
Li et al. 2022)

.. math::

    \|\nabla_W\ell_i\|_F^2 = \sum_{t,s} (A_i A_i^\top)_{ts}\,(\Delta_i\Delta_i^\top)_{ts}
    \;\overset{T=1}{=}\; \|a_i\|^2\,\|\delta_i\|^2 ,\qquad
    \|\nabla_b\ell_i\|^2 = \Big\|\sum_t \delta_{i,t}\Big\|^2 .

One forward and one backward pass of the batch loss :math:`L_b = \frac1{n_b}\sum_i\ell_i`
give every :math:`\Delta_i` (as :math:`n_b\,\partial L_b/\partial Z_i`) and the batch-mean
gradient, so :math:`\sum_i\|g_i\|^2` costs about one gradient instead of a per-sample
backward pass. The identity needs every selected parameter to be the weight or bias of a
``nn.Linear`` that runs once per forward pass and does not mix samples; :func:`linear_plan`
says whether a model qualifies (and why not).

Example:
    >>> import torch
    >>> from torch import nn
    >>> import landscape_fast as lf
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    >>> X, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,))
    >>> S = lf.GradientCovariance(model, "ce", (X, y))
    >>> [(sq.shape, g.shape) for _, _, sq, g in S.stream_per_sample_norms()]
    [(torch.Size([5]), torch.Size([26]))]
    >>> _, G = next(S.stream_per_sample_gradients())
    >>> _, _, sq, _ = next(S.stream_per_sample_norms())
    >>> torch.allclose(sq, G.square().sum(1))
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LinearPlan", "linear_plan", "per_sample_sq_norms"]


class GhostNormUnsupported(ValueError):
    """The model does not satisfy the ghost-norm identity (see :func:`linear_plan`)."""


@dataclass(frozen=True)
class LinearPlan:
    """Which selected parameters belong to which ``nn.Linear``.

    Attributes:
        modules: ``(module name, module, weight selected, bias selected)`` per layer.
    """

    modules: tuple[tuple[str, nn.Linear, bool, bool], ...]


def linear_plan(model: nn.Module, names: Sequence[str]) -> tuple[LinearPlan | None, str]:
    """A :class:`LinearPlan` when every selected parameter (``names``, dotted as in
    ``model.named_parameters()``) is the weight or bias of exactly one ``nn.Linear``;
    otherwise ``(None, reason)``."""
    owner: dict[str, tuple[str, str]] = {}
    layers: dict[str, nn.Linear] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        if not isinstance(module, nn.Linear):
            continue
        for kind in ("weight", "bias"):
            if getattr(module, kind, None) is None:
                continue
            full = f"{mod_name}.{kind}" if mod_name else kind
            if full in owner:  # pragma: no cover - named_modules names are unique
                return None, f"parameter {full} is shared"
            owner[full] = (mod_name, kind)
        layers[mod_name] = module
    ids = {}
    for mod_name, module in layers.items():
        for kind in ("weight", "bias"):
            t = getattr(module, kind, None)
            if t is not None:
                if id(t) in ids:
                    return None, f"{mod_name}.{kind} is tied to {ids[id(t)]}"
                ids[id(t)] = f"{mod_name}.{kind}"
    chosen: dict[str, list[bool]] = {}
    for name in names:
        if name not in owner:
            return None, f"parameter {name} is not the weight or bias of an nn.Linear"
        mod_name, kind = owner[name]
        flags = chosen.setdefault(mod_name, [False, False])
        flags[0 if kind == "weight" else 1] = True
    plan = tuple((n, layers[n], w, b) for n, (w, b) in chosen.items())
    return LinearPlan(plan), ""


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    """Squared norms of the rows ``x[i]`` (summed in the compute dtype, relative error about
    ``eps·sqrt(row length)``; float64 sums are 5-50× slower on the CPU), as float64."""
    x = x.flatten(1)
    return (x * x).sum(1).double()


def _layer_sq_norms(a: torch.Tensor, d: torch.Tensor, weight: bool, bias: bool) -> torch.Tensor:
    """Per-sample squared norms of one layer's selected gradients, float64 ``(n,)``."""
    n = a.shape[0]
    a = a.reshape(n, -1, a.shape[-1])
    d = d.reshape(n, -1, d.shape[-1])
    out = torch.zeros(n, dtype=torch.float64, device=a.device)
    T, d_in, d_out = a.shape[1], a.shape[2], d.shape[2]
    if weight:
        if T == 1:
            out += _sq_norms(a) * _sq_norms(d)
        elif T * T <= d_in * d_out:
            a, d = a.double(), d.double()
            out += ((a @ a.transpose(1, 2)) * (d @ d.transpose(1, 2))).sum((1, 2))
        else:
            out += _sq_norms(torch.einsum("nto,nti->noi", d, a))
    if bias:
        out += _sq_norms(d.sum(1))
    return out


def per_sample_sq_norms(
    plan: LinearPlan,
    run_loss: Callable[[], torch.Tensor],
    theta: Sequence[torch.Tensor],
    n: int,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    r"""``(batch loss, ‖g_i‖² for the n samples (float64), batch-mean gradient per parameter)``.

    Args:
        plan: From :func:`linear_plan`.
        run_loss: ``() -> batch mean loss`` evaluated at ``theta`` (runs the model once).
        theta: The leaves (requiring grad) the mean gradient is taken with respect to.
        n: Samples in the batch.

    Raises:
        GhostNormUnsupported: A layer ran more or less than once, or its input does not have
            the batch as its leading dimension.
    """
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n, *_ in plan.modules}

    def hook(name: str) -> Callable[..., None]:
        def fn(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            seen[name].append((inputs[0].detach(), output))

        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m, *_ in plan.modules]
    try:
        value = run_loss()
    finally:
        for h in handles:
            h.remove()
    ran = []  # layers that ran (one that does not run has zero gradients)
    for (name, _, w, b), records in zip(plan.modules, seen.values()):
        if len(records) > 1:
            raise GhostNormUnsupported(f"layer {name!r} ran {len(records)} times in a forward pass")
        if records:
            a, z = records[0]
            if a.dim() < 2 or a.shape[0] != n or z.shape[0] != n:
                raise GhostNormUnsupported(
                    f"layer {name!r} input {tuple(a.shape)} does not lead with the {n} samples"
                )
            ran.append((a, z, w, b))
    grads = torch.autograd.grad(value, [z for _, z, *_ in ran] + list(theta), allow_unused=True)
    sq = torch.zeros(n, dtype=torch.float64, device=value.device)
    for (a, _, w, b), dz in zip(ran, grads[: len(ran)]):
        if dz is not None:  # None: the layer does not reach the loss
            sq += _layer_sq_norms(a, dz * n, w, b)
    mean = [torch.zeros_like(t) if g is None else g for t, g in zip(theta, grads[len(ran) :])]
    return value.detach(), sq, mean
