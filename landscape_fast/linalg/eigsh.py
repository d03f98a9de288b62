r"""``lf.eigsh``: block Lanczos with thick restart for a few eigenpairs at either end.

The solver keeps an orthonormal basis :math:`Q` (rows) of at most ``max_basis`` vectors, the
projected matrix :math:`T = Q A Q^\top` and the *residual block* :math:`W` (orthonormal,
orthogonal to :math:`Q`) with its coupling :math:`E`:

.. math::

    A Q^\top = Q^\top T + W^\top E .

Each step applies :math:`A` to the residual block (one operator call for ``block_size``
vectors: one pass over the data), orthonormalizes the product against the whole basis with
:func:`~landscape_fast.ops.block_reorth` (full reorthogonalization, so the projected matrix
is computed, not assumed tridiagonal), appends the block and solves the small problem
:math:`T = S \Theta S^\top`. A Ritz pair :math:`(\theta_i, y_i = S_{:,i}^\top Q)` has residual

.. math::

    \lVert A y_i - \theta_i y_i \rVert = \lVert E\, s_i \rVert ,

and is *converged* when that is at most ``tol`` times the spectral scale
:math:`\max_j |\theta_j|` (the largest Ritz magnitude seen). When the basis is full it is
restarted *thickly* (Krylov–Schur / TRLan): it is replaced by the wanted Ritz vectors,
:math:`T` by their Ritz values and :math:`E` by :math:`E S`; converged wanted vectors are
*locked* (their coupling set to zero, so they stay exact and keep the others orthogonal to
them). The returned residuals are recomputed from operator products (``verify=True``): they
are the true :math:`\lVert A v - \lambda v \rVert`, also when the recurrence's estimate has
fallen below what the operator's precision resolves, and ``converged`` is decided on them.
Where memory allows, the solver keeps the products :math:`P = A Q^\top` of its basis (rotated
with it at each restart), so that :math:`A y_i = P s_i` costs no further product; otherwise
the ``k`` returned vectors take one more operator call.

``which``: ``"LA"`` largest algebraic, ``"SA"`` smallest algebraic, ``"LM"`` largest
magnitude, ``"BE"`` both ends (``k // 2`` from the bottom, the rest from the top).

Example:
    >>> import torch, landscape_fast as lf
    >>> eigs = torch.linspace(-1.0, 10.0, 200, dtype=torch.float64)
    >>> A = lf.DenseOperator(torch.diag(eigs))
    >>> r = lf.eigsh(A, k=3, which="LA", tol=1e-8)
    >>> [round(x, 6) for x in r.eigenvalues.tolist()], bool(r.converged.all())
    ([10.0, 9.944724, 9.889447], True)
    >>> r2 = lf.eigsh(A, k=1, which="SA", tol=1e-8)
    >>> round(r2.eigenvalues.item(), 6)
    -1.0
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from landscape_fast.linalg.result import EigenResult
from landscape_fast.operators.base import CurvatureOperator
from landscape_fast.ops.block_reorth import BASIS_DTYPES, block_reorth

WHICH = ("LA", "SA", "LM", "BE")

#: Relative size of the random perturbation added to a user's start vectors.
V0_NOISE = 1e-3

#: A Ritz vector is locked (its coupling to the residual block dropped) once its residual is
#: below this fraction of the convergence threshold, so that what locking neglects stays
#: well inside the tolerance of every returned vector.
LOCK = 0.1


@dataclass
class RestartRecord:
    """One entry of :attr:`EigenResult.history` for :func:`eigsh` (after every block step).

    Attributes:
        n_matvecs: Operator products so far.
        ritz_values: The ``k`` wanted Ritz values, in output order.
        residuals: Their residual estimates :math:`\\lVert E s_i \\rVert`.
        basis_size: Basis vectors held after the step.
        restart: Whether the basis was restarted after this step.
    """

    n_matvecs: int
    ritz_values: list[float]
    residuals: list[float]
    basis_size: int
    restart: bool = False


@dataclass
class _State:
    """The solver's bookkeeping: basis buffer, projected matrix, residual block, coupling."""

    Q: torch.Tensor  # (capacity, p) basis storage; rows [:m] hold the basis
    T: torch.Tensor  # (capacity, capacity) float64 projected matrix
    W: torch.Tensor  # (r, p) residual block, op dtype, on the operator's device
    E: torch.Tensor  # (r, m) float64 coupling
    P: torch.Tensor | None = None  # (capacity, p) products A q_i of the basis rows, or None
    m: int = 0
    scale: float = 0.0
    coupling_scale: float = 0.0  # largest |⟨q_i, A q_j⟩| seen (a lower bound of ‖A‖)
    n_matvecs: int = 0
    history: list[RestartRecord] = field(default_factory=list)


def wanted_order(theta: torch.Tensor, which: str, k: int) -> torch.Tensor:
    """Indices of Ritz values by preference for ``which`` (the first ``k`` are wanted).

    For ``"BE"`` the order alternates between the ends, starting from the top, so that the
    first ``k`` hold ``k - k // 2`` from the top and ``k // 2`` from the bottom.
    """
    if which == "LA":
        return torch.argsort(theta, descending=True)
    if which == "SA":
        return torch.argsort(theta)
    if which == "LM":
        return torch.argsort(theta.abs(), descending=True)
    order = torch.argsort(theta, descending=True).tolist()
    out, lo, hi = [], len(order) - 1, 0
    while hi <= lo:
        out.append(order[hi])
        hi += 1
        if hi <= lo:
            out.append(order[lo])
            lo -= 1
    return torch.tensor(out, dtype=torch.long)


def output_order(theta: torch.Tensor, which: str) -> torch.Tensor:
    """How the ``k`` returned pairs are sorted: by preference, ``"BE"`` descending."""
    if which == "LM":
        return torch.argsort(theta.abs(), descending=True)
    if which == "SA":
        return torch.argsort(theta)
    return torch.argsort(theta, descending=True)


def default_block_size(op: CurvatureOperator, k: int) -> int:
    """Block size when none is given: 1 for ``k <= 2``; else the operator's preferred block
    (``op.preferred_block_size``: products of a block cheaper per vector), at most ``k/2``."""
    if k <= 2:
        return 1
    preferred = int(getattr(op, "preferred_block_size", 1))
    return max(1, min(preferred, k // 2))


#: Basis vectors held by default when memory allows: fewer restarts. On the digits MLP a
#: basis of 60 instead of k + 2b + 20 = 23 halved the products for the bottom eigenvalue
#: (202 -> 96 at tol 1e-4); top-k with a gap converges before any restart either way.
MIN_DEFAULT_BASIS = 60


def default_max_basis(
    op: CurvatureOperator, k: int, b: int, basis_dtype: torch.dtype | None = None
) -> int:
    """``max(k + 2b + 20, MIN_DEFAULT_BASIS)``, the larger only while that basis takes at most
    an eighth of the free memory of the operator's device."""
    from landscape_fast.operators.memory import available_memory

    small = k + 2 * b + 20
    itemsize = torch.finfo(basis_dtype or op.dtype).bits // 8
    if MIN_DEFAULT_BASIS * op.shape[0] * itemsize <= available_memory(op.device) / 8:
        return max(small, MIN_DEFAULT_BASIS)
    return small


def keeps_products(
    op: CurvatureOperator, capacity: int, basis_dtype: torch.dtype, basis_device: torch.device
) -> bool:
    """Whether :func:`eigsh` stores the products :math:`A q_i` of its basis (residuals that
    cost no product): only for a basis in the operator's dtype (a rounded basis is not the
    vectors that were multiplied) and while the store takes at most an eighth of the free
    memory of the basis device."""
    from landscape_fast.operators.memory import available_memory

    if basis_dtype != op.dtype:
        return False
    itemsize = torch.finfo(basis_dtype).bits // 8
    return capacity * op.shape[0] * itemsize <= available_memory(basis_device) / 8


def _check_args(op: CurvatureOperator, k: int, which: str, tol: float) -> int:
    if not isinstance(op, CurvatureOperator):
        raise TypeError(f"eigsh needs a CurvatureOperator, got {type(op).__name__}")
    p = op.shape[0]
    if not 1 <= k <= p:
        raise ValueError(f"eigsh: k must be in [1, p={p}], got {k}")
    if which not in WHICH:
        raise ValueError(f"eigsh: which must be one of {WHICH}, got {which!r}")
    if not 0 < tol < 1:
        raise ValueError(
            f"eigsh: tol is relative to the spectral scale and must be in (0, 1), got {tol}"
        )
    return p


def _random_rows(r: int, p: int, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(r, p, generator=gen, dtype=torch.float64).to(like)


def _orthonormal_block(
    st: _State, V: torch.Tensor, gen: torch.Generator, p: int, basis_device: torch.device
) -> torch.Tensor:
    """Orthonormalize ``V`` against the basis and within itself; deficient rows are replaced
    by random directions (also orthogonalized). Rows that cannot be completed (the basis
    spans everything) stay zero."""
    out = V
    for _ in range(3):
        res = block_reorth(st.Q[: st.m], out.to(basis_device).contiguous())
        out = res.W
        bad = res.deficient
        if not bool(bad.any()):
            break
        if st.m + int((~bad).sum()) >= p:
            break
        fresh = _random_rows(int(bad.sum()), p, gen, out)
        out = out.clone()
        out[bad] = fresh
    return out.to(st.W.device)


def _ritz(st: _State) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ritz values, vectors (columns of ``S``) and residual estimates ``‖E s_i‖``."""
    m = st.m
    T = st.T[:m, :m]
    theta, S = torch.linalg.eigh((T + T.T) / 2)
    resid = (st.E[:, :m] @ S).norm(dim=0) if st.E.shape[0] else torch.zeros_like(theta)
    return theta, S, resid


def _rotate_(Q: torch.Tensor, S: torch.Tensor, chunk: int = 1 << 16) -> None:
    """``Q[:s] <- Sᵀ Q[:m]`` in place, column chunk by column chunk (no full temporary)."""
    m, s = S.shape
    for start in range(0, Q.shape[1], chunk):
        cols = Q[:m, start : start + chunk]
        acc = S.T.to(torch.float64 if Q.dtype == torch.float64 else torch.float32)
        Q[:s, start : start + chunk] = (acc.to(cols.device) @ cols.to(acc.dtype)).to(Q.dtype)


def eigsh(
    op: CurvatureOperator,
    k: int = 6,
    which: str = "LA",
    tol: float = 1e-6,
    block_size: int | None = None,
    max_matvecs: int | None = None,
    v0: torch.Tensor | None = None,
    seed: int = 0,
    *,
    max_basis: int | None = None,
    basis_dtype: torch.dtype | None = None,
    basis_device: torch.device | str | None = None,
    verify: bool = True,
    validate: bool | None = None,
    callback: Callable[[RestartRecord], Any] | None = None,
) -> EigenResult:
    r"""``k`` eigenpairs of a symmetric operator at the end(s) given by ``which``.

    Args:
        op: Symmetric :class:`~landscape_fast.operators.CurvatureOperator`.
        k: Number of eigenpairs.
        which: ``"LA"``, ``"SA"``, ``"LM"`` or ``"BE"`` (see the module docstring).
        tol: A pair is converged when :math:`\lVert A v - \lambda v\rVert \le`
            ``tol`` :math:`\cdot \max_j |\theta_j|`.
        block_size: Vectors per operator call (default :func:`default_block_size`). A
            block ``v0`` of more rows raises it to that number of rows.
        max_matvecs: Budget of operator products (default ``max(1000, 50·max_basis)``);
            when it runs out, what was found is returned with ``converged`` flags.
        v0: Start vector ``(p,)`` or block ``(r, p)`` (warm start: previous eigenvectors).
            A random perturbation of relative size :data:`V0_NOISE` is added, so that a start
            orthogonal to a wanted eigenvector cannot hide it.
        seed: Seed of the random start and refill vectors.
        max_basis: Most basis vectors held (default :func:`default_max_basis`:
            ``max(k + 2·block_size + 20, 60)`` where 60 vectors fit in an eighth of the free
            memory, else the first; at most p).
        basis_dtype: Storage dtype of the basis: the operator's dtype, or for float32
            operators ``torch.bfloat16`` / ``torch.float16`` (half the memory; eigenvalues
            are then accurate to about the storage precision, and ``converged`` says so).
        basis_device: Keep the basis on this device (e.g. ``"cpu"`` for a GPU model whose
            basis would not fit in device memory); blocks travel to it for orthogonalization.
        validate: After convergence, restart from the wanted vectors plus a fresh random
            block and converge again (with the best remaining Ritz pair), until that no
            longer changes the wanted values. A Krylov space holds one vector of each
            eigenspace per start vector, so copies of a multiple eigenvalue beyond the block
            size are otherwise invisible (no residual can reveal them). ``None`` (default):
            validate when ``k`` exceeds the block size (up to ``block_size`` copies are
            visible, so fewer wanted pairs cannot miss one) and a wanted value is 0 to
            within 2·tol·scale (a null space, as in over-parameterized networks);
            ``True``: always (use it, or a ``block_size`` at least the multiplicity, when
            multiple eigenvalues matter); ``False``: never.
        verify: Recompute the residuals of the returned pairs from operator products: from
            the stored products of the basis where they fit (:func:`keeps_products`, no extra
            product), else with one more product of the ``k`` vectors (counted in
            ``n_matvecs``). ``False`` returns the recurrence's estimates.
        callback: Called with each :class:`RestartRecord` as it is recorded.

    Returns:
        :class:`~landscape_fast.linalg.result.EigenResult` of ``k`` pairs (fewer only if
        ``max_matvecs`` ran out before the basis held ``k`` vectors), sorted by ``which``
        (``"BE"``: descending); ``history`` is the list of :class:`RestartRecord`.

    Raises:
        ValueError: For ``k``, ``which``, ``tol``, ``block_size`` or ``v0`` out of range.
        FloatingPointError: If the operator returns a non-finite value.
    """
    p = _check_args(op, k, which, tol)
    dtype, device = op.dtype, op.device
    if dtype not in BASIS_DTYPES:
        raise TypeError(f"eigsh: the operator must be float32 or float64, got {dtype}")
    basis_dtype = basis_dtype or dtype
    if basis_dtype not in BASIS_DTYPES[dtype]:
        raise TypeError(
            f"eigsh: a {dtype} operator can keep its basis in {BASIS_DTYPES[dtype]}, got "
            f"{basis_dtype}"
        )
    basis_device = torch.device(basis_device) if basis_device is not None else device
    gen = torch.Generator(device="cpu").manual_seed(seed)

    V0 = None
    if v0 is not None:
        V0 = v0[None] if v0.dim() == 1 else v0
        if V0.dim() != 2 or V0.shape[1] != p or V0.shape[0] == 0:
            raise ValueError(f"eigsh: v0 must be (p,) or (r, p) with p={p}, got {tuple(v0.shape)}")
        if not bool(torch.isfinite(V0).all()):
            raise ValueError("eigsh: v0 holds non-finite values")
    b = default_block_size(op, k) if block_size is None else int(block_size)
    if V0 is not None:
        b = max(b, V0.shape[0])
    if not 1 <= b <= p:
        raise ValueError(f"eigsh: block_size must be in [1, p={p}], got {b}")
    m_max = min(p, max_basis or default_max_basis(op, k, b, basis_dtype))
    if m_max < min(p, k + b):
        raise ValueError(
            f"eigsh: max_basis={m_max} leaves no room to expand {k} wanted vectors by a block of "
            f"{b}; use max_basis >= k + block_size = {k + b}"
        )
    keep = min(m_max - b, max(k, (m_max + k) // 2))
    max_matvecs = max_matvecs if max_matvecs is not None else max(1000, 50 * m_max)
    if max_matvecs < 1:
        raise ValueError(f"eigsh: max_matvecs must be positive, got {max_matvecs}")

    capacity = m_max + b
    st = _State(
        Q=torch.zeros(capacity, p, dtype=basis_dtype, device=basis_device),
        T=torch.zeros(capacity, capacity, dtype=torch.float64),
        W=torch.zeros(0, p, dtype=dtype, device=device),
        E=torch.zeros(0, 0, dtype=torch.float64),
    )
    if verify and keeps_products(op, capacity, basis_dtype, basis_device):
        st.P = torch.zeros(capacity, p, dtype=basis_dtype, device=basis_device)
    start = torch.zeros(b, p, dtype=dtype, device=device)
    fill = 0
    if V0 is not None:
        # A start exactly orthogonal to a wanted eigenvector would hide it (the Krylov space
        # never reaches it, and every residual looks fine): mix in a little noise.
        V0 = V0.to(device=device, dtype=dtype)
        noise = _random_rows(V0.shape[0], p, gen, V0)
        noise *= V0_NOISE * V0.norm(dim=1, keepdim=True) / noise.norm(dim=1, keepdim=True)
        start[: V0.shape[0]] = V0 + noise
        fill = V0.shape[0]
    if fill < b:
        start[fill:] = _random_rows(b - fill, p, gen, start)
    st.W = _orthonormal_block(st, start, gen, p, basis_device)
    st.E = torch.zeros(st.W.shape[0], 0, dtype=torch.float64)

    asym_warned = False
    validations, checked = 0, None
    while True:
        # ---- expand: append the residual block and apply the operator to it
        live = st.W.norm(dim=1) > 0
        if not bool(live.all()):  # directions the space no longer has (m is close to p)
            st.W, st.E = st.W[live], st.E[live.cpu()]
        if st.W.shape[0] == 0:  # the basis spans the whole space: T is exact
            break
        r, m = st.W.shape[0], st.m
        st.Q[m : m + r] = st.W.to(device=basis_device, dtype=basis_dtype)
        st.T[m : m + r, :m] = st.E
        st.T[:m, m : m + r] = st.E.T
        AW = op.matmat(st.W)
        st.n_matvecs += r
        if not bool(torch.isfinite(AW).all()):
            raise FloatingPointError(
                f"eigsh: the operator returned non-finite values after {st.n_matvecs} "
                "products; check the operator (a model operator names the batch and layer)"
            )
        if st.P is not None:
            st.P[m : m + r] = AW.to(device=basis_device, dtype=basis_dtype)
        res = block_reorth(st.Q[: m + r], AW.to(basis_device).contiguous())
        C = res.coeffs.cpu()  # (m + r, r): the new columns of T
        st.coupling_scale = max(st.coupling_scale, float(C.abs().max()))
        if m and not asym_warned:
            mismatch = float((C[:m] - st.E.T).abs().max()) if st.E.numel() else 0.0
            # before k vectors exist there are no Ritz values: the couplings give the scale
            scale = max(st.scale, st.coupling_scale, 1e-300)
            if mismatch > (1e-2 + 10 * tol) * scale:
                warnings.warn(
                    f"eigsh: the operator does not look symmetric (⟨q_i, A q_j⟩ and "
                    f"⟨A q_i, q_j⟩ differ by {mismatch:.2e} at scale {scale:.2e}); results "
                    "assume a symmetric operator",
                    RuntimeWarning,
                    stacklevel=2,
                )
                asym_warned = True
        st.T[: m + r, m : m + r] = C
        st.T[m : m + r, : m + r] = C.T
        st.m = m + r
        E = torch.zeros(r, st.m, dtype=torch.float64)
        E[:, m : m + r] = res.R.cpu()  # A w_j = Σ C[i,j] q_i + Σ R[l,j] w'_l
        W_out = res.W
        if bool(res.deficient.any()):  # an invariant subspace: continue with fresh directions
            E[res.deficient.cpu()] = 0.0  # a zero row has no coupling; its refill neither
            W_out = _complete(st, W_out, res.deficient, gen, basis_device)
        st.W, st.E = W_out.to(device=device, dtype=dtype), E

        # ---- Rayleigh-Ritz and convergence (nothing can converge before k vectors exist)
        if st.m < k and st.n_matvecs + st.W.shape[0] <= max_matvecs:
            continue
        theta, S, resid = _ritz(st)
        st.scale = max(st.scale, float(theta.abs().max()))
        order = wanted_order(theta, which, k)
        want = order[: min(k, st.m)]
        threshold = tol * st.scale
        done = st.m >= k and bool((resid[want] <= threshold).all())
        if done and checked is not None:  # validating: the best of the rest must converge too
            done = st.m > k and bool(resid[order[k]] <= threshold)
        check = (
            validate if validate is not None else k > b and _suspicious(theta[want], tol, st.scale)
        )
        if done and validations < k + 2 and check:
            if bool((resid[want] > LOCK * threshold).any()):
                done = False  # converge further first: the restart drops the residual block
            elif checked is None or not _same(checked, theta[want], threshold):
                # A Krylov space holds one vector per start vector of each eigenspace: a
                # cluster, a multiple eigenvalue or a null space at the wanted end may hide
                # more copies. Restart from the wanted vectors plus a fresh random block and
                # converge again; stop when that no longer changes the wanted values.
                validations += 1
                checked = theta[want].clone()
                _restart_(st, S[:, want], theta[want], torch.ones(len(want), dtype=torch.bool))
                st.W = _orthonormal_block(st, _random_rows(b, p, gen, st.W), gen, p, basis_device)
                st.E = torch.zeros(st.W.shape[0], st.m, dtype=torch.float64)
                continue
        full = st.m + st.W.shape[0] > m_max
        out_of_budget = st.n_matvecs + st.W.shape[0] > max_matvecs
        record = RestartRecord(
            n_matvecs=st.n_matvecs,
            ritz_values=theta[want].tolist(),
            residuals=resid[want].tolist(),
            basis_size=st.m,
            restart=full and not (done or out_of_budget),
        )
        st.history.append(record)
        if callback is not None:
            callback(record)
        if done or out_of_budget or st.m >= p:
            break
        if full:  # ---- thick restart: keep the best `keep` Ritz vectors, lock converged
            sel = order[:keep]
            _restart_(st, S[:, sel], theta[sel], resid[sel] <= LOCK * threshold)

    return _finish(op, st, which, k, tol, verify)


def _restart_(st: _State, S_sel: torch.Tensor, theta_sel: torch.Tensor, locked) -> None:
    """Thick restart: basis <- the selected Ritz vectors, T <- their Ritz values, E <- E S;
    locked (converged) vectors lose their coupling to the residual block."""
    s = S_sel.shape[1]
    _rotate_(st.Q, S_sel)
    if st.P is not None:
        _rotate_(st.P, S_sel)
    st.T.zero_()
    st.T[range(s), range(s)] = theta_sel
    E_new = st.E @ S_sel
    E_new[:, locked] = 0.0
    st.E = E_new
    st.m = s


def _suspicious(wanted: torch.Tensor, tol: float, scale: float) -> bool:
    """A wanted value at 0 to within 2·tol·scale: possibly a null space, whose multiplicity
    one Krylov space cannot show (over-parameterized networks). This is asked once every
    wanted residual is at most tol·scale, and a Ritz value lies within its residual of an
    eigenvalue, so the Ritz value of an exactly zero eigenvalue is inside the bound with a
    factor 2 to spare; a value outside it is resolved from zero (the earlier bound,
    100·tol·scale, made every value below 10 % of the scale pay a restart at tol 1e-3)."""
    return bool((wanted.abs() <= 2 * tol * scale).any())


def _same(a: torch.Tensor, b: torch.Tensor, threshold: float) -> bool:
    return a.shape == b.shape and bool(
        (torch.sort(a).values - torch.sort(b).values).abs().max() <= 10 * threshold
    )


def _complete(
    st: _State,
    W_out: torch.Tensor,
    deficient: torch.Tensor,
    gen: torch.Generator,
    basis_device: torch.device,
) -> torch.Tensor:
    """Replace deficient (zero) rows of the new block by random directions orthogonal to the
    basis and to the block's other rows; rows the space has no room for stay zero. Their
    coupling is zero, so the Krylov relation still holds."""
    p = W_out.shape[1]
    out = W_out.clone()
    good = W_out[~deficient]
    Qg = torch.cat([st.Q[: st.m], good.to(device=basis_device, dtype=st.Q.dtype)]).contiguous()
    fresh = _random_rows(int(deficient.sum()), p, gen, W_out)
    res = block_reorth(Qg, fresh.to(basis_device).contiguous())
    out[deficient] = res.W.to(out)  # rows that were deficient again are zero
    return out


def _combine(rows: torch.Tensor, S: torch.Tensor, op: CurvatureOperator) -> torch.Tensor:
    """``Sᵀ rows[:m]`` on the operator's device and dtype, column chunk by column chunk."""
    m = S.shape[0]
    out = torch.zeros(S.shape[1], op.shape[0], dtype=op.dtype, device=op.device)
    acc = torch.float64 if op.dtype == torch.float64 else torch.float32
    chunk = 1 << 16
    for start in range(0, op.shape[0], chunk):
        cols = rows[:m, start : start + chunk].to(acc)
        out[:, start : start + chunk] = (S.T.to(acc).to(cols.device) @ cols).to(out)
    return out


def _finish(
    op: CurvatureOperator, st: _State, which: str, k: int, tol: float, verify: bool
) -> EigenResult:
    theta, S, resid = _ritz(st)
    order = wanted_order(theta, which, k)[: min(k, st.m)]
    theta, S, resid = theta[order], S[:, order], resid[order]
    final = output_order(theta, which)
    theta, S, resid = theta[final], S[:, final], resid[final]
    Y = _combine(st.Q, S, op)
    norms = Y.double().norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    Y = (Y.double() / norms).to(op.dtype)
    if verify and Y.shape[0]:
        if st.P is not None:  # A y = Sᵀ (A Q): the stored products, no further product
            AY = (_combine(st.P, S, op).double() / norms).to(op.dtype)
        else:
            AY = op.matmat(Y)
            st.n_matvecs += Y.shape[0]
            if not bool(torch.isfinite(AY).all()):
                raise FloatingPointError("eigsh: the operator returned non-finite values")
        AY64, Y64 = AY.double(), Y.double()  # float64 sums over p: no float32 rounding floor
        yy = (Y64 * Y64).sum(dim=1)  # a float32 vector is a unit vector only to ~1e-6 at large p
        lam = (AY64 * Y64).sum(dim=1) / yy  # Rayleigh quotients of the returned vectors
        resid = ((AY64 - lam[:, None] * Y64).norm(dim=1) / yy.sqrt()).cpu()
        lam = lam.cpu()
        theta = lam
        st.scale = max(st.scale, float(theta.abs().max()))
    converged = resid <= tol * st.scale
    return EigenResult(
        eigenvalues=theta,
        eigenvectors=Y,
        residuals=resid,
        converged=converged,
        n_matvecs=st.n_matvecs,
        history=st.history,
    )
