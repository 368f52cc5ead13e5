"""The canonical scan op (``vssm::scan_fwd``, layout in ``vssm.ops.scan_core``) as a bounded graph of standard ops,
for exporters (ONNX) that cannot run a custom kernel.

The references loop over tokens: traced, that is L steps of ops in the graph (L = 3136 for VMamba's first stage).
Here the recurrence h_t = a_t h_(t-1) + b_t (a_t = exp(delta_t A), b_t = delta_t B_t u_t) is a two-level scan whose
graph has T + 2 log2(L / T) steps, not L:

1. The steps are split into chunks of T = 16 (the last padded with identity steps a = 1, b = 0). Within every chunk
   at once, the T steps run one after the other (unrolled in the graph: slices of 1/T of the tensor, then one
   stack), giving each step's state from a zero state at the chunk's start and the product of the chunk's decays up
   to it.
2. The chunk totals (the last step of each chunk) are scanned over the chunks by a Hillis-Steele scan (log2(L / T)
   rounds of padded shifts on a tensor T times smaller), giving the state at the end of every chunk.
3. h_t = b_t + a_t h(end of the previous chunk), and y_t = C_t . h_t.

Every factor is a product of decays in [0, 1] or a sum of such products times inputs: nothing grows, unlike the
closed form exp(cumsum(delta A)) (h0 + cumsum(exp(-cumsum(delta A)) delta B u)), whose exp(-cumsum) overflows float32
within a few steps for VMamba's and Vim's decays. The work is O(L) element-wise operations in the chunks plus
O((L / T) log(L / T)) over the chunk totals; every op is an element-wise product or sum, a slice, a stack, a pad, a
reshape or a gather, which ONNX runtimes run vectorised and multi-threaded. The result matches ``selective_scan_ref`` to rounding (tests/export/test_onnx.py: float64 and
float32).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import compute_dtype

__all__ = ["CHUNK", "parallel_linear_scan", "scan_fwd_parallel"]

CHUNK = 16  # steps per chunk of the first level, unrolled step by step; log2(L / 16) rounds on 1/16 of the tensors


def _scan_rounds(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive Hillis-Steele scan of (a, b) pairs along the last axis (static size S): log2(S) rounds."""
    size = a.shape[-1]
    shift = 1
    while shift < size:
        # step t composes its span with the span ending at t - shift, an identity (a = 1, b = 0) before the start:
        # padded shifts, so each round is a few whole-tensor element-wise ops and no concatenation
        b = torch.addcmul(b, a, F.pad(b[..., :-shift], (shift, 0)))
        a = a * F.pad(a[..., :-shift], (shift, 0), value=1.0)
        shift *= 2
    return a, b


def _steps_in_chunk(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive scan of (a, b) pairs along the last axis (static size T, small) step by step, unrolled: T - 1 steps
    of whole-slice products and sums over every chunk at once. Returns (decay products, states from a zero state)."""
    decays, states = [a[..., 0]], [b[..., 0]]
    for t in range(1, a.shape[-1]):
        states.append(torch.addcmul(b[..., t], a[..., t], states[-1]))
        decays.append(a[..., t] * decays[-1])
    return torch.stack(decays, -1), torch.stack(states, -1)


def parallel_linear_scan(a: Tensor, b: Tensor, chunk: int = CHUNK) -> Tensor:
    """All states h_t = a_t h_(t-1) + b_t (h_(-1) = 0) of (..., S) decays ``a`` and inputs ``b``, as (..., S).

    A two-level scan (module docstring) with a static S and any leading shape (dynamic sizes allowed)."""
    steps = a.shape[-1]
    chunk = max(1, min(chunk, steps))
    num_chunks = -(-steps // chunk)
    pad = num_chunks * chunk - steps
    if pad:  # identity steps: they keep the state
        a = F.pad(a, (0, pad), value=1.0)
        b = F.pad(b, (0, pad), value=0.0)
    a = a.unflatten(-1, (num_chunks, chunk))  # (..., S / T, T)
    b = b.unflatten(-1, (num_chunks, chunk))
    a, b = _steps_in_chunk(a, b)  # within each chunk, from a zero state at its start
    if num_chunks > 1:
        _, ends = _scan_rounds(a[..., -1], b[..., -1])  # (..., S / T) state at the end of each chunk
        carry = F.pad(ends[..., :-1], (1, 0))  # state entering each chunk
        b = torch.addcmul(b, a, carry.unsqueeze(-1))
    h = b.flatten(-2)
    return h[..., :steps] if pad else h


def _gather_path(x: Tensor, paths: Tensor, num_directions: int) -> Tensor:
    """(batch, Kx, ..., L) in spatial order -> (batch, K, ..., Lp) in path order; -1 steps read zeros."""
    length = x.shape[-1]
    x = F.pad(x, (0, 1))  # index L is the zero token
    idx = torch.where(paths < 0, torch.full_like(paths, length), paths)
    x = x.expand(x.shape[0], num_directions, *x.shape[2:])
    idx = idx.view(1, num_directions, *([1] * (x.dim() - 3)), idx.shape[-1]).expand(*x.shape[:-1], idx.shape[-1])
    return torch.gather(x, -1, idx)


def _inverse_paths(paths: Tensor, length: int) -> Tensor:
    """(K, Lp) paths -> (K, L) step at which each spatial position is visited (computed once, at trace time, for the
    constant path tensors of the zoo's models)."""
    num_directions, steps = paths.shape
    idx = torch.where(paths < 0, torch.full_like(paths, length), paths)
    inv = torch.full((num_directions, length + 1), -1, dtype=torch.long, device=paths.device)
    inv = inv.scatter(1, idx, torch.arange(steps, device=paths.device).expand(num_directions, steps))
    return inv[:, :length]


def scan_fwd_parallel(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                      z: Optional[Tensor], delta_bias: Optional[Tensor], paths: Optional[Tensor], delta_softplus: bool,
                      merge: bool, params_at_step: bool, save_states: bool = False, backend: str = "torch",
                      a_nonpositive: bool = False, chunk: int = CHUNK) -> tuple[Tensor, Tensor, Tensor]:
    """``vssm::scan_fwd`` (same arguments, same outputs: y, last state, an empty saved-states tensor) computed with
    ``parallel_linear_scan``; ``save_states``, ``backend`` and ``a_nonpositive`` are accepted and ignored: the
    parallel form takes the decays to be <= 1 (module docstring), as the exported models' A = -exp(A_log) gives.
    Layout: ``vssm.ops.scan_core``."""
    batch, _, dim, length = u.shape
    num_directions, _, d_state = A.shape
    groups = B.shape[2]
    out_dtype = u.dtype
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    if paths is not None:
        paths = paths.long()
        u = _gather_path(u, paths, num_directions)
        if not params_at_step:
            delta = _gather_path(delta, paths, num_directions)
            B = _gather_path(B, paths, num_directions)
            C = _gather_path(C, paths, num_directions)
    steps = B.shape[-1]
    u = u.expand(batch, num_directions, dim, steps)  # (b, K, d, S) in step order
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[None, :, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    delta = delta.expand(batch, num_directions, dim, steps)
    decay = torch.exp(delta.unsqueeze(-2) * A[None, :, :, :, None])  # (b, K, d, N, S)
    x = (delta * u).unflatten(2, (groups, dim // groups)).unsqueeze(-2)  # (b, K, G, d/G, 1, S)
    inputs = (x * B.unsqueeze(3)).flatten(2, 3)  # (b, K, d, N, S)
    h = parallel_linear_scan(decay, inputs, chunk)  # (b, K, d, N, S)
    last = h[..., -1]  # (b, K, d, N)
    y = (h.unflatten(2, (groups, dim // groups)) * C.unsqueeze(3)).sum(-2).flatten(2, 3)  # (b, K, d, S)
    if D is not None:
        y = y + D.to(dtype)[None, :, :, None] * u
    if paths is not None:
        y = _gather_path(y, _inverse_paths(paths, length), num_directions)  # (b, K, d, L) in spatial order
    if z is not None:
        y = y * F.silu(z.to(dtype)).unsqueeze(1)
    if merge:
        y = y.sum(1) if num_directions > 1 else y[:, 0]
    return y.to(out_dtype), last, u.new_empty(0, dtype=torch.float32)
