"""Curvature operators: the ``CurvatureOperator`` protocol, explicit matrices, combinators."""

from landscape_fast.operators.base import (
    CurvatureOperator,
    ScaledOperator,
    ShiftedOperator,
    SumOperator,
)
from landscape_fast.operators.dense import DenseOperator

__all__ = ["CurvatureOperator", "DenseOperator", "ScaledOperator", "ShiftedOperator", "SumOperator"]
