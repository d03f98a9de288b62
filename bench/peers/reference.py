"""Float64 references that every system's answer is checked against.

- ``p <= DENSE_MAX`` (4000): the dense float64 Hessian (``lf.Hessian(..., dtype=float64)``
  applied to the identity in chunks), then ``numpy.linalg.eigvalsh``: all eigenvalues, the
  exact trace ``sum(λ)``, ``tr(H²)/p`` and the exact spectral measure for the density's
  Wasserstein distance.
- larger ``p``: a tightly converged float64 ``lf.eigsh`` (``tol=1e-8``, ``validate=True``)
  for the top-20 and the bottom-1 eigenvalues; the trace from Hutch++ to 0.1 % relative
  standard error and ``tr(H²)`` from ``lf.frobenius_norm_sq`` to 0.1 % (estimates, not
  exact values: the table says so), both in float32 (their rounding, about 1e-7 relative,
  is far below that standard error, and a float64 product of a convolutional network costs
  about six float32 ones on CPU); no Wasserstein distance.

A reference takes minutes to hours on the larger workloads and does not depend on the code
being measured, so :func:`cached` keeps it on disk under a key of everything it depends on
(the model's parameters and buffers, the data, the method) and reuses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import landscape_fast as lf

from .workloads import Workload

DENSE_MAX = 4000


@dataclass
class Reference:
    """Reference values; ``eigenvalues`` (ascending, all ``p``) only for the dense method."""

    method: str
    top: np.ndarray  # descending, up to 20
    bottom: np.ndarray  # ascending, 1
    trace: float
    trace_method: str
    m2: float  # tr(H²) / p
    eigenvalues: np.ndarray | None
    seconds: float
    p: int

    @property
    def m1(self) -> float:
        return self.trace / self.p


def hessian64(w: Workload) -> lf.Hessian:
    """The workload's Hessian evaluated in float64 (BatchNorm in eval mode)."""
    return lf.Hessian(w.model, w.loss_fn, w.data, dtype=torch.float64, batch_norm="eval")


def dense_hessian(w: Workload, chunk: int = 256) -> torch.Tensor:
    """The dense float64 ``p × p`` Hessian, ``chunk`` columns per product."""
    H = hessian64(w)
    p = H.shape[0]
    rows = []
    for start in range(0, p, chunk):
        E = torch.zeros(min(chunk, p - start), p, dtype=torch.float64)
        E[:, start : start + E.shape[0]].fill_diagonal_(1.0)
        rows.append(H.matmat(E))
    M = torch.cat(rows)
    return 0.5 * (M + M.T)


def compute(w: Workload, k_max: int = 20) -> Reference:
    """The reference for workload ``w`` (see the module docstring for the method)."""
    start = time.perf_counter()
    if w.p <= DENSE_MAX:
        lam = np.linalg.eigvalsh(dense_hessian(w).numpy())
        return Reference(
            method=f"dense float64 eigh (p={w.p})",
            top=lam[::-1][:k_max].copy(),
            bottom=lam[:1].copy(),
            trace=float(lam.sum()),
            trace_method="exact (sum of dense eigenvalues)",
            m2=float((lam**2).sum() / w.p),
            eigenvalues=lam,
            seconds=time.perf_counter() - start,
            p=w.p,
        )
    H = hessian64(w)
    top = lf.eigsh(H, k=k_max, which="LA", tol=1e-8, validate=True)
    bottom = lf.eigsh(H, k=1, which="SA", tol=1e-8, validate=True)
    H32 = lf.Hessian(w.model, w.loss_fn, w.data, batch_norm="eval")
    tr = lf.trace(H32, "hutch++", rtol=1e-3, seed=12345)
    fro = lf.frobenius_norm_sq(H32, rtol=1e-3, seed=12345)
    return Reference(
        method=f"float64 lf.eigsh tol=1e-8 (p={w.p})",
        top=top.eigenvalues.double().numpy(),
        bottom=bottom.eigenvalues.double().numpy(),
        trace=float(tr.value),
        trace_method=f"float32 Hutch++ estimate, rel. SE {tr.stderr / abs(tr.value):.1e}",
        m2=float(fro.value) / w.p,
        eigenvalues=None,
        seconds=time.perf_counter() - start,
        p=w.p,
    )


#: Bump when :func:`compute` changes what it computes (invalidates cached references).
METHOD_VERSION = 2

CACHE_DIR = Path(".benchmarks") / "peer_references"


def fingerprint(w: Workload) -> str:
    """SHA-256 of what the reference depends on: parameters, buffers, data and method."""
    h = hashlib.sha256(f"{w.name} {w.p} {METHOD_VERSION} {DENSE_MAX}".encode())
    for t in (*w.model.state_dict().values(), w.X, w.y):
        t = t.detach().cpu().reshape(-1)
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cached(w: Workload, cache_dir: Path | None = CACHE_DIR) -> tuple[Reference, bool]:
    """``(reference, whether it came from the cache)``; computed and stored on a miss.

    ``cache_dir=None`` always computes (and stores nothing).
    """
    if cache_dir is None:
        return compute(w), False
    path = Path(cache_dir) / f"{w.name}-{fingerprint(w)[:20]}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            fields = {f.name: z[f.name] for f in dataclasses.fields(Reference) if f.name in z}
        ref = Reference(
            method=str(fields["method"]),
            top=fields["top"],
            bottom=fields["bottom"],
            trace=float(fields["trace"]),
            trace_method=str(fields["trace_method"]),
            m2=float(fields["m2"]),
            eigenvalues=fields.get("eigenvalues"),
            seconds=float(fields["seconds"]),
            p=int(fields["p"]),
        )
        return ref, True
    ref = compute(w)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v for k, v in dataclasses.asdict(ref).items() if v is not None}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return ref, False
