"""Solvers on the ``CurvatureOperator`` protocol (they never see a model)."""

from landscape_fast.linalg.eigsh import RestartRecord, eigsh
from landscape_fast.linalg.lanczos import LanczosResult, lanczos
from landscape_fast.linalg.power_iteration import power_iteration
from landscape_fast.linalg.result import EigenResult
from landscape_fast.linalg.spectrum import (
    ConditionNumbers,
    condition_numbers,
    count_outliers,
    spectral_gaps,
)

__all__ = [
    "ConditionNumbers",
    "condition_numbers",
    "count_outliers",
    "spectral_gaps",
    "RestartRecord",
    "eigsh",
    "EigenResult",
    "LanczosResult",
    "lanczos",
    "power_iteration",
]
