"""The zoo's built-in data sets, models and workloads (landscape_fast.zoo)."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad
from torch.nn.attention import SDPBackend, sdpa_kernel

from landscape_fast.zoo import (
    DATASETS,
    MODELS,
    WORKLOADS,
    cifar_like_data,
    lm_loss,
    resnet20,
    simple_cnn,
    tiny_transformer,
    token_data,
    train,
)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- data ------------------------------------------------------------------------------------


def test_cifar_like_data_shapes_determinism_and_speed() -> None:
    cifar_like_data(n=8)  # warm-up
    start = time.perf_counter()
    X, y = cifar_like_data()
    elapsed = time.perf_counter() - start
    assert X.shape == (512, 3, 32, 32) and X.dtype == torch.float32
    assert y.shape == (512,) and y.dtype == torch.long
    assert torch.bincount(y).tolist() == [52, 52] + [51] * 8  # balanced, 10 classes
    assert torch.isfinite(X).all()
    assert elapsed < 1.0  # about 0.03 s here; generous for a shared machine
    X2, y2 = cifar_like_data()
    assert torch.equal(X, X2) and torch.equal(y, y2)
    X3, _ = cifar_like_data(seed=1)
    assert not torch.equal(X, X3)
    X64, y64 = cifar_like_data(n=16, dtype=torch.float64, size=8)
    assert X64.shape == (16, 3, 8, 8) and X64.dtype == torch.float64 and y64.shape == (16,)


def test_cifar_like_classes_are_separable_by_their_templates() -> None:
    # nearest class mean of clean-ish data recovers most labels: the set is learnable
    X, y = cifar_like_data(n=400, noise=0.5)
    means = torch.stack([X[y == c].mean(0) for c in range(10)]).flatten(1)
    pred = (X.flatten(1) @ means.T).argmax(1)
    assert (pred == y).float().mean() > 0.5


def test_token_data_lm_and_classify() -> None:
    tokens, targets = token_data(n=32, seq_len=10, vocab=17, noise=0.0)
    assert tokens.shape == targets.shape == (32, 10) and tokens.dtype == torch.long
    assert torch.equal(tokens[:, 1:], targets[:, :-1])
    step = (tokens[:, 1:] - tokens[:, :-1]) % 17
    assert (step == step[:, :1]).all() and ((step >= 1) & (step <= 4)).all()
    assert tokens.max() < 17 and tokens.min() >= 0

    noisy, _ = token_data(n=32, seq_len=10, vocab=17, noise=0.5)
    assert not torch.equal(noisy, tokens)
    assert torch.equal(token_data(seed=3)[0], token_data(seed=3)[0])
    assert not torch.equal(token_data(seed=3)[0], token_data(seed=4)[0])

    toks, labels = token_data(n=64, task="classify", noise=0.0)
    assert toks.shape == (64, 8) and labels.shape == (64,)
    assert torch.equal((toks[:, 1] - toks[:, 0]) % 32, labels + 1)
    with pytest.raises(ValueError, match="task"):
        token_data(task="regress")  # type: ignore[arg-type]


def test_lm_loss_is_flattened_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=gen)
    targets = torch.randint(0, 7, (3, 5), generator=gen)
    manual = torch.stack(
        [
            F.cross_entropy(logits[b, t : t + 1], targets[b, t : t + 1])
            for b in range(3)
            for t in range(5)
        ]
    ).mean()
    torch.testing.assert_close(lm_loss(logits, targets), manual)


def test_constructors_leave_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    cifar_like_data(n=4)
    token_data(n=4)
    resnet20(depth=8, width=4)
    resnet20(depth=8, width=4, skip=False)
    simple_cnn()
    tiny_transformer()
    assert torch.equal(torch.get_rng_state(), state)


# --- models ----------------------------------------------------------------------------------


def test_resnet20_shapes_and_parameter_counts() -> None:
    model = resnet20()
    assert 260_000 <= n_params(model) <= 285_000
    assert n_params(model) == 272_474  # the ResNet-20 of research/TOOLCHAIN.md §4
    assert n_params(resnet20(shortcut="A")) == 269_722  # parameter-free option-A shortcuts
    assert len([m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]) == 21
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert sum(m.kernel_size == (3, 3) for m in convs) == 19  # stem + 3 stages x 3 blocks x 2
    assert {m.out_channels for m in convs} == {16, 32, 64}
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)

    tiny = resnet20(depth=8, width=4, num_classes=3)
    assert n_params(tiny) == 5_214 - 17 * 7  # 7 fewer head outputs
    assert tiny(torch.randn(4, 3, 8, 8)).shape == (4, 3)
    assert n_params(resnet20(depth=8)) == 78_042
    with pytest.raises(ValueError, match="depth"):
        resnet20(depth=10)
    with pytest.raises(ValueError, match="shortcut"):
        resnet20(shortcut="B")  # type: ignore[arg-type]


@pytest.mark.parametrize("shortcut", ["conv", "A"])
def test_resnet_without_batch_norm(shortcut: str) -> None:
    model = resnet20(depth=14, width=4, batch_norm=False, shortcut=shortcut)  # type: ignore[arg-type]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not list(model.buffers())
    out = model(cifar_like_data(n=8, size=16)[0])
    assert out.shape == (8, 10) and torch.isfinite(out).all()
    assert 0.01 < out.std() < 100  # Fixup-style scaling keeps the logits in range


def test_resnet_init_is_deterministic_in_the_seed() -> None:
    assert same_state(resnet20(depth=8, width=4, seed=5), resnet20(depth=8, width=4, seed=5))
    assert not same_state(resnet20(depth=8, width=4, seed=5), resnet20(depth=8, width=4, seed=6))


def test_batch_norm_buffers_change_in_training() -> None:
    model, loss_fn, (X, y) = WORKLOADS["resnet20"](tiny=True)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    train(model, X, y, loss_fn=loss_fn, max_epochs=2, batch_size=16)
    after = model.state_dict()
    for k, v in before.items():
        assert not torch.allclose(v, after[k]), k
    # running statistics are not the batch statistics: eval and train mode differ
    with torch.no_grad():
        out_eval = model.eval()(X)
        out_train = model.train()(X)
    assert not torch.allclose(out_eval, out_train, atol=1e-3)


def test_simple_cnn_shapes_counts_and_determinism() -> None:
    model = simple_cnn()
    assert n_params(model) == 3 * 8 * 9 + 8 + 8 * 16 * 9 + 16 + 16 * 16 * 10 + 10 == 3_962
    for size in (8, 13, 32, 64):  # adaptive pooling: any H, W >= 8
        out = model(torch.randn(2, 3, size, size))
        assert out.shape == (2, 10) and torch.isfinite(out).all(), size
    assert model(torch.randn(2, 3, 8, 20)).shape == (2, 10)
    assert simple_cnn(num_classes=4, in_channels=1)(torch.randn(5, 1, 8, 8)).shape == (5, 4)
    assert n_params(simple_cnn(width=4)) == 1_698
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    out = model(cifar_like_data(n=16)[0])
    assert 0.1 < out.std() < 10  # He init keeps the logits in range
    assert same_state(simple_cnn(seed=4), simple_cnn(seed=4))
    assert not same_state(simple_cnn(seed=4), simple_cnn(seed=5))


@pytest.mark.parametrize("batch_norm", [True, False])
def test_resnet_without_skip_connections(batch_norm: bool) -> None:
    plain = resnet20(depth=8, width=4, batch_norm=batch_norm, skip=False)
    res = resnet20(depth=8, width=4, batch_norm=batch_norm)
    # the same convs and BN, minus the two 1x1 shortcut convs (and their BN)
    shortcut_params = (4 * 8 + 8 * 16) + ((8 + 16) * 2 if batch_norm else 8 + 16)
    assert n_params(res) - n_params(plain) == shortcut_params
    blocks = [m for m in plain.modules() if m.__class__.__name__ == "BasicBlock"]
    assert len(blocks) == 3 and all(b.shortcut is None for b in blocks)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules()) == batch_norm
    X = cifar_like_data(n=8, size=16)[0]
    plain.eval()
    out = plain(X)
    assert out.shape == (8, 10) and torch.isfinite(out).all()
    assert 0.01 < out.std() < 100
    # the residual path matters: with the same weights, dropping the shortcuts changes outputs
    res.load_state_dict(plain.state_dict(), strict=False)
    assert not torch.allclose(res.eval()(X), out)
    deep = resnet20(depth=20, width=4, batch_norm=False, skip=False)
    assert 1e-3 < deep(X).std() < 100  # plain He init, no Fixup shrinking without skips


def test_registries_name_models_and_their_data() -> None:
    assert set(MODELS) == {
        "digits_mlp",
        "cnn",
        "resnet20",
        "resnet20_nobn",
        "resnet20_noskip",
        "transformer",
    }
    assert set(DATASETS) == {"digits", "cifar_like", "tokens"}
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in MODELS["resnet20_nobn"]().modules())
    noskip = MODELS["resnet20_noskip"]()
    assert n_params(noskip) == 269_722 and any(
        isinstance(m, torch.nn.BatchNorm2d) for m in noskip.modules()
    )
    assert same_state(MODELS["cnn"](seed=2), simple_cnn(seed=2))
    assert DATASETS["cifar_like"]()[0].shape == (512, 3, 32, 32)
    assert DATASETS["tokens"](n=5, seed=1)[0].shape == (5, 8)
    assert len(DATASETS["digits"](n=7)[0]) == 7
    for name, entry in MODELS.items():
        X, y = DATASETS[entry.data](n=2)
        out = entry()(X)
        loss = lm_loss if entry.default_loss == "lm" else F.cross_entropy
        assert loss(out, y).shape == (), name


def test_transformer_shapes_counts_and_causality() -> None:
    model = tiny_transformer()
    assert n_params(model) == 4_496
    tokens = token_data(n=3)[0]
    logits = model(tokens)
    assert logits.shape == (3, 8, 32)
    assert model(tokens[:, :5]).shape == (3, 5, 32)
    # causal: changing the last token leaves the earlier positions' logits alone
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 32
    out = model(changed)
    torch.testing.assert_close(out[:, :-1], logits[:, :-1])
    assert not torch.allclose(out[:, -1], logits[:, -1])

    clf = tiny_transformer(num_classes=4, n_layers=2, d_model=8, dropout=0.1)
    assert clf(tokens).shape == (3, 4)
    # the classifier attends both ways by default: an edit at the end reaches position 0
    clf.eval()
    h = clf.blocks(clf.tok_emb(tokens) + clf.pos_emb)
    h2 = clf.blocks(clf.tok_emb(changed) + clf.pos_emb)
    assert not torch.allclose(h[:, 0], h2[:, 0])

    big = tiny_transformer(vocab=64, d_model=64, n_heads=4, n_layers=2, seq_len=32)
    assert n_params(big) == 110_400
    with pytest.raises(ValueError, match="n_heads"):
        tiny_transformer(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_transformer_init_is_deterministic_in_the_seed() -> None:
    assert same_state(tiny_transformer(seed=2), tiny_transformer(seed=2))
    assert not same_state(tiny_transformer(seed=2), tiny_transformer(seed=3))


# --- training and workloads ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_workload_training_decreases_the_loss(name: str) -> None:
    model, loss_fn, (X, y) = WORKLOADS[name](tiny=True)
    model.eval()  # BN on running statistics: measuring leaves the buffers alone
    with torch.no_grad():
        before = loss_fn(model(X), y).item()
    start = time.perf_counter()
    if name == "digits_mlp":  # the default loss (cross-entropy), as before loss_fn existed
        fit = train(model, X, y, max_epochs=30, batch_size=16, seconds=5.0)
    else:
        fit = train(model, X, y, loss_fn=loss_fn, max_epochs=30, batch_size=16, seconds=5.0)
    assert time.perf_counter() - start < 5.5
    assert fit["epochs"] >= 1 and model.training
    with torch.no_grad():
        after = loss_fn(model(X), y).item()  # training mode: batch statistics
    assert after < 0.8 * before, (before, after)


def test_default_workloads_sizes() -> None:
    expected = {
        "cnn": (3_962, (128, 3, 32, 32)),
        "digits_mlp": (3_466, (1797, 64)),
        "resnet20": (272_474, (128, 3, 32, 32)),
        "transformer": (110_400, (64, 32)),
    }
    for name, (count, shape) in expected.items():
        model, loss_fn, (X, y) = WORKLOADS[name]()
        assert n_params(model) == count and X.shape == shape and len(y) == shape[0], name
    _, _, (X, y) = WORKLOADS["transformer"]()
    assert y.shape == X.shape


def test_default_transformer_workload_runs_forward_and_backward() -> None:
    model, loss_fn, (X, y) = WORKLOADS["transformer"]()
    assert model(X).shape == (64, 32, 64)
    loss = loss_fn(model(X), y)
    loss.backward()
    assert abs(loss.item() - torch.log(torch.tensor(64.0)).item()) < 0.5  # near uniform at init
    assert all(p.grad is not None for p in model.parameters())


# --- higher-order autograd through the transformer -------------------------------------------


def test_transformer_under_functional_call_and_func_grad() -> None:
    model, loss_fn, (X, y) = WORKLOADS["transformer"](tiny=True)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(functional_call(model, p, (X,)), y)

    g = grad(loss)(params)
    loss_fn(model(X), y).backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(g[k], p.grad, msg=k)


def test_transformer_double_backward_with_the_math_sdpa_kernel() -> None:
    model = tiny_transformer(vocab=16, d_model=8, n_heads=2, seq_len=6, seed=1).double()
    X, y = token_data(n=8, seq_len=6, vocab=16, seed=1)
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
    v_norm = torch.cat([vi.flatten() for vi in v]).norm()
    v = [vi / v_norm for vi in v]

    def flat_grad(create_graph: bool) -> list[torch.Tensor]:
        return list(torch.autograd.grad(lm_loss(model(X), y), params, create_graph=create_graph))

    with sdpa_kernel(SDPBackend.MATH):
        g = flat_grad(create_graph=True)
        hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)
        # central finite differences of the gradient along v
        eps = 1e-5
        with torch.no_grad():
            for p, vi in zip(params, v):
                p.add_(vi, alpha=eps)
        g_plus = flat_grad(create_graph=False)
        with torch.no_grad():
            for p, vi in zip(params, v):
                p.add_(vi, alpha=-2 * eps)
        g_minus = flat_grad(create_graph=False)
    fd = torch.cat([((a - b) / (2 * eps)).flatten() for a, b in zip(g_plus, g_minus)])
    hv_flat = torch.cat([h.flatten() for h in hv])
    assert hv_flat.norm() > 0
    assert (hv_flat - fd).norm() / fd.norm() < 1e-6
