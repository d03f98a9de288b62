r"""``softmax_ce_hvp``: the softmax-cross-entropy Hessian w.r.t. the logits, times tangents.

A Gauss-Newton product :math:`J^\top H_\ell J V` over a classifier or language model needs
the Hessian of the loss with respect to the logits applied to ``k`` logit tangents per
sample. For cross-entropy that Hessian is, per sample :math:`n` with
:math:`p_n = \mathrm{softmax}(z_n)`,

.. math::

    H_n = \frac{\partial^2 \ell(z_n, y_n)}{\partial z_n^2} = \operatorname{diag}(p_n)
    - p_n p_n^\top \qquad(\text{independent of the label } y_n),

and the op computes, for every tangent :math:`j` and sample :math:`n`,

.. math::

    \mathrm{out}_{jn} = w_n H_n u_{jn} = w_n\, p_n \odot \bigl(u_{jn} - (p_n^\top u_{jn})
    \mathbf{1}\bigr).

:math:`H_n` is symmetric positive semi-definite with :math:`H_n \mathbf{1} = 0`. The
weights :math:`w_n` carry the :math:`1/N_{\mathrm{total}}` of a mean loss and 0 for ignored
samples; a row with :math:`w_n = 0` is exactly zero (its logits and tangents are not read,
so padding may hold anything). A row whose logits are all :math:`-\infty` has
:math:`p_n = 0` and a zero output; masked classes (:math:`z_{nc} = -\infty`) get
:math:`p_{nc} = 0`. NaN or :math:`+\infty` logits give NaN rows.

The fused kernels never form an :math:`(N, C, C)` matrix nor any :math:`(k, N, C)`
temporary besides the output: per row they compute the maximum and the normalizer of the
softmax once, then per tangent the dot :math:`s = p^\top u` and the output
:math:`w\,p \odot (u - s)`. At a language-model vocabulary (:math:`C = 32000`) that is about
one read of ``U`` and one write of ``out``, against five or more ``(k, N, C)`` passes and
temporaries for the same formula in eager PyTorch (see ``bench/bench_softmax_ce_hvp.py``).

Backends (see :mod:`landscape_fast._backend`): ``reference`` (pure PyTorch, the oracle),
``cpp`` (C++/OpenMP), ``triton`` and ``cuda`` (GPU). All return the same result up to
rounding.

Example:
    >>> import torch
    >>> import torch.nn.functional as F
    >>> from landscape_fast.ops import softmax_ce_hvp
    >>> z = torch.randn(4, 5, dtype=torch.float64)
    >>> U = torch.randn(3, 4, 5, dtype=torch.float64)
    >>> HU = softmax_ce_hvp(z, U, weights=torch.full((4,), 0.25, dtype=torch.float64))
    >>> HU.shape
    torch.Size([3, 4, 5])
    >>> # the same product by double backward of the mean cross-entropy
    >>> zg = z.clone().requires_grad_()
    >>> g = torch.autograd.grad(F.cross_entropy(zg, torch.tensor([0, 1, 2, 3])), zg,
    ...                         create_graph=True)[0]
    >>> torch.allclose(torch.autograd.grad(g, zg, U[1])[0], HU[1])
    True
    >>> bool(softmax_ce_hvp(z, torch.ones(4, 5, dtype=torch.float64)).abs().max() < 1e-15)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from landscape_fast import _backend
from landscape_fast.reference.softmax_ce_hvp import acc_dtype

#: Tangent dtypes every backend accepts (the output has the tangents' dtype), and the
#: logits dtypes allowed for each. Arithmetic is float64 for float64 tangents, else float32.
LOGIT_DTYPES: dict[torch.dtype, tuple[torch.dtype, ...]] = {
    torch.float64: (torch.float64,),
    torch.float32: (torch.float32, torch.bfloat16, torch.float16),
    torch.bfloat16: (torch.float32, torch.bfloat16, torch.float16),
    torch.float16: (torch.float32, torch.bfloat16, torch.float16),
}

_OP = "softmax_ce_hvp"


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two contiguous tensors share any byte of memory."""
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device:
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    a1, b1 = a0 + a.numel() * a.element_size(), b0 + b.numel() * b.element_size()
    return a0 < b1 and b0 < a1


def check_inputs(
    logits: torch.Tensor,
    U: torch.Tensor,
    weights: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> None:
    """Raise a clear error unless the arguments are valid ``softmax_ce_hvp`` inputs."""
    named = [("logits", logits), ("U", U), ("weights", weights), ("out", out)]
    for name, t in named:
        if (t is not None or name in ("logits", "U")) and not isinstance(t, torch.Tensor):
            raise TypeError(f"{_OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if logits.dim() != 2:
        raise ValueError(
            f"{_OP}: logits must be (N, C) (one row of class scores per sample); got shape "
            f"{tuple(logits.shape)}. Flatten batch and sequence dimensions first, e.g. "
            "logits.reshape(-1, C)."
        )
    if U.dim() not in (2, 3) or tuple(U.shape[-2:]) != tuple(logits.shape):
        raise ValueError(
            f"{_OP}: U must be (N, C) (one tangent) or (k, N, C) (k tangents) with (N, C) = "
            f"logits.shape = {tuple(logits.shape)}; got U.shape={tuple(U.shape)}"
        )
    if logits.shape[1] == 0:
        raise ValueError(f"{_OP}: C = 0 classes; the softmax of an empty row is undefined")
    N = logits.shape[0]
    if weights is not None and (weights.dim() != 1 or weights.shape[0] != N):
        raise ValueError(
            f"{_OP}: weights must be a vector of N = {N} per-sample weights; got shape "
            f"{tuple(weights.shape)}"
        )
    if out is not None and out.shape != U.shape:
        raise ValueError(f"{_OP}: out must have U's shape {tuple(U.shape)}; got {tuple(out.shape)}")
    devices = {t.device for _, t in named if t is not None}
    if len(devices) > 1:
        where = ", ".join(f"{n} on {t.device}" for n, t in named if t is not None)
        raise ValueError(f"{_OP}: all tensors must be on one device; got {where}")
    if U.dtype not in LOGIT_DTYPES:
        raise TypeError(
            f"{_OP}: U must be float32, float64, bfloat16 or float16, got {U.dtype}; the "
            "output has U's dtype"
        )
    if logits.dtype not in LOGIT_DTYPES[U.dtype]:
        allowed = ", ".join(str(d) for d in LOGIT_DTYPES[U.dtype])
        hint = (
            "cast the logits with logits.double()"
            if U.dtype == torch.float64
            else "float64 logits need float64 tangents: cast one of them"
        )
        raise TypeError(
            f"{_OP}: {U.dtype} tangents need logits of dtype {allowed}; got {logits.dtype} ({hint})"
        )
    if weights is not None and not weights.dtype.is_floating_point:
        raise TypeError(
            f"{_OP}: weights must be floating point, got {weights.dtype}; e.g. "
            "mask.to(logits.dtype) / mask.sum()"
        )
    if out is not None:
        if out.dtype != U.dtype:
            raise TypeError(f"{_OP}: out must have U's dtype {U.dtype}, got {out.dtype}")
        if not out.is_contiguous():
            raise ValueError(
                f"{_OP}: out must be contiguous, got strides {out.stride()} for shape "
                f"{tuple(out.shape)}"
            )
    if not U.is_contiguous():
        raise ValueError(
            f"{_OP}: U must be contiguous (row-major (k, N, C)); got strides {U.stride()} for "
            f"shape {tuple(U.shape)}. Call U.contiguous() first (a silent copy of the largest "
            "operand would double its memory)."
        )
    for name, t in named:
        if t is not None and t.requires_grad:
            raise ValueError(
                f"{_OP}: {name} must not require grad (it is a curvature primitive, not "
                "differentiable); pass tensors created under torch.no_grad() or call .detach()"
            )
    if out is not None and out is not U and out.data_ptr() != U.data_ptr():
        if _overlap(out, U):
            raise ValueError(
                f"{_OP}: out partially overlaps U; pass out=U for an in-place update or a "
                "separate buffer"
            )
    for name, t in (("logits", logits), ("weights", weights)):
        if out is not None and t is not None and _overlap(out, t):
            raise ValueError(f"{_OP}: out must not share memory with {name}")


def _capability_reasons(backend: str, tensors: Sequence[torch.Tensor]) -> list[str]:
    """Why ``backend`` cannot run these (valid) inputs beyond device and availability.

    Every backend handles every valid input; kept for the registry's protocol.
    """
    return []


def selected_backend(logits: torch.Tensor, U: torch.Tensor, backend: str | None = None) -> str:
    """Name of the backend :func:`softmax_ce_hvp` would run on these inputs."""
    return _backend.select(_OP, (logits, U), backend, _capability_reasons)[0]


def softmax_ce_hvp(
    logits: torch.Tensor,
    U: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    r"""Apply the per-sample cross-entropy Hessian w.r.t. the logits to ``k`` tangents.

    .. math::

        \mathrm{out}[j, n, :] = w_n \bigl(p_n \odot U[j, n, :]
        - p_n\, (p_n^\top U[j, n, :])\bigr),\qquad p_n = \mathrm{softmax}(z_n).

    Args:
        logits: ``(N, C)`` logits ``z``, ``C >= 1``. Float64 with float64 tangents;
            float32, bfloat16 or float16 otherwise. Made contiguous if it is not (one
            ``(N, C)`` copy at most).
        U: ``(k, N, C)`` tangents, or one ``(N, C)`` tangent. float32, float64, bfloat16
            or float16, contiguous.
        weights: Optional ``(N,)`` floating per-sample weights (default 1); rows with weight
            0 are exactly 0 in the output.
        out: Optional output buffer of ``U``'s shape and dtype, contiguous; may be ``U``
            itself (in-place, no extra memory). Must not partially overlap ``U`` or
            overlap ``logits`` or ``weights``.
        backend: Force ``"reference"``, ``"cpp"``, ``"triton"`` or ``"cuda"`` (default:
            ``LANDSCAPE_FAST_BACKEND`` or automatic selection).

    Returns:
        ``out`` (or a new tensor) of ``U``'s shape and dtype. Arithmetic is float64 for
        float64 tangents and float32 otherwise.

    Raises:
        TypeError: For unsupported dtypes or non-tensors.
        ValueError: For wrong shapes, ``C = 0``, mixed devices, non-contiguous ``U`` or
            ``out``, overlapping ``out`` or inputs that require grad.
        landscape_fast.BackendError: If a forced backend cannot run these inputs.
    """
    check_inputs(logits, U, weights, out)
    _, impl = _backend.select(_OP, (logits, U), backend, _capability_reasons)
    result = torch.empty_like(U, memory_format=torch.contiguous_format) if out is None else out
    U3 = U if U.dim() == 3 else U.unsqueeze(0)
    out3 = result if result.dim() == 3 else result.unsqueeze(0)
    if U3.numel() == 0:
        return result
    w = None
    if weights is not None:
        w = weights.to(dtype=acc_dtype(U.dtype)).contiguous()
    impl(logits.contiguous(), U3, w, out3)
    return result
