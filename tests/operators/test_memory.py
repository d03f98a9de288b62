"""Graph-size accounting of the HVP planner: right sizes, and no effect on lifetimes."""

from __future__ import annotations

import gc
import weakref

import torch

from landscape_fast.operators.memory import saved_bytes


def test_saved_bytes_counts_each_storage_once_and_skips_excluded():
    x = torch.randn(64, 32, requires_grad=True)
    w = torch.randn(32, 32, requires_grad=True)
    h = torch.tanh(x @ w)  # mm saves x and w (excluded), tanh saves its output
    out = (h * h).sum()  # mul saves h twice: one storage
    assert saved_bytes([out], exclude=[x, w]) == 64 * 32 * 4
    (g,) = torch.autograd.grad(out, w, create_graph=True)  # the gradient's graph reaches it
    assert saved_bytes([g], exclude=[x, w]) >= 64 * 32 * 4


def test_measuring_does_not_keep_the_graph_alive():
    # Saved-tensor hooks returning the tensor itself tie a saved *output* to its node in a
    # reference cycle: the graph (a whole batch's activations) was never freed.
    x = torch.randn(1000, requires_grad=True)
    y = torch.tanh(x)
    s = y.sum()
    assert saved_bytes([s], exclude=[x]) == 4000
    ref = weakref.ref(y)
    del y, s
    gc.collect()
    assert ref() is None
