"""Solvers on the ``CurvatureOperator`` protocol (they never see a model)."""

from landscape_fast.linalg.counting import CountBound, effective_dimension, eigenvalue_count_bound
from landscape_fast.linalg.density import SpectralDensity
from landscape_fast.linalg.diagonal import diagonal
from landscape_fast.linalg.eigsh import RestartRecord, eigsh
from landscape_fast.linalg.estimate import Estimate
from landscape_fast.linalg.lanczos import LanczosResult, lanczos
from landscape_fast.linalg.power_iteration import power_iteration
from landscape_fast.linalg.result import EigenResult
from landscape_fast.linalg.slq import spectral_density
from landscape_fast.linalg.spectrum import (
    ConditionNumbers,
    condition_numbers,
    count_outliers,
    spectral_gaps,
)
from landscape_fast.linalg.trace import frobenius_norm_sq, trace

__all__ = [
    "CountBound",
    "effective_dimension",
    "eigenvalue_count_bound",
    "SpectralDensity",
    "diagonal",
    "spectral_density",
    "Estimate",
    "frobenius_norm_sq",
    "trace",
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
