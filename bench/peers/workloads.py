"""The zoo workloads as the peer benchmark sees them: trained, in eval mode, with a criterion.

Every system gets the same ``(model, loss, (X, y))``: the model is trained for a fixed
number of epochs (deterministic; ``--untrained`` skips it) and then put in eval mode, so
BatchNorm uses its running statistics and every system sees the same Hessian. Peers that
need an ``nn.Module`` criterion with a ``reduction`` attribute (curvlinops, PyHessian) get
:class:`Criterion`, a thin wrapper of the zoo's loss (``zoo.lm_loss`` for the transformer).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from landscape_fast import zoo

NAMES = ("digits_mlp", "resnet20", "transformer")


class Criterion(nn.Module):
    """``loss_fn(outputs, targets)`` as a mean-reduced ``nn.Module`` (``reduction="mean"``)."""

    def __init__(self, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.loss_fn = loss_fn
        self.reduction = "mean"

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(outputs, targets)


@dataclass
class Workload:
    """One benchmark problem; ``p`` is the number of trainable parameters."""

    name: str
    tiny: bool
    model: nn.Module
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    criterion: Criterion
    X: torch.Tensor
    y: torch.Tensor
    p: int
    trained: str

    @property
    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.X, self.y

    @property
    def params(self) -> list[nn.Parameter]:
        return [q for q in self.model.parameters() if q.requires_grad]

    def clear_grads(self) -> None:
        """Drop ``.grad`` (PyHessian leaves a ``create_graph`` gradient on every parameter)."""
        for q in self.model.parameters():
            q.grad = None


def load(name: str, tiny: bool, trained: bool = True, samples: int | None = None) -> Workload:
    """Build the zoo workload ``name``, train it (fixed epochs, seed 0) on all its data, set
    eval mode, and keep the first ``samples`` samples (all if ``None``) as the data whose
    Hessian is measured."""
    model, loss_fn, (X, y) = zoo.WORKLOADS[name](tiny=tiny)
    note = "untrained (initialisation)"
    if trained:
        epochs = 2 if tiny else {"digits_mlp": 30, "resnet20": 5, "transformer": 20}[name]
        fit = zoo.train(model, X, y, loss_fn=loss_fn, seconds=1e9, max_epochs=epochs, seed=0)
        note = f"trained {epochs} epochs with Adam on {X.shape[0]} samples (final loss "
        note += f"{fit['loss']:.3g})"
    if samples is not None:
        if not 1 <= samples <= X.shape[0]:
            raise ValueError(f"samples must be in [1, {X.shape[0]}] for {name}, got {samples}")
        X, y = X[:samples], y[:samples]
    model.eval()
    p = sum(q.numel() for q in model.parameters() if q.requires_grad)
    return Workload(name, tiny, model, loss_fn, Criterion(loss_fn), X, y, p, note)


def gradient_seconds(w: Workload, repeats: int = 5) -> float:
    """Median wall time of one full-data loss + gradient (the unit of the ratio columns)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss = w.loss_fn(w.model(w.X), w.y)
        torch.autograd.grad(loss, w.params)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
