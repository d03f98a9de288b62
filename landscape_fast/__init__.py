"""landscape_fast: fast, trustworthy loss-landscape geometry for PyTorch models.

``import landscape_fast`` loads no compiled module, imports no Triton and initialises no
CUDA: backends load on first use (see :mod:`landscape_fast._backend`).

Example:
    >>> import torch, landscape_fast as lf
    >>> space = lf.ParamSpace(torch.nn.Linear(4, 2))
    >>> space.numel
    10
"""

from landscape_fast._backend import BackendError
from landscape_fast.analyze import QUANTITIES, Budget, analyze
from landscape_fast.geometry import (
    GradientNoise,
    PacBayesBound,
    PacBayesFlatness,
    SaddleIndex,
    Sharpness,
    Stability,
    document_theorem_2_2_invalid,
    gradient_noise,
    pac_bayes_bound,
    pac_bayes_flatness,
    saddle_index,
    sharpness,
    stability,
)
from landscape_fast.linalg import (
    CountBound,
    EigenResult,
    Estimate,
    LanczosResult,
    SpectralDensity,
    condition_numbers,
    count_outliers,
    diagonal,
    effective_dimension,
    eigenvalue_count_bound,
    eigsh,
    frobenius_norm_sq,
    lanczos,
    power_iteration,
    spectral_density,
    spectral_gaps,
    trace,
)
from landscape_fast.operators import (
    GGN,
    BatchLoss,
    CurvatureOperator,
    DenseOperator,
    EmpiricalFisher,
    GradientCovariance,
    Hessian,
    HVPCheck,
    check_hvp,
)
from landscape_fast.ops.block_reorth import ReorthResult, block_reorth
from landscape_fast.params import ParamSpace
from landscape_fast.report.landscape_report import LandscapeReport

__version__ = "0.1.0"

__all__ = [
    "QUANTITIES",
    "Budget",
    "LandscapeReport",
    "analyze",
    "GGN",
    "GradientNoise",
    "PacBayesBound",
    "PacBayesFlatness",
    "SaddleIndex",
    "Sharpness",
    "Stability",
    "document_theorem_2_2_invalid",
    "gradient_noise",
    "pac_bayes_bound",
    "pac_bayes_flatness",
    "saddle_index",
    "sharpness",
    "stability",
    "BackendError",
    "BatchLoss",
    "CountBound",
    "CurvatureOperator",
    "DenseOperator",
    "EigenResult",
    "Estimate",
    "EmpiricalFisher",
    "GradientCovariance",
    "HVPCheck",
    "Hessian",
    "LanczosResult",
    "ParamSpace",
    "ReorthResult",
    "SpectralDensity",
    "block_reorth",
    "check_hvp",
    "condition_numbers",
    "count_outliers",
    "diagonal",
    "effective_dimension",
    "eigenvalue_count_bound",
    "eigsh",
    "frobenius_norm_sq",
    "lanczos",
    "power_iteration",
    "spectral_density",
    "spectral_gaps",
    "trace",
    "__version__",
]
