r"""``SpectralDensity``: the result of stochastic Lanczos quadrature, and what it estimates.

Probe :math:`l` of :func:`~landscape_fast.linalg.slq.spectral_density` yields Gauss quadrature
nodes :math:`\theta_{l,i}` and weights :math:`\tau_{l,i}` (:math:`\sum_i \tau_{l,i} = 1`).
With :math:`k` refined eigenvalues :math:`\lambda_1..\lambda_k` deflated (exact point masses
:math:`1/p` each) the SLQ part carries the remaining mass, :math:`w_{l,i} = \frac{p-k}{p}
\tau_{l,i}`, and each probe gives an unbiased-in-expectation sample of any spectral sum:

.. math::

    X_l[f] = p \sum_i w_{l,i} f(\theta_{l,i}) + \sum_{j=1}^k f(\lambda_j)
    \ \approx\ \operatorname{tr} f(H) = \sum_{r=1}^p f(\lambda_r),\qquad
    \widehat{\operatorname{tr} f(H)} = \frac{1}{n_v}\sum_l X_l[f],\quad
    \mathrm{SE} = \frac{s(X)}{\sqrt{n_v}} .

Counts, rank, negative mass and the effective dimension are spectral sums of indicator or
rational functions, so they come as :class:`~landscape_fast.linalg.estimate.Estimate` with a
standard error over the probes (the error of the quadrature itself, which shrinks with the
number of Lanczos steps, is not in it). The smoothed density, for plots, is

.. math::

    \hat\phi(t) = \frac{1}{n_v}\sum_{l,i} w_{l,i}\, g_\sigma(t - \theta_{l,i})
    + \sum_{j=1}^k \frac{1}{p}\, g_\sigma(t - \lambda_j),\qquad
    g_\sigma(x) = \frac{e^{-x^2 / 2\sigma^2}}{\sigma\sqrt{2\pi}},

a probability density (:math:`\int \hat\phi = 1`); :math:`p \int_a^b \hat\phi` counts
eigenvalues.

Caveat (resolution): inside a dense part of the spectrum the Gauss nodes are not eigenvalues
but representatives spaced roughly :math:`(\theta_{max} - \theta_{min}) / m`; each carries
the mass of the eigenvalues around it. A count, rank or negative mass whose threshold falls
inside such a cluster (e.g. :math:`\pm 10^{-4}\,\lambda_{max}` inside a network Hessian's
near-zero bulk) is therefore biased by up to the mass of the neighbouring nodes, and the
reported standard error (probe noise only) does not include that bias. Check such numbers by
raising ``num_steps``; they are exact when the clusters are isolated (e.g. an exact null
space and a gap).

Example:
    >>> import torch, landscape_fast as lf
    >>> from landscape_fast.linalg.slq import spectral_density
    >>> eigs = torch.cat([torch.linspace(0, 1, 60), torch.tensor([10.0, 20.0])]).double()
    >>> d = spectral_density(lf.DenseOperator(torch.diag(eigs)), num_probes=6, num_steps=30)
    >>> [round(x, 8) for x in d.outliers().tolist()]
    [20.0, 10.0]
    >>> round(d.count(5, 30).value, 6), round(d.negative_mass().value, 6)
    (2.0, 0.0)
    >>> grid, phi = d.density()
    >>> abs(float(torch.trapezoid(phi, grid)) - 1) < 1e-3
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from os import PathLike
from typing import TYPE_CHECKING, Any

import torch

from landscape_fast.linalg.estimate import Estimate
from landscape_fast.linalg.result import EigenResult
from landscape_fast.linalg.spectrum import count_outliers

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

#: Default Gaussian width as a fraction of the spread of the nodes, ``σ = spread / 200``.
SIGMA_FRACTION = 1.0 / 200.0
#: Default number of grid points of :meth:`SpectralDensity.density`.
GRID_POINTS = 2000
#: Floor applied to the density before a logarithmic plot.
LOG_FLOOR = 1e-12


@dataclass(frozen=True, eq=False)
class SpectralDensity:
    r"""Quadrature nodes and weights of stochastic Lanczos quadrature, with estimators.

    Attributes:
        nodes: ``(n_v, m)`` float64 Ritz values :math:`\theta_{l,i}` per probe (ascending;
            padded with 0 past ``steps[l]``).
        weights: ``(n_v, m)`` float64 quadrature weights :math:`\tau_{l,i} = U_{1i}^2`
            (each row sums to 1; padded with 0).
        residuals: ``(n_v, m)`` float64 Ritz residual bounds :math:`\beta_m |U_{m,i}|`
            (0 after a breakdown; padded with 0).
        steps: ``(n_v,)`` int64 Lanczos steps taken per probe.
        breakdown: ``(n_v,)`` bool: the probe's Krylov space was exhausted (exact quadrature).
        p: Dimension.
        point_masses: ``(k,)`` float64 refined eigenvalues, each of weight :math:`1/p`.
        n_matvecs: Operator products spent, refinement included.
        num_probes: :math:`n_v`.
        num_steps: Lanczos steps asked per probe after capping.
        seed: The seed.
        probe: ``"rademacher"`` or ``"gaussian"``.
        refined: The :class:`~landscape_fast.linalg.result.EigenResult` of the refinement
            (``None`` without one).
        notes: Anything the user should know (caps, unconverged refinement).
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    residuals: torch.Tensor
    steps: torch.Tensor
    breakdown: torch.Tensor
    p: int
    point_masses: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    n_matvecs: int = 0
    num_probes: int = 0
    num_steps: int = 0
    seed: int = 0
    probe: str = "rademacher"
    refined: EigenResult | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    # ------------------------------------------------------------------ basic quantities
    @property
    def mask(self) -> torch.Tensor:
        """``(n_v, m)`` bool: which entries of :attr:`nodes` are valid."""
        m = self.nodes.shape[1]
        return torch.arange(m)[None, :] < self.steps[:, None]

    @property
    def num_deflated(self) -> int:
        """Number :math:`k` of point masses (refined, deflated eigenvalues)."""
        return int(self.point_masses.numel())

    @property
    def scaled_weights(self) -> torch.Tensor:
        r"""``(n_v, m)`` weights :math:`w_{l,i} = \frac{p-k}{p}\tau_{l,i}` of the SLQ part."""
        return self.weights * ((self.p - self.num_deflated) / self.p)

    def _all_values(self) -> torch.Tensor:
        return torch.cat([self.nodes[self.mask], self.point_masses])

    @property
    def scale(self) -> float:
        r"""Largest magnitude among nodes and point masses, :math:`\max |\theta|`."""
        vals = self._all_values()
        return float(vals.abs().max()) if vals.numel() else 0.0

    def default_sigma(self) -> float:
        r"""The default Gaussian width: :math:`\sigma = (\theta_{max} - \theta_{min}) / 200`.

        A fixed fraction of the spread of the nodes (point masses included), so the bulk is
        resolved where the nodes are dense; a standard deviation, not a variance. With a
        single distinct value it is :math:`10^{-3}\max(1, |\theta|)`.
        """
        vals = self._all_values()
        spread = float(vals.max() - vals.min())
        if spread > 0:
            return spread * SIGMA_FRACTION
        return 1e-3 * max(1.0, abs(float(vals[0])))

    # ------------------------------------------------------------------ estimators
    def _samples(self, f: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, float]:
        """Per-probe samples :math:`(p-k)\\sum_i \\tau_{l,i} f(\\theta_{l,i})`, exact part."""
        mask = self.mask
        fv = torch.zeros_like(self.nodes)
        fv[mask] = torch.as_tensor(f(self.nodes[mask]), dtype=torch.float64)
        samples = (self.p - self.num_deflated) * (self.weights * fv).sum(dim=1)
        exact = 0.0
        if self.num_deflated:
            exact = float(torch.as_tensor(f(self.point_masses), dtype=torch.float64).sum())
        return samples, exact

    def _estimate(
        self, f: Callable[[torch.Tensor], torch.Tensor], quantity: str, factor: float = 1.0
    ) -> Estimate:
        samples, exact = self._samples(f)
        return Estimate.from_samples(
            samples * factor,
            exact_part=exact * factor,
            n_matvecs=self.n_matvecs,
            method="slq",
            quantity=quantity,
            probe=self.probe,
            seed=self.seed,
            notes=self.notes,
        )

    def trace_of(
        self, f: Callable[[torch.Tensor], torch.Tensor], *, quantity: str = "tr f(H)"
    ) -> Estimate:
        r""":math:`\operatorname{tr} f(H) = \sum_r f(\lambda_r)` for a vectorised ``f``.

        ``f`` maps a float64 tensor of eigenvalues to a tensor of the same shape. Estimated by
        :math:`\frac{1}{n_v}\sum_l X_l[f]` (module docstring), with the standard error over
        probes. Exact for polynomials of degree :math:`\le 2m - 1` per probe (Gauss
        quadrature), so then only the probe noise remains.
        """
        return self._estimate(f, quantity)

    def moment(self, j: int) -> Estimate:
        r""":math:`\operatorname{tr} H^j` (``j = 0`` gives ``p``)."""
        if j < 0:
            raise ValueError(f"moment: j must be >= 0, got {j}")
        return self._estimate(lambda t: t**j, f"tr H^{j}")

    def count(self, a: float, b: float) -> Estimate:
        r"""Number of eigenvalues in the closed interval :math:`[a, b]` (unsmoothed weights):
        :math:`\operatorname{tr} \mathbb{1}_{[a,b]}(H)`."""
        if a > b:
            raise ValueError(f"count: need a <= b, got [{a}, {b}]")
        return self._estimate(lambda t: ((t >= a) & (t <= b)).double(), f"count[{a:g}, {b:g}]")

    def rank(self, eps: float = 1e-4) -> Estimate:
        r"""Numerical rank :math:`p - \#\{|\lambda| \le \varepsilon \max|\theta|\}`.

        The threshold is relative to the largest magnitude among the nodes and point masses
        (:attr:`scale`), not to :math:`\lambda_{max}` of the operator. An eigenvalue is
        counted as zero when it lies within :math:`\varepsilon \cdot` :attr:`scale` of 0;
        since Ritz values in a dense bulk are not eigenvalues, the estimate is only as sharp
        as the quadrature resolves the null space (exact when it is an isolated cluster).
        """
        thr = eps * self.scale
        return self._estimate(lambda t: (t.abs() > thr).double(), f"rank(eps={eps:g})")

    def negative_mass(self, eps: float = 1e-4) -> Estimate:
        r"""The *fraction* of spectral mass below :math:`-\varepsilon \max|\theta|`:
        :math:`\int_{t < -\varepsilon s} \phi = \frac{1}{p}\#\{\lambda < -\varepsilon s\}`,
        with unsmoothed weights. Multiply by ``p`` for a count (or use
        :meth:`negative_count`). The threshold is relative to :attr:`scale`; see the module
        docstring on the resolution near a dense cluster around 0."""
        thr = -eps * self.scale
        return self._estimate(
            lambda t: (t < thr).double(), f"negative_mass(eps={eps:g})", factor=1.0 / self.p
        )

    def negative_count(self, eps: float = 1e-4) -> Estimate:
        r"""Number of eigenvalues below :math:`-\varepsilon \max|\theta|` (``p`` times
        :meth:`negative_mass`)."""
        thr = -eps * self.scale
        return self._estimate(lambda t: (t < thr).double(), f"negative_count(eps={eps:g})")

    def effective_dimension(self, z: float) -> Estimate:
        r"""Effective dimensionality (Maddox, Benton & Wilson 2020) at scale :math:`z > 0`:
        :math:`N_{\text{eff}}(H, z) = \sum_{\lambda_i > 0} \frac{\lambda_i}{\lambda_i + z}`."""
        if not z > 0:
            raise ValueError(f"effective_dimension: z must be positive, got {z}")
        return self._estimate(
            lambda t: torch.where(t > 0, t / (t.clamp(min=0) + z), torch.zeros_like(t)),
            f"effective_dimension(z={z:g})",
        )

    # ------------------------------------------------------------------ density and outliers
    def density(
        self, grid: torch.Tensor | None = None, sigma: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The Gaussian-smoothed density :math:`\hat\phi` on a grid.

        Args:
            grid: Points :math:`t` (default: :data:`GRID_POINTS` points spanning
                :math:`[\theta_{min} - 5\sigma, \theta_{max} + 5\sigma]`).
            sigma: Standard deviation of the Gaussian kernel (default
                :meth:`default_sigma`, ``spread / 200``).

        Returns:
            ``(grid, values)`` float64; ``values`` integrates to 1 over a grid covering the
            nodes (the mass of the refined point masses included).
        """
        sigma = self.default_sigma() if sigma is None else float(sigma)
        if not sigma > 0:
            raise ValueError(f"density: sigma must be positive, got {sigma}")
        if grid is None:
            vals = self._all_values()
            lo, hi = float(vals.min()) - 5 * sigma, float(vals.max()) + 5 * sigma
            grid = torch.linspace(lo, hi, GRID_POINTS, dtype=torch.float64)
        grid = torch.as_tensor(grid, dtype=torch.float64).flatten()
        mask = self.mask
        centers = torch.cat([self.nodes[mask], self.point_masses])
        w = torch.cat(
            [
                self.scaled_weights[mask] / self.num_probes,
                torch.full((self.num_deflated,), 1.0 / self.p, dtype=torch.float64),
            ]
        )
        norm = 1.0 / (sigma * math.sqrt(2 * math.pi))
        values = torch.zeros_like(grid)
        for s in range(0, grid.numel(), 4096):  # bounded memory: chunk × nodes
            g = grid[s : s + 4096, None]
            values[s : s + 4096] = (torch.exp(-0.5 * ((g - centers) / sigma) ** 2) * w).sum(1)
        return grid, values * norm

    def outliers(
        self, tol: float = 1e-6, *, side: str = "top", min_gap: float = 0.05
    ) -> torch.Tensor:
        r"""Eigenvalues confidently separated from the bulk, descending (float64).

        The rule, step by step (with :math:`s` = :attr:`scale`):

        1. *Confident values*: Ritz values whose residual bound is at most ``tol``
           :math:`\cdot s` (converged in the Lanczos sense, so within ``tol``:math:`\cdot s`
           of an eigenvalue), grouped across probes when within ``2·tol``:math:`\cdot s` of
           each other, kept when the group spans a strict majority of the probes (the group
           mean is reported); plus the refined point masses.
        2. *Bulk edge*: per probe, the largest (``side="top"``) node that is not confident;
           the median over probes. (If every node is confident, as when all Krylov spaces
           are exhausted, there is no edge and step 3 runs on the confident values alone.)
        3. The confident values beyond the bulk edge, sorted, with the bulk edge appended;
           a gap between neighbours *qualifies* when it is at least ``min_gap`` times the
           spread of all nodes and point masses. The outliers are the values above the
           lowest qualifying gap (none if no gap qualifies). The largest gap alone
           (:func:`~landscape_fast.linalg.spectrum.count_outliers`, always qualifying when
           any gap does) would report only the top one of evenly spaced outliers such as
           10, 20, 30 over a bulk in [0, 1].

        So an outlier must be resolved by Lanczos in most probes and stand at least
        ``min_gap · spread`` clear of the bulk edge (or of a lower outlier that does); an
        outlier closer than that to the bulk is missed, and a thin tail of converged bulk
        values never counts unless its gaps are that large.
        With a bfloat16/float16 basis the residual bounds are only good to about the storage
        precision: pass ``tol=1e-2`` there.
        ``side="bottom"`` applies the same rule to the negated spectrum (negative outliers),
        ``"both"`` returns the union.
        """
        if side not in ("top", "bottom", "both"):
            raise ValueError(f"outliers: side must be 'top', 'bottom' or 'both', got {side!r}")
        if side == "both":
            vals = torch.cat(
                [self._outliers_top(tol, min_gap, 1.0), self._outliers_top(tol, min_gap, -1.0)]
            )
            return torch.sort(torch.unique(vals), descending=True).values
        sign = 1.0 if side == "top" else -1.0
        return self._outliers_top(tol, min_gap, sign)

    def _confident(self, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Group means of converged Ritz values found in a majority of probes, and the
        ``(n_v, m)`` mask of the nodes belonging to those groups."""
        s = self.scale
        mask = self.mask
        conv = mask & (self.residuals <= tol * s)
        member = torch.zeros_like(mask)
        idx = torch.nonzero(conv)
        if idx.numel() == 0:
            return torch.zeros(0, dtype=torch.float64), member
        vals = self.nodes[conv]
        order = torch.argsort(vals)
        vals, idx = vals[order], idx[order]
        groups: list[list[int]] = [[0]]
        for r in range(1, vals.numel()):
            if float(vals[r] - vals[groups[-1][0]]) <= 2 * tol * s:
                groups[-1].append(r)
            else:
                groups.append([r])
        means = []
        for g in groups:
            probes = {int(idx[r, 0]) for r in g}
            if 2 * len(probes) > self.num_probes:
                means.append(float(vals[g].mean()))
                for r in g:
                    member[idx[r, 0], idx[r, 1]] = True
        return torch.tensor(means, dtype=torch.float64), member

    def _outliers_top(self, tol: float, min_gap: float, sign: float) -> torch.Tensor:
        confident, member = self._confident(tol)
        confident = torch.cat([confident, self.point_masses]) * sign
        rest = self.mask & ~member
        if bool(rest.any()):
            nodes = torch.where(rest, self.nodes * sign, torch.full_like(self.nodes, -math.inf))
            edges = nodes.max(dim=1).values
            edge = float(edges[torch.isfinite(edges)].median())
            above = torch.sort(confident[confident > edge], descending=True).values
            cands = torch.cat([above, torch.tensor([edge], dtype=torch.float64)])
        else:  # every node resolved (e.g. all Krylov spaces exhausted): no bulk edge
            above = torch.sort(confident, descending=True).values
            cands = above
        if cands.numel() < 2 or above.numel() == 0:
            return torch.zeros(0, dtype=torch.float64)
        vals = self._all_values()
        spread = float(vals.max() - vals.min())
        gaps = cands[:-1] - cands[1:]
        big = torch.nonzero(gaps >= min_gap * spread).flatten()
        if big.numel() == 0:
            return torch.zeros(0, dtype=torch.float64)
        j = max(int(big[-1]) + 1, count_outliers(cands))
        return torch.sort(above[:j] * sign, descending=True).values

    # ------------------------------------------------------------------ output
    def plot(
        self,
        ax: Axes | None = None,
        *,
        sigma: float | None = None,
        log: bool = True,
        path: str | PathLike[str] | None = None,
    ) -> Axes:
        """Plot the smoothed density (log scale by default, as in Ghorbani et al. 2019).

        The density is floored at :data:`LOG_FLOOR` before a logarithmic axis; outliers
        (:meth:`outliers`, both sides) are marked with dashed vertical lines. Never calls
        ``plt.show``: without ``ax`` a standalone :class:`matplotlib.figure.Figure` is made
        (``ax.figure`` to display or save it).

        Args:
            ax: Axes to draw on (default: a new figure).
            sigma: Kernel width (default :meth:`default_sigma`).
            log: Logarithmic density axis.
            path: Save the figure there (PNG, or any format matplotlib infers from the name).

        Returns:
            The Axes.
        """
        from matplotlib.figure import Figure

        if ax is None:
            ax = Figure(figsize=(6, 4)).add_subplot()
        grid, values = self.density(sigma=sigma)
        y = values.clamp(min=LOG_FLOOR) if log else values
        ax.plot(grid.numpy(), y.numpy(), color="C0", lw=1.2, label="SLQ density")
        if log:
            ax.set_yscale("log")
        for i, x in enumerate(self.outliers(side="both").tolist()):
            ax.axvline(x, color="C3", ls="--", lw=0.8, label="outliers" if i == 0 else None)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density (log scale)" if log else "density")
        ax.set_title(f"SLQ: {self.num_probes} probes × {self.num_steps} steps, p = {self.p}")
        ax.legend(loc="upper right", fontsize="small")
        if path is not None:
            ax.figure.savefig(path, dpi=120, bbox_inches="tight")
        return ax

    def __repr__(self) -> str:
        return f"SpectralDensity({self.describe()})"

    def describe(self) -> str:
        """One line: settings, node range, point masses and cost."""
        vals = self._all_values()
        k = self.num_deflated
        extra = f", {k} refined point masses" if k else ""
        return (
            f"SLQ spectral density: p={self.p}, {self.num_probes} {self.probe} probes × "
            f"{self.num_steps} steps (seed {self.seed}), nodes in [{float(vals.min()):.4g}, "
            f"{float(vals.max()):.4g}]{extra}, {self.n_matvecs} matvecs"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary: settings, and nodes/weights/residuals per probe."""
        per = [int(n) for n in self.steps]
        out: dict[str, Any] = {
            "method": "slq",
            "p": self.p,
            "num_probes": self.num_probes,
            "num_steps": self.num_steps,
            "seed": self.seed,
            "probe": self.probe,
            "n_matvecs": self.n_matvecs,
            "steps": per,
            "breakdown": [bool(b) for b in self.breakdown],
            "nodes": [self.nodes[l, :n].tolist() for l, n in enumerate(per)],
            "weights": [self.weights[l, :n].tolist() for l, n in enumerate(per)],
            "residuals": [self.residuals[l, :n].tolist() for l, n in enumerate(per)],
            "point_masses": self.point_masses.tolist(),
            "notes": list(self.notes),
            "refined": None,
        }
        if self.refined is not None:
            out["refined"] = {
                "eigenvalues": self.refined.eigenvalues.tolist(),
                "residuals": self.refined.residuals.tolist(),
                "converged": [bool(c) for c in self.refined.converged],
                "n_matvecs": self.refined.n_matvecs,
            }
        return out
