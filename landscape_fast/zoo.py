"""Built-in models and data sets that need no download (for the demo, tests and benchmarks).

Example:
    >>> from landscape_fast.zoo import digits_data, digits_mlp
    >>> X, y = digits_data()
    >>> X.shape, y.shape, digits_mlp()(X[:2]).shape
    (torch.Size([1797, 64]), torch.Size([1797]), torch.Size([2, 10]))
"""

from __future__ import annotations

import time

import torch
from torch import nn


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


def digits_mlp(hidden: int = 32, seed: int = 0) -> nn.Sequential:
    """A 64-``hidden``-``hidden``-10 tanh MLP (2.6k parameters at ``hidden=32``)."""
    gen = torch.Generator().manual_seed(seed)
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
) -> dict[str, float]:
    """Train with Adam and cross-entropy for at most ``seconds`` or ``max_epochs``.

    Returns:
        ``{"epochs", "seconds", "loss"}`` of the run (loss of the last epoch).
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
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
