"""DenseOperator and the operator algebra against explicit float64 matrices."""

import pytest
import torch

from landscape_fast.operators import DenseOperator, ScaledOperator, ShiftedOperator, SumOperator

F64 = torch.float64


def _sym(p: int, seed: int = 0) -> torch.Tensor:
    A = torch.randn(p, p, dtype=F64, generator=torch.Generator().manual_seed(seed))
    return (A + A.T) / 2


def test_matmat_matches_matrix_and_counts_vectors() -> None:
    A = _sym(7)
    op = DenseOperator(A)
    V = torch.randn(4, 7, dtype=F64)
    torch.testing.assert_close(op.matmat(V), V @ A, rtol=0, atol=1e-14)
    v = torch.randn(7, dtype=F64)
    torch.testing.assert_close(op @ v, A @ v, rtol=0, atol=1e-14)
    X = torch.randn(7, 3, dtype=F64)
    torch.testing.assert_close(op @ X, A @ X, rtol=0, atol=1e-14)  # columns, as a matrix
    assert op.n_matvecs == 4 + 1 + 3
    assert op.matmat(torch.zeros(0, 7, dtype=F64)).shape == (0, 7) and op.n_matvecs == 8
    assert op.shape == (7, 7) and op.dtype == F64 and op.device.type == "cpu"


def test_algebra() -> None:
    A, B = _sym(5, 1), _sym(5, 2)
    a, b = DenseOperator(A), DenseOperator(B)
    eye = torch.eye(5, dtype=F64)
    cases = {
        "a + b": (a + b, A + B),
        "a - b": (a - b, A - B),
        "2a": (2 * a, 2 * A),
        "a * 0.5": (a * 0.5, 0.5 * A),
        "-a": (-a, -A),
        "a + 0.3": (a + 0.3, A + 0.3 * eye),
        "a - 1": (a - 1, A - eye),
        "shift": (a.shift(1e-2), A + 1e-2 * eye),
        "nested": (2 * (a + b).shift(1.0) - a, 2 * (A + B + eye) - A),
    }
    for name, (op, dense) in cases.items():
        torch.testing.assert_close(op.to_dense(), dense, rtol=0, atol=1e-13, msg=name)
    assert isinstance(a + b, SumOperator) and isinstance(2 * a, ScaledOperator)
    assert isinstance(a + 1.0, ShiftedOperator)


def test_combinator_does_not_modify_input_block() -> None:
    op = DenseOperator(_sym(4)).shift(2.0) * 3.0
    V = torch.randn(2, 4, dtype=F64)
    V0 = V.clone()
    op.matmat(V)
    assert torch.equal(V, V0)


@pytest.mark.parametrize(
    "V, error, match",
    [
        (torch.zeros(2, 6, dtype=F64), ValueError, r"\(k, 5\) block"),
        (torch.zeros(2, 2, 5, dtype=F64), ValueError, "block"),
        (torch.zeros(2, 5, dtype=torch.float32), TypeError, "cast with"),
        (torch.zeros(2, 5, dtype=F64, device="meta"), ValueError, "move V"),
        ([[0.0] * 5], TypeError, "expected a tensor"),
    ],
)
def test_bad_blocks(V, error, match) -> None:
    with pytest.raises(error, match=match):
        DenseOperator(_sym(5)).matmat(V)


def test_bad_matrices_and_mismatched_sums() -> None:
    with pytest.raises(ValueError, match="square"):
        DenseOperator(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="not symmetric"):
        DenseOperator(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(TypeError, match="floating-point"):
        DenseOperator(torch.eye(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="differ"):
        DenseOperator(torch.eye(2)) + DenseOperator(torch.eye(3))
