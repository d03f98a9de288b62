"""Smoke test of ``bench/bench_sharpness.py`` on the tiny digits MLP."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def test_sharpness_harness_runs(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "bench_sharpness", Path(__file__).with_name("bench_sharpness.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "sharpness.md"
    assert mod.main(["--tiny", "--repeats", "1", "--out", str(out)]) == 0
    rows = [r for r in out.read_text().splitlines() if r.startswith("| worst")]
    assert len(rows) == 2
    one_restart = [c.strip() for c in rows[0].strip("|").split("|")]
    assert int(one_restart[3]) <= 22  # 20 ascent steps + the start point (+ L(θ))
