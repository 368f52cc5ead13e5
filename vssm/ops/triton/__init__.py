"""Triton GPU kernels of the scan engine (also run on CPU tensors under TRITON_INTERPRET=1)."""
