"""Smoke test of ``bench/bench_gradient_noise.py`` on the tiny digits workload."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gradient_noise_harness_on_tiny_problem(tmp_path):
    out = tmp_path / "noise.md"
    argv = ["--tiny", "--repeats", "1", "--curvature-samples", "8", "--out", str(out)]
    assert _module("bench_gradient_noise").main(argv) == 0
    rows = [
        [c.strip() for c in r.strip("|").split("|")]
        for r in out.read_text().splitlines()
        if r.startswith("| digits_mlp")
    ]
    assert [r[3] for r in rows] == [
        "gradient",
        "noise, norms (no B_noise)",
        "noise, vmap (no B_noise)",
        "noise + B_noise (8)",
    ]
    assert all(float(r[4]) > 0 for r in rows) and float(rows[0][5]) == 1.0
    assert "B_simple = " in out.read_text()
