"""``lf.check_hvp``: passes on every model family, and catches an engine that is wrong.

Wrong engines are simulated by monkeypatching an engine's ``batch_products`` to scale or
perturb the product of one parameter group: the report must flag that engine (``ok`` is
False, its error exceeds its tolerance) and name the group.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import landscape_fast as lf
from landscape_fast import testing as T
from landscape_fast import zoo
from landscape_fast.operators import engines
from landscape_fast.operators.check import tolerance

F64 = torch.float64
ENGINE_NAMES = {"cached", "forward", "finite_difference"}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mlp(act: type[nn.Module], seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(6, 8), act(), nn.Linear(8, 3)).double()


def _mlp_data(n: int = 20, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    return torch.randn(n, 6, dtype=F64, generator=g), torch.randint(0, 3, (n,), generator=g)


@functools.cache
def _resnet(batch_norm: bool) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    model = zoo.resnet20(depth=8, width=4, seed=0, batch_norm=batch_norm)
    X, y = zoo.cifar_like_data(n=16, seed=0, size=8)
    zoo.train(model, X, y, max_epochs=1, batch_size=8, seconds=60.0)
    return model.double().eval(), (X.double(), y)


def _perturbed(model: nn.Module, seed: int) -> nn.Module:
    g = _gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _family(name: str) -> tuple[nn.Module, Any, Any, dict[str, Any]]:
    if name in ("mlp_tanh", "mlp_relu"):
        act = nn.Tanh if name == "mlp_tanh" else nn.ReLU
        return _mlp(act), "ce", _mlp_data(), {}
    if name == "mlp_float32":
        X, y = _mlp_data()
        return _mlp(nn.Tanh).float(), "ce", (X.float(), y), {}
    if name in ("resnet_bn_eval", "resnet_bn_batch"):
        model, data = _resnet(True)
        return model, F.cross_entropy, data, {"batch_norm": name.rsplit("_", 1)[1]}
    if name == "resnet_nobn":
        model, data = _resnet(False)
        return model, F.cross_entropy, data, {}
    if name == "transformer_lm":
        model = zoo.tiny_transformer(vocab=8, d_model=4, n_heads=2, n_layers=1, seq_len=4)
        X, y = zoo.token_data(n=6, seq_len=4, vocab=8)
        return _perturbed(model.double(), 1), zoo.lm_loss, (X, y), {}
    if name == "transformer_cls":
        model = zoo.tiny_transformer(
            vocab=8, d_model=4, n_heads=2, n_layers=1, seq_len=4, num_classes=3
        )
        X, y = zoo.token_data(n=6, seq_len=4, vocab=8, task="classify", num_classes=3)
        return _perturbed(model.double(), 2), nn.CrossEntropyLoss(), (X, y), {}
    if name == "dict_closure":
        X, y = _mlp_data()

        def loss(model: nn.Module, batch: dict) -> torch.Tensor:
            return F.cross_entropy(model(batch["x"]), batch["y"])

        return _mlp(nn.Tanh), loss, [{"x": X[:10], "y": y[:10]}, {"x": X[10:], "y": y[10:]}], {}
    raise KeyError(name)  # pragma: no cover


FAMILIES = (
    "mlp_tanh",
    "mlp_relu",
    "mlp_float32",
    "resnet_bn_eval",
    "resnet_bn_batch",
    "resnet_nobn",
    "transformer_lm",
    "transformer_cls",
    "dict_closure",
)


@pytest.mark.parametrize("name", FAMILIES)
def test_passes_on_every_family(name: str) -> None:
    model, loss, data, kwargs = _family(name)
    report = lf.check_hvp(model, loss, data, **kwargs)
    assert report.ok, str(report)
    assert set(report.errors) == ENGINE_NAMES and not report.failures
    assert report.reference == "reverse"
    dtype = torch.float32 if name == "mlp_float32" else F64
    assert report.dtype == str(dtype)
    for e in ENGINE_NAMES:
        assert report.tolerances[e] == tolerance(e, dtype)
        # every layer of the model is a group
        assert set(report.errors[e]) == set(lf.ParamSpace(model).layers())


def test_options_are_passed_through() -> None:
    model, loss, (X, y), _ = _family("mlp_tanh")
    report = lf.check_hvp(
        model, loss, (X, y), params="2.*", num_vectors=3, num_batches=2, batch_size=5, seed=4
    )
    assert report.ok and set(report.errors["cached"]) == {"2"}


# ------------------------------------------------------------------ detecting wrong engines
def _corrupt(monkeypatch: pytest.MonkeyPatch, cls: type, index: int, how: str) -> None:
    """Make ``cls.batch_products`` wrong in parameter tensor ``index`` only."""
    original = cls.batch_products

    def wrong(self, f, i, batch, views, *args, **kwargs):
        prods = list(original(self, f, i, batch, views, *args, **kwargs))
        t = prods[index]
        if how == "scale":
            prods[index] = t * 1.001
        else:  # a small perturbation, above every tolerance in float64 (FD: 3.7e-8)
            prods[index] = t + 1e-5 * t.abs().max() * torch.ones_like(t)
        return prods

    monkeypatch.setattr(cls, "batch_products", wrong)


@pytest.mark.parametrize("how", ["scale", "perturb"])
@pytest.mark.parametrize(
    ("engine", "cls"),
    [
        ("cached", engines.CachedEngine),
        ("forward", engines.ForwardEngine),
        ("finite_difference", engines.FiniteDifferenceEngine),
    ],
)
def test_detects_a_wrong_engine(
    monkeypatch: pytest.MonkeyPatch, engine: str, cls: type, how: str
) -> None:
    model, loss, data, _ = _family("mlp_tanh")
    _corrupt(monkeypatch, cls, index=2, how=how)  # "2.weight": group "2"
    report = lf.check_hvp(model, loss, data)
    assert report.ok is False
    assert report.max_error(engine) > report.tolerances[engine]
    assert report.worst_group(engine) == "2"
    for other in ENGINE_NAMES - {engine}:
        assert report.max_error(other) <= report.tolerances[other]
    text = str(report)
    line = next(ln for ln in text.splitlines() if ln.strip().startswith(engine + " "))
    assert "DISAGREES" in line and "'2'" in line
    assert text.count("DISAGREES") == 1


def test_detects_a_wrong_transformer_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the transformer: a wrong LayerNorm block (the layer torch gets wrong elsewhere)."""
    model, loss, data, _ = _family("transformer_lm")
    names = lf.ParamSpace(model).names
    index = names.index("blocks.0.ln1.weight")
    _corrupt(monkeypatch, engines.ForwardEngine, index=index, how="scale")
    report = lf.check_hvp(model, loss, data)
    assert report.ok is False and report.worst_group("forward") == "blocks.0.ln1"


def test_reports_an_engine_that_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, *args, **kwargs):
        raise NotImplementedError("no forward-mode rule for this op\nsecond line")

    monkeypatch.setattr(engines.ForwardEngine, "batch_products", broken)
    model, loss, data, _ = _family("mlp_tanh")
    report = lf.check_hvp(model, loss, data)
    assert "forward" not in report.errors
    assert report.failures["forward"] == "NotImplementedError: no forward-mode rule for this op"
    assert report.ok  # the engines that ran agree
    assert "cannot run: NotImplementedError" in str(report)


def test_flags_a_silently_wrong_double_backward() -> None:
    """Double backward through a once_differentiable Function would silently drop terms
    (torch returns None for them under allow_unused=True): the double-backward engines
    detect the cut graph and refuse, forward mode has no rule, finite differences run."""
    model = _mlp(nn.Tanh)
    model[1] = T.TanhVia(T.OnceDifferentiableTanhFn)
    report = lf.check_hvp(model, "ce", _mlp_data())
    for engine in ("reverse", "cached"):
        assert "not differentiable" in report.failures[engine], str(report)
    assert "forward" in report.failures  # functorch refuses the Function: a clear error
    assert report.reference == "finite_difference@0.05"
    assert report.ok, str(report)  # the two finite-difference steps agree
    assert "cannot run" in str(report)


def test_report_is_readable() -> None:
    model, loss, data, _ = _family("transformer_lm")
    report = lf.check_hvp(model, loss, data)
    text = str(report)
    lines = text.splitlines()
    assert lines[0] == "HVP check against 'reverse' (torch.float64):"
    assert len(lines) == 4
    for e in ("cached", "forward", "finite_difference"):
        line = next(ln for ln in lines if ln.strip().startswith(e + " "))
        assert "max rel. error" in line and "tol" in line and line.endswith(": ok")
    assert "DISAGREES" not in text
    # the root module's own parameter (pos_emb) is a group with a readable name
    assert "" in report.errors["cached"]


def test_report_names_root_group(monkeypatch: pytest.MonkeyPatch) -> None:
    model, loss, data, _ = _family("transformer_lm")
    index = lf.ParamSpace(model).names.index("pos_emb")
    _corrupt(monkeypatch, engines.CachedEngine, index=index, how="scale")
    report = lf.check_hvp(model, loss, data)
    assert report.worst_group("cached") == ""
    assert "'<root>'" in str(report)
