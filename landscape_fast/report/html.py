"""One self-contained HTML page for a report dict (the schema of ``LandscapeReport.to_dict()``).

The page has inline CSS, plots as base64 ``data:`` URIs, no external resource and no
JavaScript: a header (model, sizes, device, timings, and a warning banner when the run is
incomplete), one ``<section id="<quantity key>">`` per present quantity (its ``describe``
line, a table of its scalar fields, its plots), and a final ``settings`` section. Every piece
of text from the report is escaped. Without matplotlib the page is rendered without plots.

Example:
    >>> from landscape_fast.report import render_html
    >>> page = render_html({"model": {"params": 10}, "quantities": {
    ...     "trace": {"value": 12.5, "stderr": 0.25, "describe": "tr(H) = 12.5 ± 0.25"}}})
    >>> '<section id="trace">' in page, "12.5 ± 0.25" in page, "http" in page
    (True, True, False)
"""

from __future__ import annotations

import base64
import math
from html import escape
from pathlib import Path
from typing import Any

from landscape_fast.report.plots import atomic_write, figure_pngs

__all__ = ["render_html", "write_html"]

# Section order and titles; quantities not listed here follow in the dict's order.
TITLES = {
    "eigenvalues_top": "Top eigenvalues",
    "eigenvalues_bottom": "Bottom eigenvalues",
    "condition_numbers": "Condition numbers",
    "outliers": "Outliers",
    "trace": "Trace",
    "frobenius_norm_sq": "Squared Frobenius norm",
    "spectral_density": "Spectral density",
    "sharpness": "Sharpness",
    "gradient_noise": "Gradient noise",
    "stability": "Linear stability",
    "pac_bayes": "PAC-Bayes bound",
}
# Plot name -> sections that may hold it; it goes into the first one present.
PLOT_SECTIONS = {
    "density": ("spectral_density",),
    "eigenvalues": ("eigenvalues_top", "eigenvalues_bottom"),
    "convergence": ("eigenvalues_top", "eigenvalues_bottom"),
    "sharpness": ("sharpness",),
}
_SKIP_KEYS = {"describe", "history"}
_MAX_INLINE_LIST = 32

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:60em;padding:0 1em;color:#1b1b1b;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
.meta{color:#555;margin-top:0}
table{border-collapse:collapse;margin:.6em 0}
th,td{text-align:left;padding:.2em .9em .2em 0;border-bottom:1px solid #eee;vertical-align:top}
th{font-weight:600;color:#333}td{font-variant-numeric:tabular-nums}
.describe{background:#f4f6f8;border-left:4px solid #5b8def;padding:.4em .7em;margin:.6em 0}
.warning{background:#fff4e5;border:1px solid #f0a030;border-left:6px solid #e08000;
padding:.6em 1em;margin:1em 0}
img{max-width:100%;height:auto;display:block;margin:.6em 0}
"""


def _fmt(v: Any) -> str:
    """One value as text: floats to 5 significant digits, None / NaN as ``n/a``."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.5g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v) if v else "(none)"
    return str(v)


def _fmt_pm(v: Any, se: Any) -> str:
    """``v ± se`` when a stderr exists, else ``v``."""
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return _fmt(v)
    return f"{_fmt(v)} ± {_fmt(se)}"


def _is_scalar_or_list(v: Any) -> bool:
    """A scalar, or a short list of scalars (long ones are plot data, e.g. a density grid)."""
    if isinstance(v, (list, tuple)):
        return len(v) <= _MAX_INLINE_LIST and all(
            x is None or isinstance(x, (bool, int, float, str)) for x in v
        )
    return v is None or isinstance(v, (bool, int, float, str))


def _rows(d: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """(label, text) table rows for the scalar fields of ``d``, nested dicts flattened with
    dotted labels, ``value``/``stderr`` and ``x``/``x_stderr`` pairs merged into ``v ± se``;
    lists of dicts and long lists (plot data) and ``describe`` lines are left out."""
    rows: list[tuple[str, str]] = []
    for key, v in d.items():
        label = f"{prefix}{key}"
        if key in _SKIP_KEYS or (key.endswith("_stderr") and key[: -len("_stderr")] in d):
            continue
        if key == "value":
            rows.append((prefix.rstrip(".") or key, _fmt_pm(v, d.get("stderr"))))
        elif key == "stderr" and "value" in d:
            continue
        elif isinstance(v, dict):
            rows.extend(_rows(v, f"{label}."))
        elif _is_scalar_or_list(v):
            rows.append((label, _fmt_pm(v, d.get(f"{key}_stderr"))))
    return rows


def _table(d: dict[str, Any], prefix: str = "") -> str:
    rows = _rows(d, prefix)
    if not rows:
        return ""
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _describes(d: dict[str, Any]) -> list[str]:
    """The section's ``describe`` line, then those of its sub-dicts (e.g. sharpness.worst)."""
    lines = [d["describe"]] if isinstance(d.get("describe"), str) else []
    for v in d.values():
        if isinstance(v, dict) and isinstance(v.get("describe"), str):
            lines.append(v["describe"])
    return lines


def _img(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(name)} plot">'


def _section(key: str, sec: dict[str, Any], imgs: list[str]) -> str:
    title = TITLES.get(key, key.replace("_", " ").capitalize())
    parts = [f'<section id="{escape(key)}">', f"<h2>{escape(title)}</h2>"]
    parts += [f'<p class="describe">{escape(line)}</p>' for line in _describes(sec)]
    parts += [_table(sec), *imgs, "</section>"]
    return "\n".join(parts)


def _header(report: dict[str, Any]) -> str:
    model = report.get("model") or {}
    name = model.get("name") or "model"
    fields = {
        "parameters": model.get("params"),
        "samples": model.get("samples"),
        "device": model.get("device"),
        "dtype": model.get("dtype"),
        "operator": model.get("operator"),
        "mode": model.get("mode"),
        "total time (s)": report.get("total_seconds"),
        "total Hessian-vector products": report.get("total_matvecs"),
        "one full-data gradient (s)": report.get("gradient_seconds"),
    }
    shown = {"name", "params", "samples", "device", "dtype", "operator", "mode"}
    extra = {k: v for k, v in model.items() if k not in shown}
    parts = [
        f"<header><h1>Loss-landscape report: {escape(str(name))}</h1>",
        f'<p class="meta">created {escape(_fmt(report.get("created")))} · landscape_fast '
        f"{escape(_fmt(report.get('landscape_fast_version')))}</p>",
        _table({**{k: v for k, v in fields.items() if v is not None}, **extra}),
    ]
    skipped = [s for s in report.get("skipped") or [] if isinstance(s, dict)]
    if report.get("complete") is False or skipped:
        items = "".join(
            f"<li><b>{escape(_fmt(s.get('quantity')))}</b>: {escape(_fmt(s.get('reason')))}</li>"
            for s in skipped
        )
        parts.append(
            '<div class="warning" role="alert"><b>Incomplete report:</b> not everything requested'
            f" was computed.<ul>{items or '<li>no reason recorded</li>'}</ul></div>"
        )
    return "\n".join([*parts, "</header>"])


def render_html(report: dict[str, Any]) -> str:
    """The whole report as one self-contained HTML document (a string)."""
    quantities = {k: v for k, v in (report.get("quantities") or {}).items() if isinstance(v, dict)}
    order = [k for k in TITLES if k in quantities] + [k for k in quantities if k not in TITLES]
    try:
        pngs = figure_pngs(report)
        plot_note = ""
    except ImportError:
        pngs, plot_note = {}, '<p class="meta">Plots need matplotlib (pip install matplotlib).</p>'
    imgs: dict[str, list[str]] = {k: [] for k in order}
    for name, png in pngs.items():
        home = next((s for s in PLOT_SECTIONS.get(name, ()) if s in imgs), None)
        if home is not None:
            imgs[home].append(_img(name, png))
    settings = {
        **(report.get("settings") or {}),
        "landscape_fast_version": report.get("landscape_fast_version"),
        "schema": report.get("schema"),
        "schema_version": report.get("schema_version"),
    }
    if isinstance(report.get("versions"), dict):
        settings["versions"] = report["versions"]
    body = [_header(report), plot_note]
    body += [_section(k, quantities[k], imgs[k]) for k in order]
    body.append(f'<section id="settings">\n<h2>Settings</h2>\n{_table(settings)}\n</section>')
    title = escape(f"Loss-landscape report: {(report.get('model') or {}).get('name') or 'model'}")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(p for p in body if p)
        + "\n</body>\n</html>\n"
    )


def write_html(report: dict[str, Any], path: str | Path) -> Path:
    """Write :func:`render_html` of ``report`` to ``path`` atomically; returns the path."""
    return atomic_write(path, render_html(report))
