"""Triton GPU kernels, one module per op (``<op>.py`` exposing ``<op>_``).

They run on CUDA tensors, or on CPU tensors under the Triton interpreter
(``TRITON_INTERPRET=1``, which must be set before ``triton`` is first imported), which is
how the test-suite checks them without a GPU. Nothing is imported here: importing this
package must not import Triton.
"""
