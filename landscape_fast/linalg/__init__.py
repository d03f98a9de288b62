"""Solvers on the ``CurvatureOperator`` protocol (they never see a model)."""

from landscape_fast.linalg.lanczos import LanczosResult, lanczos

__all__ = ["LanczosResult", "lanczos"]
