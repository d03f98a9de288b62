"""Pure-PyTorch twin of every op: the CPU fallback and the oracle kernels are tested against."""
