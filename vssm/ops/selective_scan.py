"""The public selective scan (S6) with mamba_ssm's ``selective_scan_fn`` signature, dispatched to a backend.

The recurrence, the shapes and the PyTorch definitions (``selective_scan_ref``, ``selective_scan_chunked``) are in
``vssm.ops.scan_reference``; this op runs them, or the Triton kernels, through the canonical scan op of
``vssm.ops.scan_core`` with one direction.
"""
from typing import Optional

import torch
from timm.layers import register_notrace_function
from torch import Tensor

from .common import trace_quiet
from .scan_core import scan_core
from .scan_reference import check_scan_args, expand_bc

__all__ = ["selective_scan"]


@register_notrace_function
@torch.jit.ignore
@trace_quiet
def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                   return_last_state: bool = False, a_nonpositive: bool = False, recompute_states: bool = False):
    """Selective scan with mamba_ssm's ``selective_scan_fn`` semantics, on the fastest available backend.

    Args:
        u, delta: (batch, dim, L) inputs and step sizes.
        A: (dim, N) real state matrix, N = d_state (diagonal per channel).
        B, C: (dim, N), (batch, N, L) or (batch, G, N, L).
        D, delta_bias: optional (dim,).
        z: optional (batch, dim, L) gate, y * silu(z).
        delta_softplus: apply softplus to delta + delta_bias.
        return_last_state: also return the final state (batch, dim, N), float32.
        a_nonpositive: the caller's promise that A <= 0 (as A = -exp(A_log)), not checked: with step sizes >= 0
            every decay exp(delta A) is then <= 1 and the Triton backend may compose decays associatively (its
            small-N chunk kernels). Without it the result follows the reference for any A (``vssm.ops.scan_core``).
        recompute_states: keep no chunk states for the backward, which computes them again (``scan_core``).

    Returns:
        y (batch, dim, L) in u's dtype [, last_state (batch, dim, N)]; a batch of 0 gives empty outputs.
    The backend is Triton for CUDA tensors (or anywhere under TRITON_INTERPRET=1 when forced), otherwise the
    chunked PyTorch path; ``VSSM_SCAN_BACKEND=ref|torch|triton`` forces one. Differentiable in every tensor.

    Raises:
        ValueError: Shapes that do not fit, or L = 0 ("L must be >= 1").
    """
    batch, dim, length, _ = check_scan_args(u, delta, A, B, C, D, z, delta_bias)
    B4 = expand_bc(B, batch, length).unsqueeze(1)  # (batch, K=1, G, N, L)
    C4 = expand_bc(C, batch, length).unsqueeze(1)
    y, last = scan_core(u.unsqueeze(1), delta.unsqueeze(1), A.unsqueeze(0), B4, C4,
                        None if D is None else D.unsqueeze(0), z,
                        None if delta_bias is None else delta_bias.unsqueeze(0),
                        paths=None, delta_softplus=delta_softplus, merge=False, params_at_step=False,
                        a_nonpositive=a_nonpositive, recompute_states=recompute_states)
    y = y.squeeze(1)
    return (y, last.squeeze(1)) if return_last_state else y
