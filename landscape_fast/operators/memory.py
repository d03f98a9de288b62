"""Memory accounting for the HVP planner: what is free, and what one batch's graph holds.

Example:
    >>> import torch
    >>> x = torch.randn(64, 32, requires_grad=True)
    >>> with GraphMeter() as meter:
    ...     y = torch.tanh(x @ x.T).sum()
    >>> meter.bytes > 0
    True
"""

from __future__ import annotations

import torch

#: Fraction of the free memory the planner may use when no ``memory_budget`` is given.
DEFAULT_FRACTION = 0.25


def available_memory(device: torch.device) -> int:
    """Free memory in bytes on ``device`` (CUDA: ``mem_get_info``; CPU: ``MemAvailable``)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - non-Linux hosts
        pass
    return 4 << 30  # pragma: no cover - a conservative guess where /proc is missing


def default_budget(device: torch.device, memory_budget: int | None) -> int:
    """``memory_budget`` if given, else :data:`DEFAULT_FRACTION` of the free memory."""
    if memory_budget is not None:
        if memory_budget <= 0:
            raise ValueError(
                f"memory_budget must be a positive number of bytes, got {memory_budget}"
            )
        return int(memory_budget)
    return int(available_memory(device) * DEFAULT_FRACTION)


class GraphMeter:
    """Sum the bytes autograd saves for backward inside the ``with`` block.

    Storages are counted once (views share them); tensors listed in ``exclude`` (the
    parameters, which exist anyway) are not counted.
    """

    def __init__(self, exclude: tuple[torch.Tensor, ...] = ()) -> None:
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self._seen: set[int] = set()
        self.bytes = 0
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key not in self._seen and key not in self._excluded:
                self._seen.add(key)
                self.bytes += storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage (functorch)
            self.bytes += t.numel() * t.element_size()
        return t

    def __enter__(self) -> GraphMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._hooks is not None
        self._hooks.__exit__(*exc)
