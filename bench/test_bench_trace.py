"""Smoke test of ``bench/bench_trace.py`` and ``bench/bench_slq.py`` on tiny problems."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(path: Path, prefix: str) -> list[list[str]]:
    return [
        [c.strip() for c in r.strip("|").split("|")]
        for r in path.read_text().splitlines()
        if r.startswith(f"| {prefix}")
    ]


def test_trace_harness_on_tiny_problems(tmp_path):
    out = tmp_path / "trace.md"
    argv = ["--tiny", "--problems", "decay2", "digits_mlp", "--seeds", "1", "--rtol", "0.05"]
    assert _module("bench_trace").main([*argv, "--out", str(out)]) == 0
    for prefix in ("decay2", "digits_mlp"):
        rows = [r for r in _rows(out, prefix) if r[2] in ("hutchinson", "hutch++", "xtrace")]
        assert len(rows) == 3
        by_method = {r[2]: r for r in rows}
        assert by_method["hutch++"][8] == "True" and float(by_method["hutch++"][7]) < 4
        assert int(by_method["hutch++"][3]) < int(by_method["hutchinson"][3].split()[-1].strip(")"))


def test_wasserstein_distance_of_discrete_measures():
    import numpy as np

    w1 = _module("bench_slq").wasserstein_1
    a, b = np.array([0.0, 1.0]), np.array([0.5])
    assert w1(a, np.ones(2), b, np.ones(1)) == 0.5
    assert w1(a, np.ones(2), a, np.ones(2)) == 0.0


def test_slq_harness_on_tiny_problems(tmp_path):
    out = tmp_path / "slq.md"
    argv = ["--tiny", "--repeats", "1", "--workloads", "digits_mlp", "--engines", "cached"]
    assert _module("bench_slq").main([*argv, "--steps", "30", "--out", str(out)]) == 0
    rows = _rows(out, "digits_mlp")
    assert len(rows) == 1 + 3  # one timing row, accuracy: refine 0 / 10, local reorth
    assert all(float(r[6].rstrip(" %")) < 5 for r in rows[1:])  # W1 / range below 5 %
