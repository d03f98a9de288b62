"""Solvers on the ``CurvatureOperator`` protocol (they never see a model)."""

from landscape_fast.linalg.eigsh import RestartRecord, eigsh
from landscape_fast.linalg.lanczos import LanczosResult, lanczos
from landscape_fast.linalg.power_iteration import power_iteration
from landscape_fast.linalg.result import EigenResult

__all__ = ["RestartRecord", "eigsh", "EigenResult", "LanczosResult", "lanczos", "power_iteration"]
