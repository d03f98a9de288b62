r"""Data sources: any iterable of batches, seen as a sample-weighted data set.

Every quantity landscape_fast computes is defined on the *mean loss over a data set*

.. math::

    L(\theta) = \frac{1}{N}\sum_{b} n_b\, L_b(\theta),\qquad N = \sum_b n_b ,

where :math:`L_b` is the (mean-reduced) loss of batch :math:`b` with :math:`n_b` samples.
A short last batch therefore counts for its size, not as a full batch.

Accepted ``data``:

- a single ``(inputs, targets)`` pair of tensors (optionally split into batches of
  ``batch_size``);
- any re-iterable of batches (a ``DataLoader``, a list): each batch an ``(inputs, targets)``
  pair, a ``dict`` of tensors, or a tensor.

The size :math:`n_b` of a batch is the leading dimension of its first tensor (the inputs of
a pair), or whatever ``batch_size_fn(batch)`` returns.

Example:
    >>> import torch
    >>> from landscape_fast.data import DataSource
    >>> X, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    >>> ds = DataSource((X, y), batch_size=4)
    >>> [n for _, n in ds], ds.num_samples
    ([4, 4, 2], 10)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

Batch = Any


def batch_tensors(batch: Batch) -> list[torch.Tensor]:
    """The tensors of a batch, in a fixed order (pytree leaves)."""
    return [t for t in tree_flatten(batch)[0] if isinstance(t, torch.Tensor)]


def default_batch_size(batch: Batch) -> int:
    """Leading dimension of the batch's first tensor (the inputs of an ``(inputs, targets)``)."""
    tensors = batch_tensors(batch)
    if not tensors:
        raise TypeError(
            f"a batch must contain tensors; got {type(batch).__name__}. Pass (inputs, targets) "
            "pairs, dicts of tensors or tensors, or give batch_size_fn=..."
        )
    if tensors[0].dim() == 0:
        raise ValueError(
            "the first tensor of a batch is a scalar, so its number of samples is unknown; pass "
            "batch_size_fn=lambda batch: <number of samples>"
        )
    return int(tensors[0].shape[0])


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Samples ``start:stop`` of every tensor in ``batch`` (leading dimension)."""
    return tree_map(lambda t: t[start:stop] if isinstance(t, torch.Tensor) else t, batch)


def select_batch(batch: Batch, index: torch.Tensor) -> Batch:
    """Samples ``index`` (a 1-D index tensor) of every tensor in ``batch`` (leading dimension)."""
    return tree_map(lambda t: t[index.to(t.device)] if isinstance(t, torch.Tensor) else t, batch)


def unsqueeze_batch(sample: Batch) -> Batch:
    """A batch of one sample from one sample's tensors (adds the leading dimension)."""
    return tree_map(lambda t: t.unsqueeze(0) if isinstance(t, torch.Tensor) else t, sample)


def is_pair(batch: Batch) -> bool:
    """Whether ``batch`` is an ``(inputs, targets)`` pair (tuple or list of length 2)."""
    return isinstance(batch, tuple | list) and len(batch) == 2


def to_device(batch: Batch, device: torch.device, float_dtype: torch.dtype | None) -> Batch:
    """Move every tensor of ``batch`` to ``device``; cast floating tensors to ``float_dtype``."""

    def move(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        if float_dtype is not None and t.is_floating_point() and t.dtype != float_dtype:
            return t.to(device=device, dtype=float_dtype, non_blocking=True)
        return t.to(device=device, non_blocking=True)

    return tree_map(move, batch)


class DataSource:
    """A re-iterable, sample-weighted view of ``data`` (see the module docstring).

    Args:
        data: An ``(inputs, targets)`` pair, or a re-iterable of batches.
        batch_size: Split a single pair into batches of this many samples (default: one batch).
        batch_size_fn: Number of samples of a batch (default: :func:`default_batch_size`).

    Iterating yields ``(batch, n_b)``. :attr:`num_samples` is :math:`N` (known after the first
    complete pass, or at once for a single pair).

    Raises:
        TypeError: For a one-shot iterator (a generator cannot be iterated twice) or a
            non-iterable.
        ValueError: For empty data.
    """

    def __init__(
        self,
        data: Any,
        *,
        batch_size: int | None = None,
        batch_size_fn: Callable[[Batch], int] | None = None,
    ) -> None:
        if isinstance(data, DataSource):
            data = data.data
        self.batch_size_fn = batch_size_fn or default_batch_size
        if is_pair(data) and all(isinstance(t, torch.Tensor) for t in data):
            X, y = data
            if X.dim() == 0 or y.dim() == 0 or X.shape[0] != y.shape[0]:
                raise ValueError(
                    "data=(inputs, targets) needs tensors with the same leading (sample) "
                    f"dimension; got shapes {tuple(X.shape)} and {tuple(y.shape)}"
                )
            if X.shape[0] == 0:
                raise ValueError("data is empty: the (inputs, targets) pair has 0 samples")
            n = int(X.shape[0])
            step = n if batch_size is None else int(batch_size)
            if step <= 0:
                raise ValueError(f"batch_size must be positive, got {batch_size}")
            self.data: Any = [(X[i : i + step], y[i : i + step]) for i in range(0, n, step)]
        elif isinstance(data, torch.Tensor | Mapping):
            self.data = [data]
        elif isinstance(data, Iterator):
            raise TypeError(
                "data is a one-shot iterator (e.g. a generator); curvature operators pass over "
                "the data many times. Pass a list of batches or a DataLoader instead."
            )
        elif isinstance(data, Iterable):
            if batch_size is not None:
                raise ValueError(
                    "batch_size= only splits a single (inputs, targets) pair; a DataLoader or "
                    "list of batches already defines its batches"
                )
            self.data = data
        else:
            raise TypeError(
                f"data must be an (inputs, targets) pair or an iterable of batches; got "
                f"{type(data).__name__}"
            )
        self._num_samples: int | None = None
        self._num_batches: int | None = None

    def __iter__(self) -> Iterator[tuple[Batch, int]]:
        total, count = 0, 0
        for batch in self.data:
            n = int(self.batch_size_fn(batch))
            if n < 0:
                raise ValueError(f"batch {count} reports a negative number of samples ({n})")
            total += n
            count += 1
            yield batch, n
        if total == 0:
            raise ValueError(
                "data is empty: the data source yielded no samples. Check the DataLoader "
                "(drop_last with fewer samples than one batch?) or the list of batches."
            )
        if self._num_samples is not None and self._num_samples != total:
            raise ValueError(
                f"the data changed between passes: {self._num_samples} samples before, {total} "
                "now. Curvature operators need the same data set on every pass."
            )
        self._num_samples, self._num_batches = total, count

    @property
    def num_samples(self) -> int:
        """Total number of samples :math:`N` (one pass over the data if not yet known)."""
        if self._num_samples is None:
            for _ in self:
                pass
        assert self._num_samples is not None
        return self._num_samples

    @property
    def num_batches(self) -> int:
        """Number of batches per pass."""
        if self._num_batches is None:
            self.num_samples  # noqa: B018 - one counting pass
        assert self._num_batches is not None
        return self._num_batches

    def first(self) -> tuple[Batch, int]:
        """The first batch and its size (for probing a model)."""
        for item in self:
            return item
        raise ValueError("data is empty")  # pragma: no cover - __iter__ raises first
