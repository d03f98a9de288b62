"""Smoke test of ``bench/bench_eigsh.py``: every solver on tiny problems, results checked."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PATH = Path(__file__).with_name("bench_eigsh.py")


def _module():
    spec = importlib.util.spec_from_file_location("bench_eigsh", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_harness_on_tiny_problems(tmp_path):
    out = tmp_path / "eigsh.md"
    argv = ["--tiny", "--problems", "separated", "digits_mlp", "--queries", "top1", "both4"]
    assert _module().main([*argv, "--tols", "1e-6", "--out", str(out)]) == 0
    rows = [
        r
        for r in out.read_text().splitlines()
        if r.startswith("| separated") or r.startswith("| digits")
    ]
    assert len(rows) == 2 * (3 + 2)  # power iteration only for top-k
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        solver, err, converged = cells[4], float(cells[8]), cells[9]
        if solver == "eigsh":
            assert converged == "True" and err < 1e-5, row
