"""The Mamba mixer's inner computation (in projection -> causal conv -> x/dt projections -> scan -> out projection),
fused behind one autograd node for eager GPU runs.

For tokens x (batch, L, dim) and K = num_directions scan directions (K = 1: forward; K = 2: forward and reversed,
Vim's bimamba v2)::

    x_in, z = split(in_proj_weight @ x_t, [E, E])                      (E channels each, dim-major (E, batch L))
    xs_k = silu(causal_conv_k(x_in))                                   (direction k's conv runs in its scan order)
    dt_k, B_k, C_k = split(x_proj_weight[k] @ xs_k, [R, N, N])
    y = sum_k scan_k(xs_k, dt_proj_weight[k] @ dt_k, -exp(A_log[k]), B_k, C_k, D[k]) * silu(z)   (/ K if 'mean')
    out = out_proj_weight @ y

The scans run under the promise ``a_nonpositive`` (A = -exp(A_log) <= 0, ``vssm.ops.scan_core``), so the Triton
backend may scan small N associatively.

``recompute`` trades the fused node's saved activations (per token: xz 2E, xs and delta K * E each in the matmul
dtype; the scan's float32 chunk states K * E * N * 4 / chunk bytes, the largest) for work in the backward: 0 saves
all; 1 (the default, mamba_ssm's ``checkpoint_lvl=1``) recomputes xs by the conv and delta by its small GEMM; 2 also
runs the scan's forward again for its chunk states alone (no output written; C, D and z not read) instead of keeping
them; 3 lets that second forward also write the gated scan output y (E per token in the matmul dtype), which the out
projection's weight gradient reads, instead of keeping it. The recomputed tensors are bitwise the saved ones, so every
level gives the same gradients.

``mamba_inner_composed`` writes this with PyTorch ops around ``causal_conv1d`` and ``multi_scan``; it is what the CPU,
torch.compile, torch.export, TorchScript, FX and FLOP counting run. On CUDA (or under TRITON_INTERPRET=1) eager calls
run the same GEMMs and Triton kernels inside one ``autograd.Function`` with a hand-written backward (the official
``mamba_inner_fn`` design): the gradient of xs from the x projection is added into the scan's du by the GEMM itself
(``baddbmm_``), the conv writes dx and the gate's gradient lands beside it in one (2E, batch L) buffer, and the
scan's dy comes from the out projection's GEMM already dim-major, so none of the extra passes autograd's glue makes
(a gradient sum, a cat, a transposing copy per layer) and far fewer ops are dispatched (BENCHMARKS.md, launch-plan
figures).
"""
from typing import List

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor

from .causal_conv import MAX_TRITON_WIDTH, _reverse_mask, causal_conv1d
from .common import check_float_tensor, eager, resolve_backend, trace_quiet
from .multi_scan import multi_scan
from .scan_paths import build as build_paths

__all__ = ["mamba_inner", "mamba_inner_composed"]

_MERGES = ("mean", "sum")
RECOMPUTE_LEVELS = (0, 1, 2, 3)


def sequence_paths(num_directions: int, length: int, device: torch.device) -> Tensor:
    """Scan paths (K, L) over a 1-D sequence: raster (K=1) or raster and its reverse (K=2); cached by the engine."""
    return build_paths("bidirectional" if num_directions == 2 else "raster", (length,), device=device)


def _dt_padding(rank: int, d_state: int) -> int:
    """Zero columns that align the dt projection's operand rows to 16 bytes: cuBLAS runs GEMMs over rows that are not
    16-byte aligned (R = 12 in Vim-Ti) on slow fallback kernels (BENCHMARKS.md, launch-plan figures). The padded
    weight columns meet the next rows of x_dbl (B's first rows) and add exact zeros (for finite B)."""
    pad = -rank % 8
    return pad if pad <= 2 * d_state else 0


def mamba_inner_composed(x: Tensor, in_proj_weight: Tensor, conv_weight: Tensor, conv_bias: Tensor,
                         reverse: List[bool], x_proj_weight: Tensor, dt_proj_weight: Tensor, dt_proj_bias: Tensor,
                         A_log: Tensor, D: Tensor, out_proj_weight: Tensor, merge: str) -> Tensor:
    """``mamba_inner`` as PyTorch ops around ``causal_conv1d`` and ``multi_scan`` (the definition the fused path is
    tested against). Every (E-channel, batch, L) activation lies dim-major, in (E, batch L) buffers: the projections
    are plain (batched) matmuls without copies, and the conv and the scan read each channel's sequence contiguously."""
    batch, length, dim = x.shape
    num_directions, inner, rank = dt_proj_weight.shape
    d_state = A_log.shape[-1]
    xz = torch.matmul(in_proj_weight, x.reshape(batch * length, dim).t())  # (2E, B*L)
    # split, not slices: its backward is one cat, where each slice's backward fills a zero (2E, B*L) buffer
    x_in, z = torch.split(xz, [inner, inner])
    x_in = x_in.view(inner, batch, length).transpose(0, 1)  # (B, E, L) views
    z = z.view(inner, batch, length).transpose(0, 1)
    xs = causal_conv1d(x_in, conv_weight, conv_bias, reverse, "silu", None)  # (B, K, E, L), K outermost
    xs_flat = xs.permute(1, 2, 0, 3).reshape(num_directions, inner, batch * length)  # a view
    x_dbl = torch.bmm(x_proj_weight, xs_flat)  # (K, R + 2N, B*L)
    dt, B, C = torch.split(x_dbl, [rank, d_state, d_state], dim=1)
    B = B.view(num_directions, d_state, batch, length).permute(2, 0, 1, 3)  # (B, K, N, L)
    C = C.view(num_directions, d_state, batch, length).permute(2, 0, 1, 3)
    pad = _dt_padding(rank, d_state)
    if pad:
        delta = torch.bmm(F.pad(dt_proj_weight, (0, pad)), x_dbl[:, :rank + pad])
    else:
        delta = torch.bmm(dt_proj_weight, dt)  # (K, E, B*L); bias and softplus in the scan
    delta = delta.view(num_directions, inner, batch, length).permute(2, 0, 1, 3)  # (B, K, E, L)
    A = -torch.exp(A_log.float())  # (K, E, N)
    D = D.float()
    if merge == "mean" and num_directions > 1:
        # y is linear in C and D: halving them (exact in floating point) halves the sum over the two directions
        # without another pass over the (B, E, L) output
        C = C * (1.0 / num_directions)
        D = D * (1.0 / num_directions)
    paths = sequence_paths(num_directions, length, x.device)
    # every argument positional: TorchScript does not apply the defaults of the ignored op; the last: A <= 0
    # (``a_nonpositive``)
    y = multi_scan(xs, delta, A, B, C, paths, D, z, dt_proj_bias.float(), True,
                   "sum", False, False, True)  # (B, E, L), dim-major as xs: sum over directions of scan * silu(z)
    y = y.transpose(0, 1).reshape(inner, batch * length)  # a view
    return F.linear(y.t(), out_proj_weight).view(batch, length, dim)


def _check(x, in_proj_weight, conv_weight, conv_bias, reverse, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D,
           out_proj_weight, merge, recompute) -> None:
    fn = "mamba_inner"
    if merge not in _MERGES:
        raise ValueError(f"{fn}: merge must be one of {_MERGES}, got {merge!r}")
    if recompute not in RECOMPUTE_LEVELS:
        raise ValueError(f"{fn}: recompute must be one of {RECOMPUTE_LEVELS}, got {recompute!r}")
    tensors = dict(x=x, in_proj_weight=in_proj_weight, conv_weight=conv_weight, conv_bias=conv_bias,
                   x_proj_weight=x_proj_weight, dt_proj_weight=dt_proj_weight, dt_proj_bias=dt_proj_bias, A_log=A_log,
                   D=D, out_proj_weight=out_proj_weight)
    for name, t in tensors.items():  # dtypes here, shapes below
        check_float_tensor(name, t, (t.dim(),) if isinstance(t, Tensor) else (), fn)
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        raise ValueError(f"{fn}: all tensors must be on one device, got {sorted(map(str, devices))}")
    if x.dim() != 3:
        raise ValueError(f"{fn}: x must be a (batch, L, dim) tensor, got {tuple(x.shape)}")
    if x.shape[1] < 1:
        raise ValueError(f"{fn}: L must be >= 1, got shape {tuple(x.shape)} for x (batch, L, dim)")
    dim = x.shape[-1]
    if dt_proj_weight.dim() != 3:
        raise ValueError(f"{fn}: dt_proj_weight must be (K, E, R), got {tuple(dt_proj_weight.shape)}")
    num_directions, inner, rank = dt_proj_weight.shape
    if A_log.dim() != 3 or A_log.shape[:2] != (num_directions, inner):
        raise ValueError(f"{fn}: A_log must be (K, E, N) = ({num_directions}, {inner}, N) for dt_proj_weight "
                         f"(K, E, R) = {(num_directions, inner, rank)}, got {tuple(A_log.shape)}")
    d_state = A_log.shape[-1]
    expected = dict(in_proj_weight=(2 * inner, dim), conv_weight=(num_directions, inner, conv_weight.shape[-1]),
                    conv_bias=(num_directions, inner), x_proj_weight=(num_directions, rank + 2 * d_state, inner),
                    dt_proj_bias=(num_directions, inner),
                    A_log=(num_directions, inner, d_state), D=(num_directions, inner), out_proj_weight=(dim, inner))
    given = dict(in_proj_weight=in_proj_weight, conv_weight=conv_weight, conv_bias=conv_bias,
                 x_proj_weight=x_proj_weight, dt_proj_bias=dt_proj_bias, A_log=A_log, D=D,
                 out_proj_weight=out_proj_weight)
    for name, t in given.items():
        if tuple(t.shape) != expected[name]:
            raise ValueError(f"{fn}: {name} must be {expected[name]} for x of width {dim} and dt_proj_weight "
                             f"(K, E, R) = {(num_directions, inner, rank)}, got {tuple(t.shape)}")
    if len(reverse) != num_directions:
        raise ValueError(f"{fn}: reverse must hold one flag per direction (K = {num_directions}), got {list(reverse)}")


@register_notrace_function
@torch.jit.ignore
@trace_quiet
def mamba_inner(x: Tensor, in_proj_weight: Tensor, conv_weight: Tensor, conv_bias: Tensor, reverse: List[bool],
                x_proj_weight: Tensor, dt_proj_weight: Tensor, dt_proj_bias: Tensor, A_log: Tensor, D: Tensor,
                out_proj_weight: Tensor, merge: str, recompute: int = 1) -> Tensor:
    """Mamba mixer inner computation (module docstring); fused on the GPU.

    Args:
        x: (batch, L, dim) tokens.
        in_proj_weight: (2E, dim). conv_weight: (K, E, W). conv_bias, dt_proj_bias, D: (K, E).
        reverse: per direction, whether it scans from the sequence's end (its conv too).
        x_proj_weight: (K, R + 2N, E). dt_proj_weight: (K, E, R). A_log: (K, E, N). out_proj_weight: (dim, E).
        merge: 'mean' ((fwd + bwd) / 2, Vim) or 'sum' (VideoMamba) over the directions.
        recompute: what the fused node's backward recomputes instead of saving (module docstring): 0, 1, 2 or 3.

    Returns:
        (batch, L, dim), in the matmuls' dtype (the autocast dtype under autocast); a batch of 0 gives an empty
        output.

    Raises:
        ValueError: Shapes that do not fit, L = 0 ("L must be >= 1"), or an unknown recompute level.
    """
    args = (x, in_proj_weight, conv_weight, conv_bias, reverse, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log,
            D, out_proj_weight, merge)
    _check(*args, recompute)
    params = (in_proj_weight, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D,
              out_proj_weight)
    fusable = resolve_backend(x.device, x.dtype) == "triton" and conv_weight.shape[-1] <= MAX_TRITON_WIDTH
    if eager(x, *params) and fusable:
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        if dtype != torch.float64 and all(p.dtype != torch.float64 for p in params):
            training = torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params))
            return _FusedMambaInner.apply(x, *params, _reverse_mask(reverse), merge == "mean", dtype, training,
                                          recompute)
    return mamba_inner_composed(*args)


class _FusedMambaInner(torch.autograd.Function):
    """The GEMMs and Triton kernels of ``mamba_inner`` behind one autograd node (eager, Triton backend)."""

    @staticmethod
    def forward(ctx, x, in_proj_weight, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log,
                D, out_proj_weight, reverse_mask, mean, dtype, training, recompute):
        from .triton.causal_conv import causal_conv1d_fwd_triton
        from .triton.scan import scan_fwd_triton

        batch, length, dim = x.shape
        num_directions, inner, rank = dt_proj_weight.shape
        d_state = A_log.shape[-1]
        pad = _dt_padding(rank, d_state)
        with torch.autocast(x.device.type, enabled=False):
            tokens = x.reshape(batch * length, dim).to(dtype)
            w_in = in_proj_weight.to(dtype)
            xz = torch.mm(w_in, tokens.t())  # (2E, B*L)
            x_in = xz[:inner].view(inner, batch, length).transpose(0, 1)  # (B, E, L) views
            z = xz[inner:].view(inner, batch, length).transpose(0, 1)
            xs = causal_conv1d_fwd_triton(x_in, conv_weight, conv_bias, reverse_mask, silu=True)  # (B, K, E, L)
            xs_flat = xs.permute(1, 2, 0, 3).reshape(num_directions, inner, batch * length)  # a view
            w_x = x_proj_weight.to(dtype)
            x_dbl = torch.bmm(w_x, xs_flat)  # (K, R + 2N, B*L)
            w_dt = dt_proj_weight.to(dtype)
            w_dt = F.pad(w_dt, (0, pad)) if pad else w_dt  # (K, E, R + pad)
            delta = torch.bmm(w_dt, x_dbl[:, :rank + pad])  # (K, E, B*L)
            B = x_dbl[:, rank:rank + d_state].view(num_directions, d_state, batch, length)
            B = B.permute(2, 0, 1, 3).unsqueeze(2)  # (B, K, 1, N, L)
            C = x_dbl[:, rank + d_state:].view(num_directions, d_state, batch, length)
            C = C.permute(2, 0, 1, 3).unsqueeze(2)
            scale = 1.0 / num_directions if mean else 1.0  # y is linear in C and D
            if scale != 1.0:
                C = C * scale
            A = -torch.exp(A_log.float())
            D_scaled = D.float() * scale
            paths = sequence_paths(num_directions, length, x.device)
            delta4 = delta.view(num_directions, inner, batch, length).permute(2, 0, 1, 3)  # (B, K, E, L)
            y, _, states = scan_fwd_triton(xs, delta4, A, B, C, D_scaled, z, dt_proj_bias.float(), paths,
                                           delta_softplus=True, merge=True, params_at_step=False,
                                           save_states=training and recompute < 2,
                                           a_nonpositive=True)  # (B, E, L), dim-major
            y_flat = y.transpose(0, 1).reshape(inner, batch * length)  # a view
            w_out = out_proj_weight.to(dtype)
            out = torch.mm(y_flat.t(), w_out.t()).view(batch, length, dim)
        if training:
            keep = recompute == 0
            ctx.save_for_backward(tokens, w_in, xz, xs if keep else None, w_x, x_dbl, w_dt, delta4 if keep else None, A,
                                  B, C, D_scaled, dt_proj_bias, paths, states if recompute < 2 else None,
                                  y_flat if recompute < 3 else None, w_out, conv_weight, conv_bias)
            ctx.meta = (reverse_mask, scale, x.dtype, in_proj_weight.dtype, x_proj_weight.dtype,
                        dt_proj_weight.dtype, A_log.dtype, D.dtype, out_proj_weight.dtype)
        return out

    @staticmethod
    def backward(ctx, dout):
        from .triton.causal_conv import causal_conv1d_bwd_triton, causal_conv1d_fwd_triton
        from .triton.scan import scan_bwd_triton, scan_fwd_triton

        (tokens, w_in, xz, xs, w_x, x_dbl, w_dt, delta4, A, B, C, D_scaled, dt_proj_bias, paths, states, y_flat, w_out,
         conv_weight, conv_bias) = ctx.saved_tensors
        reverse_mask, scale, x_dtype, in_dtype, x_proj_dtype, dt_dtype, a_log_dtype, d_dtype, out_dtype = ctx.meta
        num_directions, inner, rank_pad = w_dt.shape
        d_state = A.shape[-1]
        rank = x_dbl.shape[1] - 2 * d_state
        batch, length = B.shape[0], B.shape[-1]
        dim = tokens.shape[1]
        dtype = tokens.dtype
        with torch.autocast(dout.device.type, enabled=False):
            x_in = xz[:inner].view(inner, batch, length).transpose(0, 1)
            z = xz[inner:].view(inner, batch, length).transpose(0, 1)
            if xs is None:  # recompute >= 1: bitwise the forward's
                xs = causal_conv1d_fwd_triton(x_in, conv_weight, conv_bias, reverse_mask, silu=True)
                delta4 = torch.bmm(w_dt, x_dbl[:, :rank_pad]).view(num_directions, inner, batch, length)
                delta4 = delta4.permute(2, 0, 1, 3)
            if states is None:  # recompute >= 2: the scan's forward again, for its chunk states (level 3: and y)
                y, _, states = scan_fwd_triton(xs, delta4, A, B, C, D_scaled, z, dt_proj_bias.float(), paths,
                                               delta_softplus=True, merge=True, params_at_step=False,
                                               save_states=True, a_nonpositive=True, write_y=y_flat is None)
                if y_flat is None:
                    y_flat = y.transpose(0, 1).reshape(inner, batch * length)
            dout = dout.reshape(batch * length, dim).to(dtype)
            dw_out = torch.mm(dout.t(), y_flat.t())  # (dim, E)
            dy = torch.mm(w_out.t(), dout.t()).view(inner, batch, length).transpose(0, 1)  # (B, E, L), dim-major
            # dB and dC accumulate in one float32 (2, B, K, 1, L, N) buffer whose states are contiguous
            grad_BC = torch.zeros(2, batch, num_directions, 1, length, d_state, device=xs.device, dtype=torch.float32)
            # the gate's gradient lands beside the conv's dx in one (2E, B*L) buffer: one direction's directly, two
            # directions' as per-direction stores (no atomics) summed there
            dxz = torch.empty_like(xz)
            dz = dxz[inner:].view(inner, batch, length).transpose(0, 1)  # (B, E, L)
            dz_dirs = dz.unsqueeze(1) if num_directions == 1 else torch.empty_like(xs)  # (B, K, E, L)
            du, ddelta, dA, _, _, dD, _, dbias = scan_bwd_triton(
                dy, None, xs, delta4, A, B, C, D_scaled, z, dt_proj_bias.float(), paths, states,
                delta_softplus=True, merge=True, params_at_step=False, a_nonpositive=True,
                grad_BC_into=grad_BC.transpose(-1, -2).unbind(0), accumulators=True, dz_into=dz_dirs)
            if num_directions > 1:
                torch.sum(dz_dirs, 1, out=dz)
            ddelta_flat = ddelta.permute(1, 2, 0, 3).reshape(num_directions, inner, batch * length)  # a view
            # x_dbl's gradient: [dt rows from the dt projection, dB, dC (scaled like C)] as (K, R + 2N, B*L)
            dx_dbl = torch.empty_like(x_dbl)
            dx_dbl[:, :rank] = torch.bmm(w_dt.transpose(1, 2), ddelta_flat)[:, :rank]
            dB, dC = grad_BC[:, :, :, 0].permute(0, 2, 4, 1, 3)  # (K, N, B, L) views
            dx_dbl[:, rank:rank + d_state].view(num_directions, d_state, batch, length).copy_(dB)
            torch.mul(dC, scale, out=dx_dbl[:, rank + d_state:].view(num_directions, d_state, batch, length))
            xs_flat = xs.permute(1, 2, 0, 3).reshape(num_directions, inner, batch * length)
            dw_x = torch.bmm(dx_dbl, xs_flat.transpose(1, 2))  # (K, R + 2N, E)
            dw_dt = torch.bmm(ddelta_flat, x_dbl[:, :rank_pad].transpose(1, 2))[..., :rank]  # (K, E, R)
            # xs's gradient: the scan's du plus the x projection's, added by the GEMM into du
            du_flat = du.permute(1, 2, 0, 3).view(num_directions, inner, batch * length)  # du has xs's layout
            du_flat.baddbmm_(w_x.transpose(1, 2), dx_dbl)
            dx_in = dxz[:inner].view(inner, batch, length).transpose(0, 1)
            _, dconv_w, dconv_b = causal_conv1d_bwd_triton(du, x_in, conv_weight, conv_bias, reverse_mask, silu=True,
                                                           dx_into=dx_in)
            dw_in = torch.mm(dxz, tokens)  # (2E, dim)
            dx = torch.mm(dxz.t(), w_in).view(batch, length, dim)
        return (dx.to(x_dtype), dw_in.to(in_dtype), dconv_w, dconv_b, dw_x.to(x_proj_dtype), dw_dt.to(dt_dtype),
                dbias.view(num_directions, inner).to(dt_proj_bias.dtype), (dA * A).to(a_log_dtype),
                (dD * scale).view(num_directions, inner).to(d_dtype), dw_out.to(out_dtype), None, None, None, None,
                None)
