"""Rendering of a landscape report dict: PNG plots and one self-contained HTML page.

Example:
    >>> from landscape_fast.report import render_html
    >>> render_html({"quantities": {}}).startswith("<!DOCTYPE html>")
    True
"""

from landscape_fast.report.html import render_html, write_html
from landscape_fast.report.plots import figure_pngs, save_plots

__all__ = ["figure_pngs", "render_html", "save_plots", "write_html"]
