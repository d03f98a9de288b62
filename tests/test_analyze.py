"""``lf.analyze``: the numbers are those of the library calls it stands for, work is shared,
the budget scales effort down and says so, failures are reported, the model is unchanged."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import landscape_fast as lf
from landscape_fast.analyze import QUANTITIES

f64 = torch.float64


def _problem(n: int = 48, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
        init = copy.deepcopy(model.state_dict())
        with torch.no_grad():
            for q in model.parameters():
                q.add_(0.3 * torch.randn_like(q))
    X = torch.randn(n, 4, generator=gen, dtype=f64)
    y = torch.randint(0, 3, (n,), generator=gen)
    return model, (X, y), init


@pytest.fixture(scope="module")
def full():
    model, data, init = _problem()
    report = lf.analyze(model, "ce", data, lr=0.5, batch_size=8, init_params=init, top_k=3)
    return model, data, init, report


def test_every_quantity_is_reported_with_its_cost(full):
    model, data, init, report = full
    assert report.complete and report.data["skipped"] == []
    assert list(report.quantities) == list(QUANTITIES)
    for name, sec in report.quantities.items():
        assert sec["seconds"] >= 0 and sec["n_matvecs"] >= 0, name
        if name != "sharpness":
            assert isinstance(sec["describe"], str) and sec["describe"], name
    spent = sum(sec["n_matvecs"] for sec in report.quantities.values())
    assert report.data["total_matvecs"] == spent + 1  # plus the timed product
    text = report.summary()
    assert all(name in text for name in QUANTITIES) and "INCOMPLETE" not in text


def test_numbers_are_the_library_calls_and_the_dense_hessian(full):
    model, data, init, report = full
    H = lf.Hessian(model, "ce", data)
    dense = torch.linalg.eigvalsh(H.to_dense())
    top = report["eigenvalues_top"]
    assert top["converged"] == [True] * 3
    torch.testing.assert_close(
        torch.tensor(top["values"], dtype=f64), dense.flip(0)[:3], rtol=1e-6, atol=1e-9
    )
    assert report["eigenvalues_bottom"]["values"][0] == pytest.approx(float(dense[0]), abs=1e-6)
    tr = lf.trace(H, "hutch++", rtol=0.01, max_matvecs=2000, seed=0)
    assert report["trace"]["value"] == pytest.approx(float(tr.value), rel=1e-10)
    assert abs(report["trace"]["value"] - float(dense.sum())) <= 4 * report["trace"]["stderr"]
    fro = float(dense.square().sum())
    assert (
        abs(report["frobenius_norm_sq"]["value"] - fro) <= 4 * report["frobenius_norm_sq"]["stderr"]
    )
    noise = lf.gradient_noise(model, "ce", data, lr=0.5, batch_size=8, curvature_samples=64)
    assert report["gradient_noise"]["b_simple"] == pytest.approx(noise.b_simple, rel=1e-10)
    stab = report["stability"]
    assert stab["lambda_max"] == pytest.approx(float(dense[-1]), rel=1e-6)
    assert stab["threshold"] == pytest.approx(2 / 0.5)
    pb = lf.pac_bayes_bound(model, "ce", data, init, seed=0)
    assert report["pac_bayes"]["bound"] == pytest.approx(pb.bound)


def test_work_is_shared(full):
    model, data, init, report = full
    top = report["eigenvalues_top"]["values"]
    sharp = report["sharpness"]
    assert sharp["n_matvecs"] == 0 and sharp["lambda_max"] == pytest.approx(top[0])
    worst = lf.sharpness(model, "ce", data, 0.05, "worst", seed=0)  # its own eigensolve
    assert sharp["worst"]["value"] == pytest.approx(worst.value, rel=1e-3, abs=1e-8)
    density = report["spectral_density"]
    assert sorted(density["point_masses"]) == pytest.approx(sorted(top))  # deflated top pairs
    assert density["n_matvecs"] <= 8 * density["num_steps"]  # the refinement was not repeated
    assert report["stability"]["n_matvecs"] <= 1  # λ_max, λ_min reused; one s² product


def test_outputs_are_consistent(full, tmp_path):
    *_, report = full
    d = report.to_dict()
    assert d["schema"] == "landscape_fast.report" and d["schema_version"] == 1
    text = report.to_json(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(text) == d
    html = report.to_html(tmp_path / "r.html").read_text()
    assert all(f'id="{q}"' in html for q in QUANTITIES)
    names = {p.name for p in report.save_plots(tmp_path / "plots")}
    assert names == {"density.png", "eigenvalues.png", "convergence.png", "sharpness.png"}


def test_model_is_left_exactly_as_it_was():
    model, data, init = _problem()
    model.append(nn.Dropout(0.5))  # a mode flag to keep
    model.train()
    before = copy.deepcopy(model.state_dict())
    for q in model.parameters():
        q.grad = torch.ones_like(q)
    lf.analyze(model, "ce", data, lr=0.1, init_params=init, top_k=2)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(torch.equal(q.grad, torch.ones_like(q)) for q in model.parameters())


def test_budget_scales_down_and_says_what_was_skipped():
    model, data, _ = _problem()
    lines: list[str] = []
    small = lf.analyze(model, "ce", data, budget={"matvecs": 120}, top_k=3, progress=lines.append)
    assert small.data["total_matvecs"] <= 120 + 10  # caps are per quantity, plus the timed one
    assert not small.complete or small.data["total_matvecs"] <= 121
    assert any("analyze: finished" in line for line in lines)
    tiny = lf.analyze(model, "ce", data, budget=1e-9, quantities=["eigenvalues_top", "trace"])
    assert not tiny.complete and tiny.quantities == {}
    reasons = {s["quantity"]: s["reason"] for s in tiny.data["skipped"]}
    assert set(reasons) == {"eigenvalues_top", "trace"}
    assert all(r.startswith("budget") for r in reasons.values())
    assert "INCOMPLETE" in tiny.summary()


def test_a_failing_quantity_is_reported_not_hidden():
    model, data, _ = _problem()

    def summed(out, t):  # a sum, not a mean of per-sample losses: no per-sample gradients
        return nn.functional.cross_entropy(out, t, reduction="sum")

    r = lf.analyze(model, summed, data, quantities=["trace", "gradient_noise"])
    assert "trace" in r.quantities and not r.complete
    (skip,) = r.data["skipped"]
    assert skip["quantity"] == "gradient_noise" and skip["reason"].startswith("failed: ValueError")


def test_bad_arguments():
    model, data, _ = _problem()
    with pytest.raises(ValueError, match="unknown quantities"):
        lf.analyze(model, "ce", data, quantities=["nope"])
    with pytest.raises(ValueError, match="needs the learning rate"):
        lf.analyze(model, "ce", data, quantities="stability")
    with pytest.raises(ValueError, match="init_params"):
        lf.analyze(model, "ce", data, quantities=["pac_bayes"])
    with pytest.raises(ValueError, match="budget"):
        lf.analyze(model, "ce", data, budget="fast")
    with pytest.raises(FloatingPointError):
        lf.analyze(model, "ce", (data[0] * float("nan"), data[1]))


def test_chunks_change_memory_not_numbers():
    model, data, _ = _problem(n=50)
    q = ["eigenvalues_top", "trace", "gradient_noise"]
    whole = lf.analyze(model, "ce", data, quantities=q, top_k=2, chunk_size=None)
    parts = lf.analyze(model, "ce", data, quantities=q, top_k=2, chunk_size=16)
    for a, b in [("eigenvalues_top", "values"), ("trace", "value"), ("gradient_noise", "b_simple")]:
        assert parts[a][b] == pytest.approx(whole[a][b], rel=1e-8), a


def test_stability_drops_the_sgd_pass_when_its_budget_share_cannot_pay():
    from landscape_fast.analyze import Budget, _Planner, _stability

    model, data, _ = _problem()
    H = lf.Hessian(model, "ce", data)
    top, bottom = lf.eigsh(H, 1, which="LA"), lf.eigsh(H, 1, which="SA")
    plan = _Planner(Budget(seconds=1e-9), ["stability"])
    plan.t_hvp = 1.0
    section, result = _stability(H, plan, 0.1, 8, top, bottom, 1e-4, 0)
    assert result.s_squared is None and "s² skipped" in section["describe"]
    full, _ = _stability(H, _Planner(None, ["stability"]), 0.1, 8, top, bottom, 1e-4, 0)
    assert full["s_squared"] is not None
