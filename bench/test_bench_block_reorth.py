"""pytest-benchmark suite for ``block_reorth`` on CPU, per backend, at moderate shapes.

Timing (one row per backend and shape; ``W`` is copied outside the timed region and the op
runs in place)::

    pytest bench/test_bench_block_reorth.py --benchmark-only --benchmark-group-by=param:shape

As a test (CI): ``pytest bench/test_bench_block_reorth.py --benchmark-disable`` runs every
case once and checks its result, in a few seconds. The full bandwidth study (copy bandwidth,
bytes streamed, p up to 1e7) is ``bench/bench_block_reorth.py``.
"""

from __future__ import annotations

import math
import os

# Shared 2-core machines: OpenMP spin-waiting makes multi-threaded runs pathologically slow.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from landscape_fast import _backend  # noqa: E402
from landscape_fast.ops import block_reorth  # noqa: E402

#: (p, m, b, basis dtype): memory-bound (b = 1), balanced (b = 4) and compute-heavy (b = 16)
#: cases, float32 block; small enough for ~10 ms per reference call.
SHAPES = [
    (200_000, 32, 1, torch.float32),
    (200_000, 32, 4, torch.float32),
    (200_000, 32, 4, torch.bfloat16),
    (100_000, 8, 16, torch.float32),
]
SHAPE_IDS = [f"p{p}-m{m}-b{b}-{str(d).split('.')[-1]}" for p, m, b, d in SHAPES]
BACKENDS = ["reference", "cpp"]


def _skip_unusable(backend: str) -> None:
    why = _backend.BACKENDS[backend].unavailable_reason()
    if why:
        pytest.skip(f"backend {backend!r} unavailable: {why}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_block_reorth(benchmark, backend, shape):
    _skip_unusable(backend)
    p, m, b, basis = shape
    g = torch.Generator().manual_seed(0)
    Q = torch.randn(m, p, generator=g).div_(math.sqrt(p))
    Q = torch.linalg.qr(Q.T.double())[0].T.contiguous().to(basis)  # orthonormal rows
    W0 = torch.randn(b, p, generator=g)
    benchmark.group = f"p={p} m={m} b={b} basis={basis}"
    benchmark.extra_info.update(p=p, m=m, b=b, basis=str(basis), threads=torch.get_num_threads())

    def setup():
        return (Q, W0.clone()), {"inplace": True, "backend": backend}

    out = benchmark.pedantic(block_reorth, setup=setup, rounds=10, warmup_rounds=1)

    # Sanity of the last run: W0 = C^T Q + R^T W, W orthonormal and orthogonal to Q.
    Qf = Q.float()
    assert (Qf @ out.W.T).abs().max() < 1e-4
    torch.testing.assert_close(out.W @ out.W.T, torch.eye(b), rtol=0, atol=1e-4)
    recon = out.coeffs.T.float() @ Qf + out.R.T.float() @ out.W
    torch.testing.assert_close(recon, W0, rtol=0, atol=1e-3)
