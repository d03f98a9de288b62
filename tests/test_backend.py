"""Backend registry: selection, forcing, refusal messages, ``python -m landscape_fast.info``."""

import subprocess
import sys

import pytest
import torch

from landscape_fast import BackendError, _backend
from landscape_fast.ops import block_reorth


def _inputs():
    Q = torch.linalg.qr(torch.randn(20, 3, dtype=torch.float64))[0].T.contiguous()
    return Q, torch.randn(2, 20, dtype=torch.float64)


def test_names_and_priority() -> None:
    assert _backend.backend_names() == ("cuda", "triton", "cpp", "reference")
    assert _backend.BACKENDS["reference"].unavailable_reason() is None


def test_auto_selection_on_cpu_prefers_cpp_then_reference(monkeypatch) -> None:
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    name, impl = _backend.select("block_reorth", _inputs())
    expected = "cpp" if _backend.BACKENDS["cpp"].unavailable_reason() is None else "reference"
    assert name == expected
    assert callable(impl)


def test_auto_never_picks_triton_interpreter_for_cpu(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    assert _backend.select("block_reorth", _inputs())[0] in ("cpp", "reference")


def test_env_var_forces_reference(monkeypatch) -> None:
    monkeypatch.setenv(_backend.ENV_VAR, "reference")
    assert _backend.select("block_reorth", _inputs())[0] == "reference"


def test_argument_overrides_env(monkeypatch) -> None:
    monkeypatch.setenv(_backend.ENV_VAR, "cuda")
    assert _backend.select("block_reorth", _inputs(), backend="reference")[0] == "reference"
    assert _backend.select("block_reorth", _inputs(), backend="auto")[0] in ("cpp", "reference")


def test_forced_backend_that_cannot_run_lists_every_backend(monkeypatch) -> None:
    monkeypatch.setenv(_backend.ENV_VAR, "cuda")
    with pytest.raises(BackendError) as err:
        block_reorth(*_inputs())
    msg = str(err.value)
    assert "'cuda' was forced" in msg
    for name in _backend.backend_names():
        assert f"- {name}" in msg
    assert "does not run on cpu tensors" in msg
    assert "reference: usable" in msg
    assert _backend.ENV_VAR in msg


def test_unknown_backend_name(monkeypatch) -> None:
    monkeypatch.setenv(_backend.ENV_VAR, "fortran")
    with pytest.raises(BackendError, match="unknown backend LANDSCAPE_FAST_BACKEND='fortran'"):
        block_reorth(*_inputs())
    monkeypatch.delenv(_backend.ENV_VAR)
    with pytest.raises(BackendError, match="unknown backend backend='gpu'"):
        block_reorth(*_inputs(), backend="gpu")


def test_triton_on_cpu_needs_interpreter(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reasons = _backend.BACKENDS["triton"].refusal_reasons(_inputs())
    assert any("TRITON_INTERPRET=1" in r for r in reasons)


def test_cuda_refuses_cpu_build() -> None:
    reason = _backend.BACKENDS["cuda"].unavailable_reason()
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert reason is not None and len(reason) > 20


def test_info_module_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "landscape_fast.info"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    for name in _backend.backend_names():
        assert name in out.stdout
    assert "reference  usable" in out.stdout


def test_falls_back_to_reference_when_cpp_is_not_built(monkeypatch) -> None:
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    real = _backend._cached_probe
    monkeypatch.setattr(
        _backend, "_cached_probe", lambda name: "not built" if name == "cpp" else real(name)
    )
    assert _backend.select("block_reorth", _inputs())[0] == "reference"
    out = block_reorth(*_inputs())
    assert out.W.shape == (2, 20)
    with pytest.raises(BackendError, match="cpp \\(forced\\): refused: not built"):
        block_reorth(*_inputs(), backend="cpp")
