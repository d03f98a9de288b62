"""The CLI and the demo (the README's main job)."""

import subprocess
import sys

import torch

from landscape_fast.cli import main
from landscape_fast.demo import run_demo, span_rank


def test_demo_trains_and_reports() -> None:
    lines: list[str] = []
    report = run_demo(seconds=0.5, out=lambda *a: lines.append(" ".join(map(str, a))))
    assert report["params"] == 64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    assert report["train_accuracy"] > 0.5  # well above chance (0.1) after half a second
    assert 1 <= report["gradient_rank"] <= report["batches"]
    assert report["gradient_diversity"] > 0
    text = "\n".join(lines)
    assert "rank of their span" in text and "backends usable here" in text


def test_span_rank_is_exact_on_known_rank() -> None:
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(5, 300, generator=gen)
    vectors = torch.randn(23, 5, generator=gen) @ basis  # rank 5
    assert span_rank(vectors, rank_tol=1e-4)[0] == 5


def test_cli_info_and_errors(capsys) -> None:
    assert main(["info"]) == 0
    assert "reference" in capsys.readouterr().out
    out = subprocess.run(
        [sys.executable, "-m", "landscape_fast", "demo", "--seconds", "-1"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr  # zero training time still reports
    bad = subprocess.run(
        [sys.executable, "-m", "landscape_fast", "nope"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
