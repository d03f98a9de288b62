"""``landscape_fast.compat.pyhessian`` against the real PyHessian and a dense float64 Hessian.

The tests that run PyHessian itself skip (with the reason) when it is not installed
(``pip install pyhessian --no-deps``). PyHessian 0.1 calls ``torch.eig``, removed in torch
1.9+, in ``density``; the ``torch_eig_shim`` fixture monkeypatches it back (symmetric
tridiagonal, so via ``torch.linalg.eigh``) for the duration of a test.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

import landscape_fast as lf
from landscape_fast.compat.pyhessian import hessian, pyhessian_trace_stop
from landscape_fast.zoo import digits_data, digits_mlp

pytestmark = [
    # PyHessian's data= mode calls loss.backward(create_graph=True); torch warns about it.
    pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning"),
    # torch.func.hessian (forward mode) loads decompositions that use torch.jit.script.
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]

N = 128


@pytest.fixture
def pyhessian():
    return pytest.importorskip(
        "pyhessian",
        reason="the real PyHessian is needed for the comparison: pip install pyhessian --no-deps",
    )


@pytest.fixture
def torch_eig_shim(monkeypatch):
    """PyHessian's density calls ``torch.eig(T, eigenvectors=True)`` (removed from torch)."""

    def eig(T: torch.Tensor, eigenvectors: bool = False):
        w, V = torch.linalg.eigh(T)
        return torch.stack([w, torch.zeros_like(w)], dim=1), V

    monkeypatch.setattr(torch, "eig", eig, raising=False)


@pytest.fixture(scope="module")
def digits():
    X, y = digits_data()
    return X[:N], y[:N]


@pytest.fixture(scope="module")
def mlp():
    return digits_mlp(hidden=8)  # 682 parameters


@pytest.fixture(scope="module")
def dense(mlp, digits):
    """Dense float64 Hessian of the mean cross-entropy over the 128 samples, and its spectrum."""
    H = dense_hessian(mlp, nn.CrossEntropyLoss(), *digits)
    return H, torch.linalg.eigvalsh(H)


def dense_hessian(model: nn.Module, criterion, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``torch.func.hessian`` of the loss as a function of the flattened parameters, in float64
    and eval mode (a copy of the model; batch norm uses its running statistics)."""
    m = copy.deepcopy(model).double().eval()
    named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss(flat: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for name, p in named:
            params[name] = flat[offset : offset + p.numel()].view(p.shape)
            offset += p.numel()
        return criterion(functional_call(m, params, (X.double(),)), y)

    return torch.func.hessian(loss)(flat0)


def top_by_magnitude(eigs: torch.Tensor, k: int) -> list[float]:
    return eigs[eigs.abs().argsort(descending=True)][:k].tolist()


def flat(vec: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in vec]).double()


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "modes": [m.training for m in model.modules()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k
    for g_after, g_before in zip(after["grads"], before["grads"]):
        assert (g_after is None) == (g_before is None)
        assert g_after is None or torch.equal(g_after, g_before)


# ---------------------------------------------------------------------- eigenvalues
def test_eigenvalues_agree_with_pyhessian_and_dense_float64(pyhessian, mlp, digits, dense):
    crit = nn.CrossEntropyLoss()
    ph = pyhessian.hessian(copy.deepcopy(mlp), crit, data=digits, cuda=False)
    ph_vals, ph_vecs = ph.eigenvalues(maxIter=1000, tol=1e-7, top_n=3)
    ours = hessian(mlp, crit, data=digits, cuda=False)
    vals, vecs = ours.eigenvalues(maxIter=100, tol=1e-6, top_n=3, seed=0)

    H, eigs = dense
    truth = top_by_magnitude(eigs, 3)
    # Structures: PyHessian's (list of floats, list of lists of per-parameter tensors).
    assert isinstance(vals, list) and all(isinstance(v, float) for v in vals)
    assert len(vecs) == len(ph_vecs) == 3
    for v, pv in zip(vecs, ph_vecs):
        assert [t.shape for t in v] == [t.shape for t in pv] == [p.shape for p in mlp.parameters()]
        assert all(t.dtype == torch.float32 for t in v)
    # Ours: converged to float32 precision; PyHessian with a tight tol to ~1e-3 of both.
    assert bool(ours.last_eigen_result.converged.all())
    np.testing.assert_allclose(vals, truth, rtol=1e-5)
    np.testing.assert_allclose(ph_vals, truth, rtol=1e-3)
    np.testing.assert_allclose(vals, ph_vals, rtol=1e-3)
    for lam, v, pv in zip(vals, vecs, ph_vecs):
        x = flat(v)
        assert abs(float(x.norm()) - 1) < 1e-5
        assert float((H @ x - lam * x).norm()) < 1e-4 * abs(truth[0])  # a true eigenpair
        assert abs(float(x @ flat(pv))) / float(flat(pv).norm()) > 0.999  # same direction


def test_eigenvalues_largest_algebraic_and_budget_warning(mlp, digits, dense):
    h = hessian(mlp, nn.CrossEntropyLoss(), data=digits, cuda=False)
    la, _ = h.eigenvalues(top_n=2, tol=1e-6, which="LA", seed=1)
    np.testing.assert_allclose(la, dense[1].flip(0)[:2].tolist(), rtol=1e-5)
    with pytest.warns(UserWarning, match="did not reach the residual tolerance"):
        vals, vecs = h.eigenvalues(maxIter=3, tol=1e-6, top_n=1, seed=0)
    assert len(vals) == len(vecs) == 1 and h.last_eigen_result.n_matvecs <= 3 + 1


# ---------------------------------------------------------------------- trace
def test_trace_mean_agrees_with_pyhessian_within_standard_errors(pyhessian, mlp, digits, dense):
    crit = nn.CrossEntropyLoss()
    ph = pyhessian.hessian(copy.deepcopy(mlp), crit, data=digits, cuda=False)
    # tol=-inf: all 100 samples (a tiny positive tol would still stop at a negative running
    # mean, which happens here when the first sample is negative: 2 of 15 seeds).
    ph_samples = ph.trace(maxIter=100, tol=-math.inf)
    ours = hessian(mlp, crit, data=digits, cuda=False)
    samples = ours.trace(maxIter=100, tol=-math.inf, seed=0)
    assert len(samples) == len(ph_samples) == 100
    assert all(isinstance(s, float) for s in samples)

    truth = float(dense[0].trace())
    se = np.std(samples, ddof=1) / math.sqrt(len(samples))
    ph_se = np.std(ph_samples, ddof=1) / math.sqrt(len(ph_samples))
    assert abs(np.mean(samples) - truth) < 4 * se
    assert abs(np.mean(ph_samples) - truth) < 4 * ph_se
    assert abs(np.mean(samples) - np.mean(ph_samples)) < 4 * math.hypot(se, ph_se)
    # The samples are lf.trace's Hutchinson samples for the same seed.
    est = lf.trace(ours.operator, method="hutchinson", num_matvecs=100, seed=0)
    np.testing.assert_allclose(samples, est.samples.tolist(), rtol=1e-12)


def test_trace_stops_by_pyhessians_rule(pyhessian, mlp, digits):
    crit = nn.CrossEntropyLoss()
    # Our implementation of the rule reproduces PyHessian's own stop on PyHessian's samples.
    ph = pyhessian.hessian(copy.deepcopy(mlp), crit, data=digits, cuda=False)
    for tol in (1e-1, 1e-2, 1e-3):
        ph_samples = ph.trace(maxIter=100, tol=tol)
        assert pyhessian_trace_stop(ph_samples, tol) in (len(ph_samples), None)
        if len(ph_samples) < 100:
            assert pyhessian_trace_stop(ph_samples[:-1], tol) is None
    # Ours stops where the rule first fires on the same probe sequence.
    ours = hessian(mlp, crit, data=digits, cuda=False)
    full = ours.trace(maxIter=100, tol=-math.inf, seed=3)
    for tol in (1e-1, 1e-2, 1e-3):
        short = ours.trace(maxIter=100, tol=tol, seed=3)
        stop = pyhessian_trace_stop(full, tol)
        assert len(short) == (100 if stop is None else stop)
        assert short == full[: len(short)]
    # The quirk kept from PyHessian: a negative running mean stops at the next sample.
    assert pyhessian_trace_stop([-1.0, 5.0, 7.0], 1e-3) == 2


# ---------------------------------------------------------------------- density
def test_density_structure_range_and_moments(pyhessian, torch_eig_shim, mlp, digits, dense):
    crit = nn.CrossEntropyLoss()
    iters, n_v = 40, 8
    ph = pyhessian.hessian(copy.deepcopy(mlp), crit, data=digits, cuda=False)
    ph_nodes, ph_weights = ph.density(iter=iters, n_v=n_v)
    ours = hessian(mlp, crit, data=digits, cuda=False)
    nodes, weights = ours.density(iter=iters, n_v=n_v, seed=0)

    H, eigs = dense
    p, lo, hi = H.shape[0], float(eigs[0]), float(eigs[-1])
    slack = 1e-4 * max(abs(lo), abs(hi))
    for nd, wt in ((nodes, weights), (ph_nodes, ph_weights)):
        assert len(nd) == len(wt) == n_v
        for n_l, w_l in zip(nd, wt):
            assert len(n_l) == len(w_l) == iters
            assert abs(sum(w_l) - 1) < 1e-5
            assert min(w_l) >= 0 and lo - slack <= min(n_l) and max(n_l) <= hi + slack
            assert abs(max(n_l) - hi) < 1e-3 * hi  # extreme eigenvalue resolved
    assert all(isinstance(x, float) for x in nodes[0])
    # First moment: p * sum(w * node) is the probe's Hutchinson sample, mean -> tr(H).
    truth = float(H.trace())
    for nd, wt in ((nodes, weights), (ph_nodes, ph_weights)):
        m1 = [p * float(np.dot(n_l, w_l)) for n_l, w_l in zip(nd, wt)]
        se = np.std(m1, ddof=1) / math.sqrt(n_v)
        assert abs(np.mean(m1) - truth) < 5 * se  # t with 7 d.o.f.: P(|t| > 5) < 0.2 %
    # Second moment p * sum(w * node^2) -> ||H||_F^2, loosely (8 probes).
    fro = float((H * H).sum())
    m2 = np.mean([p * float(np.dot(np.square(n_l), w_l)) for n_l, w_l in zip(nodes, weights)])
    assert 0.5 * fro < m2 < 2 * fro


# ---------------------------------------------------------------------- data handling
def loader_of(digits) -> DataLoader:
    return DataLoader(TensorDataset(*digits), batch_size=48, shuffle=False)  # 48, 48, 32


def test_dataloader_equals_data(mlp, digits):
    crit = nn.CrossEntropyLoss()
    X, y = digits
    loader = loader_of(digits)
    whole = hessian(mlp, crit, data=(X, y), cuda=False)
    batched = hessian(mlp, crit, dataloader=loader, cuda=False)
    assert batched.full_dataset and not whole.full_dataset

    v1, _ = whole.eigenvalues(top_n=2, tol=1e-6, seed=0)
    v2, _ = batched.eigenvalues(top_n=2, tol=1e-6, seed=0)
    np.testing.assert_allclose(v2, v1, rtol=1e-5)
    t1 = whole.trace(maxIter=20, tol=-math.inf, seed=0)
    t2 = batched.trace(maxIter=20, tol=-math.inf, seed=0)
    np.testing.assert_allclose(t2, t1, rtol=1e-4, atol=1e-4)
    n1, w1 = whole.density(iter=15, n_v=2, seed=0)
    n2, w2 = batched.density(iter=15, n_v=2, seed=0)
    np.testing.assert_allclose(n2, n1, rtol=1e-3, atol=1e-3 * abs(v1[0]))
    np.testing.assert_allclose(np.sum(w2, axis=1), 1, atol=1e-6)


def test_dataloader_agrees_with_pyhessians_dataloader_mode(pyhessian, mlp, digits, dense):
    """PyHessian weights batch products by batch size: the same full-data Hessian."""
    crit = nn.CrossEntropyLoss()
    loader = loader_of(digits)
    ph = pyhessian.hessian(copy.deepcopy(mlp), crit, dataloader=loader, cuda=False)
    ph_vals, _ = ph.eigenvalues(maxIter=300, tol=1e-6, top_n=1)
    vals, _ = hessian(mlp, crit, dataloader=loader, cuda=False).eigenvalues(tol=1e-6, seed=0)
    truth = top_by_magnitude(dense[1], 1)
    np.testing.assert_allclose(vals, truth, rtol=1e-5)
    np.testing.assert_allclose(ph_vals, truth, rtol=1e-3)


def test_hv_product_method_matches_dense(mlp, digits, dense):
    h = hessian(mlp, nn.CrossEntropyLoss(), data=digits, cuda=False)
    v = [torch.randn_like(p) for p in mlp.parameters()]
    vhv, Hv = h.dataloader_hv_product(v)
    ref = dense[0] @ flat(v)
    np.testing.assert_allclose(flat(Hv).numpy(), ref.numpy(), rtol=1e-4, atol=1e-5)
    assert abs(vhv - float(flat(v) @ ref)) < 1e-4 * abs(vhv)


def test_exactly_one_data_source(mlp, digits):
    with pytest.raises(ValueError, match="exactly one"):
        hessian(mlp, nn.CrossEntropyLoss(), cuda=False)
    with pytest.raises(ValueError, match="exactly one"):
        hessian(mlp, nn.CrossEntropyLoss(), data=digits, dataloader=[digits], cuda=False)
    with pytest.raises(TypeError, match="one \\(inputs, targets\\) batch"):
        hessian(mlp, nn.CrossEntropyLoss(), data=digits[0], cuda=False)


# ---------------------------------------------------------------------- model state
class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.fc1 = nn.Linear(64, 12)
        self.bn = nn.BatchNorm1d(12)
        self.fc2 = nn.Linear(12, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.bn(self.fc1(x))))


@pytest.fixture
def bn_model(digits) -> BNNet:
    """In train mode, with running statistics far from the 128 samples' batch statistics."""
    model = BNNet()
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(2 * digits[0] + 0.5)
    return model


def test_model_unchanged_and_evaluated_in_eval_mode(bn_model, digits):
    crit = nn.CrossEntropyLoss()
    before = snapshot(bn_model)
    assert bn_model.training
    h = hessian(bn_model, crit, data=digits, cuda=False)
    vals, _ = h.eigenvalues(top_n=2, tol=1e-6, seed=0)
    samples = h.trace(maxIter=10, tol=-math.inf, seed=0)
    nodes, _ = h.density(iter=10, n_v=2, seed=0)
    h.dataloader_hv_product([torch.ones_like(p) for p in bn_model.parameters()])
    assert_unchanged(bn_model, before)  # params, buffers, train flags, no .grad
    assert all(p.grad is None for p in bn_model.parameters())
    assert len(samples) == 10 and len(nodes) == 2

    # Eval-mode Hessian (running statistics), as PyHessian, which switches the model to eval.
    H_eval = dense_hessian(bn_model, crit, *digits)
    truth = top_by_magnitude(torch.linalg.eigvalsh(H_eval), 2)
    np.testing.assert_allclose(vals, truth, rtol=1e-5)
    # ... and the mode matters here: the batch-statistics Hessian is a different one.
    batch_mode = lf.Hessian(bn_model, crit, digits, batch_norm="batch")
    top_batch = lf.eigsh(batch_mode, k=1, which="LM", tol=1e-6).eigenvalues.abs().item()
    assert abs(top_batch - abs(vals[0])) > 1e-2 * abs(vals[0])
    assert_unchanged(bn_model, before)


def test_batchnorm_model_agrees_with_pyhessian(pyhessian, bn_model, digits):
    crit = nn.CrossEntropyLoss()
    before = snapshot(bn_model)
    vals, _ = hessian(bn_model, crit, data=digits, cuda=False).eigenvalues(top_n=2, tol=1e-6)
    ph_model = copy.deepcopy(bn_model)
    ph = pyhessian.hessian(ph_model, crit, data=digits, cuda=False)
    assert not ph_model.training  # PyHessian leaves its model in eval mode; we do not
    assert bn_model.training
    ph_vals, _ = ph.eigenvalues(maxIter=1000, tol=1e-7, top_n=2)
    np.testing.assert_allclose(ph_vals, vals, rtol=1e-3)
    ph_samples = ph.trace(maxIter=100, tol=-math.inf)
    samples = hessian(bn_model, crit, data=digits, cuda=False).trace(maxIter=100, tol=-math.inf)
    assert len(samples) == len(ph_samples) == 100
    se = math.hypot(np.std(samples, ddof=1), np.std(ph_samples, ddof=1)) / 10
    assert abs(np.mean(samples) - np.mean(ph_samples)) < 4 * se
    assert_unchanged(bn_model, before)


# ---------------------------------------------------------------------- device
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a CPU-only machine")
def test_cuda_true_without_cuda_warns_and_runs_on_cpu(mlp, digits):
    crit = nn.CrossEntropyLoss()
    with pytest.warns(UserWarning, match="CUDA is not available"):
        h = hessian(mlp, crit, data=digits)  # cuda=True, PyHessian's default
    assert h.device == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = hessian(mlp, crit, data=digits, cuda=False)  # no warning
    vals, vecs = h.eigenvalues(top_n=1, tol=1e-6, seed=0)
    np.testing.assert_allclose(vals, ref.eigenvalues(top_n=1, tol=1e-6, seed=0)[0], rtol=1e-6)
    assert vecs[0][0].device.type == "cpu"
    assert len(h.trace(maxIter=5, tol=-math.inf, seed=0)) == 5


@pytest.mark.gpu
def test_cuda_model_runs_on_cuda_and_matches_cpu(mlp, digits):
    crit = nn.CrossEntropyLoss()
    with pytest.warns(UserWarning, match="the model is on cpu"):
        hessian(mlp, crit, data=digits, cuda=True)  # CUDA available, model on the CPU
    gpu_model = copy.deepcopy(mlp).cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = hessian(gpu_model, crit, data=digits, cuda=True)  # data moved per batch
    assert h.device == "cuda"
    vals, vecs = h.eigenvalues(top_n=2, tol=1e-5, seed=0)
    assert all(t.device.type == "cuda" for t in vecs[0])
    ref, _ = hessian(mlp, crit, data=digits, cuda=False).eigenvalues(top_n=2, tol=1e-5, seed=0)
    np.testing.assert_allclose(vals, ref, rtol=1e-4)
    assert len(h.trace(maxIter=8, tol=-math.inf, seed=0)) == 8
    nodes, weights = h.density(iter=10, n_v=2, seed=0)
    np.testing.assert_allclose(np.sum(weights, axis=1), 1, atol=1e-5)
