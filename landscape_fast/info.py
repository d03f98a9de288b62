"""``python -m landscape_fast.info``: what is built, what is usable, and why not.

Example:
    >>> from landscape_fast.info import info_text
    >>> "reference" in info_text()
    True
"""

from __future__ import annotations

import platform
import sys

import torch

from landscape_fast import __version__, _backend


def info_dict() -> dict:
    """Versions, devices, build record and the status of every backend."""
    status = _backend.status()
    return {
        "landscape_fast": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else [],
        "threads": torch.get_num_threads(),
        "build": _backend.build_info(),
        "forced_backend": _backend.forced_backend(),
        "backends": {
            name: {
                "usable": status[name] is None,
                "reason": status[name],
                "devices": list(_backend.BACKENDS[name].devices()),
                "description": _backend.BACKENDS[name].description,
            }
            for name in _backend.backend_names()
        },
    }


def info_text() -> str:
    """Human-readable form of :func:`info_dict`."""
    d = info_dict()
    lines = [
        f"landscape_fast {d['landscape_fast']}  (python {d['python']}, torch {d['torch']}, "
        f"CUDA {d['torch_cuda'] or 'none'}, {d['threads']} threads)",
        f"platform: {d['platform']}",
        f"CUDA devices: {', '.join(d['cuda_devices']) or 'none'}",
    ]
    build = d["build"]
    if build:
        lines.append(
            f"built against torch {build.get('torch')}; CUDA kernels: "
            f"{build.get('cuda_library') or build.get('cuda_error') or 'not built'}"
        )
    else:
        lines.append("native build: none recorded (installed with LANDSCAPE_FAST_NO_EXT=1?)")
    if d["forced_backend"]:
        lines.append(f"LANDSCAPE_FAST_BACKEND={d['forced_backend']} (forced)")
    lines.append("backends (priority order):")
    for name, b in d["backends"].items():
        state = "usable  " if b["usable"] else "unusable"
        lines.append(f"  {name:<10} {state} devices={','.join(b['devices'])}  {b['description']}")
        if b["reason"]:
            lines.append(f"  {'':<10} why: {b['reason']}")
    return "\n".join(lines)


def main() -> None:
    """Print :func:`info_text`."""
    print(info_text())


if __name__ == "__main__":
    main()
