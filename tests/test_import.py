"""``import landscape_fast`` must stay lean: no Triton, no compiled module, no CUDA init."""

import subprocess
import sys

CHECK = r"""
import sys, torch
calls = []
torch.cuda.init = lambda *a, **k: calls.append("init")
torch.cuda.current_device = lambda *a, **k: calls.append("current_device") or 0
import landscape_fast as lf
lf.ParamSpace(torch.nn.Linear(2, 2))
assert "triton" not in sys.modules, "triton was imported"
assert not any(m.startswith("landscape_fast._C") for m in sys.modules), "_C was loaded"
assert not any(m.startswith("landscape_fast.kernels") for m in sys.modules), "kernels imported"
assert not torch.cuda.is_initialized(), "CUDA was initialised"
assert not calls, calls
print("lean")
"""


def test_import_is_lean() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "lean"


def test_public_api() -> None:
    import landscape_fast as lf

    for name in ("ParamSpace", "block_reorth", "ReorthResult", "BackendError"):
        assert hasattr(lf, name)
