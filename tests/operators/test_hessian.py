"""``lf.Hessian`` against the dense float64 oracle (DESIGN.md, "What correct means here").

The oracle (:func:`landscape_fast.testing.dense_hessian`) is reverse-over-reverse
(``torch.autograd.functional.hessian``) of the sample-weighted mean loss over a float64 deep
copy of the model, independent of the library's engines; it is itself cross-checked by
central finite differences of the gradient (:func:`test_oracle_agrees_with_finite_differences`).
Small models compare the whole matrix (``to_dense``), the CNNs a random ``(k, p)`` block.

Measured on the CPU test machine (torch 2.13, relative Frobenius errors):

============================  ==========  ================================================
family                        exact       finite_difference
============================  ==========  ================================================
mlp_tanh (p=83)               2e-16       6e-11
mlp_relu (p=83)               2e-16       2e-11 (no kink crossed at the default step)
resnet BN eval / batch        2e-16       3e-10 with step_scale=0.05 (a step sized per
                                          coordinate used to cross ReLU kinks: 1.9e2 in
                                          batch mode; the step is now of unit length)
residual net without BN       4e-16       2e-10 with step_scale=0.05
transformer LM (p=340)        1e-15       2.4e-8 (GELU, softmax: large third derivatives)
transformer classifier        1e-15       ~1e-8
============================  ==========  ================================================

``torch.func.hessian`` (jacfwd∘jacrev) differs from the oracle by 7e-2 on the transformer LM
(LayerNorm, torch 2.13), which is why the oracle never uses it.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import landscape_fast as lf
from landscape_fast import testing as T
from landscape_fast import zoo
from landscape_fast.operators.engines import FiniteDifferenceEngine

F64 = torch.float64
ENGINES = ("reverse", "cached", "forward", "finite_difference", "auto")
EXACT_TOL = 1e-10


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _split(X: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(X[i : i + size], y[i : i + size]) for i in range(0, len(X), size)]


@dataclass
class Case:
    """A model family: model, loss, batches, operator kwargs and the oracle.

    ``dense``: the oracle is the whole matrix ``H``; else ``HV`` for the block ``V``.
    ``fd_tol``/``fd_step_scale``: tolerance (and step) of the finite-difference engine.
    """

    model: nn.Module
    loss_fn: Any
    batches: Any
    kwargs: dict[str, Any] = field(default_factory=dict)
    dense: bool = True
    fd_tol: float = 1e-8
    fd_step_scale: float = 1.0
    H: torch.Tensor | None = None
    V: torch.Tensor | None = None
    HV: torch.Tensor | None = None

    @property
    def p(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def operator(self, hvp: str = "auto", **kw: Any) -> lf.Hessian:
        engine: Any = hvp
        if hvp == "finite_difference" and self.fd_step_scale != 1.0:
            engine = FiniteDifferenceEngine(self.fd_step_scale)
        return lf.Hessian(
            self.model, self.loss_fn, self.batches, hvp=engine, **{**self.kwargs, **kw}
        )

    def block(self, k: int, seed: int = 1) -> torch.Tensor:
        return torch.randn(k, self.p, dtype=F64, generator=_gen(seed))

    def oracle_matmat(self, V: torch.Tensor) -> torch.Tensor:
        if self.H is not None:
            return V @ self.H
        return T.hessian_matmat(self.model, self.loss_fn, self.batches, V, **self.kwargs)


def _mlp(act: type[nn.Module], seed: int = 0) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(6, 8), act(), nn.Linear(8, 3)).double()


def _mlp_data(n: int = 33, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    return torch.randn(n, 6, dtype=F64, generator=g), torch.randint(0, 3, (n,), generator=g)


@functools.cache
def _trained_resnet(batch_norm: bool) -> tuple[nn.Module, list]:
    """ResNet-8, width 4, 8×8 inputs, a few Adam steps (BN running stats are non-trivial)."""
    model = zoo.resnet20(depth=8, width=4, seed=0, batch_norm=batch_norm)
    X, y = zoo.cifar_like_data(n=32, seed=0, size=8)
    zoo.train(model, X, y, max_epochs=2, batch_size=8, seconds=60.0)
    model = model.double().eval()
    return model, _split(X.double(), y, 12)  # batches of 12, 12, 8


def _perturbed(model: nn.Module, scale: float, seed: int) -> nn.Module:
    """Move every parameter off its init (LayerNorm weights ≠ 1, biases ≠ 0)."""
    g = _gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _tiny_lm() -> tuple[nn.Module, list]:
    model = zoo.tiny_transformer(vocab=8, d_model=4, n_heads=2, n_layers=1, seq_len=4, seed=0)
    model = _perturbed(model.double(), 0.3, seed=1)
    X, y = zoo.token_data(n=12, seq_len=4, vocab=8, seed=0)
    return model, _split(X, y, 8)


@functools.cache
def case(name: str) -> Case:
    if name in ("mlp_tanh", "mlp_relu"):
        X, y = _mlp_data()
        c = Case(_mlp(nn.Tanh if name == "mlp_tanh" else nn.ReLU), "ce", _split(X, y, 10))
    elif name in ("resnet_bn_eval", "resnet_bn_batch"):
        model, batches = _trained_resnet(True)
        bn = name.rsplit("_", 1)[1]
        c = Case(model, F.cross_entropy, batches, {"batch_norm": bn}, dense=False)
        c.fd_step_scale, c.fd_tol = 0.05, 1e-7
    elif name == "resnet_nobn":
        model, batches = _trained_resnet(False)
        c = Case(model, F.cross_entropy, batches, dense=False, fd_step_scale=0.05, fd_tol=1e-7)
    elif name == "transformer_lm":
        model, batches = _tiny_lm()
        c = Case(model, zoo.lm_loss, batches, fd_tol=1e-6)
    elif name == "transformer_cls":
        model = zoo.tiny_transformer(
            vocab=8, d_model=4, n_heads=2, n_layers=1, seq_len=4, num_classes=3, seed=2
        )
        model = _perturbed(model.double(), 0.3, seed=3)
        X, y = zoo.token_data(n=10, seq_len=4, vocab=8, seed=1, task="classify", num_classes=3)
        c = Case(model, nn.CrossEntropyLoss(), _split(X, y, 6), dense=False, fd_tol=1e-6)
    else:  # pragma: no cover
        raise KeyError(name)
    if c.dense:
        c.H = T.dense_hessian(c.model, c.loss_fn, c.batches, **c.kwargs)
    else:
        c.V = c.block(4, seed=7)
        c.HV = c.oracle_matmat(c.V)
    return c


FAMILIES = (
    "mlp_tanh",
    "mlp_relu",
    "resnet_bn_eval",
    "resnet_bn_batch",
    "resnet_nobn",
    "transformer_lm",
    "transformer_cls",
)


# ------------------------------------------------------------------ the oracle itself
@pytest.mark.parametrize("name", FAMILIES)
def test_oracle_agrees_with_finite_differences(name: str) -> None:
    """The oracle against central differences of float64 gradients along unit directions,
    at two steps, keeping the closer: measured 3e-11 to 6e-10 at h = 1e-5 on every family
    except the BN-batch ResNet, where h = 1e-5 crosses a ReLU kink (error 5e2) and
    h = 1e-6 gives 3.5e-9."""
    c = case(name)
    V = c.block(3, seed=11)
    want = c.oracle_matmat(V)
    errs = [
        T.rel_error(T.fd_hessian_matmat(c.model, c.loss_fn, c.batches, V, h=h, **c.kwargs), want)
        for h in (1e-5, 1e-6)
    ]
    assert min(errs) < 1e-8, errs


def test_batch_norm_modes_differ() -> None:
    """The two BN semantics are different functions here (the oracle honours batch_norm=)."""
    a, b = case("resnet_bn_eval"), case("resnet_bn_batch")
    assert torch.equal(a.V, b.V) and T.rel_error(a.HV, b.HV) > 1e-2


def test_oracle_is_symmetric_and_nontrivial() -> None:
    H = case("transformer_lm").H
    assert H is not None and H.shape == (340, 340)
    assert float((H - H.T).norm() / H.norm()) < 1e-12
    assert float(H.norm()) > 1.0


# ------------------------------------------------------------------ every engine, every family
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", FAMILIES)
def test_engine_matches_oracle(name: str, engine: str) -> None:
    c = case(name)
    H = c.operator(engine)
    assert H.dtype == F64 and H.shape == (c.p, c.p)
    if c.dense:
        got, want = H.to_dense(), c.H
    else:
        got, want = H.matmat(c.V), c.HV
    tol = c.fd_tol if engine == "finite_difference" else EXACT_TOL
    err = T.rel_error(got, want)
    assert err < tol, f"{name}/{engine}: relative error {err:.2e} > {tol:.0e}"
    if engine == "auto":
        assert H.engine == "cached" and H.engine_reason


def test_finite_difference_default_step_on_relu_resnet() -> None:
    c = case("resnet_bn_batch")
    H = lf.Hessian(c.model, c.loss_fn, c.batches, hvp="finite_difference", batch_norm="batch")
    assert T.rel_error(H.matmat(c.V), c.HV) < 1e-4


# ------------------------------------------------------------------ algebra and bookkeeping
@pytest.mark.parametrize("engine", ENGINES)
def test_symmetry(engine: str) -> None:
    """⟨u, Hv⟩ = ⟨Hu, v⟩ on the transformer (attention + LayerNorm)."""
    c = case("transformer_lm")
    H = c.operator(engine)
    U = c.block(3, seed=21)
    M = U @ H.matmat(U).T  # M[i, j] = <u_i, H u_j>
    tol = 1e-6 if engine == "finite_difference" else 1e-12
    assert float((M - M.T).norm() / M.norm()) < tol


def test_n_matvecs_counts_vectors() -> None:
    c = case("mlp_tanh")
    H = c.operator("cached")
    assert H.n_matvecs == 0
    H.matmat(c.block(5))
    assert H.n_matvecs == 5
    H @ c.block(1)[0]
    assert H.n_matvecs == 6
    H @ c.block(3).T.contiguous()
    assert H.n_matvecs == 9
    H.to_dense()
    assert H.n_matvecs == 9 + c.p
    bd = H.block_diagonal()
    before = H.n_matvecs
    bd.matmat(c.block(2))
    assert bd.n_matvecs == 2
    assert H.n_matvecs == before + 2 * len(H.space.layers())  # one vector per layer group


def test_single_vector_and_column_products() -> None:
    c = case("mlp_tanh")
    H = c.operator("cached")
    v = c.block(1)[0]
    assert T.rel_error(H @ v, c.H @ v) < EXACT_TOL
    X = c.block(3).T.contiguous()  # (p, 3) columns
    assert T.rel_error(H @ X, c.H @ X) < EXACT_TOL


# ------------------------------------------------------------------ parameter selection
def _indices(space_slices: list[slice]) -> torch.Tensor:
    return torch.cat([torch.arange(s.start, s.stop) for s in space_slices])


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("mlp_tanh", "2.*"),
        ("mlp_tanh", ["0.bias", "2.weight"]),
        ("transformer_lm", "blocks.0.ln1.*"),
        ("transformer_lm", ["tok_emb.weight", "blocks.0.qkv.weight"]),
    ],
)
def test_params_subset_is_the_sub_block(name: str, params: Any) -> None:
    c = case(name)
    full = lf.ParamSpace(c.model)
    sub = c.operator("cached", params=params)
    idx = _indices([full.slices[n] for n in sub.space.names])
    assert sub.shape[0] == len(idx)
    assert T.rel_error(sub.to_dense(), c.H[idx][:, idx]) < EXACT_TOL


@pytest.mark.parametrize("name", ["mlp_tanh", "transformer_lm"])
def test_block_diagonal_by_layer(name: str) -> None:
    c = case(name)
    H = c.operator("cached")
    mask = torch.zeros_like(c.H, dtype=torch.bool)
    for s in H.space.layers().values():
        mask[s, s] = True
    want = torch.where(mask, c.H, torch.zeros_like(c.H))
    V = c.block(3, seed=41)  # L·k products inside: a block, not to_dense, for the transformer
    assert T.rel_error(H.block_diagonal(by="layer").matmat(V), V @ want) < EXACT_TOL
    assert T.rel_error(H.block_diagonal().matmat(V), V @ want) < EXACT_TOL
    if name == "mlp_tanh":
        assert T.rel_error(H.block_diagonal().to_dense(), want) < EXACT_TOL


def test_block_diagonal_by_param() -> None:
    c = case("mlp_tanh")
    H = c.operator("cached")
    mask = torch.zeros_like(c.H, dtype=torch.bool)
    for s in H.space.slices.values():
        mask[s, s] = True
    want = torch.where(mask, c.H, torch.zeros_like(c.H))
    assert T.rel_error(H.block_diagonal(by="param").to_dense(), want) < EXACT_TOL


class _UnusedFrozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.frozen = nn.Linear(5, 5)
        self.unused = nn.Linear(5, 2)  # never called in forward
        self.b = nn.Linear(5, 3)
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.frozen(torch.tanh(self.a(x)))))


@pytest.mark.parametrize("engine", ENGINES)
def test_unused_and_frozen_parameters(engine: str) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = _UnusedFrozen().double()
    X, y = _mlp_data(n=17, seed=4)
    X = X[:, :4].contiguous()
    H = lf.Hessian(model, "ce", (X, y), hvp=engine, batch_size=8)
    names = H.space.names
    assert not any(n.startswith("frozen.") for n in names)
    assert H.shape[0] == 25 + 12 + 18
    D = H.to_dense()
    oracle = T.dense_hessian(model, "ce", _split(X, y, 8))
    tol = 1e-8 if engine == "finite_difference" else EXACT_TOL
    assert T.rel_error(D, oracle) < tol
    unused = H.space.layers()["unused"]
    assert float(D[unused].abs().max()) == 0.0 and float(D[:, unused].abs().max()) == 0.0
    # Freezing changes the space, not the curvature of the others: the same entries as the
    # Hessian over all four layers of a copy where `frozen` is trainable.
    thawed = copy.deepcopy(model).requires_grad_(True)
    full = T.dense_hessian(thawed, "ce", _split(X, y, 8))
    all_slices = lf.ParamSpace(thawed).slices
    idx = _indices([all_slices[n] for n in names])
    assert T.rel_error(D, full[idx][:, idx]) < tol


# ------------------------------------------------------------------ batches and losses
def _closure_cases() -> dict[str, tuple[Any, list, Any]]:
    X, y = _mlp_data(n=23, seed=5)

    def dict_loss(model: nn.Module, batch: dict) -> torch.Tensor:
        return F.cross_entropy(model(batch["x"]), batch["y"])

    def tensor_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return (model(batch) ** 2).mean() + model(batch).sin().mean()

    def pair_loss(model: nn.Module, batch: tuple) -> torch.Tensor:
        return F.cross_entropy(model(batch[0]), batch[1], label_smoothing=0.1)

    return {
        "dict": (dict_loss, [{"x": a, "y": b} for a, b in _split(X, y, 10)], None),
        "tensor": (tensor_loss, [X[i : i + 10] for i in range(0, 23, 10)], None),
        "pair_batchloss": (lf.BatchLoss(pair_loss), _split(X, y, 10), None),
    }


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["dict", "tensor", "pair_batchloss"])
def test_closure_losses(kind: str, engine: str) -> None:
    loss, batches, _ = _closure_cases()[kind]
    model = _mlp(nn.Tanh, seed=6)
    H = lf.Hessian(model, loss, batches, hvp=engine)
    tol = 1e-8 if engine == "finite_difference" else EXACT_TOL
    assert T.rel_error(H.to_dense(), T.dense_hessian(model, loss, batches)) < tol


@pytest.mark.parametrize("engine", ["cached", "forward", "finite_difference"])
def test_ragged_last_batch_is_weighted_by_size(engine: str) -> None:
    """33 samples in batches of 10: the last batch counts 3/33, not 1/4."""
    c = case("mlp_tanh")
    X, y = _mlp_data()
    wrong = T.dense_hessian(c.model, "ce", c.batches, weights="batches")
    assert T.rel_error(wrong, c.H) > 1e-2  # measured 0.28: the test can tell them apart
    tol = c.fd_tol if engine == "finite_difference" else EXACT_TOL
    sources = {
        "list": c.batches,
        "pair+batch_size": (X, y),
        "dataloader": torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(X, y), batch_size=10
        ),
    }
    for what, data in sources.items():
        kw = {"batch_size": 10} if what == "pair+batch_size" else {}
        H = lf.Hessian(c.model, "ce", data, hvp=engine, **kw)
        assert T.rel_error(H.to_dense(), c.H) < tol, what
    one = lf.Hessian(c.model, "ce", (X, y), hvp=engine)  # one batch of 33: same function
    assert T.rel_error(one.to_dense(), c.H) < tol


def _ce_variants() -> dict[str, tuple[Any, list]]:
    g = _gen(22)
    X, y = torch.randn(23, 6, dtype=F64, generator=g), torch.randint(0, 3, (23,), generator=g)
    y_ign = y.clone()
    y_ign[::3] = -1
    y_ign[21] = 2  # the short last batch (20..22) keeps 2 of 3 targets
    soft = torch.softmax(torch.randn(23, 3, dtype=F64, generator=g), -1)
    return {
        "ignore_index": (nn.CrossEntropyLoss(ignore_index=-1), _split(X, y_ign, 10)),
        "label_smoothing": (nn.CrossEntropyLoss(label_smoothing=0.2), _split(X, y, 10)),
        "soft_targets": (F.cross_entropy, _split(X, soft, 10)),
        "functional": (F.cross_entropy, _split(X, y, 10)),
    }


@pytest.mark.parametrize("engine", ["reverse", "cached", "forward", "finite_difference"])
@pytest.mark.parametrize("kind", ["ignore_index", "label_smoothing", "soft_targets", "functional"])
def test_cross_entropy_variants(kind: str, engine: str) -> None:
    """Cross-entropy forms (the cached engine may route plain CE through a fused op)."""
    loss, batches = _ce_variants()[kind]
    model = _mlp(nn.Tanh, seed=23)
    H = lf.Hessian(model, loss, batches, hvp=engine)
    tol = 1e-8 if engine == "finite_difference" else EXACT_TOL
    assert T.rel_error(H.to_dense(), T.dense_hessian(model, loss, batches)) < tol


def test_batch_size_fn_weights_by_tokens() -> None:
    """LM batches of different sequence lengths weighted by their token counts."""
    model = case("transformer_lm").model
    X, y = zoo.token_data(n=9, seq_len=4, vocab=8, seed=3)
    batches = [(X[:5], y[:5]), (X[5:, :2], y[5:, :2])]  # 20 and 8 tokens

    def tokens(batch: tuple) -> int:
        return batch[1].numel()

    V = case("transformer_lm").block(3, seed=51)
    want = T.hessian_matmat(model, zoo.lm_loss, batches, V, batch_size_fn=tokens)
    by_sequences = T.hessian_matmat(model, zoo.lm_loss, batches, V)
    assert T.rel_error(by_sequences, want) > 1e-2  # measured 0.4
    for engine in ("cached", "forward"):
        H = lf.Hessian(model, zoo.lm_loss, batches, hvp=engine, batch_size_fn=tokens)
        assert T.rel_error(H.matmat(V), want) < EXACT_TOL
    loss, grad = lf.Hessian(model, zoo.lm_loss, batches, batch_size_fn=tokens).loss_and_gradient()
    want_loss, want_grad = T.dense_gradient(model, zoo.lm_loss, batches, batch_size_fn=tokens)
    assert abs(loss - want_loss) < 1e-12 and T.rel_error(grad, want_grad) < 1e-12


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 5)
        self.b.weight = self.a.weight  # shared: one variable, counted once
        self.c = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))


def test_tied_parameters() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(24)
        model = _Tied().double()
    X, y = _mlp_data(n=12, seed=25)
    X = X[:, :5].contiguous()
    oracle = T.dense_hessian(model, "ce", (X, y))
    assert oracle.shape == (25 + 5 + 5 + 18, 25 + 5 + 5 + 18)
    # cross-check without functional_call: move the real parameters in place
    space, v, h = (
        lf.ParamSpace(model),
        torch.randn(oracle.shape[0], dtype=F64, generator=_gen(26)),
        1e-6,
    )

    def grad() -> torch.Tensor:
        model.zero_grad()
        F.cross_entropy(model(X), y).backward()
        return space.flatten_grad()

    space.add_(v, h)
    gp = grad()
    space.add_(v, -2 * h)
    gm = grad()
    space.add_(v, h)
    assert T.rel_error((gp - gm) / (2 * h), oracle @ v) < 1e-8  # measured 3.6e-11
    for engine in ("cached", "forward", "finite_difference"):
        H = lf.Hessian(model, "ce", (X, y), hvp=engine)
        tol = 1e-8 if engine == "finite_difference" else EXACT_TOL
        assert T.rel_error(H.to_dense(), oracle) < tol


@pytest.mark.parametrize("engine", ["cached", "forward"])
def test_tiny_memory_budget(engine: str) -> None:
    """A budget too small to cache any graph or batch any tangents: same numbers."""
    c = case("mlp_tanh")
    H = c.operator(engine, memory_budget=1024)
    assert T.rel_error(H.to_dense(), c.H) < EXACT_TOL
    if engine == "cached":
        assert len(H._engine._cache) == 0


def test_dropout_is_one_fixed_function() -> None:
    """dropout=True: one fixed mask per batch, so every engine differentiates the same
    function, products repeat exactly, and the gradient agrees with differences of the loss."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(27)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 3))
    model = model.double()
    X, y = _mlp_data(n=20, seed=28)
    ops = {
        e: lf.Hessian(model, "ce", (X, y), hvp=e, dropout=True, batch_size=8)
        for e in ("reverse", "cached", "forward", "finite_difference")
    }
    ref = ops["reverse"].to_dense()
    assert torch.equal(ops["reverse"].to_dense(), ref)
    no_dropout = T.dense_hessian(model, "ce", _split(X, y, 8))
    assert T.rel_error(ref, no_dropout) > 1e-2  # dropout is really active (measured 0.5)
    for e, op in ops.items():
        tol = 1e-8 if e == "finite_difference" else EXACT_TOL
        assert T.rel_error(op.to_dense(), ref) < tol, e
    H = ops["cached"]
    space, v, h = H.space, torch.randn(H.shape[0], dtype=F64, generator=_gen(29)), 1e-6
    _, g = H.loss_and_gradient()
    space.add_(v, h)
    lp, gp = H.loss_and_gradient()
    space.add_(v, -2 * h)
    lm, gm = H.loss_and_gradient()
    space.add_(v, h)
    assert abs((lp - lm) / (2 * h) - float(g @ v)) < 1e-8 * abs(float(g @ v))
    assert T.rel_error((gp - gm) / (2 * h), ref @ v) < 1e-8  # measured 4e-11


def _first_order_only() -> tuple[nn.Module, list, torch.Tensor]:
    """An MLP through a once-differentiable tanh and the oracle of its twin with ``nn.Tanh``."""
    twin = _mlp(nn.Tanh, seed=30)
    model = nn.Sequential(twin[0], T.TanhVia(T.OnceDifferentiableTanhFn), twin[2])
    X, y = _mlp_data(n=20, seed=31)
    batches = _split(X, y, 8)
    return model, batches, T.dense_hessian(twin, "ce", batches)


def test_first_order_only_function_finite_difference() -> None:
    model, batches, oracle = _first_order_only()
    H = lf.Hessian(model, "ce", batches, hvp="finite_difference")
    assert T.rel_error(H.to_dense(), oracle) < 1e-8  # measured 5e-11


def test_first_order_only_function_auto() -> None:
    model, batches, oracle = _first_order_only()
    H = lf.Hessian(model, "ce", batches)
    assert T.rel_error(H.to_dense(), oracle) < 1e-8


# ------------------------------------------------------------------ precision
def _f32_mlp() -> tuple[nn.Module, list]:
    model = _mlp(nn.Tanh, seed=8).float()
    X, y = _mlp_data(n=25, seed=9)
    return model, _split(X.float(), y, 10)


@pytest.mark.parametrize("engine", ["reverse", "cached", "forward", "finite_difference"])
def test_dtype_float64_on_float32_model(engine: str) -> None:
    model, batches = _f32_mlp()
    oracle = T.dense_hessian(model, "ce", batches)  # of the float64 copy
    H = lf.Hessian(model, "ce", batches, hvp=engine, dtype=F64)
    assert H.dtype == F64 and H.compute_dtype == F64
    tol = 1e-8 if engine == "finite_difference" else EXACT_TOL
    assert T.rel_error(H.to_dense(), oracle) < tol  # measured 2e-16 (exact), 4e-11 (FD)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # model untouched
    _, g = H.loss_and_gradient()
    assert g.dtype == F64 and T.rel_error(g, T.dense_gradient(model, "ce", batches)[1]) < 1e-12


@pytest.mark.parametrize("engine", ["reverse", "cached", "forward", "finite_difference"])
def test_float32_model_to_float32_accuracy(engine: str) -> None:
    model, batches = _f32_mlp()
    oracle = T.dense_hessian(model, "ce", batches)
    H = lf.Hessian(model, "ce", batches, hvp=engine)
    D = H.to_dense()
    assert H.dtype == torch.float32 and D.dtype == torch.float32
    tol = 1e-3 if engine == "finite_difference" else 1e-5  # measured 8e-8 / 2.3e-5
    assert T.rel_error(D, oracle) < tol


def test_float32_transformer_to_float32_accuracy() -> None:
    c = case("transformer_lm")
    model = copy.deepcopy(c.model).float()
    H = lf.Hessian(model, zoo.lm_loss, c.batches, hvp="cached")
    V = c.block(4, seed=31)
    assert T.rel_error(H.matmat(V.float()), V @ c.H) < 1e-5  # measured ~1e-7


@pytest.mark.parametrize("engine", ["reverse", "cached", "forward", "finite_difference"])
def test_bfloat16_model(engine: str) -> None:
    """bfloat16 models give float32 products (accumulation in float32); the model itself
    runs in bfloat16, so agreement with the float64 oracle of the bfloat16 weights is only
    to bfloat16 accuracy: measured 3.7e-3 (exact engines) and 2.9e-2 (finite differences,
    whose step is eps_bf16^(1/3) = 0.2 relative)."""
    model, batches = _f32_mlp()
    model = model.bfloat16()
    oracle = T.dense_hessian(model, "ce", batches)
    H = lf.Hessian(model, "ce", batches, hvp=engine)
    assert H.dtype == torch.float32 and H.compute_dtype == torch.bfloat16
    D = H.to_dense()
    assert D.dtype == torch.float32
    assert T.rel_error(D, oracle) < (0.1 if engine == "finite_difference" else 2e-2)


# ------------------------------------------------------------------ first order
@pytest.mark.parametrize(
    "name", ["mlp_tanh", "resnet_bn_batch", "resnet_bn_eval", "transformer_lm"]
)
def test_loss_and_gradient(name: str) -> None:
    c = case(name)
    loss, grad = c.operator().loss_and_gradient()
    want_loss, want_grad = T.dense_gradient(c.model, c.loss_fn, c.batches, **c.kwargs)
    assert abs(loss - want_loss) <= 1e-12 * abs(want_loss)
    assert grad.dtype == F64 and T.rel_error(grad, want_grad) < 1e-12


def test_loss_and_gradient_closure_dict_batches() -> None:
    loss_fn, batches, _ = _closure_cases()["dict"]
    model = _mlp(nn.Tanh, seed=6)
    loss, grad = lf.Hessian(model, loss_fn, batches).loss_and_gradient()
    want_loss, want_grad = T.dense_gradient(model, loss_fn, batches)
    assert abs(loss - want_loss) <= 1e-12 * abs(want_loss)
    assert T.rel_error(grad, want_grad) < 1e-12


# ------------------------------------------------------------------ model state, caching
def test_model_state_is_left_untouched() -> None:
    model, batches = _trained_resnet(True)
    model = copy.deepcopy(model).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for bn in ("eval", "batch"):
        for engine in ("cached", "forward", "finite_difference"):
            lf.Hessian(model, "ce", batches, hvp=engine, batch_norm=bn).matmat(
                torch.randn(2, sum(p.numel() for p in model.parameters()), dtype=F64)
            )
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_cached_engine_repeats_and_recomputes_after_optimizer_step() -> None:
    X, y = _mlp_data(n=30, seed=12)
    model = _mlp(nn.Tanh, seed=13)
    batches = _split(X, y, 10)
    H = lf.Hessian(model, "ce", batches, hvp="cached")
    V = torch.randn(4, H.shape[0], dtype=F64, generator=_gen(14))
    first = H.matmat(V)
    assert len(H._engine._cache) == 3  # every batch's graph kept
    assert torch.equal(H.matmat(V), first)  # bit-for-bit: the same graphs
    assert T.rel_error(first, V @ T.dense_hessian(model, "ce", batches)) < EXACT_TOL
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt.zero_grad()
    F.cross_entropy(model(X), y).backward()
    opt.step()  # in-place update of the parameters
    after = H.matmat(V)
    new = V @ T.dense_hessian(model, "ce", batches)
    assert T.rel_error(new, first) > 1e-3  # the step changed the Hessian
    assert T.rel_error(after, new) < EXACT_TOL


def test_cached_engine_recomputes_after_data_update() -> None:
    c = case("mlp_tanh")
    model = copy.deepcopy(c.model)
    H = lf.Hessian(model, "ce", c.batches, hvp="cached")
    H.to_dense()
    with torch.no_grad():
        for p in model.parameters():
            p.data.add_(0.5 * torch.randn(p.shape, generator=_gen(15), dtype=p.dtype))
    assert T.rel_error(H.to_dense(), T.dense_hessian(model, "ce", c.batches)) < EXACT_TOL


def _bn_mlp() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(16)
        model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    g = _gen(17)
    X, y = torch.randn(20, 4, generator=g), torch.randint(0, 3, (20,), generator=g)
    with torch.no_grad():
        model.train()(3 * X + 1)  # non-trivial running statistics
    return model.eval(), (X, y)


def _recalibrate(model: nn.Module) -> None:
    """BN recalibration: a train-mode forward updates running stats, not parameters."""
    dtype = model[0].weight.dtype
    with torch.no_grad():
        model.train()(2 * torch.randn(50, 4, generator=_gen(18), dtype=dtype) - 1)
    model.eval()


def test_cached_engine_recomputes_after_buffer_change() -> None:
    model, data = _bn_mlp()
    model = model.double()
    H = lf.Hessian(model, "ce", data, hvp="cached")
    H.to_dense()
    _recalibrate(model)
    assert T.rel_error(H.to_dense(), T.dense_hessian(model, "ce", data)) < EXACT_TOL


def test_reverse_engine_sees_buffer_change() -> None:
    model, data = _bn_mlp()
    model = model.double()
    H = lf.Hessian(model, "ce", data, hvp="reverse")
    H.to_dense()
    _recalibrate(model)
    assert T.rel_error(H.to_dense(), T.dense_hessian(model, "ce", data)) < EXACT_TOL


def test_dtype_cast_operator_sees_buffer_change() -> None:
    model, data = _bn_mlp()
    H = lf.Hessian(model, "ce", data, hvp="reverse", dtype=F64)
    H.to_dense()
    _recalibrate(model)
    assert T.rel_error(H.to_dense(), T.dense_hessian(model, "ce", data)) < EXACT_TOL


def test_cached_engine_subset_recomputes_after_other_layers_move() -> None:
    c = case("mlp_tanh")
    model = copy.deepcopy(c.model)
    H = lf.Hessian(model, "ce", c.batches, params="2.*", hvp="cached")
    H.to_dense()
    with torch.no_grad():
        model[0].weight.add_(
            0.5 * torch.randn(model[0].weight.shape, generator=_gen(19), dtype=F64)
        )
    want = T.dense_hessian(model, "ce", c.batches, params=["2.weight", "2.bias"])
    assert T.rel_error(H.to_dense(), want) < EXACT_TOL
