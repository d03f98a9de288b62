"""Tensor ops the solvers need: one public function each, dispatched to a backend."""

from landscape_fast.ops.block_reorth import ReorthResult, block_reorth

__all__ = ["ReorthResult", "block_reorth"]
