"""Curvature operators: the ``CurvatureOperator`` protocol, model-based operators (Hessian,
GGN, empirical Fisher, gradient covariance), explicit matrices and combinators."""

from landscape_fast.operators.base import (
    CurvatureOperator,
    ScaledOperator,
    ShiftedOperator,
    SumOperator,
)
from landscape_fast.operators.block_diagonal import BlockDiagonalOperator
from landscape_fast.operators.check import HVPCheck, check_hvp
from landscape_fast.operators.dense import DenseOperator
from landscape_fast.operators.fisher import EmpiricalFisher, GradientCovariance
from landscape_fast.operators.ggn import GGN
from landscape_fast.operators.hessian import Hessian
from landscape_fast.operators.model_function import BatchLoss
from landscape_fast.operators.model_operator import ModelOperator

__all__ = [
    "BatchLoss",
    "BlockDiagonalOperator",
    "CurvatureOperator",
    "DenseOperator",
    "EmpiricalFisher",
    "GGN",
    "GradientCovariance",
    "HVPCheck",
    "Hessian",
    "ModelOperator",
    "ScaledOperator",
    "ShiftedOperator",
    "SumOperator",
    "check_hvp",
]
