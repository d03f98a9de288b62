r"""PNG plots of a report dict (the schema of ``LandscapeReport.to_dict()``).

Pure functions over the dict: :func:`figure_pngs` draws every plot whose data is present and
returns its PNG bytes by name; :func:`save_plots` writes them atomically as ``<name>.png``.
Figures are built with :class:`matplotlib.figure.Figure` directly, so no pyplot state, no
display and no global backend switch is involved. matplotlib (the ``plot`` extra) is imported
on first use.

Plots: ``density`` (spectral density, log y, outliers as vertical lines), ``eigenvalues``
(top and bottom eigenvalues), ``convergence`` (eigensolver max residual vs matvecs, log y),
``sharpness`` (worst / average ± stderr / Taylor vs rho, log-log where positive).

Example:
    >>> from landscape_fast.report import figure_pngs
    >>> report = {"quantities": {"eigenvalues_top": {"values": [9.5, 4.0, 2.5]}}}
    >>> pngs = figure_pngs(report)
    >>> list(pngs), pngs["eigenvalues"].startswith(b"\x89PNG\r\n\x1a\n")
    (['eigenvalues'], True)
"""

from __future__ import annotations

import io
import math
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["figure_pngs", "save_plots"]

PLOT_NAMES = ("density", "eigenvalues", "convergence", "sharpness")


def _num(x: Any) -> float | None:
    """``x`` as a finite float, or None (None, NaN, inf, non-numbers)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _finite_pairs(xs: Iterable[Any], ys: Iterable[Any]) -> tuple[list[float], list[float]]:
    """The (x, y) pairs where both are finite numbers, as two lists."""
    pairs = [(a, b) for a, b in ((_num(x), _num(y)) for x, y in zip(xs, ys)) if None not in (a, b)]
    return [a for a, _ in pairs], [b for _, b in pairs]


def _new_figure(title: str, xlabel: str, ylabel: str, ncols: int = 1) -> tuple[Any, list[Any]]:
    """A figure (not registered with pyplot) with ``ncols`` side-by-side labelled axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(1, ncols, squeeze=False)[0])
    for ax in axes:
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    return fig, axes


def _density(q: dict[str, Any]) -> Any | None:
    sd = q.get("spectral_density") or {}
    grid, dens = _finite_pairs(sd.get("grid") or [], sd.get("density") or [])
    if not grid:
        return None
    fig, (ax,) = _new_figure("Spectral density", "eigenvalue", "density")
    positive = [(g, d) for g, d in zip(grid, dens) if d > 0]
    if positive:
        ax.plot([g for g, _ in positive], [d for _, d in positive], color="C0", lw=1.5)
        ax.set_yscale("log")
    else:
        ax.plot(grid, dens, color="C0", lw=1.5)
    outliers = [v for v in map(_num, sd.get("outliers") or []) if v is not None]
    for i, v in enumerate(outliers):
        ax.axvline(v, color="C3", ls="--", lw=1, label="outlier" if i == 0 else None)
    if outliers:
        ax.legend(loc="best")
    return fig


def _eigenvalues(q: dict[str, Any]) -> Any | None:
    """One stem panel per end of the spectrum (their scales differ by orders of magnitude)."""
    from matplotlib.ticker import MaxNLocator

    series = []
    for key, end, color in (
        ("eigenvalues_top", "Top", "C0"),
        ("eigenvalues_bottom", "Bottom", "C1"),
    ):
        idx, vals = _finite_pairs(range(1, 10**9), (q.get(key) or {}).get("values") or [])
        if vals:
            series.append((end, color, idx, vals))
    if not series:
        return None
    fig, axes = _new_figure("Hessian eigenvalues", "index k", "eigenvalue", ncols=len(series))
    for ax, (end, color, idx, vals) in zip(axes, series):
        stem = ax.stem(idx, vals, linefmt=color, markerfmt=f"o{color}", basefmt="k-")
        stem.baseline.set_linewidth(0.8)
        ax.set_title(f"{end} eigenvalues")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, len(idx) + 0.5)  # one eigenvalue: no fractional ticks
    return fig


def _convergence(q: dict[str, Any]) -> Any | None:
    curves = []
    for key, end, color in (
        ("eigenvalues_top", "top", "C0"),
        ("eigenvalues_bottom", "bottom", "C1"),
    ):
        sec = q.get(key) or {}
        hist = [h for h in sec.get("history") or [] if isinstance(h, dict)]
        pts = [(_num(h.get("n_matvecs")), _num(h.get("max_residual"))) for h in hist]
        pts = [(m, r) for m, r in pts if m is not None and r is not None and r > 0]
        if pts:
            curves.append((end, color, pts, _num(sec.get("tol"))))
    if not curves:
        return None
    fig, (ax,) = _new_figure("Eigensolver convergence", "Hessian-vector products", "max residual")
    ax.set_yscale("log")
    for end, color, pts, tol in curves:
        ax.plot([m for m, _ in pts], [r for _, r in pts], "o-", color=color, ms=3, label=end)
        if tol is not None and tol > 0:
            ax.axhline(tol, color=color, ls=":", lw=1, label=f"{end} tol")
    ax.legend(loc="best")
    return fig


def _sharpness(q: dict[str, Any]) -> Any | None:
    sh = q.get("sharpness") or {}
    rows = [r for r in sh.get("vs_rho") or [] if isinstance(r, dict)]
    curves = []
    styles = (
        ("worst", "worst (lower bound)", "o-"),
        ("average", "average", "s-"),
        ("taylor", "Taylor", "^--"),
    )
    for key, label, fmt in styles:
        pts = [(_num(r.get("rho")), _num(r.get(key)), _num(r.get(f"{key}_stderr"))) for r in rows]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        if pts:
            curves.append((label, fmt, pts))
    if not curves:
        return None
    fig, (ax,) = _new_figure("Sharpness vs ρ", "ρ (perturbation radius)", "sharpness")
    all_pts = [p for _, _, pts in curves for p in pts]
    for label, fmt, pts in curves:
        x, y = [p[0] for p in pts], [p[1] for p in pts]
        err = [p[2] or 0.0 for p in pts]
        if any(err):
            ax.errorbar(x, y, yerr=err, fmt=fmt, ms=4, capsize=3, label=label)
        else:
            ax.plot(x, y, fmt, ms=4, label=label)
    if all(p[0] > 0 for p in all_pts):
        ax.set_xscale("log")
    if all(p[1] - (p[2] or 0.0) > 0 for p in all_pts):
        ax.set_yscale("log")
    rho = _num(sh.get("rho"))
    if rho is not None:
        ax.axvline(rho, color="0.5", ls=":", lw=1, label=f"ρ = {rho:.4g}")
    ax.legend(loc="best")
    return fig


_PLOTTERS: dict[str, Callable[[dict[str, Any]], Any | None]] = {
    "density": _density,
    "eigenvalues": _eigenvalues,
    "convergence": _convergence,
    "sharpness": _sharpness,
}


def figure_pngs(report: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes of every plot whose data is present in ``report``, by name (in :data:`PLOT_NAMES`
    order). Raises ImportError when matplotlib is not installed."""
    quantities = report.get("quantities") or {}
    out: dict[str, bytes] = {}
    for name, plot in _PLOTTERS.items():
        fig = plot(quantities)
        if fig is None:
            continue
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        out[name] = buf.getvalue()
    return out


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory and
    :func:`os.replace`, so an interrupt never leaves a half-written ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_plots(report: dict[str, Any], directory: str | Path) -> list[Path]:
    """Write each plot of :func:`figure_pngs` as ``directory/<name>.png`` (atomically; the
    directory is created if needed) and return the written paths."""
    pngs = figure_pngs(report)
    directory = Path(directory)
    return [atomic_write(directory / f"{name}.png", data) for name, data in pngs.items()]
