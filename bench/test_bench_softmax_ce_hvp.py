"""``bench/bench_softmax_ce_hvp.py`` run once with tiny sizes, as a test (CI).

Checks that every method runs in the measuring subprocess, agrees with the fused op, and
that the report (table, ratios, ``--out`` file) is produced. The real numbers come from
``OMP_NUM_THREADS=1 python bench/bench_softmax_ce_hvp.py --out
bench/results/softmax_ce_hvp_cpu.md`` on a quiet machine.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from landscape_fast import _backend

HERE = Path(__file__).resolve().parent


def _bench_module():
    spec = importlib.util.spec_from_file_location(
        "bench_softmax_ce_hvp", HERE / "bench_softmax_ce_hvp.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_benchmark_runs_once_with_tiny_sizes(tmp_path: Path, capsys) -> None:
    why = _backend.BACKENDS["cpp"].unavailable_reason()
    if why:
        pytest.skip(f"backend 'cpp' unavailable: {why}")
    bench = _bench_module()
    out = tmp_path / "report.md"
    argv = ["--classes", "33", "--tokens", "4", "--k", "3", "--repeats", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    report = capsys.readouterr().out
    assert out.read_text().strip() == report.strip()
    for label in bench.LABELS.values():
        assert f"| 33 | 4 | 3 | {label} |" in report
    rows = [line for line in report.splitlines() if line.startswith("| 33 | 4 | 3 |")]
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[4]) >= 0 and float(cells[5]) >= 0  # ms, peak MB
        assert float(cells[8]) < 1e-5  # agrees with the fused op (float32)
    assert "| 33 |" in report.split("targets at C = 32000")[1]
