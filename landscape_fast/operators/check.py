r"""``lf.check_hvp``: are the Hessian-vector products right on *this* model?

PyTorch's higher-order derivatives are silently wrong for some layers in some versions
(nested forward-mode through ``layer_norm`` / ``batch_norm``: pytorch #196700, #196699;
``torch.func.hessian`` through affine LayerNorm in torch 2.13). No single autodiff path can
be trusted, so this check runs every engine on the same random vectors over the first
``num_batches`` batches and compares each with the reference engine (double backward) and
with central finite differences of the gradient (at two step sizes, keeping the closer:
a step that crosses a ReLU kink sees a jump the second derivative does not have),
parameter group by parameter group:

.. math::

    e_{\text{engine}, l} = \frac{\|(H_{\text{engine}} V)_l - (H_{\text{ref}} V)_l\|}
                               {\|H_{\text{ref}} V\|} ,

(relative to the whole product, so that a layer with tiny curvature does not produce
meaningless ratios). An engine passes when its largest error is within the tolerance of
its kind: :math:`10^4\epsilon` for exact engines, :math:`10^3\epsilon^{2/3}` for finite
differences (:math:`\epsilon` the machine epsilon of the compute dtype). Engines that
cannot run on the model (no forward-mode rule, a once-differentiable backward that the
double-backward engines detect and refuse) are listed in :attr:`HVPCheck.failures`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> import landscape_fast as lf
    >>> model = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Linear(5, 2)).double()
    >>> data = (torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 2, (16,)))
    >>> report = lf.check_hvp(model, nn.CrossEntropyLoss(), data)
    >>> report.ok
    True
    >>> sorted(report.errors)
    ['cached', 'finite_difference', 'forward']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from landscape_fast.data import DataSource
from landscape_fast.operators.engines import FiniteDifferenceEngine
from landscape_fast.operators.hessian import Hessian
from landscape_fast.operators.model_operator import accumulation_dtype
from landscape_fast.params import ParamSpace

EXACT_ENGINES = ("cached", "forward")


def tolerance(engine: str, dtype: torch.dtype) -> float:
    """Largest relative disagreement accepted for ``engine`` in ``dtype``."""
    eps = torch.finfo(dtype).eps
    return 1e3 * eps ** (2.0 / 3.0) if engine == "finite_difference" else 1e4 * eps


@dataclass
class HVPCheck:
    """Result of :func:`check_hvp`.

    Attributes:
        reference: The engine every other is compared with: ``"reverse"`` (or the first exact
            engine that could run; ``"finite_difference@0.05"``, the smaller step, when no
            exact engine can run on the model).
        errors: ``{engine: {group: relative error}}`` for engines that ran.
        failures: ``{engine: error message}`` for engines that could not run on the model.
        tolerances: ``{engine: tolerance}``.
        dtype: Compute dtype of the check.
    """

    reference: str
    errors: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    tolerances: dict[str, float] = field(default_factory=dict)
    dtype: str = ""

    def max_error(self, engine: str) -> float:
        """Largest error of ``engine`` over all parameter groups."""
        return max(self.errors[engine].values(), default=0.0)

    @property
    def ok(self) -> bool:
        """Every engine that ran agrees with the reference within its tolerance (engines
        that refused to run, listed in :attr:`failures`, do not count against it)."""
        return bool(self.errors) and all(
            self.max_error(e) <= self.tolerances[e] for e in self.errors
        )

    def worst_group(self, engine: str) -> str:
        """The parameter group where ``engine`` disagrees most."""
        return max(self.errors[engine], key=self.errors[engine].get)

    def __str__(self) -> str:
        lines = [f"HVP check against '{self.reference}' ({self.dtype}):"]
        for e in self.errors:
            verdict = "ok" if self.max_error(e) <= self.tolerances[e] else "DISAGREES"
            lines.append(
                f"  {e:<18} max rel. error {self.max_error(e):.2e} (tol {self.tolerances[e]:.0e}) "
                f"worst in {self.worst_group(e) or '<root>'!r}: {verdict}"
            )
        for e, msg in self.failures.items():
            lines.append(f"  {e:<18} cannot run: {msg}")
        return "\n".join(lines)


def check_hvp(
    model: torch.nn.Module,
    loss_fn: Any,
    data: Any,
    params: Any = None,
    *,
    num_vectors: int = 2,
    num_batches: int = 1,
    seed: int = 0,
    **kwargs: Any,
) -> HVPCheck:
    """Cross-validate every HVP engine on the user's model (see the module docstring).

    Args:
        model, loss_fn, data, params: As for :class:`~landscape_fast.Hessian`.
        num_vectors: Random directions compared.
        num_batches: Batches of ``data`` used (the first ones).
        seed: Seed of the random directions.
        **kwargs: ``batch_norm``, ``dropout``, ``dtype``, ... as for ``Hessian``.

    Returns:
        :class:`HVPCheck` with per-group errors; ``print(report)`` gives a table.
    """
    source = DataSource(data, batch_size=kwargs.pop("batch_size", None))
    batches = []
    for batch, _ in source:
        batches.append(batch)
        if len(batches) == num_batches:
            break
    space = ParamSpace(model, params) if not isinstance(params, ParamSpace) else params
    dtype = accumulation_dtype(kwargs.get("dtype") or space.dtype)
    gen = torch.Generator().manual_seed(seed)
    V = torch.randn(num_vectors, space.numel, generator=gen, dtype=torch.float64)
    V = V.to(device=space.device, dtype=dtype)
    products: dict[str, torch.Tensor] = {}
    failures: dict[str, str] = {}
    compute_dtype = dtype
    for engine in ("reverse", *EXACT_ENGINES, "finite_difference"):
        # Finite differences at two steps: the smaller crosses fewer ReLU kinks.
        for step_scale in (1.0, 0.05) if engine == "finite_difference" else (1.0,):
            hvp = FiniteDifferenceEngine(step_scale) if engine == "finite_difference" else engine
            op = Hessian(model, loss_fn, batches, space, hvp=hvp, **kwargs)
            compute_dtype = op.compute_dtype
            key = engine if step_scale == 1.0 else f"{engine}@{step_scale}"
            try:
                products[key] = op.matmat(V)
            except (RuntimeError, NotImplementedError) as err:
                failures[engine] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                break
    exact = [e for e in ("reverse", *EXACT_ENGINES) if e in products]
    if exact:  # every engine against the first exact one that ran
        reference = exact[0]
        candidates = {e: [e] for e in exact[1:]}
        candidates["finite_difference"] = ["finite_difference", "finite_difference@0.05"]
    else:  # finite differences alone: their two steps against each other
        reference = "finite_difference@0.05"
        candidates = {"finite_difference": ["finite_difference"]}
    report = HVPCheck(reference=reference, failures=failures, dtype=str(compute_dtype))
    if reference not in products:
        return report
    ref = products[reference]
    scale = float(ref.double().norm()) or 1.0
    groups = space.layers()
    for engine, keys in candidates.items():
        best: dict[str, float] | None = None
        for key in keys:
            if key not in products:
                continue
            diff = (products[key] - ref).double()
            errs = {name: float(diff[:, sl].norm()) / scale for name, sl in groups.items()}
            if best is None or max(errs.values()) < max(best.values()):
                best = errs
        if best is not None:
            report.errors[engine] = best
            report.tolerances[engine] = tolerance(engine, compute_dtype)
    return report
