"""Per-sample gradient norms by the ``nn.Linear`` identities against explicit per-sample
gradients (vmap), and the models the identities refuse."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import landscape_fast as lf
from landscape_fast.operators.ghost_norms import GhostNormUnsupported, linear_plan

f64 = torch.float64


class _SeqModel(nn.Module):
    """Linear layers over token positions ``(B, T, d)``, pooled to class logits."""

    def __init__(self, d_in: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.inner = nn.Linear(d_in, hidden)
        self.head = nn.Linear(hidden, classes, bias=False)
        self.unused = nn.Linear(2, 2)  # never called: its gradients are zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.inner(x))).mean(1)


def _norms_and_gradients(model, X, y, params=None, batch_size=None):
    S = lf.GradientCovariance(model, "ce", (X, y), params, batch_size=batch_size)
    norms = list(S.stream_per_sample_norms())
    grads = list(S.stream_per_sample_gradients())
    return norms, grads


@pytest.mark.parametrize(
    "T,d_in,hidden",
    [(1, 3, 4), (5, 3, 4), (7, 2, 3)],  # T=1; Gram branch (T² ≤ in·out); explicit branch
)
def test_norms_match_per_sample_gradients(T, d_in, hidden):
    gen = torch.Generator().manual_seed(T)
    torch.manual_seed(T)
    model = _SeqModel(d_in, hidden, 3).double()
    X = torch.randn(11, T, d_in, generator=gen, dtype=f64)
    if T == 1:
        model = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, 3)).double()
        X = X[:, 0]
    y = torch.randint(0, 3, (11,), generator=gen)
    norms, grads = _norms_and_gradients(model, X, y, batch_size=4)
    assert [len(sq) for _, _, sq, _ in norms] == [4, 4, 3]
    for (_, _, sq, mean), (_, G) in zip(norms, grads):
        torch.testing.assert_close(sq, G.square().sum(1), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(mean, G.mean(0), rtol=1e-12, atol=1e-14)


def test_norms_of_a_parameter_subset():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X, y = torch.randn(9, 3, dtype=f64), torch.randint(0, 2, (9,))
    for params in (["0.weight"], ["0.bias", "2.weight"]):
        (_, _, sq, mean), (_, G) = (x[0] for x in _norms_and_gradients(model, X, y, params))
        assert mean.shape == (G.shape[1],)
        torch.testing.assert_close(sq, G.square().sum(1), rtol=1e-12, atol=1e-14)


def test_models_the_identities_refuse():
    conv = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(4, 2))
    plan, why = linear_plan(conv, [n for n, _ in conv.named_parameters()])
    assert plan is None and "0.weight" in why and "nn.Linear" in why

    tied = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    assert "tied" in linear_plan(tied, ["0.weight", "0.bias", "1.bias"])[1]

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(torch.tanh(self.lin(x)))

    X, y = torch.randn(4, 3), torch.randint(0, 3, (4,))
    S = lf.GradientCovariance(Twice(), "ce", (X, y))
    with pytest.raises(GhostNormUnsupported, match="ran 2 times"):
        list(S.stream_per_sample_norms())
    S = lf.GradientCovariance(conv, "ce", (torch.randn(4, 1, 4), y))
    with pytest.raises(GhostNormUnsupported, match="not the weight or bias"):
        list(S.stream_per_sample_norms())


def test_layout_where_rows_are_not_samples_is_caught():
    class Transposed(nn.Module):  # a Linear over (T, B, d) with T == B: shapes cannot tell
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x.transpose(0, 1)).transpose(0, 1).mean(1)

    torch.manual_seed(0)
    X, y = torch.randn(4, 4, 3, dtype=f64), torch.randint(0, 2, (4,))
    S = lf.GradientCovariance(Transposed().double(), "ce", (X, y))
    with pytest.raises(GhostNormUnsupported, match="leading dimension is not the sample"):
        list(S.stream_per_sample_norms())
    r = lf.gradient_noise(Transposed().double(), "ce", (X, y), curvature_samples=0)
    assert r.per_sample == "vmap" and any("do not apply" in n for n in r.notes)


def test_loss_that_is_not_a_mean_of_sample_losses_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X, y = torch.randn(6, 3, dtype=f64), torch.tensor([0, 1, 1, 0, 1, 1])

    def weighted(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out, t, weight=torch.tensor([1.0, 3.0], dtype=f64))

    S = lf.GradientCovariance(model, weighted, (X, y))
    with pytest.raises(ValueError, match="not the mean of the per-sample losses"):
        list(S.stream_per_sample_norms())
