"""Selective scan of a feature map along K = num_directions scan paths at once, merged back in spatial order.

A path (from ``vssm.ops.scan_paths.build``) is a (K, Lp) index tensor: step j of direction k reads spatial token
``paths[k, j]`` (-1: a zero token, used by padded local windows). Direction k scans

    u_k[j] = x[paths[k, j]], delta_k[j], B_k[j], C_k[j]   (gathered the same way, or read at step j, see below)

with its own A_k, D_k, delta_bias_k; its output is written back at the spatial positions it read, gated by silu(z)
there, and the K outputs are summed. Model quirks fit without kernel special cases:

- per-direction inputs (a causal conv in scan order, as Vim and VideoMamba do): pass x as (batch, K, dim, L), each
  direction's input already in spatial order;
- parameters indexed by step rather than by token (PlainMamba passes delta, B, C in raster order to every
  direction): ``params_at_step=True``, then delta, B, C have length Lp and step j reads index j;
- per-direction additive terms on B (PlainMamba's direction tokens): build B per direction, (batch, K, N, Lp).
"""

from typing import Optional

import torch
from timm.layers import register_notrace_function
from torch import Tensor

from . import scan_paths
from .common import check_float_tensor, trace_quiet
from .scan_core import scan_core
from .scan_reference import selective_scan_ref

__all__ = ["multi_scan", "multi_scan_ref"]

_MERGES = ("sum", "none")


def _canonical(x, delta, A, B, C, paths, D, z, delta_bias, merge, params_at_step):
    """Validate and bring arguments to scan_core's layout (see ``vssm.ops.scan_core``)."""
    fn = "multi_scan"
    if merge not in _MERGES:
        raise ValueError(f"{fn}: merge must be one of {_MERGES}, got {merge!r}")
    scan_paths.check_layout(paths, 0, fn)
    num_directions, steps = paths.shape
    check_float_tensor("x", x, (3, 4), fn)
    if x.shape[-1] < 1:
        raise ValueError(f"{fn}: L must be >= 1, got shape {tuple(x.shape)} for x")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    batch, kx, dim, length = x.shape
    if kx not in (1, num_directions):
        raise ValueError(f"{fn}: x must be (batch, dim, L) or (batch, K={num_directions}, dim, L), got "
                         f"{tuple(x.shape)}")
    scan_paths.check(paths, length, fn)  # once per paths tensor (see vssm.ops.scan_paths)
    param_len = steps if params_at_step else length
    check_float_tensor("delta", delta, (3, 4), fn)
    if delta.dim() == 3:
        delta = delta.unsqueeze(1)
    if delta.shape[1] not in (1, num_directions) or delta.shape[0] != batch or delta.shape[2:] != (dim, param_len):
        raise ValueError(f"{fn}: delta must be (batch, K, dim, {param_len}) = ({batch}, {num_directions}, {dim}, "
                         f"{param_len}), got {tuple(delta.shape)}")
    check_float_tensor("A", A, (2, 3), fn)
    if A.dim() == 2:
        A = A.unsqueeze(0).expand(num_directions, *A.shape)
    if A.shape[:2] != (num_directions, dim):
        raise ValueError(f"{fn}: A must be (K, dim, N) = ({num_directions}, {dim}, N) or (dim, N), got "
                         f"{tuple(A.shape)}")
    d_state = A.shape[2]
    out_bc = []
    for name, t in (("B", B), ("C", C)):
        check_float_tensor(name, t, (3, 4, 5), fn)
        if t.dim() == 3:  # (batch, N, Ld) shared by the directions
            t = t.unsqueeze(1).expand(batch, num_directions, *t.shape[1:])
        if t.dim() == 4:
            t = t.unsqueeze(2)
        if t.shape[:2] != (batch, num_directions) or t.shape[3:] != (d_state, param_len) or dim % t.shape[2]:
            raise ValueError(f"{fn}: {name} must be (batch, K, [G,] N, {param_len}) = ({batch}, {num_directions}, "
                             f"[G,] {d_state}, {param_len}) with dim divisible by G, got {tuple(t.shape)}")
        out_bc.append(t)
    B, C = out_bc
    if B.shape[2] != C.shape[2]:
        raise ValueError(f"{fn}: B and C must have the same groups, got {B.shape[2]} and {C.shape[2]}")
    per_dir = []
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            check_float_tensor(name, t, (1, 2), fn)
            t = t.unsqueeze(0).expand(num_directions, dim) if t.dim() == 1 and t.shape == (dim,) else t
            if t.shape != (num_directions, dim):
                raise ValueError(f"{fn}: {name} must be (K, dim) = ({num_directions}, {dim}) or (dim,), got "
                                 f"{tuple(t.shape)}")
        per_dir.append(t)
    D, delta_bias = per_dir
    if z is not None:
        check_float_tensor("z", z, (3,), fn)
        if z.shape != (batch, dim, length):
            raise ValueError(f"{fn}: z must be (batch, dim, L) = ({batch}, {dim}, {length}), got {tuple(z.shape)}")
    devices = {t.device for t in (x, delta, A, B, C, D, z, delta_bias, paths) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"{fn}: all tensors must be on one device, got {sorted(map(str, devices))}")
    return x, delta, A, B, C, paths, D, z, delta_bias


@register_notrace_function
@torch.jit.ignore
@trace_quiet
def multi_scan(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, paths: Tensor, D: Optional[Tensor] = None,
               z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
               merge: str = "sum", params_at_step: bool = False, return_last_state: bool = False,
               a_nonpositive: bool = False, recompute_states: bool = False):
    """Scan x along every direction of ``paths`` with per-direction parameters; fused on the GPU.

    Args:
        x: (batch, dim, L) feature map in spatial order (shared by the directions) or (batch, K, dim, L).
        delta: (batch, K, dim, Ld) or (batch, dim, Ld), Ld = L (spatial order) or Lp (``params_at_step``).
        A: (K, dim, N) or (dim, N). B, C: (batch, K, N, Ld), (batch, K, G, N, Ld) or (batch, N, Ld).
        paths: (K, Lp) int64 or int32, ``vssm.ops.scan_paths.build(...)`` or any routes that visit every token once
            (``PAD`` = -1 steps read zeros), checked once per tensor (``vssm.ops.scan_paths.check``).
        D, delta_bias: (K, dim) or (dim,). z: (batch, dim, L) gate, applied as y * silu(z) per direction.
        merge: 'sum' -> (batch, dim, L); 'none' -> per-direction outputs (batch, K, dim, L), spatial order.
        params_at_step: delta, B, C are indexed by scan step, not by token.
        return_last_state: also return each direction's final state (batch, K, dim, N), float32.
        a_nonpositive: the caller's promise that A <= 0 (as A = -exp(A_log)), not checked: with step sizes >= 0
            every decay exp(delta A) is then <= 1 and the Triton backend may compose decays associatively (its
            small-N chunk kernels). Without it the result follows the reference for any A (``vssm.ops.scan_core``).
        recompute_states: keep no chunk states for the backward, which computes them again (``scan_core``).

    Returns:
        y in x's dtype [, last_state]; a batch of 0 gives empty outputs.

    Raises:
        ValueError: Shapes that do not fit, L = 0, or malformed ``paths`` (the message names the route).
    """
    x, delta, A, B, C, paths, D, z, delta_bias = _canonical(x, delta, A, B, C, paths, D, z, delta_bias, merge,
                                                            params_at_step)
    y, last = scan_core(x, delta, A, B, C, D, z, delta_bias, paths, delta_softplus=delta_softplus,
                        merge=merge == "sum", params_at_step=params_at_step, a_nonpositive=a_nonpositive,
                        recompute_states=recompute_states)
    return (y, last) if return_last_state else y


def multi_scan_ref(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, paths: Tensor,
                   D: Optional[Tensor] = None, z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                   delta_softplus: bool = False, merge: str = "sum", params_at_step: bool = False,
                   return_last_state: bool = False):
    """Reference: for each direction an explicit gather, ``selective_scan_ref``, scatter; then the sum."""
    x, delta, A, B, C, paths, D, z, delta_bias = _canonical(x, delta, A, B, C, paths, D, z, delta_bias, merge,
                                                            params_at_step)
    batch, _, dim, length = x.shape
    outs, lasts = [], []
    for k, path in enumerate(paths.long()):
        real = path >= 0
        src = path.clamp(min=0)

        def gather(t: Tensor) -> Tensor:  # spatial order -> this direction's step order, zeros at -1 steps
            return t[..., src] * real.to(t.dtype)

        xk = x[:, min(k, x.shape[1] - 1)]
        dk = delta[:, min(k, delta.shape[1] - 1)]
        Bk, Ck = B[:, k].flatten(1, 1), C[:, k].flatten(1, 1)
        if not params_at_step:
            dk, Bk, Ck = gather(dk), gather(Bk), gather(Ck)
        y, last = selective_scan_ref(gather(xk), dk, A[k], Bk, Ck, None if D is None else D[k], None,
                                     None if delta_bias is None else delta_bias[k], delta_softplus,
                                     return_last_state=True)
        out = y.new_zeros(batch, dim, length)
        out[..., path[real]] = y[..., real]
        if z is not None:
            out = (out.to(last.dtype) * torch.nn.functional.silu(z.to(last.dtype))).to(y.dtype)
        outs.append(out)
        lasts.append(last)
    y = torch.stack(outs, 1)
    y = y.sum(1) if merge == "sum" else y
    return (y, torch.stack(lasts, 1)) if return_last_state else y
