"""``landscape-fast analyze`` end to end: files, JSON, exit codes, interrupts."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import landscape_fast.cli as cli
import landscape_fast.cli_inputs as cli_inputs
from landscape_fast.cli import main
from landscape_fast.report.landscape_report import LandscapeReport
from landscape_fast.zoo import digits_data, digits_mlp

analyze_mod = importlib.import_module("landscape_fast.analyze")

TINY = ["--model", "digits_mlp", "--data", "digits", "--samples", "128"]
QUANTITIES = ["eigenvalues_top", "trace"]
MATVECS = 400  # caps the trace (2,000 products unbudgeted at the untrained point): ~1 s


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "landscape_fast", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def end_to_end(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The CLI in a subprocess and ``lf.analyze`` in this process, run side by side."""
    out = tmp_path_factory.mktemp("e2e") / "report"
    budget = ["--budget-matvecs", str(MATVECS)]
    proc = run_cli(
        "analyze", *TINY, "--quantities", ",".join(QUANTITIES), *budget, "--json", "--out", str(out)
    )
    X, y = digits_data()
    library = analyze_mod.analyze(
        digits_mlp(seed=0),
        "ce",
        (X[:128], y[:128]),
        quantities=QUANTITIES,
        seed=0,
        budget={"matvecs": MATVECS},
    )
    stdout, stderr = proc.communicate(timeout=300)
    return {"rc": proc.returncode, "stdout": stdout, "stderr": stderr, "out": out, "lib": library}


def test_cli_json_matches_the_library_call(end_to_end: dict[str, Any]) -> None:
    assert end_to_end["rc"] == 0, end_to_end["stderr"]
    cli_report = json.loads(end_to_end["stdout"])  # stdout is the JSON and nothing else
    lib = end_to_end["lib"].to_dict()
    assert cli_report["complete"] and sorted(cli_report["quantities"]) == sorted(QUANTITIES)
    assert cli_report["settings"]["budget"] == {"seconds": None, "matvecs": MATVECS}
    assert cli_report["model"]["samples"] == 128 and cli_report["model"]["name"] == "digits_mlp"
    ours = torch.tensor(cli_report["quantities"]["eigenvalues_top"]["values"], dtype=torch.float64)
    theirs = torch.tensor(lib["quantities"]["eigenvalues_top"]["values"], dtype=torch.float64)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0.0)
    assert cli_report["quantities"]["trace"]["value"] == lib["quantities"]["trace"]["value"]


def test_cli_writes_html_plots_and_json_last(end_to_end: dict[str, Any]) -> None:
    out: Path = end_to_end["out"]
    assert json.loads((out / "report.json").read_text()) == json.loads(end_to_end["stdout"])
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    pngs = sorted(out.joinpath("plots").glob("*.png"))
    assert pngs and all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)
    assert (out / "report.json").stat().st_mtime_ns >= (out / "report.html").stat().st_mtime_ns
    assert not [p for p in out.rglob("*.tmp")]  # no leftovers of the atomic writers
    assert "eigenvalues_top" in end_to_end["stderr"]  # progress goes to stderr


def test_process_exit_code_of_an_error(tmp_path: Path) -> None:
    proc = run_cli("analyze", "--model", "nope:f", "--data", "digits", "--out", str(tmp_path))
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and stdout == ""
    assert stderr.splitlines() == [
        "landscape-fast: error: cannot import module 'nope' for the model: "
        "ModuleNotFoundError: No module named 'nope'",
        "hint: run from the directory that holds the module, or add it to PYTHONPATH",
    ]


def test_exit_codes_of_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    torch.save(digits_mlp(hidden=8).state_dict(), tmp_path / "small.pt")
    out = ["--out", str(tmp_path / "out")]
    cases = {
        "bad model spec": (["--model", "os:nope", "--data", "digits", *out], "no attribute"),
        "missing data path": (
            ["--model", "digits_mlp", "--data", str(tmp_path / "x.pt"), *out],
            "does not exist",
        ),
        "checkpoint mismatch": (
            [*TINY, "--checkpoint", str(tmp_path / "small.pt"), *out],
            "does not match the model: shape mismatch",
        ),
        "unwritable out dir": ([*TINY, "--out", str(afile / "sub")], "cannot write the report"),
    }
    for what, (args, needle) in cases.items():
        assert main(["analyze", *args]) == 1, what
        err = capsys.readouterr().err
        assert needle in err.splitlines()[0], (what, err)
    with pytest.raises(SystemExit) as info:  # argparse: usage error
        main(["analyze", "--model", "digits_mlp"])
    assert info.value.code == 2


def test_incomplete_report_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [*TINY, "--quantities", "eigenvalues_top,trace", "--budget-matvecs", "10"]
    assert main(["analyze", *args, "--out", str(tmp_path), "--quiet", "--no-html"]) == 3
    captured = capsys.readouterr()
    report = json.loads((tmp_path / "report.json").read_text())
    assert not report["complete"] and report["skipped"]
    assert report["settings"]["budget"] == {"seconds": None, "matvecs": 10}
    assert "INCOMPLETE" in captured.out and captured.err == ""  # --quiet: nothing on stderr
    assert not (tmp_path / "report.html").exists()  # --no-html


def test_keyboard_interrupt_leaves_no_report_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(analyze_mod, "analyze", interrupted)
    assert main(["analyze", *TINY, "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == (
        "landscape-fast: interrupted; no report.json was written"
    )
    assert not (tmp_path / "report.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_interrupt_while_writing_removes_the_old_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report.json from an earlier run does not survive next to a newer report.html."""
    (tmp_path / "report.json").write_text("{}")
    real = analyze_mod.analyze

    def small(*args: Any, **kwargs: Any) -> Any:
        return real(*args, **dict(kwargs, quantities=["eigenvalues_top"]))

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(analyze_mod, "analyze", small)
    monkeypatch.setattr(LandscapeReport, "save_plots", interrupted)
    assert main(["analyze", *TINY, "--out", str(tmp_path), "--quiet"]) == 130
    assert (tmp_path / "report.html").exists() and not (tmp_path / "report.json").exists()


def test_demo_trains_analyzes_and_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: dict[str, Any] = {}
    real = analyze_mod.analyze

    def small(model: Any, loss_fn: Any, data: Any, **kwargs: Any) -> Any:
        seen.update(kwargs, samples=len(data[0]), training=model.training)
        return real(model, loss_fn, data, **dict(kwargs, quantities=["eigenvalues_top"]))

    monkeypatch.setattr(analyze_mod, "analyze", small)
    assert main(["demo", "--seconds", "0.2", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "trained" in out and "λ_max" in out
    assert seen["lr"] == 1e-2 and seen["batch_size"] == 64 and seen["samples"] == 1437
    assert not seen["training"]
    assert (tmp_path / "report.html").exists() and (tmp_path / "report.json").exists()


def test_parser_accepts_debug_after_the_subcommand() -> None:
    args = cli.build_parser().parse_args(["analyze", "--model", "m", "--data", "d", "--debug"])
    assert args.debug
    assert not cli.build_parser().parse_args(["info"]).debug


@pytest.mark.parametrize(
    ("args", "loss", "dtype"),
    [
        (["--model", "transformer", "--data", "tokens"], "lm", "float32"),  # the data's loss
        (["--model", "cnn", "--data", "cifar_like", "--dtype", "float64"], "ce", "float64"),
        (["--model", "digits_mlp", "--data", "digits", "--loss", "ce", "--lr", "0.1"], "ce", None),
    ],
)
def test_zoo_specs_default_loss_and_dtype(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    loss: str,
    dtype: str | None,
) -> None:
    seen: dict[str, Any] = {}
    real = analyze_mod.analyze

    def spy(model: Any, loss_fn: Any, data: Any, **kwargs: Any) -> Any:
        seen.update(kwargs, loss_fn=loss_fn, x_dtype=data[0].dtype)
        return real(model, loss_fn, data, **kwargs)

    monkeypatch.setattr(analyze_mod, "analyze", spy)
    argv = ["analyze", *args, "--samples", "16", "--quantities", "eigenvalues_top"]
    assert main([*argv, "--out", str(tmp_path), "--no-html", "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert seen["loss_fn"] == ("ce" if loss == "ce" else cli_inputs.resolve_loss("lm"))
    assert seen["quantities"] == ["eigenvalues_top"] and seen["progress"] is None
    assert report["model"]["samples"] == 16
    if dtype is not None:
        assert report["model"]["dtype"] == dtype
    if dtype == "float64":
        assert seen["x_dtype"] == torch.float64
    if "--lr" in args:
        assert seen["lr"] == 0.1 and report["settings"]["lr"] == 0.1


def test_init_checkpoint_enables_pac_bayes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save(digits_mlp(seed=1).state_dict(), tmp_path / "init.pt")
    args = [*TINY[:-1], "32", "--init-checkpoint", str(tmp_path / "init.pt")]
    assert (
        main(
            [
                "analyze",
                *args,
                "--quantities",
                "pac_bayes",
                "--json",
                "--quiet",
                "--no-html",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert list(report["quantities"]) == ["pac_bayes"] and report["model"]["samples"] == 32
