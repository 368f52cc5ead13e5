"""The selective scan's PyTorch definitions: the sequential reference, the chunked PyTorch path, and their argument
checks and layout helpers. ``vssm.ops.selective_scan`` holds the public dispatching op.

Recurrence per batch b, channel d and state n (A real, negative in practice):

    delta_t = softplus(delta_t + delta_bias)            (both optional)
    h_t     = exp(delta_t * A[d, n]) * h_{t-1} + delta_t * B_t[n] * u_t
    y_t     = sum_n C_t[n] * h_t[n] + D[d] * u_t        (D optional)
    y_t     = y_t * silu(z_t)                           (z optional)

Shapes follow ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``: u, delta, z are (batch, dim, L); A is
(dim, N) with N = d_state; B and C are (dim, N) time-invariant, (batch, N, L), or (batch, G, N, L) with G groups of
dim / G channels; D and delta_bias are (dim,). State and accumulation are float32 (float64 when the inputs are
float64); the output has u's dtype. A batch of 0 gives empty outputs; L = 0 raises a ValueError ("L must be >= 1").
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import check_float_tensor, compute_dtype, trace_quiet

__all__ = ["selective_scan_ref", "selective_scan_chunked", "check_scan_args", "expand_bc"]


def check_scan_args(u, delta, A, B, C, D, z, delta_bias) -> tuple[int, int, int, int]:
    """Validate selective_scan arguments. Returns (batch, dim, L, N)."""
    check_float_tensor("u", u, (3,))
    batch, dim, length = u.shape
    if length < 1:
        raise ValueError(f"selective_scan: L must be >= 1, got shape {tuple(u.shape)} for u")
    check_float_tensor("delta", delta, (3,))
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must have u's shape {tuple(u.shape)} (batch, dim, L), "
                         f"got {tuple(delta.shape)}")
    check_float_tensor("A", A, (2,))
    if A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (dim={dim}, N), got {tuple(A.shape)}")
    d_state = A.shape[1]
    if not 1 <= d_state <= 256:
        raise ValueError(f"selective_scan: A's state size N must be in 1..256, got {d_state}")
    for name, t in (("B", B), ("C", C)):
        check_float_tensor(name, t, (2, 3, 4))
        if t.dim() == 2 and t.shape != (dim, d_state):
            raise ValueError(f"selective_scan: time-invariant {name} must be (dim, N) = {(dim, d_state)}, "
                             f"got {tuple(t.shape)}")
        if t.dim() == 3 and t.shape != (batch, d_state, length):
            raise ValueError(f"selective_scan: {name} must be (batch, N, L) = {(batch, d_state, length)}, "
                             f"got {tuple(t.shape)}")
        if t.dim() == 4:
            groups = t.shape[1]
            if t.shape[0] != batch or t.shape[2:] != (d_state, length) or groups < 1:
                raise ValueError(f"selective_scan: {name} must be (batch, G, N, L) = ({batch}, G, {d_state}, "
                                 f"{length}), got {tuple(t.shape)}")
            if dim % groups:
                raise ValueError(f"selective_scan: dim={dim} is not divisible by the {groups} groups of {name}")
    if B.dim() == 4 and C.dim() == 4 and B.shape[1] != C.shape[1]:
        raise ValueError(f"selective_scan: B and C must have the same number of groups, got {B.shape[1]} and "
                         f"{C.shape[1]}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            check_float_tensor(name, t, (1,))
            if t.shape != (dim,):
                raise ValueError(f"selective_scan: {name} must be (dim,) = ({dim},), got {tuple(t.shape)}")
    if z is not None:
        check_float_tensor("z", z, (3,))
        if z.shape != u.shape:
            raise ValueError(f"selective_scan: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    devices = {t.device for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"selective_scan: all tensors must be on one device, got {sorted(map(str, devices))}")
    return batch, dim, length, d_state


def expand_bc(t: Tensor, batch: int, length: int) -> Tensor:
    """B or C in any accepted layout -> (batch, G, N, L) (a view where possible)."""
    if t.dim() == 2:  # (dim, N) time-invariant: one group per channel
        return t.unsqueeze(0).unsqueeze(-1).expand(batch, *t.shape, length)
    if t.dim() == 3:
        return t.unsqueeze(1)
    return t


def _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """Upcast to the compute dtype and apply bias + softplus. Returns (u, delta, A, B4, C4, D, z)."""
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, _, length = u.shape
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    B4 = expand_bc(B, batch, length).to(dtype)
    C4 = expand_bc(C, batch, length).to(dtype)
    return (u.to(dtype), delta, A.to(dtype), B4, C4, None if D is None else D.to(dtype),
            None if z is None else z.to(dtype))


def _per_channel(t4: Tensor, dim: int) -> Tensor:
    """(batch, G, N, L) -> (batch, dim, N, L) by repeating each group over its dim / G channels."""
    return t4.repeat_interleave(dim // t4.shape[1], dim=1)


def _finish(y: Tensor, u: Tensor, D: Optional[Tensor], z: Optional[Tensor], out_dtype: torch.dtype) -> Tensor:
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y.to(out_dtype)


@trace_quiet
def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                       z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                       return_last_state: bool = False):
    """The sequential definition: one step of the recurrence per token. Same signature as ``selective_scan``.

    Returns y (batch, dim, L) in u's dtype, and the last state (batch, dim, N) in the compute dtype if asked.
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias)
    out_dtype = u.dtype
    u, delta, A, B4, C4, D, z = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    batch, dim, length = u.shape
    B4, C4 = _per_channel(B4, dim), _per_channel(C4, dim)  # (batch, dim, N, L)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B4[..., t]
        ys.append((h * C4[..., t]).sum(-1))
    y = _finish(torch.stack(ys, dim=-1), u, D, z, out_dtype)
    return (y, h) if return_last_state else y


def _chunk_len(length: int, rows: int) -> int:
    """Tokens per chunk of the PyTorch path: a chunk's step factors, (T, rows) with rows = batch dim N, stay near
    16M elements (64 MB in float32)."""
    return max(1, min(length, (1 << 24) // max(1, rows)))  # rows = 0: an empty batch


@trace_quiet
def selective_scan_chunked(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                           z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                           delta_softplus: bool = False, return_last_state: bool = False,
                           initial_state: Optional[Tensor] = None):
    """PyTorch scan (the CPU path): for a chunk of T tokens at a time, the decays exp(delta A) and inputs delta B u
    of every step are computed as (T, batch, dim, N) tensors, then the recurrence h_t = decay_t h_(t-1) + input_t runs
    one fused multiply-add per token, and C reads the chunk's states in one product. The work is the sequential
    scan's; chunks bound the memory of the factors. ``unbind`` / ``stack`` give autograd one node per chunk for the
    per-step slices (indexing would give each step a full-size zero gradient). Same signature as ``selective_scan``
    plus ``initial_state`` (batch, dim, N).
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias)
    out_dtype = u.dtype
    u, delta, A, B4, C4, D, z = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    batch, dim, length = u.shape
    d_state = A.shape[1]
    groups = B4.shape[1]
    h = u.new_zeros(batch, dim, d_state) if initial_state is None else initial_state.to(u.dtype)
    chunk = _chunk_len(length, batch * dim * d_state)
    ys = []
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        # token-major operands, so the products below are laid out token-major and each step's slice is dense
        dt = delta[:, :, start:stop].permute(2, 0, 1).contiguous()  # (T, b, d)
        decays = torch.exp(dt[..., None] * A)  # (T, b, d, N)
        x = (dt * u[:, :, start:stop].permute(2, 0, 1)).unflatten(-1, (groups, dim // groups))  # (T, b, G, d/G)
        b_t = B4[..., start:stop].permute(3, 0, 1, 2).contiguous()  # (T, b, G, N)
        inputs = (x[..., None] * b_t[:, :, :, None]).flatten(2, 3)  # (T, b, d, N)
        states = []
        for decay, step_input in zip(decays.unbind(0), inputs.unbind(0)):
            h = torch.addcmul(step_input, decay, h)
            states.append(h)
        hs = torch.stack(states).unflatten(2, (groups, dim // groups))  # (T, b, G, d/G, N)
        c = C4[..., start:stop].permute(3, 0, 1, 2)[:, :, :, None]  # (T, b, G, 1, N)
        ys.append((hs * c).sum(-1).flatten(2).permute(1, 2, 0))
    y = _finish(torch.cat(ys, dim=-1), u, D, z, out_dtype)
    return (y, h) if return_last_state else y
