"""Smoke test of ``bench/bench_hvp.py``: the harness runs end to end on a tiny workload."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).with_name("bench_hvp.py")


def _module():
    spec = importlib.util.spec_from_file_location("bench_hvp", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_harness_runs_on_tiny_mlp(tmp_path, capsys):
    out = tmp_path / "hvp.md"
    argv = ["--workloads", "digits_mlp", "--engines", "cached", "--ks", "2", "--repeats", "1"]
    assert _module().main([*argv, "--tiny", "--out", str(out)]) == 0
    table = out.read_text()
    assert "| gradient |" in table and "| cached |" in table
    assert "error" not in table


@pytest.mark.parametrize(
    "engine", ["gradient", "reverse", "cached", "forward", "finite_difference"]
)
def test_case_reports_time_and_memory(engine):
    row = _module().run_case("digits_mlp", engine, 2, repeats=1, tiny=True)
    assert row["seconds"] > 0 and row["peak_mb"] >= 0 and row["p"] > 0
