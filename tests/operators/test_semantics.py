"""Model semantics: BatchNorm modes, dropout, attention routing, exact restoration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import landscape_fast as lf
from landscape_fast.operators.semantics import ModelSemantics


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 2)
    )
    model.train()
    for _ in range(3):  # non-trivial running statistics
        model(torch.randn(16, 3) * 2 + 1)
    return model.double()


def _state(model: nn.Module) -> tuple:
    return (
        [(n, t.clone()) for n, t in model.state_dict().items()],
        [m.training for m in model.modules()],
        [getattr(m, "track_running_stats", None) for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


def _same(a: tuple, b: tuple) -> bool:
    tensors_a, *rest_a = a
    tensors_b, *rest_b = b
    same_tensors = all(
        na == nb and ta.dtype == tb.dtype and torch.equal(ta, tb)
        for (na, ta), (nb, tb) in zip(tensors_a, tensors_b)
    )
    return same_tensors and rest_a == rest_b


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("batch_norm", ["eval", "batch"])
@pytest.mark.parametrize("hvp", ["reverse", "cached", "forward", "finite_difference"])
def test_model_is_restored_bit_for_bit(mode, batch_norm, hvp):
    model = _bn_model()
    getattr(model, mode)()
    before = _state(model)
    data = (torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    H = lf.Hessian(model, nn.CrossEntropyLoss(), data, batch_size=8, batch_norm=batch_norm, hvp=hvp)
    H.matmat(torch.randn(3, H.shape[0], dtype=torch.float64))
    H.loss_and_gradient()
    assert _same(before, _state(model))
    assert all(p.grad is None for p in model.parameters())


def test_batch_norm_modes_differ_and_eval_matches_eval_model():
    model = _bn_model()
    data = (torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    V = torch.randn(2, sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    H_eval = lf.Hessian(model, "ce", data, batch_norm="eval").matmat(V)
    H_batch = lf.Hessian(model, "ce", data, batch_norm="batch").matmat(V)
    assert not torch.allclose(H_eval, H_batch)
    # "eval" is the Hessian of the model in eval mode; "batch" of a model whose BN uses
    # batch statistics (a copy with track_running_stats off, in train mode, no dropout).
    twin = _bn_model().eval()
    loss_eval, _ = lf.Hessian(twin, "ce", data).loss_and_gradient()
    with torch.no_grad():
        assert loss_eval == pytest.approx(
            float(nn.functional.cross_entropy(twin(data[0]), data[1]))
        )
    twin[1].track_running_stats = False
    twin[1].train()
    with torch.no_grad():
        expected = float(nn.functional.cross_entropy(twin(data[0]), data[1]))
    loss_batch, _ = lf.Hessian(_bn_model(), "ce", data, batch_norm="batch").loss_and_gradient()
    assert loss_batch == pytest.approx(expected)


def test_dropout_is_off_by_default_and_fixed_per_batch_when_on():
    model = _bn_model()
    data = (torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    V = torch.randn(2, sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    off = lf.Hessian(model, "ce", data, batch_size=10)
    on = lf.Hessian(model, "ce", data, batch_size=10, dropout=True, hvp="reverse")
    a, b = on.matmat(V), on.matmat(V)
    assert torch.equal(a, b)  # the same mask on every pass
    assert not torch.allclose(a, off.matmat(V))
    rng = torch.get_rng_state()
    on.matmat(V)
    assert torch.equal(rng, torch.get_rng_state())  # the user's RNG stream is untouched
    for engine in ("cached", "forward", "finite_difference"):
        other = lf.Hessian(model, "ce", data, batch_size=10, dropout=True, hvp=engine)
        tol = 1e-5 if engine == "finite_difference" else 1e-10
        assert torch.allclose(other.matmat(V), a, rtol=tol, atol=tol), engine


def test_restored_when_the_loss_raises():
    model = _bn_model().train()
    before = _state(model)

    def bad_loss(out, y):
        raise KeyError("boom")

    H = lf.Hessian(model, bad_loss, (torch.randn(4, 3, dtype=torch.float64), torch.zeros(4).long()))
    with pytest.raises(KeyError):
        H.matmat(torch.randn(1, H.shape[0], dtype=torch.float64))
    assert _same(before, _state(model))


def test_context_restores_attention_and_nested_use():
    model = _bn_model().train()
    with ModelSemantics(model, batch_norm="batch"):
        with ModelSemantics(model, batch_norm="eval"):
            assert not model[1].training
        assert model[1].training and not model[1].track_running_stats
    assert model[1].track_running_stats and model.training


def test_bad_choices():
    model = _bn_model()
    data = (torch.randn(4, 3, dtype=torch.float64), torch.zeros(4).long())
    with pytest.raises(ValueError, match="batch_norm"):
        lf.Hessian(model, "ce", data, batch_norm="train")
    with pytest.raises(ValueError, match="hvp"):
        lf.Hessian(model, "ce", data, hvp="magic")
    with pytest.raises(ValueError, match="attention"):
        ModelSemantics(model, attention="flash")
