"""Backend registry: which implementation of an op runs on which tensors.

Every op in :mod:`landscape_fast.ops` has one implementation per backend, under the
same name:

============  ==============================================  =========================
backend       where the code lives                            runs on
============  ==============================================  =========================
``cuda``      ``csrc/cuda/<op>.cu`` + ``kernels/cuda/<op>.py``  CUDA tensors
``triton``    ``kernels/triton/<op>.py``                        CUDA tensors (CPU tensors
                                                                only under
                                                                ``TRITON_INTERPRET=1``)
``cpp``       ``csrc/cpu/<op>.cpp`` + ``kernels/cpp/<op>.py``   CPU tensors
``reference`` ``reference/<op>.py`` (pure PyTorch)              any device
============  ==============================================  =========================

Automatic selection takes the first usable backend in the order ``cuda, triton`` for CUDA
tensors and ``cpp`` for CPU tensors, then ``reference`` (always usable). The environment
variable ``LANDSCAPE_FAST_BACKEND`` (or the ``backend=`` argument of an op) forces one; a
forced backend that cannot run the given tensors raises :class:`BackendError`, whose
message lists every backend and why it was refused.

Nothing here imports Triton, loads a compiled module or initialises CUDA at import time:
probes run on first use and their answers are cached.

Example:
    >>> from landscape_fast._backend import backend_names
    >>> backend_names()
    ('cuda', 'triton', 'cpp', 'reference')
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

ENV_VAR = "LANDSCAPE_FAST_BACKEND"
_PACKAGE_DIR = Path(__file__).resolve().parent
_REINSTALL_HINT = "reinstall with `pip install --no-build-isolation -e .` (or `make install`)"


class BackendError(RuntimeError):
    """A forced backend cannot run, or the backend name is unknown."""


@dataclass(frozen=True)
class Backend:
    """One family of implementations.

    Attributes:
        name: Name used by ``LANDSCAPE_FAST_BACKEND`` and ``backend=``.
        module: Package holding one module per op (``<module>.<op>``).
        probe: Returns ``None`` when the backend can run at all, else the reason it cannot.
            Called lazily, at most once per process.
        devices: Callable returning the device types the backend accepts now.
        description: One line for ``python -m landscape_fast.info``.
    """

    name: str
    module: str
    probe: Callable[[], str | None]
    devices: Callable[[], tuple[str, ...]]
    description: str

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run at all in this process, or ``None``."""
        return _cached_probe(self.name)

    def refusal_reasons(self, tensors: Sequence[torch.Tensor]) -> list[str]:
        """Every reason this backend cannot run an op on ``tensors`` (empty: it can)."""
        reasons = []
        why = self.unavailable_reason()
        if why is not None:
            reasons.append(why)
        allowed = self.devices()
        for dev in sorted({t.device.type for t in tensors}):
            if dev not in allowed:
                hint = ""
                if self.name == "triton" and dev == "cpu":
                    hint = " (CPU tensors need TRITON_INTERPRET=1, set before importing triton)"
                reasons.append(f"does not run on {dev} tensors{hint}")
        return reasons

    def load(self, op: str) -> Callable:
        """Import ``<module>.<op>`` and return its in-place implementation ``<op>_``."""
        return _load_impl(self.module, op)


@functools.cache
def _load_impl(module: str, op: str) -> Callable:
    return getattr(importlib.import_module(f"{module}.{op}"), f"{op}_")


def triton_interpret() -> bool:
    """Whether the Triton interpreter is requested (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def build_info() -> dict:
    """What ``setup.py`` built, as recorded in ``_build_info.json`` (empty when absent)."""
    path = _PACKAGE_DIR / "_build_info.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _torch_version_mismatch() -> str | None:
    built_with = build_info().get("torch")
    if built_with and built_with != torch.__version__:
        return (
            f"compiled against torch {built_with} but torch {torch.__version__} is "
            f"installed; {_REINSTALL_HINT}"
        )
    return None


def _probe_reference() -> str | None:
    return None


def _probe_cpp() -> str | None:
    if importlib.util.find_spec("landscape_fast._C") is None:
        return (
            "the C++ extension landscape_fast._C is not built (installed with "
            f"LANDSCAPE_FAST_NO_EXT=1, or its build failed); {_REINSTALL_HINT}"
        )
    mismatch = _torch_version_mismatch()
    if mismatch:
        return mismatch
    try:
        importlib.import_module("landscape_fast._C")
    except (ImportError, OSError) as err:  # pragma: no cover - depends on the build
        return f"landscape_fast._C failed to load ({err}); {_REINSTALL_HINT}"
    return None


def _probe_triton() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install 'triton>=3.6')"
    if not triton_interpret() and not torch.cuda.is_available():
        return "no CUDA device, and TRITON_INTERPRET=1 is not set"
    try:
        importlib.import_module("triton")
    except Exception as err:  # pragma: no cover - broken installs only
        return f"Triton failed to import ({err})"
    return None


def _cuda_library_path() -> Path | None:
    name = build_info().get("cuda_library")
    if name:
        path = _PACKAGE_DIR / name
        if path.exists():
            return path
    return None


def _probe_cuda() -> str | None:
    if _cuda_library_path() is None:
        return (
            "the CUDA kernels are not built (no nvcc at install time, or "
            f"LANDSCAPE_FAST_BUILD_CUDA=0); {_REINSTALL_HINT} where nvcc exists"
        )
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return "no CUDA device is visible (torch.cuda.is_available() is False)"
    return None


def _triton_devices() -> tuple[str, ...]:
    return ("cuda", "cpu") if triton_interpret() else ("cuda",)


BACKENDS: Mapping[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "cuda",
            "landscape_fast.kernels.cuda",
            _probe_cuda,
            lambda: ("cuda",),
            "CUDA kernels (csrc/cuda), compiled by nvcc at install",
        ),
        Backend(
            "triton",
            "landscape_fast.kernels.triton",
            _probe_triton,
            _triton_devices,
            "Triton kernels (GPU; CPU only under TRITON_INTERPRET=1, for tests)",
        ),
        Backend(
            "cpp",
            "landscape_fast.kernels.cpp",
            _probe_cpp,
            lambda: ("cpu",),
            "C++/OpenMP CPU kernels (csrc/cpu), registered as torch.ops.landscape_fast",
        ),
        Backend(
            "reference",
            "landscape_fast.reference",
            _probe_reference,
            lambda: ("cpu", "cuda", "mps", "xpu", "meta"),
            "pure PyTorch: the CPU fallback and the oracle every kernel is tested against",
        ),
    )
}

#: Automatic priority per device type; ``reference`` closes every list.
_AUTO_ORDER: Mapping[str, tuple[str, ...]] = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpp", "reference"),
}


@functools.cache
def _cached_probe(name: str) -> str | None:
    return BACKENDS[name].probe()


def backend_names() -> tuple[str, ...]:
    """All backend names, in priority order."""
    return tuple(BACKENDS)


def forced_backend(explicit: str | None = None) -> str | None:
    """The backend forced by the ``backend=`` argument or ``LANDSCAPE_FAST_BACKEND``.

    Raises:
        BackendError: If the name is not a known backend.
    """
    name = explicit if explicit is not None else os.environ.get(ENV_VAR) or None
    if name is None or name == "auto":
        return None
    if name not in BACKENDS:
        source = "backend=" if explicit is not None else f"{ENV_VAR}="
        raise BackendError(
            f"unknown backend {source}{name!r}; choose one of "
            f"{', '.join(backend_names())} or 'auto'"
        )
    return name


def select(
    op: str,
    tensors: Sequence[torch.Tensor],
    backend: str | None = None,
    op_reasons: Callable[[str, Sequence[torch.Tensor]], list[str]] | None = None,
) -> tuple[str, Callable]:
    """Choose the backend for ``op`` on ``tensors`` and return ``(name, implementation)``.

    Args:
        op: Op name, e.g. ``"block_reorth"``.
        tensors: The op's tensor arguments (their devices decide).
        backend: Forced backend name (overrides ``LANDSCAPE_FAST_BACKEND``), or ``None``.
        op_reasons: Optional op-specific capability check ``(backend, tensors) -> reasons``
            (for example, dtypes a kernel does not handle).

    Raises:
        BackendError: If a forced backend cannot run; the message names every backend and
            why it was refused.
    """
    forced = forced_backend(backend)

    def reasons_for(name: str) -> list[str]:
        reasons = BACKENDS[name].refusal_reasons(tensors)
        if op_reasons is not None and not reasons:
            reasons += op_reasons(name, tensors)
        return reasons

    if forced is not None:
        reasons = reasons_for(forced)
        if not reasons:
            return forced, BACKENDS[forced].load(op)
        lines = [f"{op}: backend {forced!r} was forced but cannot run these inputs:"]
        for name in backend_names():
            why = reasons_for(name)
            if name == forced:
                lines.append(f"  - {name} (forced): refused: {'; '.join(why)}")
            else:
                state = f"refused: {'; '.join(why)}" if why else "usable"
                lines.append(f"  - {name}: {state}")
        lines.append(
            f"Unset {ENV_VAR} (or pass backend='auto') to pick a usable backend automatically."
        )
        raise BackendError("\n".join(lines))

    device_types = {t.device.type for t in tensors}
    order = (
        _AUTO_ORDER.get(device_types.pop(), ("reference",))
        if len(device_types) == 1
        else ("reference",)
    )
    for name in order:
        if not reasons_for(name):
            return name, BACKENDS[name].load(op)
    raise BackendError(  # pragma: no cover - the reference refuses nothing it is given
        f"{op}: no backend accepts these inputs: "
        + "; ".join(f"{n}: {', '.join(reasons_for(n))}" for n in order)
    )


def status() -> dict[str, str | None]:
    """``{backend: None if usable else reason}`` for every backend (runs the probes)."""
    return {name: BACKENDS[name].unavailable_reason() for name in backend_names()}
