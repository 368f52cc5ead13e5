"""The canonical scan op (``vssm::scan_fwd``, layout in ``vssm.ops.scan_core``) as a bounded graph of standard ops,
for exporters (ONNX) that cannot run a custom kernel.

The references loop over tokens: traced, that is L steps of ops in the graph (L = 3136 for VMamba's first stage).
Here the recurrence h_t = a_t h_(t-1) + b_t (a_t = exp(delta_t A), b_t = delta_t B_t u_t; h is (d, N) per batch
element and direction) and its read-out y_t = C_t . h_t run over C = ceil(L / T) chunks of equal length (at most
T = 32 steps), all chunks at once, in a graph of 2 T + log2(C) steps:

1. Chunk totals. In every chunk but the last, the steps run one after the other (unrolled in the graph) from a zero
   state, giving the state at the chunk's end; the product of the chunk's decays is exp(A * sum of its deltas).
2. Carries. A Hillis-Steele scan over these totals (log2(C) rounds of padded shifts on (C, batch, K, N, d) tensors)
   gives the state entering every chunk (zero for the first).
3. Outputs. In every chunk the steps run again, now from the chunk's carry, and each step's state is contracted
   with C_t over N at once: only y, (d, L) values, leaves the chunks, and the last step's state is the last state.

No (d, N, L) tensor is built: a step's decays and inputs are formed from the (d, L) and (N, L) operands when the step
runs (in step 3 again rather than kept from step 1), so the largest tensors alive are a few (C, batch, K, N, d) step
slices, d innermost so that every product broadcasts whole rows of channels. Each operand is laid out step-major by
one 2-D transpose, so that a step's slice is contiguous blocks.

Every factor is a product of decays in [0, 1] or a sum of such products times inputs: a chunk's decay product is
exp of a sum of non-positive delta A (delta >= 0 after softplus, A = -exp(A_log) < 0), never a ratio, so nothing
grows, unlike the closed form exp(cumsum(delta A)) (h0 + cumsum(exp(-cumsum(delta A)) delta B u)), whose
exp(-cumsum) overflows float32 within a few steps for VMamba's and Vim's decays. The result matches
``selective_scan_ref`` to rounding (tests/export/test_onnx.py: float64 and float32).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import compute_dtype

__all__ = ["CHUNK", "scan_fwd_parallel"]

CHUNK = 32  # most steps per chunk (each unrolled twice in the graph); a step's slice holds ceil(L / 32) chunks


def _step_major(x: Tensor, chunk: int, num_chunks: int, shape: tuple) -> Tensor:
    """(batch, ...rest, S) -> (S / T, T, *shape), zero-padded to whole chunks, by one 2-D transpose: step t of every
    chunk is then ``[:, t]``, contiguous blocks of ``shape`` (batch, ...rest). The transpose acts on a flat
    (batch * prod(rest), S) view, which keeps graph optimizers from moving it onto the products of every step."""
    pad = num_chunks * chunk - x.shape[-1]
    if pad:
        x = F.pad(x, (0, pad))
    return x.reshape(-1, num_chunks * chunk).t().reshape(num_chunks, chunk, *shape)


def _shift_chunks(x: Tensor, shift: int, fill: float) -> Tensor:
    """x (chunks, ...) moved ``shift`` chunks later along axis 0, the first ``shift`` filled with ``fill``."""
    return F.pad(x[:-shift], (0, 0) * (x.dim() - 1) + (shift, 0), value=fill)


def _chunk_carries(decays: Tensor, ends: Tensor) -> Tensor:
    """States entering every chunk (C, ...) from the decay products and zero-start end states (C - 1, ...) of all
    chunks but the last: an inclusive Hillis-Steele scan along axis 0 (log2(C - 1) rounds), shifted by one chunk."""
    shift = 1
    while shift < ends.shape[0]:
        # chunk c composes its span with the span ending at chunk c - shift (an identity a = 1, b = 0 before the first)
        ends = torch.addcmul(ends, decays, _shift_chunks(ends, shift, 0.0))
        decays = decays * _shift_chunks(decays, shift, 1.0)
        shift *= 2
    return F.pad(ends, (0, 0) * (ends.dim() - 1) + (1, 0))


def _chunked_scan(delta: Tensor, x: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """y_t = C_t . h_t with h_t = exp(delta_t A) h_(t-1) + x_t B_t, h_(-1) = 0 (module docstring), for groups G of
    d / G channels sharing B and C.

    delta, x: (batch, K, d, S); A: (K, d, N); B, C: (batch, K, G, N, S). Returns y (batch, K, d, S) and the last state
    (batch, K, d, N). Inside, a state is (chunks, batch, K, G, N, d / G): d innermost, so that every product
    broadcasts whole rows of d / G channels and the read-out sums rows over N."""
    batch, num_directions, dim, steps = delta.shape
    groups, d_state = B.shape[2], B.shape[3]
    num_chunks = -(-steps // max(1, chunk))
    chunk = -(-steps // num_chunks)  # chunks of equal length, at most T: padding below one step per chunk
    # padded steps have delta = 0 and x = 0: decay 1 and input 0, identity steps that keep the state
    channels = (-1, num_directions, groups, 1, dim // groups)  # a step of delta and x: (C, b, K, G, 1, d/G)
    delta = _step_major(delta, chunk, num_chunks, channels)
    x = _step_major(x, chunk, num_chunks, channels)
    B = _step_major(B, chunk, num_chunks, (-1, num_directions, groups, d_state, 1))  # a step: (C, b, K, G, N, 1)
    C = _step_major(C, chunk, num_chunks, (-1, num_directions, groups, d_state, 1))
    A = A.unflatten(1, (groups, dim // groups)).transpose(-1, -2)  # (K, G, N, d/G)

    def factors(delta_t: Tensor, x_t: Tensor, B_t: Tensor) -> tuple[Tensor, Tensor]:
        """Decay exp(delta_t A) and input x_t B_t of one step: (chunks, b, K, G, N, d/G) each."""
        return torch.exp(delta_t * A), x_t * B_t

    state = None
    if num_chunks > 1:  # 1. end states from a zero start and decay products, for every chunk but the last
        head = num_chunks - 1
        for delta_t, x_t, B_t in zip(delta[:head].unbind(1), x[:head].unbind(1), B[:head].unbind(1)):
            a, b = factors(delta_t, x_t, B_t)
            state = b if state is None else torch.addcmul(b, a, state)
        # the product of a chunk's decays, exp of the chunk's sum of delta A (<= 0 for A <= 0 <= delta): no ratio
        decay = torch.exp(delta[:head].sum(1) * A)
        state = _chunk_carries(decay, state)  # 2. (C, b, K, G, N, d/G) state entering each chunk
    ys = []
    for delta_t, x_t, B_t, C_t in zip(delta.unbind(1), x.unbind(1), B.unbind(1), C.unbind(1)):
        a, b = factors(delta_t, x_t, B_t)  # 3. every chunk from its carry, each step read out with C at once
        state = b if state is None else torch.addcmul(b, a, state)
        read = state * C_t
        ys.append(read.sum(-2) if d_state > 1 else read.squeeze(-2))  # (C, b, K, G, d/G)
    y = torch.stack(ys, 1).reshape(num_chunks * chunk, -1).t().reshape(batch, num_directions, dim, -1)
    last = state[-1].transpose(-1, -2).reshape(batch, num_directions, dim, d_state)
    return y[..., :steps], last


def _softplus(x: Tensor) -> Tensor:
    """log(1 + exp(x)) as max(x, 0) + log1p(exp(-|x|)): F.softplus to rounding for every x (no overflow; no threshold,
    above which F.softplus returns x), in element-wise ops that onnxruntime runs vectorised (its Softplus kernel and
    the Where of a threshold run element by element)."""
    return F.relu(x) + torch.log1p(torch.exp(-x.abs()))


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
    """``vssm::scan_fwd`` (same arguments, same outputs: y, last state, an empty saved-states tensor) computed by the
    chunked scan of the module docstring; ``save_states``, ``backend`` and ``a_nonpositive`` are accepted and
    ignored: the chunked form takes the decays to be <= 1 (module docstring), as the exported models'
    A = -exp(A_log) gives. Layout: ``vssm.ops.scan_core``."""
    batch, _, dim, length = u.shape
    num_directions = A.shape[0]
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
        delta = _softplus(delta)
    delta = delta.expand(batch, num_directions, dim, steps)
    y, last = _chunked_scan(delta, delta * u, A, B, C, chunk)  # (b, K, d, S), (b, K, d, N)
    if D is not None:
        y = y + D.to(dtype)[None, :, :, None] * u
    if paths is not None:
        y = _gather_path(y, _inverse_paths(paths, length), num_directions)  # (b, K, d, L) in spatial order
    if z is not None:
        y = y * F.silu(z.to(dtype)).unsqueeze(1)
    if merge:
        y = y.sum(1) if num_directions > 1 else y[:, 0]
    return y.to(out_dtype), last, u.new_empty(0, dtype=torch.float32)
