"""C++/OpenMP CPU kernels: thin Python wrappers over ``torch.ops.landscape_fast``."""
