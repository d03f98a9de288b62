"""Built-in models and data sets that need no download (for the demo, tests and benchmarks).

Data: :func:`digits_data` (scikit-learn's digits), :func:`cifar_like_data` (synthetic
CIFAR-shaped images) and :func:`token_data` (synthetic token sequences). Models:
:func:`digits_mlp`, :func:`simple_cnn`, :func:`resnet20` (with or without BatchNorm and
shortcuts) and :func:`tiny_transformer`. :data:`WORKLOADS` bundles them into
``(model, loss_fn, (X, y))`` triples for the tests and benchmarks; :data:`MODELS` and
:data:`DATASETS` name them for the command line; :func:`train` fits any of them.
Everything is deterministic in its ``seed`` and leaves the global RNG alone.

Example:
    >>> from landscape_fast.zoo import digits_data, digits_mlp
    >>> X, y = digits_data()
    >>> X.shape, y.shape, digits_mlp()(X[:2]).shape
    (torch.Size([1797, 64]), torch.Size([1797]), torch.Size([2, 10]))
    >>> model, loss_fn, (X, y) = WORKLOADS["transformer"](tiny=True)
    >>> loss_fn(model(X), y).shape
    torch.Size([])
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Workload = tuple[nn.Module, LossFn, tuple[torch.Tensor, torch.Tensor]]

__all__ = [
    "DATASETS",
    "MODELS",
    "WORKLOADS",
    "ZooEntry",
    "cifar_like_data",
    "digits_data",
    "digits_mlp",
    "lm_loss",
    "resnet20",
    "simple_cnn",
    "tiny_transformer",
    "token_data",
    "train",
]


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def digits_data(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8×8 digits (1797 samples), features scaled to [0, 1].

    Raises:
        ImportError: If scikit-learn is not installed (``pip install scikit-learn``).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - the test/demo extras install it
        raise ImportError(
            "the digits data set comes with scikit-learn: pip install scikit-learn"
        ) from err
    X, y = load_digits(return_X_y=True)
    return torch.as_tensor(X / 16.0, dtype=dtype), torch.as_tensor(y, dtype=torch.long)


def cifar_like_data(
    n: int = 512,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    *,
    size: int = 32,
    num_classes: int = 10,
    noise: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A synthetic, learnable CIFAR-shaped classification set: ``X (n, 3, size, size)``, ``y (n,)``.

    Each class has a smooth random colour template (a 4×4 grid of random values upsampled
    bilinearly to ``size``×``size``); a sample is its class template with a random
    brightness (0.5 to 1.5 times), shifted by up to ``size // 8`` pixels (circularly), plus
    i.i.d. Gaussian pixel noise of standard deviation ``noise``. The templates have unit
    variance per pixel, so a small CNN learns the classes, but not instantly. Classes are
    balanced (``y`` is a permutation of ``arange(n) % num_classes``).

    Example:
        >>> X, y = cifar_like_data(n=20, seed=1)
        >>> X.shape, y.shape, int(y.max())
        (torch.Size([20, 3, 32, 32]), torch.Size([20]), 9)
        >>> bool((cifar_like_data(n=20, seed=1)[0] == X).all())
        True
    """
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, 3, 4, 4, generator=gen, dtype=torch.float64)
    templates = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    templates = (templates - templates.mean((1, 2, 3), keepdim=True)) / templates.std(
        (1, 2, 3), keepdim=True
    )
    y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    scale = 0.5 + torch.rand(n, 1, 1, 1, generator=gen, dtype=torch.float64)
    X = templates[y] * scale
    max_shift = size // 8
    if max_shift > 0:
        shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen)
        # roll each sample by its own (dy, dx) with advanced indexing
        rows = (torch.arange(size)[None, :] - shifts[:, :1]) % size  # (n, size)
        cols = (torch.arange(size)[None, :] - shifts[:, 1:]) % size
        b, c = torch.arange(n)[:, None, None, None], torch.arange(3)[None, :, None, None]
        X = X[b, c, rows[:, None, :, None], cols[:, None, None, :]]
    X = X + noise * torch.randn(X.shape, generator=gen, dtype=torch.float64)
    return X.to(dtype), y


def token_data(
    n: int = 256,
    seq_len: int = 8,
    vocab: int = 32,
    seed: int = 0,
    task: Literal["lm", "classify"] = "lm",
    *,
    num_classes: int = 4,
    noise: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic token sequences: noisy arithmetic progressions modulo ``vocab``.

    Sequence ``i`` is ``(a_i + d_i * t) % vocab`` for ``t = 0, 1, ...``, with a random start
    ``a_i`` and a random step ``d_i`` in ``1..num_classes``; each token is then replaced by a
    uniformly random one with probability ``noise``.

    Args:
        task: ``"lm"``: ``tokens (n, seq_len)`` and next-token ``targets (n, seq_len)`` (the
            same sequence shifted by one, so ``targets[:, :-1] == tokens[:, 1:]``); use with
            :func:`lm_loss`. ``"classify"``: ``tokens (n, seq_len)`` and ``labels (n,)``, the
            step ``d_i - 1`` in ``0..num_classes-1``.

    Example:
        >>> tokens, targets = token_data(n=4, seq_len=6, vocab=10, noise=0.0)
        >>> bool((tokens[:, 1:] == targets[:, :-1]).all()), tokens.dtype
        (True, torch.int64)
        >>> token_data(n=4, task="classify")[1].shape
        torch.Size([4])
    """
    if task not in ("lm", "classify"):
        raise ValueError(f"task must be 'lm' or 'classify', got {task!r}")
    gen = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (n, 1), generator=gen)
    step = torch.randint(1, num_classes + 1, (n, 1), generator=gen)
    seq = (start + step * torch.arange(seq_len + 1)) % vocab
    corrupt = torch.rand(seq.shape, generator=gen) < noise
    seq = torch.where(corrupt, torch.randint(0, vocab, seq.shape, generator=gen), seq)
    if task == "lm":
        return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
    return seq[:, :-1].contiguous(), step[:, 0] - 1


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of LM ``logits (B, T, V)`` against ``targets (B, T)``.

    Example:
        >>> lm_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)).item()  # log 4
        1.3862943649291992
    """
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def digits_mlp(hidden: int = 32, seed: int = 0) -> nn.Sequential:
    """A 64-``hidden``-``hidden``-10 tanh MLP (3,466 parameters at ``hidden=32``)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the default init draws from the global RNG
        model = nn.Sequential(
            nn.Linear(64, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 10),
        )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / max(p.shape[-1], 1)) ** 0.5)
    return model


class _ShortcutA(nn.Module):
    """Option-A shortcut of He et al. (2016): stride-2 subsampling plus zero channel padding."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        lo = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, lo, self.extra - lo))


class BasicBlock(nn.Module):
    """Two 3×3 convs (each followed by BatchNorm2d when ``batch_norm``) and a shortcut
    (none when ``skip`` is false: a plain block)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        batch_norm: bool,
        shortcut: str,
        skip: bool = True,
    ) -> None:
        super().__init__()
        bias = not batch_norm
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(out_ch) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(out_ch) if batch_norm else nn.Identity()
        self.shortcut: nn.Module | None
        if not skip:
            self.shortcut = None
        elif stride == 1 and in_ch == out_ch:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = _ShortcutA(in_ch, out_ch, stride)
        else:
            layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=bias)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            self.shortcut = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is None:
            return F.relu(out)
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 3-channel images (He et al. 2016, §4.2); build it with :func:`resnet20`."""

    def __init__(
        self,
        blocks_per_stage: int,
        width: int,
        num_classes: int,
        batch_norm: bool,
        shortcut: str,
        skip: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(width) if batch_norm else nn.Identity()
        stages: list[nn.Module] = []
        in_ch = width
        for i, out_ch in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride, batch_norm, shortcut, skip))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.conv(x)))
        out = self.stages(out)
        return self.fc(out.mean((2, 3)))


def resnet20(
    num_classes: int = 10,
    width: int = 16,
    seed: int = 0,
    batch_norm: bool = True,
    *,
    depth: int = 20,
    shortcut: Literal["conv", "A"] = "conv",
    skip: bool = True,
) -> CifarResNet:
    """ResNet-``depth`` for CIFAR-shaped images ``(B, 3, H, W)``, returning ``(B, num_classes)``.

    A 3×3 conv stem, three stages of ``(depth - 2) / 6`` basic blocks with ``width``,
    ``2 width`` and ``4 width`` channels (the first block of stages 2 and 3 has stride 2),
    global average pooling and a linear head. With ``batch_norm`` every conv is followed by
    ``BatchNorm2d`` (default momentum, so its running statistics move during
    :func:`train`); without it the convs get biases and the second conv of each block is
    scaled down by ``1 / sqrt(#blocks)`` (Fixup-style) to keep the activations bounded.
    When a block changes the shape, the shortcut is ``"conv"`` (1×1 strided conv, plus BN
    with ``batch_norm``; option B of He et al.) or ``"A"`` (subsampling plus zero channels,
    no parameters). With ``skip=False`` the blocks have no shortcut connections at all (a
    plain ``depth``-layer CNN, as in the "no skip" nets of Li et al. 2018); without batch
    norm its convs then keep plain He init (no Fixup scaling, which is for residual
    branches).

    Parameter counts (``num_classes=10``, BN; shortcut ``"conv"`` / ``"A"``): 272,474 /
    269,722 at ``width=16`` (``depth=20``), 78,042 / 75,290 at ``depth=8``, 5,214 / 5,006
    at ``depth=8, width=4``.

    Init (deterministic in ``seed``, global RNG untouched): He-normal convs (fan-out), BN
    weight 1 and bias 0, head weights normal with variance ``1 / fan_in`` and bias 0.

    Example:
        >>> model = resnet20(depth=8, width=4)
        >>> model(torch.zeros(2, 3, 8, 8)).shape, sum(p.numel() for p in model.parameters())
        (torch.Size([2, 10]), 5214)
        >>> sum(p.numel() for p in resnet20(depth=8, width=4, skip=False).parameters())
        5006
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
    if shortcut not in ("A", "conv"):
        raise ValueError(f"shortcut must be 'A' or 'conv', got {shortcut!r}")
    n_blocks = (depth - 2) // 6
    with torch.random.fork_rng(devices=[]):  # the default init draws from the global RNG
        model = CifarResNet(n_blocks, width, num_classes, batch_norm, shortcut, skip)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_out) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.in_features**0.5)
                m.bias.zero_()
        if not batch_norm and skip:
            for m in model.modules():
                if isinstance(m, BasicBlock):
                    m.conv2.weight.mul_((3 * n_blocks) ** -0.5)
    return model


class SimpleCNN(nn.Module):
    """Two conv-ReLU-pool stages and a linear head; build it with :func:`simple_cnn`."""

    def __init__(self, in_channels: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(2 * width * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = self.pool(F.relu(self.conv2(x)))
        return self.fc(x.flatten(1))


def simple_cnn(
    num_classes: int = 10, width: int = 8, seed: int = 0, in_channels: int = 3
) -> SimpleCNN:
    """A small CNN for images ``(B, in_channels, H, W)``, any ``H, W >= 8``, to logits
    ``(B, num_classes)``.

    ``conv3×3(width) - ReLU - maxpool 2``, ``conv3×3(2 width) - ReLU - adaptive average pool
    to 4×4``, then a linear head: 3,962 parameters with the defaults (``width=8``, 3 input
    channels, 10 classes), about 1,300 of them in the convs. Smooth (no BatchNorm), so its
    Hessian is that of a plain function of the parameters.

    Init (deterministic in ``seed``, global RNG untouched): He-normal convs (fan-in), head
    weights normal with variance ``1 / fan_in``, zero biases.

    Example:
        >>> model = simple_cnn()
        >>> model(torch.zeros(2, 3, 32, 32)).shape, model(torch.zeros(2, 3, 8, 8)).shape
        (torch.Size([2, 10]), torch.Size([2, 10]))
        >>> sum(p.numel() for p in model.parameters())
        3962
    """
    with torch.random.fork_rng(devices=[]):  # the default init draws from the global RNG
        model = SimpleCNN(in_channels, width, num_classes)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in (model.conv1, model.conv2, model.fc):
            fan_in = m.weight[0].numel()
            gain = 1.0 if m is model.fc else 2.0
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (gain / fan_in) ** 0.5)
            m.bias.zero_()
    return model


class _Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.n_heads, self.causal, self.dropout = n_heads, causal, dropout
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        att = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal
        )
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(B, T, C)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


class TinyTransformer(nn.Module):
    """A small pre-LN transformer; build it with :func:`tiny_transformer`."""

    def __init__(
        self,
        vocab: int,
        d_model: int,
        n_heads: int,
        n_layers: int,
        seq_len: int,
        num_classes: int | None,
        dropout: float,
        causal: bool,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not a multiple of n_heads={n_heads}")
        self.seq_len, self.num_classes = seq_len, num_classes
        self.tok_emb = nn.Embedding(vocab, d_model)
        self.pos_emb = nn.Parameter(torch.zeros(seq_len, d_model))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(
            *(_Block(d_model, n_heads, dropout, causal) for _ in range(n_layers))
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab if num_classes is None else num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        if T > self.seq_len:
            raise ValueError(f"sequence length {T} exceeds the model's seq_len={self.seq_len}")
        x = self.drop(self.tok_emb(tokens) + self.pos_emb[:T])
        x = self.ln_f(self.blocks(x))
        if self.num_classes is not None:
            x = x.mean(1)
        return self.head(x)


def tiny_transformer(
    vocab: int = 32,
    d_model: int = 16,
    n_heads: int = 2,
    n_layers: int = 1,
    seq_len: int = 8,
    num_classes: int | None = None,
    seed: int = 0,
    dropout: float = 0.0,
    *,
    causal: bool | None = None,
) -> TinyTransformer:
    """A small pre-LayerNorm transformer over token ids ``(B, T)``, ``T <= seq_len``.

    Token embedding plus learned positional embedding, ``n_layers`` blocks of multi-head
    self-attention (through :func:`torch.nn.functional.scaled_dot_product_attention`) and a
    GELU MLP of width ``4 d_model``, each a residual branch behind a LayerNorm; a final
    LayerNorm and a linear head. With ``num_classes=None`` it is a language model returning
    logits ``(B, T, vocab)`` (train it with :func:`lm_loss`); otherwise a sequence classifier
    that mean-pools over positions and returns ``(B, num_classes)``. ``causal`` (default:
    ``True`` for the language model, ``False`` for the classifier) masks attention to
    earlier positions.

    Parameters: ``12 L d² + 13 L d + (vocab + seq_len + 2) d + head``, where the head has
    ``(d + 1) * vocab`` (LM) or ``(d + 1) * num_classes``: 4,496 with the defaults, 110,400
    for the benchmark (``vocab=64, d_model=64, n_heads=4, n_layers=2, seq_len=32``).

    Init (deterministic in ``seed``, global RNG untouched): GPT-2 style, normal(0, 0.02) for
    embeddings and linear weights, the residual output projections scaled by
    ``1 / sqrt(2 n_layers)``, zero biases, LayerNorm weight 1.

    Higher derivatives: on CPU the fused attention kernel has no forward-mode AD or double
    backward; run Hessian-vector products under
    ``torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH)``.

    Example:
        >>> model = tiny_transformer()
        >>> tokens = torch.zeros(3, 8, dtype=torch.long)
        >>> model(tokens).shape, tiny_transformer(num_classes=4)(tokens).shape
        (torch.Size([3, 8, 32]), torch.Size([3, 4]))
        >>> sum(p.numel() for p in model.parameters())
        4496
    """
    if causal is None:
        causal = num_classes is None
    with torch.random.fork_rng(devices=[]):  # the default init draws from the global RNG
        model = TinyTransformer(
            vocab, d_model, n_heads, n_layers, seq_len, num_classes, dropout, causal
        )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif ".ln" in name or name.startswith("ln_"):
                p.fill_(1.0)
            else:
                std = 0.02
                if name.endswith(("proj.weight", "fc2.weight")):
                    std /= math.sqrt(2 * n_layers)
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


# ---------------------------------------------------------------------------------------------
# Training and workloads
# ---------------------------------------------------------------------------------------------


def train(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    seconds: float = 3.0,
    max_epochs: int = 60,
    batch_size: int = 64,
    lr: float = 1e-2,
    seed: int = 0,
    loss_fn: LossFn | None = None,
) -> dict[str, float]:
    """Train with Adam for at most ``seconds`` or ``max_epochs`` (mini-batches, reshuffled).

    Args:
        loss_fn: ``loss_fn(model(X[idx]), y[idx])`` -> mean scalar loss; defaults to
            cross-entropy (:func:`torch.nn.functional.cross_entropy`). Use :func:`lm_loss`
            for the language model of :func:`tiny_transformer`.

    The model is left in training mode (its BatchNorm running statistics updated).

    Returns:
        ``{"epochs", "seconds", "loss"}`` of the run (loss of the last epoch).

    Example:
        >>> model, loss_fn, (X, y) = WORKLOADS["resnet20"](tiny=True)
        >>> fit = train(model, X, y, loss_fn=loss_fn, max_epochs=2)
        >>> fit["epochs"], fit["loss"] > 0
        (2, True)
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if loss_fn is None:
        loss_fn = F.cross_entropy
    model.train()
    start = time.perf_counter()
    epochs, loss_sum = 0, float("nan")
    while epochs < max_epochs and time.perf_counter() - start < seconds:
        perm = torch.randperm(len(X), generator=gen)
        loss_sum = 0.0
        for i in range(0, len(X), batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(X[idx]), y[idx])
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
        loss_sum /= len(X)
        epochs += 1
    return {"epochs": epochs, "seconds": time.perf_counter() - start, "loss": loss_sum}


def _digits_workload(tiny: bool = False, seed: int = 0) -> Workload:
    X, y = digits_data()
    if tiny:
        return digits_mlp(hidden=8, seed=seed), F.cross_entropy, (X[:128], y[:128])
    return digits_mlp(seed=seed), F.cross_entropy, (X, y)


def _resnet_workload(tiny: bool = False, seed: int = 0) -> Workload:
    if tiny:
        model = resnet20(width=4, depth=8, seed=seed)
        return model, F.cross_entropy, cifar_like_data(n=32, seed=seed, size=8)
    return resnet20(seed=seed), F.cross_entropy, cifar_like_data(n=128, seed=seed)


def _cnn_workload(tiny: bool = False, seed: int = 0) -> Workload:
    if tiny:
        model = simple_cnn(width=4, seed=seed)
        return model, F.cross_entropy, cifar_like_data(n=32, seed=seed, size=8)
    return simple_cnn(seed=seed), F.cross_entropy, cifar_like_data(n=128, seed=seed)


def _transformer_workload(tiny: bool = False, seed: int = 0) -> Workload:
    if tiny:
        model = tiny_transformer(vocab=16, d_model=8, n_heads=2, n_layers=1, seq_len=8, seed=seed)
        return model, lm_loss, token_data(n=16, seq_len=8, vocab=16, seed=seed)
    model = tiny_transformer(vocab=64, d_model=64, n_heads=4, n_layers=2, seq_len=32, seed=seed)
    return model, lm_loss, token_data(n=64, seq_len=32, vocab=64, seed=seed)


WORKLOADS: dict[str, Callable[..., Workload]] = {
    "digits_mlp": _digits_workload,
    "resnet20": _resnet_workload,
    "transformer": _transformer_workload,
    "cnn": _cnn_workload,
}
"""Name -> ``make(tiny=False, seed=0)`` returning ``(model, loss_fn, (X, y))``.

``loss_fn(model(X), y)`` is the mean loss; models are freshly initialized (in training mode,
so BatchNorm uses batch statistics until you call ``model.eval()``).

=============  ===========================================  ==========  ===========================
name           default (benchmarks)                         params      ``tiny=True`` (tests)
=============  ===========================================  ==========  ===========================
cnn            simple CNN width 8 (2 conv-ReLU-pool         3,962       width 4: 1,698 params, 32
               stages), 128 cifar-like 3×32×32 images                   images 3×8×8
digits_mlp     64-32-32-10 tanh MLP, 1797 digits            3,466       hidden 8: 682 params, 128
                                                                        samples
resnet20       ResNet-20 width 16 (BN, 1×1 conv             272,474     depth 8, width 4: 5,214
               shortcuts), 128 cifar-like 3×32×32                      params, 32 images 3×8×8
               images
transformer    LM, vocab 64, d_model 64, 4 heads, 2         110,400     vocab 16, d_model 8, 1
               layers, 64 sequences of 32 tokens                        layer, seq 8: 1,224 params,
                                                                        16 sequences
=============  ===========================================  ==========  ===========================
"""


# ---------------------------------------------------------------------------------------------
# Name registries (the CLI's ``--model`` and ``--data``)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooEntry:
    """A named zoo model or data set: ``entry(**kwargs)`` calls ``build``.

    Attributes:
        build: The constructor: models take ``seed=``; data sets take ``n=None`` (the default
            size) and ``seed=`` and return ``(X, y)``.
        default_loss: ``"ce"`` (cross-entropy) or ``"lm"`` (:func:`lm_loss`).
        data: For models, the :data:`DATASETS` name whose samples the model accepts.
        description: One line for ``--help`` and error hints.
    """

    build: Callable[..., Any]
    default_loss: str
    data: str | None = None
    description: str = ""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.build(*args, **kwargs)


def _digits_set(n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = digits_data()  # a fixed set: ``seed`` is accepted for a uniform signature
    return (X, y) if n is None else (X[:n], y[:n])


def _cifar_set(n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return cifar_like_data(n=512 if n is None else n, seed=seed)


def _token_set(n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return token_data(n=256 if n is None else n, seed=seed)


DATASETS: dict[str, ZooEntry] = {
    "digits": ZooEntry(_digits_set, "ce", description="scikit-learn digits, 1797 × 64 features"),
    "cifar_like": ZooEntry(_cifar_set, "ce", description="512 synthetic 3×32×32 images"),
    "tokens": ZooEntry(_token_set, "lm", description="256 token sequences of 8, vocab 32"),
}
"""Data set name -> :class:`ZooEntry` whose ``build(n=None, seed=0)`` returns ``(X, y)``."""

MODELS: dict[str, ZooEntry] = {
    "digits_mlp": ZooEntry(digits_mlp, "ce", "digits", "64-32-32-10 tanh MLP"),
    "cnn": ZooEntry(simple_cnn, "ce", "cifar_like", "2-conv CNN, width 8"),
    "resnet20": ZooEntry(resnet20, "ce", "cifar_like", "ResNet-20 with BatchNorm"),
    "resnet20_nobn": ZooEntry(
        functools.partial(resnet20, batch_norm=False), "ce", "cifar_like", "ResNet-20, no BN"
    ),
    "resnet20_noskip": ZooEntry(
        functools.partial(resnet20, skip=False), "ce", "cifar_like", "ResNet-20, no shortcuts"
    ),
    "transformer": ZooEntry(tiny_transformer, "lm", "tokens", "1-layer causal LM, vocab 32"),
}
"""Model name -> :class:`ZooEntry` whose ``build(seed=0)`` returns a fresh model that accepts
the samples of ``DATASETS[entry.data]`` (with the loss ``entry.default_loss``).

Example:
    >>> entry = MODELS["cnn"]
    >>> X, y = DATASETS[entry.data](n=4)
    >>> entry(seed=1)(X).shape, entry.default_loss
    (torch.Size([4, 10]), 'ce')
"""
