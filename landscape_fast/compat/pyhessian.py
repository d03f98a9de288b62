r"""PyHessian's ``hessian`` class, computed by landscape_fast.

To switch, change one import::

    from pyhessian import hessian                            # before
    from landscape_fast.compat.pyhessian import hessian      # after

``hessian(model, criterion, data=(inputs, targets) | dataloader=loader, cuda=True)`` and
its ``.eigenvalues(maxIter, tol, top_n)``, ``.trace(maxIter, tol)`` and
``.density(iter, n_v)`` take PyHessian's arguments and return PyHessian's structures:

- ``eigenvalues`` → ``(eigenvalues, eigenvectors)``: a list of ``top_n`` floats and a list
  of ``top_n`` eigenvectors, each a list of per-parameter tensors (the shapes of
  ``[p for p in model.parameters() if p.requires_grad]``, on the model's device), of unit
  norm over all parameters together;
- ``trace`` → the list of Hutchinson samples :math:`z^\top H z` (``np.mean`` of it is the
  trace estimate);
- ``density`` → ``(eigen_list_full, weight_list_full)``: per probe, the list of quadrature
  nodes and the list of their weights (each probe's weights sum to 1), ready for PyHessian's
  ``density_plot.get_esd_plot``.

The Hessian is the one PyHessian computes: that of the mean loss in **eval mode** (batch
norm uses its running statistics, dropout is off), with ``dataloader=`` the sample-weighted
mean over all batches (a batch counts for its size). It is an :class:`landscape_fast.Hessian`
(:attr:`hessian.operator`), so every product is one pass over the data.

What differs from PyHessian, and why:

- **The model is left unchanged.** PyHessian calls ``model.eval()`` and leaves the model in
  eval mode, and with ``data=`` it leaves ``.grad`` filled with a graph
  (``backward(create_graph=True)``). Here the model is *evaluated* in eval mode, but its
  train/eval flags, parameters, buffers and ``.grad`` are as they were after every call.
- **Device.** Everything runs on the model's device; the model and the data are never moved
  by the user's ``cuda`` flag. ``cuda=True`` without CUDA (where PyHessian crashes) warns and
  runs on the CPU; a ``cuda`` flag that disagrees with the model's device warns too.
- **Eigenvalues are converged, not just stalled.** PyHessian runs power iteration with
  deflation and stops an eigenvalue when :math:`|\lambda_i - \lambda_{i-1}| /
  (|\lambda_{i-1}| + 10^{-6}) <` ``tol``, which can stop early on a slowly converging
  iteration. Here :func:`landscape_fast.eigsh` (thick-restart Lanczos) runs until the *true*
  residual of every returned pair satisfies :math:`\lVert H v - \lambda v\rVert \le`
  ``tol`` :math:`\cdot \max|\theta|` (``tol`` is passed unchanged, relative to the largest
  Ritz magnitude). Because :math:`|\lambda - \lambda_{true}| \le \lVert Hv - \lambda v\rVert`
  for a symmetric matrix, each returned value is within ``tol``
  :math:`\cdot|\lambda_{max}|` of an eigenvalue (in practice far closer: the error is
  quadratic in the residual). ``maxIter`` bounds the work as in PyHessian: at most
  ``maxIter * top_n`` Hessian-vector products, plus ``top_n`` to verify the residuals; if the
  budget runs out, the best estimates are returned with a warning (PyHessian returns
  silently). Like power iteration, the eigenvalues are the ``top_n`` of **largest
  magnitude** (``which="LM"``; pass ``which="LA"`` for the largest algebraic ones), sorted
  by decreasing magnitude. The full :class:`~landscape_fast.EigenResult` (residuals,
  ``converged``) of the last call is :attr:`hessian.last_eigen_result`.
- **Trace.** Hutchinson with Rademacher probes, one sample per probe, and PyHessian's
  stopping rule applied literally to the running mean :math:`m_i`: stop after sample
  :math:`i` when :math:`|m_i - m_{i-1}| / (m_{i-1} + 10^{-6}) <` ``tol`` (:math:`m_0 = 0`),
  or after ``maxIter`` samples. So the returned list has the length PyHessian's would have
  for the same samples, including its quirk that a negative running mean stops at the next
  sample (the denominator has no absolute value; ``tol=float("-inf")`` never stops, giving
  exactly ``maxIter`` samples). This rule is **not an error bar**: the
  running mean often stops changing by chance after a few samples. For a trace with a
  standard error use ``lf.trace(h.operator, rtol=...)`` (or compute
  ``np.std(samples, ddof=1) / sqrt(len(samples))`` yourself). The samples are those of
  ``lf.trace(h.operator, method="hutchinson", seed=seed)`` (same probes, same order).
- **Density.** Stochastic Lanczos quadrature with ``iter`` steps and ``n_v`` Rademacher
  probes and full reorthogonalisation, as in PyHessian, by
  :func:`landscape_fast.spectral_density` (all probes run in lockstep: one data pass per
  step for all ``n_v`` probes). The nodes of each probe come in ascending order. After a
  Lanczos breakdown (the probe's Krylov space is exhausted, e.g. ``iter`` at least the
  number of parameters) a probe has fewer than ``iter`` nodes, all exact, where PyHessian
  pads with zero-weight nodes from a restart; ``iter`` above the number of parameters is
  capped with a warning.
- **Randomness.** PyHessian draws from torch's global generator. Here every method takes a
  keyword ``seed=``; without it a seed is drawn from torch's global generator, so
  ``torch.manual_seed`` makes runs reproducible and repeated calls use fresh probes, as in
  PyHessian.
- **Numbers.** Results are Python floats (PyHessian's density gives numpy float32s), inner
  products are accumulated in float64.

Example:
    >>> import numpy as np, torch
    >>> from torch import nn
    >>> from landscape_fast.compat.pyhessian import hessian
    >>> torch.manual_seed(0) and None
    >>> model = nn.Linear(5, 3).double()    # softmax regression: a convex loss, H >= 0
    >>> X, y = torch.randn(64, 5, dtype=torch.float64), torch.randint(0, 3, (64,))
    >>> h = hessian(model, nn.CrossEntropyLoss(), data=(X, y), cuda=False)
    >>> top, vecs = h.eigenvalues(top_n=2, tol=1e-8)
    >>> len(top), len(vecs[0]), [tuple(t.shape) for t in vecs[0]]
    (2, 2, [(3, 5), (3,)])
    >>> H = h.operator.to_dense()                     # 18 x 18: check against dense
    >>> dense = torch.linalg.eigvalsh(H).flip(0)[:2]
    >>> np.allclose(top, dense.tolist(), rtol=1e-6)
    True
    >>> samples = h.trace(maxIter=200, tol=float("-inf"))   # never stop early
    >>> len(samples), bool(abs(np.mean(samples) - H.trace()) < 0.1 * H.trace())
    (200, True)
    >>> nodes, weights = h.density(iter=10, n_v=2)
    >>> len(nodes), len(nodes[0]), round(sum(weights[0]), 12)
    (2, 10, 1.0)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from landscape_fast.linalg.eigsh import eigsh
from landscape_fast.linalg.probes import apply_blocks, probe_block
from landscape_fast.linalg.result import EigenResult
from landscape_fast.linalg.slq import spectral_density
from landscape_fast.operators.hessian import Hessian

__all__ = ["hessian"]

#: PyHessian's regularisation of the relative change in its stopping rules.
_EPS = 1e-6


def _draw_seed() -> int:
    """A seed from torch's global generator (PyHessian's randomness comes from it)."""
    return int(torch.randint(0, 2**31 - 1, (), dtype=torch.int64).item())


def pyhessian_trace_stop(samples: Sequence[float], tol: float) -> int | None:
    """Number of samples after which PyHessian's ``trace`` stops (``None``: it does not).

    PyHessian stops after sample ``i`` (1-based) when ``|m_i - m_{i-1}| / (m_{i-1} + 1e-6) <
    tol`` with ``m_i`` the running mean and ``m_0 = 0`` (note: no absolute value in the
    denominator, so a negative running mean stops at the next sample).

    Example:
        >>> pyhessian_trace_stop([1.0, 3.0, 2.0, 2.0], 1e-3), pyhessian_trace_stop([1.0, 3.0], 1e-3)
        (3, None)
    """
    total, prev = 0.0, 0.0
    for i, x in enumerate(samples, start=1):
        total += float(x)
        mean = total / i
        if abs(mean - prev) / (prev + _EPS) < tol:
            return i
        prev = mean
    return None


class hessian:  # noqa: N801 - PyHessian's class name
    """PyHessian's ``hessian`` on landscape_fast (see the module docstring).

    Args:
        model: The model; never modified (parameters, buffers, mode, ``.grad``).
        criterion: ``criterion(outputs, targets)``, a mean-reduced loss.
        data: One ``(inputs, targets)`` batch ...
        dataloader: ... or a re-iterable of ``(inputs, targets)`` batches (a
            ``DataLoader``); exactly one of the two.
        cuda: PyHessian's device flag. The computation runs on the model's device; ``True``
            without CUDA, or a flag that disagrees with the model's device, warns.
        **operator_kwargs: Passed to :class:`landscape_fast.Hessian` (e.g. ``dtype=
            torch.float64``, ``batch_size=`` to split a large ``data`` batch, ``hvp=``).
            ``batch_norm`` defaults to ``"eval"`` and ``dropout`` to ``False`` (eval mode,
            as PyHessian).

    Attributes:
        operator: The :class:`landscape_fast.Hessian` (use it with any ``lf`` solver).
        model, criterion, data, full_dataset, device, params: As in PyHessian (``device`` is
            ``"cuda"`` or ``"cpu"``: where the computation runs).
        last_eigen_result: The :class:`~landscape_fast.EigenResult` of the last
            :meth:`eigenvalues` call (``None`` before).

    Raises:
        ValueError: Unless exactly one of ``data`` and ``dataloader`` is given.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: Any,
        data: Any = None,
        dataloader: Any = None,
        cuda: bool = True,
        **operator_kwargs: Any,
    ) -> None:
        if (data is None) == (dataloader is None):
            raise ValueError("hessian: pass exactly one of data=(inputs, targets) or dataloader=")
        if data is not None:
            if not (isinstance(data, tuple | list) and len(data) == 2):
                raise TypeError(
                    "hessian: data must be one (inputs, targets) batch; pass several batches "
                    "as dataloader="
                )
            source: Any = (data[0], data[1])
        else:
            source = dataloader
        operator_kwargs.setdefault("batch_norm", "eval")
        operator_kwargs.setdefault("dropout", False)
        self.operator = Hessian(model, criterion, source, **operator_kwargs)
        self.model = model
        self.criterion = criterion
        self.data = source
        self.full_dataset = dataloader is not None
        self.space = self.operator.space
        self.params = list(self.space.params)
        self.device = self.operator.device.type
        self.last_eigen_result: EigenResult | None = None
        self._check_device(bool(cuda))

    def _check_device(self, cuda: bool) -> None:
        where = self.operator.device
        if cuda and not torch.cuda.is_available():
            warnings.warn(
                "hessian: cuda=True but CUDA is not available; running on the CPU (PyHessian "
                "would fail here)",
                UserWarning,
                stacklevel=3,
            )
        elif cuda != (where.type == "cuda"):
            warnings.warn(
                f"hessian: cuda={cuda} but the model is on {where}; running on {where} (the "
                "model is never moved; move it with model.to(...) first)",
                UserWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ helpers
    def _vectors(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """A flat ``(p,)`` vector as a list of per-parameter tensors (new memory)."""
        return [t.clone() for t in self.space.views(flat)]

    def dataloader_hv_product(self, v: Sequence[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
        """``(vᵀHv, Hv)`` for a list of per-parameter tensors ``v`` (PyHessian's method; one
        pass over the data, whether it came as ``data`` or ``dataloader``)."""
        op = self.operator
        flat = self.space.flatten(list(v), dtype=op.dtype, device=op.device)
        Hv = op.matmat(flat[None])[0]
        return float(flat.double() @ Hv.double()), self._vectors(Hv)

    # ------------------------------------------------------------------ PyHessian API
    def eigenvalues(
        self,
        maxIter: int = 100,  # noqa: N803 - PyHessian's argument name
        tol: float = 1e-3,
        top_n: int = 1,
        *,
        which: str = "LM",
        seed: int | None = None,
    ) -> tuple[list[float], list[list[torch.Tensor]]]:
        """The ``top_n`` eigenvalues of largest magnitude and their eigenvectors.

        Args:
            maxIter: Budget: at most ``maxIter * top_n`` Hessian-vector products (PyHessian's
                worst case), plus ``top_n`` to verify the residuals.
            tol: Converged when ``‖Hv − λv‖ ≤ tol · max|θ|`` (in (0, 1); see the module
                docstring for how this relates to PyHessian's relative-change rule).
            top_n: Number of eigenpairs.
            which: ``"LM"`` (largest magnitude, what power iteration finds) or ``"LA"``
                (largest algebraic); also ``"SA"``.
            seed: Seed of the start vector (default: drawn from torch's global generator).

        Returns:
            ``(eigenvalues, eigenvectors)``: ``top_n`` floats by decreasing magnitude (for
            ``"LA"``: decreasing value), and for each a list of per-parameter tensors.

        Warns:
            UserWarning: If the budget ran out before every pair converged.
        """
        top_n, maxIter = int(top_n), int(maxIter)
        if top_n < 1:
            raise ValueError(f"eigenvalues: top_n must be >= 1, got {top_n}")
        if maxIter < 1:
            raise ValueError(f"eigenvalues: maxIter must be >= 1, got {maxIter}")
        if not 0 < tol < 1:
            raise ValueError(f"eigenvalues: tol must be in (0, 1), got {tol}")
        seed = _draw_seed() if seed is None else int(seed)
        budget = maxIter * top_n
        res = eigsh(self.operator, k=top_n, which=which, tol=tol, max_matvecs=budget, seed=seed)
        self.last_eigen_result = res
        if res.eigenvalues.numel() < top_n or not bool(res.converged.all()):
            bad = int((~res.converged).sum()) + top_n - res.eigenvalues.numel()
            warnings.warn(
                f"eigenvalues: {bad} of {top_n} eigenpairs did not reach the residual "
                f"tolerance tol={tol:g} (relative to the largest eigenvalue) within maxIter * "
                f"top_n = {budget} Hessian-vector products; returning the best estimates "
                f"(residuals {[f'{r:.2e}' for r in res.residuals.tolist()]}). Raise maxIter.",
                UserWarning,
                stacklevel=2,
            )
        values = [float(x) for x in res.eigenvalues.tolist()]
        vectors = [self._vectors(row) for row in res.eigenvectors]
        return values, vectors

    def trace(
        self,
        maxIter: int = 100,  # noqa: N803 - PyHessian's argument name
        tol: float = 1e-3,
        *,
        seed: int | None = None,
    ) -> list[float]:
        """Hutchinson samples ``zᵀHz`` (Rademacher ``z``) until PyHessian's stopping rule.

        Args:
            maxIter: Most samples (one Hessian-vector product each).
            tol: PyHessian's relative-change tolerance on the running mean (not an error
                bar; see the module docstring).
            seed: Probe seed (default: drawn from torch's global generator). The samples are
                those of ``lf.trace(self.operator, method="hutchinson", seed=seed)``.

        Returns:
            The list of samples; ``np.mean`` of it estimates ``tr(H)``.
        """
        maxIter = int(maxIter)
        if maxIter < 1:
            raise ValueError(f"trace: maxIter must be >= 1, got {maxIter}")
        seed = _draw_seed() if seed is None else int(seed)
        op = self.operator
        p = op.shape[0]
        block = max(1, int(getattr(op, "preferred_block_size", 1)))
        samples: list[float] = []
        while len(samples) < maxIter:
            first = len(samples)
            idx = range(first, min(first + block, maxIter))
            Z = probe_block(
                p, idx, seed=seed, stream="probe", kind="rademacher", dtype=op.dtype,
                device=op.device,
            )  # fmt: skip
            AZ = apply_blocks(op, Z, len(idx), what="trace: probe", first=first)
            samples.extend((Z.to(torch.float64) * AZ).sum(dim=1).tolist())
            stop = pyhessian_trace_stop(samples, tol)
            if stop is not None:
                return samples[:stop]
        return samples

    def density(
        self,
        iter: int = 100,  # noqa: A002 - PyHessian's argument name
        n_v: int = 1,
        *,
        seed: int | None = None,
    ) -> tuple[list[list[float]], list[list[float]]]:
        """Stochastic Lanczos quadrature: per probe, nodes and weights.

        Args:
            iter: Lanczos steps per probe (capped at the number of parameters, with a
                warning).
            n_v: Number of Rademacher probes.
            seed: Probe seed (default: drawn from torch's global generator).

        Returns:
            ``(eigen_list_full, weight_list_full)``: ``n_v`` lists of nodes (ascending) and
            ``n_v`` lists of their weights (each summing to 1).
        """
        seed = _draw_seed() if seed is None else int(seed)
        with warnings.catch_warnings():
            # PyHessian's default is one probe; lf warns that one probe has no standard error.
            warnings.filterwarnings("ignore", message=r"spectral_density: num_probes=1")
            d = spectral_density(self.operator, num_probes=int(n_v), num_steps=int(iter), seed=seed)
        eigen_list_full, weight_list_full = [], []
        for row in range(d.nodes.shape[0]):
            m = int(d.steps[row])
            eigen_list_full.append(d.nodes[row, :m].tolist())
            weight_list_full.append(d.weights[row, :m].tolist())
        return eigen_list_full, weight_list_full
