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
from landscape_fast.linalg import (
    EigenResult,
    LanczosResult,
    condition_numbers,
    count_outliers,
    eigsh,
    lanczos,
    power_iteration,
    spectral_gaps,
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

__version__ = "0.1.0"

__all__ = [
    "GGN",
    "BackendError",
    "BatchLoss",
    "CurvatureOperator",
    "DenseOperator",
    "EigenResult",
    "EmpiricalFisher",
    "GradientCovariance",
    "HVPCheck",
    "Hessian",
    "LanczosResult",
    "ParamSpace",
    "ReorthResult",
    "block_reorth",
    "check_hvp",
    "condition_numbers",
    "count_outliers",
    "eigsh",
    "lanczos",
    "power_iteration",
    "spectral_gaps",
    "__version__",
]
