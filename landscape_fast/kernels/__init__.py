"""Compiled and Triton implementations of the ops in :mod:`landscape_fast.ops`.

One subpackage per backend (``cpp``, ``triton``, ``cuda``), one module per op, each exposing
``<op>_`` with the reference's signature. Nothing here is imported by ``import landscape_fast``.
"""
