"""Tensor ops the solvers need: one public function each, dispatched to a backend."""

from landscape_fast.ops.block_reorth import ReorthResult, block_reorth
from landscape_fast.ops.softmax_ce_hvp import softmax_ce_hvp

__all__ = ["ReorthResult", "block_reorth", "softmax_ce_hvp"]
