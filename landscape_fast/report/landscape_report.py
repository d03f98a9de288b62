"""``LandscapeReport``: what :func:`landscape_fast.analyze` returns, and its outputs.

The report holds one JSON-safe dictionary (schema ``landscape_fast.report``, version
:data:`SCHEMA_VERSION`; see :func:`landscape_fast.analyze` for the sections) and the result
objects it was built from (:attr:`LandscapeReport.results`: ``EigenResult``, ``Estimate``,
``SpectralDensity``, ``Sharpness``, ... by quantity name) for further work in Python.

Example:
    >>> from landscape_fast.report.landscape_report import LandscapeReport, jsonable
    >>> r = LandscapeReport({"schema": "landscape_fast.report", "schema_version": 1,
    ...                      "complete": True, "total_seconds": 0.5, "total_matvecs": 10,
    ...                      "skipped": [], "model": {"params": 3, "samples": 4},
    ...                      "quantities": {"trace": {"value": 2.0, "stderr": 0.1,
    ...                                               "n_matvecs": 10, "seconds": 0.5}}})
    >>> print(r.summary().splitlines()[2])
    trace                tr H               2             ± 0.1             10     0.50
    >>> jsonable({"x": float("nan"), "t": (1, 2)})
    {'x': None, 't': [1, 2]}
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch

SCHEMA = "landscape_fast.report"
SCHEMA_VERSION = 1
MAX_LIST = 4096  # longer tensors (eigenvectors, per-probe samples) are left out of the JSON

__all__ = ["SCHEMA", "SCHEMA_VERSION", "LandscapeReport", "jsonable"]


def jsonable(obj: Any) -> Any:
    """A JSON-safe copy: dataclasses and named tuples become dicts, tensors lists (scalars
    floats; more than :data:`MAX_LIST` entries are dropped as ``None``), NaN and infinities
    ``None``, dtypes and devices strings."""
    if isinstance(obj, bool | int | str) or obj is None:
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, torch.Tensor):
        if obj.numel() > MAX_LIST:
            return None
        return jsonable(obj.item() if obj.dim() == 0 else obj.tolist())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple) and hasattr(obj, "_asdict"):
        return jsonable(obj._asdict())
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.dtype | torch.device):
        return str(obj).removeprefix("torch.")
    if hasattr(obj, "item"):  # numpy scalars
        return jsonable(obj.item())
    return str(obj)


def _num(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


#: The headline number of each section: (label, key path to the value, key path to its SE).
_HEADLINES: dict[str, tuple[str, str, str | None]] = {
    "eigenvalues_top": ("λ_max", "values.0", None),
    "eigenvalues_bottom": ("λ_min", "values.0", None),
    "condition_numbers": ("|λ_min|/λ_max", "values.negative_ratio", None),
    "outliers": ("outliers", "count", None),
    "trace": ("tr H", "value", "stderr"),
    "frobenius_norm_sq": ("‖H‖_F²", "value", "stderr"),
    "spectral_density": ("negative mass", "negative_mass.value", "negative_mass.stderr"),
    "sharpness": ("worst (lower bd)", "worst.value", None),
    "gradient_noise": ("B_simple", "b_simple", None),
    "stability": ("η·λ_max/2", "gd_margin", None),
    "pac_bayes": ("error bound", "bound", None),
}


def _get(d: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(d, list):
            d = d[int(part)] if part.isdigit() and int(part) < len(d) else None
        elif isinstance(d, dict):
            d = d.get(part)
        else:
            return None
    return d


class LandscapeReport:
    """The result of :func:`landscape_fast.analyze`.

    Attributes:
        data: The JSON-safe report dictionary (see :meth:`to_dict`).
        results: The result objects by quantity name (not serialised).
    """

    def __init__(self, data: dict[str, Any], results: dict[str, Any] | None = None) -> None:
        self.data = data
        self.results = results or {}

    @property
    def complete(self) -> bool:
        """Every requested quantity was computed (nothing skipped or failed)."""
        return bool(self.data.get("complete"))

    @property
    def quantities(self) -> dict[str, Any]:
        """The sections by quantity name."""
        return self.data.get("quantities", {})

    def __getitem__(self, name: str) -> dict[str, Any]:
        return self.quantities[name]

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of :attr:`data` (schema ``landscape_fast.report``, versioned)."""
        return json.loads(json.dumps(self.data))

    def to_json(self, path: str | Path | None = None, *, indent: int = 1) -> str:
        """The report as JSON; also written atomically to ``path`` if given."""
        from landscape_fast.report.plots import atomic_write

        text = json.dumps(self.data, indent=indent, ensure_ascii=False, allow_nan=False)
        if path is not None:
            atomic_write(path, text + "\n")
        return text

    def to_html(self, path: str | Path) -> Path:
        """One self-contained HTML file (tables and plots), written atomically."""
        from landscape_fast.report.html import write_html

        return write_html(self.data, path)

    def save_plots(self, directory: str | Path) -> list[Path]:
        """The report's plots as PNG files in ``directory``; returns their paths."""
        from landscape_fast.report.plots import save_plots

        return save_plots(self.data, directory)

    def summary(self) -> str:
        """A terminal table: one line per quantity (headline value, ± SE, matvecs, seconds),
        then what was skipped and the totals."""
        lines = [
            f"{'quantity':<20} {'what':<18} {'value':<13} {'± 1 SE':<11} {'matvecs':>8} "
            f"{'seconds':>8}",
            "-" * 83,
        ]
        for name, sec in self.quantities.items():
            label, vpath, spath = _HEADLINES.get(name, (name, "value", "stderr"))
            value, se = _get(sec, vpath), _get(sec, spath) if spath else None
            se_text = f"± {_num(se)}" if se is not None else ""
            conv = sec.get("converged")
            flag = (
                "  NOT CONVERGED"
                if conv is False or (isinstance(conv, list) and not all(conv))
                else ""
            )
            lines.append(
                f"{name:<20} {label:<18} {_num(value):<13} {se_text:<11} "
                f"{_num(sec.get('n_matvecs', 0)):>8} {sec.get('seconds') or 0.0:>8.2f}{flag}"
            )
        for s in self.data.get("skipped", []):
            lines.append(f"{s['quantity']:<20} skipped: {s['reason']}")
        total = self.data.get("total_seconds")
        if total is not None:
            model = self.data.get("model", {})
            lines.append(
                f"total {total:.2f} s, {_num(self.data.get('total_matvecs'))} Hessian-vector "
                f"products, p = {_num(model.get('params'))}, N = {_num(model.get('samples'))}"
                + ("" if self.complete else " (INCOMPLETE: see skipped)")
            )
        return "\n".join(lines)

    def describe(self) -> str:
        """Each section's one-line description, one per line."""
        return "\n".join(
            f"{name}: {sec['describe']}"
            for name, sec in self.quantities.items()
            if "describe" in sec
        )

    def __repr__(self) -> str:
        q = ", ".join(self.quantities)
        return f"LandscapeReport({q}; complete={self.complete})"
