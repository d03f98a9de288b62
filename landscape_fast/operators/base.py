r"""The ``CurvatureOperator`` protocol every solver sees, and its algebra.

A curvature operator is a symmetric linear map :math:`A: \mathbb{R}^p \to \mathbb{R}^p`
known only through products with blocks of vectors. Vectors are rows: ``matmat`` maps a
``(k, p)`` block :math:`V` to :math:`V A^\top = V A` (``A`` symmetric), so one call serves a
whole block (one pass over the data for model-based operators). Operators combine:

.. math::

    (A + B)V,\qquad (\alpha A)V,\qquad (A + \delta I)V \ \text{(damping)} .

Example:
    >>> import torch
    >>> from landscape_fast.operators import DenseOperator
    >>> A = DenseOperator(torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)))
    >>> B = 2 * A + 0.5                     # 2A + 0.5 I
    >>> B @ torch.tensor([1.0, 1.0], dtype=torch.float64)
    tensor([6.5000, 2.5000], dtype=torch.float64)
    >>> A.n_matvecs                          # B's product applied A to one vector
    1
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class CurvatureOperator(ABC):
    """A symmetric ``p × p`` linear operator applied to blocks of row vectors.

    Subclasses set :attr:`shape`, :attr:`dtype`, :attr:`device` and implement
    :meth:`_matmat`; this class validates inputs, counts products and provides the algebra.

    Attributes:
        n_matvecs: Number of vectors this operator has been applied to so far.
        preferred_block_size: Vectors per product at which a block starts to pay off
            (solvers use it for their default block size; 1: no gain from blocks).
    """

    preferred_block_size: int = 1

    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device

    def __init__(self, p: int, dtype: torch.dtype, device: torch.device | str) -> None:
        self.shape = (int(p), int(p))
        self.dtype = dtype
        self.device = torch.device(device)
        self.n_matvecs = 0

    @abstractmethod
    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        """``V A`` for a validated ``(k, p)`` block with ``k >= 1``."""

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """Apply the operator to each row of a ``(k, p)`` block (or to one ``(p,)`` vector).

        Raises:
            ValueError: If the shape does not match or the device differs.
            TypeError: If the dtype differs from :attr:`dtype`.
        """
        if not isinstance(V, torch.Tensor):
            raise TypeError(
                f"{type(self).__name__}.matmat: expected a tensor, got {type(V).__name__}"
            )
        single = V.dim() == 1
        block = V[None] if single else V
        p = self.shape[1]
        if block.dim() != 2 or block.shape[1] != p:
            raise ValueError(
                f"{type(self).__name__}.matmat: expected a ({p},) vector or a (k, {p}) block, got "
                f"shape {tuple(V.shape)}"
            )
        if V.dtype != self.dtype:
            raise TypeError(
                f"{type(self).__name__}.matmat: the operator is {self.dtype} but V is {V.dtype}; "
                f"cast with V.to({self.dtype})"
            )
        if V.device != self.device:
            raise ValueError(
                f"{type(self).__name__}.matmat: the operator is on {self.device} but V is on "
                f"{V.device}; move V with V.to('{self.device}')"
            )
        if block.shape[0] == 0:
            return block.clone() if not single else block[0].clone()
        out = self._matmat(block)
        self.n_matvecs += block.shape[0]
        return out[0] if single else out

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        """``A @ v`` for a ``(p,)`` vector, or ``A @ X`` for a ``(p, k)`` matrix (columns)."""
        if isinstance(x, torch.Tensor) and x.dim() == 2:
            return self.matmat(x.T.contiguous()).T
        return self.matmat(x)

    def to_dense(self) -> torch.Tensor:
        """The explicit ``p × p`` matrix (``p`` products; for small operators and tests)."""
        return self.matmat(torch.eye(self.shape[0], dtype=self.dtype, device=self.device))

    # ------------------------------------------------------------------ algebra
    def __add__(self, other: CurvatureOperator | float) -> CurvatureOperator:
        if isinstance(other, int | float):
            return ShiftedOperator(self, float(other))
        if isinstance(other, CurvatureOperator):
            return SumOperator(self, other)
        return NotImplemented

    __radd__ = __add__

    def __sub__(self, other: CurvatureOperator | float) -> CurvatureOperator:
        if isinstance(other, int | float):
            return ShiftedOperator(self, -float(other))
        if isinstance(other, CurvatureOperator):
            return SumOperator(self, ScaledOperator(other, -1.0))
        return NotImplemented

    def __mul__(self, alpha: float) -> CurvatureOperator:
        if isinstance(alpha, int | float):
            return ScaledOperator(self, float(alpha))
        return NotImplemented

    __rmul__ = __mul__

    def __neg__(self) -> CurvatureOperator:
        return ScaledOperator(self, -1.0)

    def shift(self, delta: float) -> CurvatureOperator:
        """``A + δ I`` (damping)."""
        return ShiftedOperator(self, float(delta))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.shape[0]}, dtype={self.dtype}, device={self.device})"


class SumOperator(CurvatureOperator):
    """``A + B`` for two operators of the same shape, dtype and device."""

    def __init__(self, a: CurvatureOperator, b: CurvatureOperator) -> None:
        if (a.shape, a.dtype, a.device) != (b.shape, b.dtype, b.device):
            raise ValueError(
                "SumOperator: operators differ in shape, dtype or device: "
                f"{a.shape} {a.dtype} {a.device} vs {b.shape} {b.dtype} {b.device}"
            )
        super().__init__(a.shape[0], a.dtype, a.device)
        self.terms = (a, b)
        self.preferred_block_size = max(a.preferred_block_size, b.preferred_block_size)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.terms[0].matmat(V) + self.terms[1].matmat(V)


class ScaledOperator(CurvatureOperator):
    """``α A``."""

    def __init__(self, op: CurvatureOperator, alpha: float) -> None:
        super().__init__(op.shape[0], op.dtype, op.device)
        self.op, self.alpha = op, alpha
        self.preferred_block_size = op.preferred_block_size

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.op.matmat(V).mul_(self.alpha)


class ShiftedOperator(CurvatureOperator):
    """``A + δ I``."""

    def __init__(self, op: CurvatureOperator, delta: float) -> None:
        super().__init__(op.shape[0], op.dtype, op.device)
        self.op, self.delta = op, delta
        self.preferred_block_size = op.preferred_block_size

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.op.matmat(V).add_(V, alpha=self.delta)
