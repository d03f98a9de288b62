"""Helpers for testing landscape_fast and code built on it: tolerances and comparisons.

Example:
    >>> import torch
    >>> from landscape_fast.testing import assert_close, random_orthonormal_rows
    >>> Q = random_orthonormal_rows(3, 10, torch.float64)
    >>> assert_close(Q @ Q.T, torch.eye(3, dtype=torch.float64), torch.float64)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from landscape_fast.operators.base import CurvatureOperator
from landscape_fast.operators.dense import DenseOperator
from landscape_fast.ops.block_reorth import BASIS_DTYPES

#: Every ``(block dtype, basis dtype)`` pair ``block_reorth`` supports, and short test ids.
REORTH_DTYPE_PAIRS: list[tuple[torch.dtype, torch.dtype]] = [
    (w, q) for w, qs in BASIS_DTYPES.items() for q in qs
]
_SHORT = {torch.float64: "f64", torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
REORTH_DTYPE_IDS: list[str] = [
    _SHORT[w] if w == q else f"{_SHORT[w]}-{_SHORT[q]}" for w, q in REORTH_DTYPE_PAIRS
]
#: ``dtype -> (atol, rtol)`` for results computed in that dtype compared with a float64
#: oracle, on well-conditioned inputs of unit scale. Loosen per test only with a comment
#: giving the measured error.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    dtype: torch.dtype,
    *,
    scale: float = 1.0,
    what: str = "",
) -> None:
    """Assert ``|actual - expected| <= scale * (atol + rtol |expected|)`` elementwise.

    The tolerance comes from :data:`TOLERANCES` for ``dtype`` (the precision the result
    was computed in). On failure the message gives the worst element and its error.
    """
    atol, rtol = TOLERANCES[dtype]
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {tuple(a.shape)} != expected {tuple(e.shape)}")
    if a.numel() == 0:
        return
    err = (a - e).abs()
    bound = scale * (atol + rtol * e.abs())
    bad = err > bound
    if bad.any() or not torch.isfinite(a).all():
        idx = int(torch.argmax(err - bound))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.numel()} elements exceed the {dtype} tolerance "
            f"(x{scale}); worst at flat index {idx}: actual {a.flatten()[idx]:.6e}, expected "
            f"{e.flatten()[idx]:.6e}, error {err.flatten()[idx]:.3e} > {bound.flatten()[idx]:.3e}"
        )


def random_orthonormal_rows(
    m: int, p: int, dtype: torch.dtype = torch.float64, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``(m, p)`` matrix with orthonormal rows (computed in float64, then cast)."""
    if m == 0:
        return torch.zeros((0, p), dtype=dtype)
    A = torch.randn(p, m, dtype=torch.float64, generator=generator)
    return torch.linalg.qr(A)[0].T.contiguous().to(dtype)


def operator_with_spectrum(
    eigenvalues: Sequence[float] | torch.Tensor,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> tuple[DenseOperator, torch.Tensor]:
    """A :class:`DenseOperator` with the given spectrum in a random orthonormal basis.

    Returns:
        ``(operator, A)`` with ``A`` the float64 matrix ``Uᵀ diag(λ) U``.
    """
    eigs = torch.as_tensor(eigenvalues, dtype=torch.float64)
    U = random_orthonormal_rows(len(eigs), len(eigs), generator=torch.Generator().manual_seed(seed))
    A = (U.T * eigs) @ U
    A = (A + A.T) / 2
    return DenseOperator(A.to(dtype)), A


# ---------------------------------------------------------------------------------------------
# Curvature oracles (DESIGN.md, "What correct means here")
#
# Deliberately independent of landscape_fast.operators' engines and ModelFunction: plain
# ``torch.autograd.functional.hessian`` (reverse-over-reverse) of the sample-weighted mean loss
# over the flat float64 parameter vector, through ``torch.func.functional_call`` on a float64
# deep copy of the model. Never ``torch.func.hessian`` (jacfwd∘jacrev is silently wrong
# through affine LayerNorm in torch 2.13).
# ---------------------------------------------------------------------------------------------

_ORACLE_LOSSES = {
    "ce": torch.nn.functional.cross_entropy,
    "cross_entropy": torch.nn.functional.cross_entropy,
    "mse": torch.nn.functional.mse_loss,
}


class _OracleForward(torch.nn.Module):
    """``batch -> outputs`` / ``batch -> mean loss`` (pair or closure) with the model as ``m``."""

    def __init__(self, model: torch.nn.Module, loss_fn, mode: str) -> None:
        super().__init__()
        self.m = model
        self.loss_fn = loss_fn
        self.mode = mode  # "outputs", "pair" or "closure"

    def forward(self, batch):
        if self.mode == "closure":
            return self.loss_fn(self.m, batch)
        inputs = batch[0]
        out = self.m(**inputs) if isinstance(inputs, dict) else self.m(inputs)
        return out if self.mode == "outputs" else self.loss_fn(out, batch[1])


def _math_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def _oracle_batches(batches) -> list:
    """A list of batches; a single ``(X, y)`` pair of tensors counts as one batch."""
    if (
        isinstance(batches, tuple)
        and len(batches) == 2
        and all(isinstance(t, torch.Tensor) for t in batches)
    ):
        return [batches]
    if isinstance(batches, torch.Tensor | dict):
        return [batches]
    return list(batches)


def _to_f64(batch):
    from torch.utils._pytree import tree_map

    return tree_map(
        lambda t: t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t,
        batch,
    )


def _batch_len(batch) -> int:
    from torch.utils._pytree import tree_flatten

    return int(next(t for t in tree_flatten(batch)[0] if isinstance(t, torch.Tensor)).shape[0])


class _Oracle:
    """A float64 deep copy of the model as a function of one flat parameter vector."""

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn,
        batches,
        params: Sequence[str] | None = None,
        *,
        batch_norm: str = "eval",
        batch_size_fn=None,
    ) -> None:
        import copy

        if batch_norm not in ("eval", "batch"):
            raise ValueError(f"batch_norm must be 'eval' or 'batch', got {batch_norm!r}")
        m = copy.deepcopy(model).double().eval()
        for mod in m.modules():
            if batch_norm == "batch" and isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.track_running_stats = False  # batch statistics, running stats untouched
                mod.train()
        named = dict(m.named_parameters())
        if params is None:
            self.names = [n for n, p in named.items() if p.requires_grad]
        else:
            wanted = set(params)
            self.names = [n for n in named if n in wanted]
            if len(self.names) != len(wanted):
                raise ValueError(f"unknown parameter names {sorted(wanted - set(self.names))}")
        self.shapes = [named[n].shape for n in self.names]
        self.numels = [named[n].numel() for n in self.names]
        self.theta0 = torch.cat([named[n].detach().reshape(-1) for n in self.names])
        self.batches = [_to_f64(b) for b in _oracle_batches(batches)]
        size = batch_size_fn or _batch_len
        self.sizes = [int(size(b)) for b in self.batches]
        self.total = sum(self.sizes)
        from landscape_fast.operators.model_function import BatchLoss

        fn = _ORACLE_LOSSES[loss_fn] if isinstance(loss_fn, str) else loss_fn
        self.closure_forced = isinstance(loss_fn, BatchLoss)
        self.loss_fn = fn
        self.pair = _OracleForward(m, fn, "pair")
        self.closure = _OracleForward(m, fn, "closure")
        self.forward_outputs = _OracleForward(m, fn, "outputs")
        self.model = m

    @property
    def p(self) -> int:
        return int(self.theta0.numel())

    def mapping(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for n, shape, k in zip(self.names, self.shapes, self.numels):
            out["m." + n] = theta[start : start + k].view(shape)
            start += k
        return out

    def _is_closure(self, batch) -> bool:
        return self.closure_forced or not (isinstance(batch, tuple | list) and len(batch) == 2)

    def batch_loss(self, theta: torch.Tensor, batch) -> torch.Tensor:
        module = self.closure if self._is_closure(batch) else self.pair
        with _math_attention():  # the fused CPU kernels have no double backward
            return torch.func.functional_call(module, self.mapping(theta), (batch,))

    def loss(self, theta: torch.Tensor, weights: str = "samples") -> torch.Tensor:
        """Sample-weighted mean loss (``weights="batches"``: every batch counts equally)."""
        total = theta.new_zeros(())
        for batch, n in zip(self.batches, self.sizes):
            w = n / self.total if weights == "samples" else 1.0 / len(self.batches)
            total = total + w * self.batch_loss(theta, batch).reshape(())
        return total

    def gradient(self, theta: torch.Tensor) -> torch.Tensor:
        t = theta.detach().clone().requires_grad_()
        (g,) = torch.autograd.grad(self.loss(t), t, allow_unused=True)
        return torch.zeros_like(t) if g is None else g

    def outputs(self, theta: torch.Tensor, batch) -> torch.Tensor:
        """Model outputs of a pair batch at ``theta``."""
        with _math_attention():
            return torch.func.functional_call(self.forward_outputs, self.mapping(theta), (batch,))


def dense_hessian(
    model: torch.nn.Module,
    loss_fn,
    batches,
    params: Sequence[str] | None = None,
    *,
    batch_norm: str = "eval",
    weights: str = "samples",
    batch_size_fn=None,
) -> torch.Tensor:
    r"""Dense float64 Hessian of the sample-weighted mean loss (the test oracle).

    .. math:: H = \nabla^2_\theta \frac{1}{N}\sum_b n_b L_b(\theta)

    over the parameters named in ``params`` (default: every parameter with
    ``requires_grad``, in ``named_parameters()`` order), by reverse-over-reverse
    (``torch.autograd.functional.hessian``) on a float64 deep copy of ``model`` in eval mode
    (``batch_norm="batch"``: BatchNorm layers use batch statistics and never update their
    running statistics). ``batches``: an ``(X, y)`` pair or a list of batches; pair batches
    use ``loss_fn(outputs, targets)``, dict/tensor batches (or a ``BatchLoss``) use the
    closure ``loss_fn(model, batch)``. ``weights="batches"`` weights every batch equally (the
    wrong answer for a short last batch; for tests that show the difference).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Linear(3, 1, bias=False)
        >>> X = torch.randn(5, 3, dtype=torch.float64)
        >>> H = dense_hessian(model, "mse", (X, torch.zeros(5, 1)))
        >>> torch.allclose(H, 2 * X.T @ X / 5)
        True
    """
    o = _Oracle(model, loss_fn, batches, params, batch_norm=batch_norm, batch_size_fn=batch_size_fn)
    H = torch.autograd.functional.hessian(lambda t: o.loss(t, weights), o.theta0.clone())
    return H.detach()


def hessian_matmat(
    model: torch.nn.Module,
    loss_fn,
    batches,
    V: torch.Tensor,
    params: Sequence[str] | None = None,
    *,
    batch_norm: str = "eval",
    batch_size_fn=None,
) -> torch.Tensor:
    r"""Rows :math:`H v_j` (float64) of the oracle Hessian, for models too big for
    :func:`dense_hessian`: one double backward of :math:`\nabla L \cdot v_j` per row."""
    o = _Oracle(model, loss_fn, batches, params, batch_norm=batch_norm, batch_size_fn=batch_size_fn)
    t = o.theta0.clone().requires_grad_()
    (g,) = torch.autograd.grad(o.loss(t), t, create_graph=True)
    rows = [torch.autograd.grad(g, t, v.double(), retain_graph=True)[0] for v in V]
    return torch.stack(rows).detach()


def fd_hessian_matmat(
    model: torch.nn.Module,
    loss_fn,
    batches,
    V: torch.Tensor,
    params: Sequence[str] | None = None,
    *,
    batch_norm: str = "eval",
    batch_size_fn=None,
    h: float = 1e-5,
) -> torch.Tensor:
    r"""Rows :math:`(\nabla L(\theta + h\hat v) - \nabla L(\theta - h\hat v)) \|v\| / 2h`
    (central differences of float64 gradients, ``\hat v = v / \|v\|``): a first-order-only
    cross-check of the oracle, error :math:`O(h^2)` plus rounding :math:`O(\epsilon / h)`."""
    o = _Oracle(model, loss_fn, batches, params, batch_norm=batch_norm, batch_size_fn=batch_size_fn)
    rows = []
    for v in V.double():
        nv = float(v.norm())
        u = v / nv
        rows.append((o.gradient(o.theta0 + h * u) - o.gradient(o.theta0 - h * u)) * nv / (2 * h))
    return torch.stack(rows)


def fd_hessian_check(
    H: torch.Tensor,
    model: torch.nn.Module,
    loss_fn,
    batches,
    params: Sequence[str] | None = None,
    *,
    batch_norm: str = "eval",
    num_vectors: int = 3,
    h: float = 1e-5,
    seed: int = 0,
) -> float:
    """Relative Frobenius error between ``V H`` and finite differences of the gradient along
    ``num_vectors`` random directions (columns of ``H`` when ``num_vectors`` >= p)."""
    p = H.shape[0]
    if num_vectors >= p:
        V = torch.eye(p, dtype=torch.float64)
    else:
        V = torch.randn(
            num_vectors, p, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
        )
    fd = fd_hessian_matmat(model, loss_fn, batches, V, params, batch_norm=batch_norm, h=h)
    exact = V @ H.double()
    return rel_error(fd, exact)


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``‖actual − expected‖_F / ‖expected‖_F`` in float64."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((a - e).norm() / e.norm().clamp_min(1e-300))


def dense_gradient(
    model: torch.nn.Module,
    loss_fn,
    batches,
    params: Sequence[str] | None = None,
    *,
    batch_norm: str = "eval",
    batch_size_fn=None,
) -> tuple[float, torch.Tensor]:
    """Sample-weighted mean loss and its float64 gradient (plain autograd)."""
    o = _Oracle(model, loss_fn, batches, params, batch_norm=batch_norm, batch_size_fn=batch_size_fn)
    t = o.theta0.clone().requires_grad_()
    loss = o.loss(t)
    (g,) = torch.autograd.grad(loss, t)
    return float(loss.detach()), g.detach()


def dense_ggn(
    model: torch.nn.Module,
    loss_fn,
    batches,
    params: Sequence[str] | None = None,
    *,
    V: torch.Tensor | None = None,
    batch_norm: str = "eval",
) -> torch.Tensor:
    r"""Dense float64 GGN :math:`\frac1N\sum_b n_b J_b^\top (\nabla^2_f L_b) J_b` (pair batches),
    or its rows ``V G`` for a ``(k, p)`` block ``V`` (models too big for a dense ``p × p``).

    :math:`J_b` is the Jacobian of the flattened outputs (``torch.func.jacrev``, no nested
    forward mode), :math:`\nabla^2_f L_b` the Hessian of ``loss_fn(outputs, targets)`` in the
    outputs (``torch.autograd.functional.hessian``).
    """
    o = _Oracle(model, loss_fn, batches, params, batch_norm=batch_norm)
    fn = o.loss_fn
    G = torch.zeros(o.p, o.p, dtype=torch.float64) if V is None else torch.zeros_like(V.double())
    for batch, n in zip(o.batches, o.sizes):
        out0 = o.outputs(o.theta0, batch).detach()
        J = torch.func.jacrev(lambda t, b=batch: o.outputs(t, b).reshape(-1))(o.theta0.clone())
        Hl = torch.autograd.functional.hessian(
            lambda z, b=batch, s=out0.shape: fn(z.view(s), b[1]), out0.reshape(-1).clone()
        )
        if V is None:
            G += (n / o.total) * (J.T @ Hl @ J)
        else:
            G += (n / o.total) * ((V.double() @ J.T) @ Hl @ J)
    return G


def per_sample_grads(
    model: torch.nn.Module,
    loss_fn,
    batches,
    params: Sequence[str] | None = None,
) -> torch.Tensor:
    """``(N, p)`` float64 gradients of the loss of each single sample (a batch of one), one
    plain backward per sample, in eval mode."""
    from torch.utils._pytree import tree_map

    o = _Oracle(model, loss_fn, batches, params)
    rows = []
    for batch, n in zip(o.batches, o.sizes):
        for i in range(n):
            sample = tree_map(
                lambda x, i=i: x[i : i + 1] if isinstance(x, torch.Tensor) else x, batch
            )
            t = o.theta0.clone().requires_grad_()
            (g,) = torch.autograd.grad(o.batch_loss(t, sample).reshape(()), t, allow_unused=True)
            rows.append(torch.zeros_like(t) if g is None else g)
    return torch.stack(rows).detach()


# ---------------------------------------------------------------------------------------
# Layers whose derivatives are incomplete, for testing that the engines notice.
class _RaisesOnBackward(torch.autograd.Function):
    """Identity whose derivative is missing (like a fused attention kernel's backward)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("derivative for fused_backward is not implemented")


class FirstOrderTanhFn(torch.autograd.Function):
    """tanh whose backward has no derivative: double backward raises (fused kernels)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return _RaisesOnBackward.apply(g * (1 - y * y))


class OnceDifferentiableTanhFn(torch.autograd.Function):
    """tanh with a ``@once_differentiable`` backward: double backward through it silently
    drops terms in torch (the graph is cut), unless the engine detects it."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class TanhVia(nn.Module):
    """``nn.Tanh`` computed by one of the functions above (``fn.apply``)."""

    def __init__(self, fn: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn.apply(x)


class HouseholderSpectrumOperator(CurvatureOperator):
    r"""A ``p × p`` operator with a given spectrum whose products cost O(kp), for large p.

    :math:`A = H^\top \mathrm{diag}(\lambda) H` with :math:`H = (I - 2uu^\top)(I - 2ww^\top)`
    two random Householder reflections, so the eigenvectors are dense (not coordinate axes)
    and known: the rows of :math:`H`.

    Example:
        >>> import torch
        >>> op = HouseholderSpectrumOperator(torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64))
        >>> V = op.eigenvectors()
        >>> torch.allclose(op.matmat(V), torch.diag(op.eigenvalues) @ V)
        True
    """

    def __init__(
        self, eigenvalues: torch.Tensor, *, seed: int = 0, dtype: torch.dtype = torch.float64
    ) -> None:
        eigs = torch.as_tensor(eigenvalues, dtype=torch.float64)
        super().__init__(len(eigs), dtype, "cpu")
        gen = torch.Generator().manual_seed(seed)
        u = torch.randn(len(eigs), generator=gen, dtype=torch.float64)
        w = torch.randn(len(eigs), generator=gen, dtype=torch.float64)
        self.u, self.w = (u / u.norm()).to(dtype), (w / w.norm()).to(dtype)
        self.eigenvalues = eigs
        self._d = eigs.to(dtype)

    def _reflect(self, V: torch.Tensor) -> torch.Tensor:
        """``V H`` for rows ``V`` (``H`` symmetric: ``H = R_u R_w``, so ``V H = (V R_u) R_w``)."""
        V = V - 2 * (V @ self.u)[:, None] * self.u
        return V - 2 * (V @ self.w)[:, None] * self.w

    def _reflect_t(self, V: torch.Tensor) -> torch.Tensor:
        """``V Hᵀ = (V R_w) R_u``."""
        V = V - 2 * (V @ self.w)[:, None] * self.w
        return V - 2 * (V @ self.u)[:, None] * self.u

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self._reflect(self._reflect_t(V) * self._d)

    def eigenvectors(self) -> torch.Tensor:
        """Rows: the eigenvector of each eigenvalue, in :attr:`eigenvalues` order."""
        return self._reflect(torch.eye(self.shape[0], dtype=self.dtype))


def softmax_ce_inputs(
    k: int,
    N: int,
    C: int,
    udtype: torch.dtype,
    zdtype: torch.dtype,
    seed: int = 0,
    kind: str = "random",
    device: str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits ``(N, C)``, tangents ``(k, N, C)`` and weights ``(N,)`` for the
    ``softmax_ce_hvp`` kernel tests. ``kind``: ``"random"``, ``"masked"`` (−inf logits,
    a fully masked last row), ``"zero_weight"`` (a NaN row with weight 0) or ``"huge"``
    (logits of size 1e4). Weights are float64 for float64 tangents, else float32."""
    g = torch.Generator().manual_seed(seed)
    z = 3 * torch.randn(N, C, dtype=torch.float64, generator=g)
    U = torch.randn(k, N, C, dtype=torch.float64, generator=g)
    w = torch.rand(N, dtype=torch.float64, generator=g) + 0.5
    if kind == "masked":
        z[torch.rand(N, C, generator=g) < 0.5] = float("-inf")
        z[-1] = float("-inf")
    elif kind == "zero_weight":
        w[0] = 0.0
        z[0] = float("nan")
        U[:, 0] = float("nan")
    elif kind == "huge":
        z = 1e4 * torch.randn(N, C, dtype=torch.float64, generator=g)
    acc = torch.float64 if udtype == torch.float64 else torch.float32
    return z.to(device, zdtype), U.to(device, udtype), w.to(device, acc)
