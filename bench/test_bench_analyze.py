"""Smoke test of ``bench/bench_analyze.py`` on the tiny zoo workloads."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def test_analyze_harness_runs(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "bench_analyze", Path(__file__).with_name("bench_analyze.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "analyze.md"
    assert mod.main(["--tiny", "--out", str(out)]) == 0
    text = out.read_text()
    assert "### digits_mlp" in text and "### resnet20" in text
    assert text.count("| eigenvalues_top |") == 2
