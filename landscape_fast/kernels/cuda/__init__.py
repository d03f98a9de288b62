"""CUDA kernels (``csrc/cuda/*.cu``), loaded with ctypes from ``landscape_fast/_cuda_kernels.so``.

The library has a plain C ABI (raw device pointers, sizes and a ``cudaStream_t``), so it is
built by ``nvcc`` alone, without torch's CUDA headers, and loaded lazily on first use.
"""
