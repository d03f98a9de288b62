"""Resolving the CLI's model, data, loss and output specs (landscape_fast.cli_inputs)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from landscape_fast import zoo
from landscape_fast.cli import main
from landscape_fast.cli_inputs import (
    CLIInputError,
    check_fits,
    check_writable,
    resolve_data,
    resolve_loss,
    resolve_model,
)


def error_of(fn, *args, **kwargs) -> CLIInputError:
    with pytest.raises(CLIInputError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert "\n" not in err.message and err.message and err.hint  # one line plus a hint
    return err


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An importable module ``lf_user_nets`` with good and bad factories and losses."""
    (tmp_path / "lf_user_nets.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "def net():\n"
        "    return nn.Sequential(nn.Linear(64, 10))\n"
        "def not_a_module():\n"
        "    return 42\n"
        "def broken():\n"
        "    raise RuntimeError('cannot build')\n"
        "VALUE = 3\n"
        "def sum_loss(out, y):\n"
        "    return nn.functional.cross_entropy(out, y, reduction='none')\n"
        "def ce(out, y):\n"
        "    return nn.functional.cross_entropy(out, y)\n"
    )
    (tmp_path / "lf_user_broken.py").write_text("raise ImportError('missing dependency foo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield "lf_user_nets"
    for name in ("lf_user_nets", "lf_user_broken"):
        sys.modules.pop(name, None)


# --- models ----------------------------------------------------------------------------------


def test_resolve_model_zoo_and_callable(user_module: str) -> None:
    model = resolve_model("digits_mlp", device="cpu", dtype=torch.float64)
    assert next(model.parameters()).dtype == torch.float64
    assert isinstance(resolve_model(f"{user_module}:net", device="cpu"), nn.Sequential)
    assert isinstance(resolve_model("lf_user_nets.py:net", device="cpu"), nn.Sequential)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("no_such_model", "unknown model 'no_such_model'"),
        ("lf_no_such_module:net", "cannot import module 'lf_no_such_module'"),
        ("lf_user_broken:net", "importing 'lf_user_broken' for the model failed: ImportError"),
        ("lf_user_nets:missing", "has no attribute 'missing'"),
        ("lf_user_nets:VALUE", "is a int, not a callable"),
        ("lf_user_nets:not_a_module", "returned a int, not a torch.nn.Module"),
        ("lf_user_nets:broken", "calling lf_user_nets:broken() failed: RuntimeError: cannot build"),
        ("missing_file.py:net", "model file 'missing_file.py' does not exist"),
        (":net", "not of the form module:callable"),
    ],
)
def test_resolve_model_errors(user_module: str, spec: str, needle: str) -> None:
    err = error_of(resolve_model, spec, device="cpu")
    assert needle in err.message, err.message
    if spec == "no_such_model":
        assert "digits_mlp" in err.hint and "module:callable" in err.hint


def test_checkpoint_loading_and_mismatches(tmp_path: Path) -> None:
    trained = zoo.digits_mlp(seed=3)
    payloads = [
        trained.state_dict(),
        {"state_dict": trained.state_dict(), "epoch": 4},
        {"model": trained.state_dict()},
        {f"module.{k}": v for k, v in trained.state_dict().items()},  # saved from DataParallel
    ]
    for i, payload in enumerate(payloads):
        torch.save(payload, tmp_path / f"ok{i}.pt")
        model = resolve_model("digits_mlp", checkpoint=tmp_path / f"ok{i}.pt", device="cpu")
        for a, b in zip(model.parameters(), trained.parameters()):
            assert torch.equal(a, b)

    def message(name: str) -> str:
        return error_of(
            resolve_model, "digits_mlp", checkpoint=tmp_path / name, device="cpu"
        ).message

    torch.save(zoo.digits_mlp(hidden=8).state_dict(), tmp_path / "small.pt")
    assert "does not match the model" in message("small.pt")
    assert "shape mismatch: 0.weight (8, 64) in the file vs (32, 64)" in message("small.pt")
    state = trained.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["4.bias"]
    torch.save(state, tmp_path / "keys.pt")
    assert "missing keys: 4.bias; unexpected keys: extra.weight" in message("keys.pt")
    assert "does not exist" in message("none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    assert "cannot read checkpoint" in message("junk.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    assert "holds a list, not a state_dict" in message("list.pt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_device_without_cuda() -> None:
    assert "CUDA is not available" in error_of(resolve_model, "cnn", device="cuda").message
    assert "invalid device" in error_of(resolve_model, "cnn", device="gpu0").message


# --- data ------------------------------------------------------------------------------------


def test_resolve_data_zoo_and_files(tmp_path: Path) -> None:
    X, y = resolve_data("digits", n=10)
    assert X.shape == (10, 64) and y.shape == (10,)
    assert resolve_data("cifar_like", n=6)[0].shape == (6, 3, 32, 32)
    assert resolve_data("tokens")[0].shape == (256, 8)
    Xf, yf = torch.randn(7, 3), torch.arange(7)
    layouts = {
        "pair.pt": (Xf, yf),
        "xy.pt": {"X": Xf, "y": yf},
        "io.pth": {"inputs": Xf, "targets": yf},
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
        X, y = resolve_data(str(tmp_path / name), n=5)
        assert torch.equal(X, Xf[:5]) and torch.equal(y, yf[:5]), name
    np.savez(tmp_path / "d.npz", X=Xf.numpy(), y=yf.numpy())
    X, y = resolve_data(tmp_path / "d.npz")
    assert torch.equal(X, Xf) and torch.equal(y, yf)


def test_resolve_data_errors(tmp_path: Path) -> None:
    def message(spec: str, **kwargs: int) -> str:
        return error_of(resolve_data, spec, **kwargs).message

    assert "data file" in message(str(tmp_path / "nope.pt"))
    assert "does not exist" in message(str(tmp_path / "nope.pt"))
    assert "unknown data set 'nope'" in message("nope")
    torch.save((torch.zeros(5, 2), torch.zeros(4)), tmp_path / "len.pt")
    assert "X and y have different numbers of samples: 5 and 4" in message(str(tmp_path / "len.pt"))
    torch.save({"a": torch.zeros(2)}, tmp_path / "keys.pt")
    assert "not X and y" in message(str(tmp_path / "keys.pt"))
    torch.save(torch.zeros(3, 2), tmp_path / "tensor.pt")
    assert "not a pair (X, y)" in message(str(tmp_path / "tensor.pt"))
    torch.save(([1.0, 2.0], torch.zeros(2)), tmp_path / "list.pt")
    assert "X in" in message(str(tmp_path / "list.pt"))
    assert "not a tensor" in message(str(tmp_path / "list.pt"))
    np.savez(tmp_path / "bad.npz", inputs=np.zeros(3))
    assert "not X and y" in message(str(tmp_path / "bad.npz"))
    (tmp_path / "d.csv").write_text("1,2\n")
    assert "unsupported data file type '.csv'" in message(str(tmp_path / "d.csv"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert "cannot read data file" in message(str(tmp_path / "junk.pt"))
    assert "is a directory" in message(str(tmp_path))
    assert "exceeds the 1797 samples" in message("digits", n=5000)
    assert "at least 1" in message("digits", n=0)


# --- loss, fit, output -----------------------------------------------------------------------


def test_resolve_loss(user_module: str) -> None:
    assert resolve_loss("ce") == "ce" and resolve_loss("MSE") == "mse"
    assert resolve_loss("lm") is zoo.lm_loss
    assert callable(resolve_loss(f"{user_module}:ce"))
    assert "unknown loss 'hinge'" in error_of(resolve_loss, "hinge").message


def test_check_fits_errors(user_module: str) -> None:
    data = resolve_data("digits", n=4)
    mlp = resolve_model("digits_mlp", device="cpu")
    check_fits(mlp, "ce", data)
    err = error_of(check_fits, resolve_model("cnn", device="cpu"), "ce", data)
    assert err.message.startswith("the model does not accept the data: RuntimeError")
    err = error_of(check_fits, mlp, "mse", data)
    assert err.message.startswith("the loss does not fit the model outputs: ValueError")
    err = error_of(check_fits, mlp, resolve_loss("lm"), data)
    assert err.message.startswith("the loss does not fit the model outputs")
    err = error_of(check_fits, mlp, resolve_loss(f"{user_module}:sum_loss"), data)
    assert "not a scalar" in err.message


def test_check_fits_leaves_batch_norm_alone() -> None:
    model = resolve_model("resnet20", device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_fits(model, "ce", resolve_data("cifar_like", n=4))
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_check_writable(tmp_path: Path) -> None:
    assert check_writable(tmp_path / "a" / "b").is_dir()
    afile = tmp_path / "file"
    afile.write_text("x")
    err = error_of(check_writable, afile / "sub")  # under a regular file: blocked even for root
    assert "cannot write the report to" in err.message and "--out" in err.hint
    assert "cannot write the report" in error_of(check_writable, afile).message
    assert [p.name for p in tmp_path.joinpath("a", "b").iterdir()] == []  # probe removed


# --- the zoo registries ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_every_zoo_model_runs_on_its_data(name: str) -> None:
    entry = zoo.MODELS[name]
    assert entry.data in zoo.DATASETS
    assert entry.default_loss == zoo.DATASETS[entry.data].default_loss
    model = resolve_model(name, device="cpu")
    X, y = resolve_data(entry.data, n=3)
    check_fits(model, resolve_loss(entry.default_loss), (X, y))
    loss = zoo.lm_loss if entry.default_loss == "lm" else nn.functional.cross_entropy
    assert torch.isfinite(loss(model(X), y))


# --- the messages on the command line --------------------------------------------------------


def test_cli_prints_one_error_line_and_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out")
    base = ["--model", "digits_mlp", "--data", "digits"]
    cases = [
        (["--model", "nope", "--data", "digits"], "unknown model 'nope'"),
        (["--model", "digits_mlp", "--data", "gone.pt"], "data file 'gone.pt' does not exist"),
        (["--model", "cnn", "--data", "digits"], "the model does not accept the data"),
        ([*base, "--loss", "mse"], "the loss does not fit the model outputs"),
        ([*base, "--quantities", "x,trace"], "unknown quantity: x"),
        ([*base, "--quantities", "stability"], "stability quantity needs the training"),
        ([*base, "--quantities", "pac_bayes"], "needs the parameters at initialization"),
        ([*base, "--out", str(tmp_path / "f" / "sub")], "cannot write the report to"),
    ]
    (tmp_path / "f").write_text("a file")
    for args, needle in cases:
        assert main(["analyze", "--out", out, *args]) == 1, args
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 2 and captured.out == "", captured.err
        assert lines[0].startswith("landscape-fast: error: ") and needle in lines[0], lines
        assert lines[1].startswith("hint: ")
    assert not (tmp_path / "out" / "report.json").exists()
    with pytest.raises(CLIInputError):  # --debug: the exception itself, with its traceback
        main(["analyze", "--model", "nope", "--data", "digits", "--out", out, "--debug"])
