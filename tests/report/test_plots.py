"""PNG plots of a report dict: which are drawn, that they are PNGs, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from landscape_fast.report import figure_pngs, save_plots
from landscape_fast.report import plots as plots_mod

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = ["density", "eigenvalues", "convergence", "sharpness"]


def _assert_png(data: bytes) -> None:
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 5_000  # a drawn plot, not an empty canvas
    assert data.endswith(b"IEND\xaeB`\x82")  # complete file


def test_figure_pngs_full_report(full_pngs):
    pngs = full_pngs
    assert list(pngs) == ALL_PLOTS
    for data in pngs.values():
        _assert_png(data)


def test_save_plots_writes_valid_pngs_and_no_temp_files(report, tmp_path):
    out = tmp_path / "plots" / "nested"  # created on demand
    paths = save_plots(report, out)
    assert [p.name for p in paths] == [f"{n}.png" for n in ALL_PLOTS]
    assert sorted(os.listdir(out)) == sorted(p.name for p in paths)
    for p in paths:
        _assert_png(p.read_bytes())


def test_only_present_plots(partial_report, tmp_path):
    # eigenvalues_top is there (with history), density and sharpness are not
    assert list(figure_pngs(partial_report)) == ["eigenvalues", "convergence"]
    assert [p.name for p in save_plots(partial_report, tmp_path)] == [
        "eigenvalues.png",
        "convergence.png",
    ]
    assert figure_pngs({"quantities": {}}) == {}
    assert save_plots({}, tmp_path / "empty") == []


def test_plots_tolerate_nulls_and_nonpositive_values(report):
    q = report["quantities"]
    q["spectral_density"]["density"] = [0.0] * len(q["spectral_density"]["grid"])  # no log y
    q["spectral_density"]["outliers"] = [None]
    q["eigenvalues_top"]["values"][1] = None
    q["eigenvalues_bottom"]["history"] = []
    for row in q["sharpness"]["vs_rho"]:
        row["average"] = -abs(row["average"])  # linear y
        row["worst"] = None
    pngs = figure_pngs(report)
    assert list(pngs) == ALL_PLOTS
    for data in pngs.values():
        _assert_png(data)


def test_no_pyplot_state(partial_report):
    import matplotlib

    backend = matplotlib.get_backend()
    figure_pngs(partial_report)
    assert matplotlib.get_backend() == backend
    pyplot = __import__("sys").modules.get("matplotlib.pyplot")
    if pyplot is not None:  # another test may have imported it; we must not add figures
        assert pyplot.get_fignums() == []


def test_atomic_write_interrupted_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "density.png"
    target.write_bytes(b"old")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots_mod.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        plots_mod.atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["density.png"]


def test_atomic_write_replaces_and_keeps_umask_permissions(tmp_path):
    target = Path(tmp_path) / "a.txt"
    plots_mod.atomic_write(target, "first")
    plots_mod.atomic_write(target, "second ✓")
    assert target.read_text(encoding="utf-8") == "second ✓"
    assert os.listdir(tmp_path) == ["a.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
