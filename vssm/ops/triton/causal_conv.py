"""Triton kernels of ``vssm.ops.causal_conv1d``: per-direction depthwise causal conv + SiLU, forward and backward.

A program owns a [BLOCK_D channels x BLOCK_L steps] tile of one batch row and computes every direction there from
the x tiles at t - 3 .. t + 3, each loaded once (kernel widths up to 4). The backward runs two kernels: the first
recomputes the pre-activations, writes g_k = dout_k * act'(pre_k) in fp32 and the weight and bias gradients as
per-program partial sums over several batch rows (rows of K * dim * (W + 1) floats, added up by the host); the second
sums the shifted g_k into dx (dx[t] takes w[k, W-1-c] g_k[t +- c]).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..common import axis_order, cdiv, check_kernel_dtypes, empty_like_dense, next_power_of_2

# elements per thread of a program tile: the kernels keep seven shifted x tiles (and the backward g) in registers, and
# more than 4 per thread cost occupancy (register counts: BENCHMARKS.md, launch-plan figures)
_PER_THREAD = 4
# batch rows per program of the backward's first kernel: its weight-gradient products add up elementwise over the
# rows and are reduced across the tile once (cross-warp reductions per row cost far more; BENCHMARKS.md, launch-plan
# figures)
_ROWS_PER_PROGRAM = 8


def empty_directions(x: Tensor, num_directions: int) -> Tensor:
    """An empty (batch, K, dim, L) tensor in x's dtype whose batch, dim and L axes lie in memory in x's order, with
    the K directions outermost (so each direction is a dense (batch, dim, L) block, as batched matmuls read it)."""
    phys = [1] + [(0, 2, 3)[a] for a in axis_order(x, (0, 1, 2))]  # axes of (batch, K, dim, L), outermost first
    shape = (x.shape[0], num_directions, x.shape[1], x.shape[2])
    out = torch.empty(*(shape[a] for a in phys), device=x.device, dtype=x.dtype)
    return out.permute(*(phys.index(a) for a in range(4)))


def _tiles(dim: int, length: int) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_L, num_warps): up to 256 steps by up to 8 warps x 32 threads x 4 elements."""
    block_l = min(256, next_power_of_2(length))
    block_d = max(1, min(next_power_of_2(dim), 8 * 32 * _PER_THREAD // block_l))
    warps = max(1, min(8, block_d * block_l // (32 * _PER_THREAD)))
    return block_d, block_l, warps


@triton.jit
def _tap(x_base, offs_l, shift: tl.constexpr, L, mask_d, sx_l):
    """x at steps t + shift of the tile, [BLOCK_D, BLOCK_L] fp32, zero outside [0, L)."""
    t = offs_l + shift
    m = mask_d[:, None] & ((t >= 0) & (t < L))[None, :]
    return tl.load(x_base + t[None, :] * sx_l, mask=m, other=0.0).to(tl.float32)


@triton.jit
def _pick(shift: tl.constexpr, xm3, xm2, xm1, x0, xp1, xp2, xp3):
    """The window tile of x at t + shift, shift in [-3, 3]."""
    if shift == -3:
        out = xm3
    elif shift == -2:
        out = xm2
    elif shift == -1:
        out = xm1
    elif shift == 0:
        out = x0
    elif shift == 1:
        out = xp1
    elif shift == 2:
        out = xp2
    else:
        out = xp3
    return out


@triton.jit
def _pre_activation(w_ptr, b_ptr, k, offs_d, dim, mask_d, shift: tl.constexpr, xm3, xm2, xm1, x0, xp1, xp2, xp3,
                    W: tl.constexpr, REVERSED: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Direction k's conv at steps t + shift (before the activation), [BLOCK_D, BLOCK_L] fp32, from the window."""
    acc = tl.zeros_like(x0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + k * dim + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    for j in tl.static_range(W):
        w = tl.load(w_ptr + (k * dim + offs_d) * W + j, mask=mask_d, other=0.0).to(tl.float32)
        # tap j reads t - (W - 1) + j in forward directions, t + (W - 1) - j in reversed ones
        acc += w[:, None] * _pick(shift + (W - 1 - j) * (2 * REVERSED - 1), xm3, xm2, xm1, x0, xp1, xp2, xp3)
    return acc


@triton.jit
def _tile(dim, L, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """This program's channel and step offsets (grid axis 1: channel blocks, axis 0: step blocks), the channel mask
    and the [BLOCK_D, BLOCK_L] tile mask."""
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_l = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_d = offs_d < dim
    return offs_d, offs_l, mask_d, mask_d[:, None] & (offs_l < L)[None, :]


@triton.jit
def _window(x_base, offs_l, L, mask_d, sx_l, W: tl.constexpr):
    """x at t - 3 .. t + 3 (the tiles beyond +-(W - 1) are not loaded)."""
    x0 = _tap(x_base, offs_l, 0, L, mask_d, sx_l)
    xm1 = x0
    xp1 = x0
    xm2 = x0
    xp2 = x0
    xm3 = x0
    xp3 = x0
    if W > 1:
        xm1 = _tap(x_base, offs_l, -1, L, mask_d, sx_l)
        xp1 = _tap(x_base, offs_l, 1, L, mask_d, sx_l)
    if W > 2:
        xm2 = _tap(x_base, offs_l, -2, L, mask_d, sx_l)
        xp2 = _tap(x_base, offs_l, 2, L, mask_d, sx_l)
    if W > 3:
        xm3 = _tap(x_base, offs_l, -3, L, mask_d, sx_l)
        xp3 = _tap(x_base, offs_l, 3, L, mask_d, sx_l)
    return xm3, xm2, xm1, x0, xp1, xp2, xp3


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, dim, L, sx_b, sx_d, sx_l, so_b, so_k, so_d, so_l,
                     K: tl.constexpr, W: tl.constexpr, REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr,
                     SILU: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    pid_b = tl.program_id(2)
    offs_d, offs_l, mask_d, mask = _tile(dim, L, BLOCK_D, BLOCK_L)
    xm3, xm2, xm1, x0, xp1, xp2, xp3 = _window(x_ptr + pid_b * sx_b + offs_d[:, None] * sx_d, offs_l, L, mask_d,
                                               sx_l, W)
    out_base = out_ptr + pid_b * so_b + offs_d[:, None] * so_d + offs_l[None, :] * so_l
    for k in tl.static_range(K):
        acc = _pre_activation(w_ptr, b_ptr, k, offs_d, dim, mask_d, 0, xm3, xm2, xm1, x0, xp1, xp2, xp3, W,
                              (REVERSE >> k) & 1, HAS_BIAS)
        if SILU:
            acc = acc * tl.sigmoid(acc)
        tl.store(out_base + k * so_k, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv_bwd_gate_kernel(dout_ptr, x_ptr, w_ptr, b_ptr, g_ptr, partial_ptr, batch, dim, L, n_lblocks,
                          sx_b, sx_d, sx_l, sd_b, sd_k, sd_d, sd_l, sg_b, sg_k, sg_d, sg_l,
                          K: tl.constexpr, W: tl.constexpr, REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr,
                          SILU: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """g_k = dout_k * act'(pre_k) (fp32) for ROWS batch rows, and their weight and bias gradients: products summed
    elementwise over the rows, reduced over the tile once, stored as the program's partial sums."""
    pid_r = tl.program_id(2)
    offs_d, offs_l, mask_d, mask = _tile(dim, L, BLOCK_D, BLOCK_L)
    partial_base = partial_ptr + (pid_r * n_lblocks + tl.program_id(0)) * (K * dim * (W + 1))
    for k in tl.static_range(K):
        # sum over the rows of g * x at taps 0..3 and of g (taps beyond W - 1 stay zero)
        acc0 = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
        acc1 = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
        acc3 = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
        acc_g = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
        for row in range(pid_r * ROWS, tl.minimum(pid_r * ROWS + ROWS, batch)):
            xm3, xm2, xm1, x0, xp1, xp2, xp3 = _window(x_ptr + row * sx_b + offs_d[:, None] * sx_d, offs_l, L,
                                                       mask_d, sx_l, W)
            g = tl.load(dout_ptr + row * sd_b + k * sd_k + offs_d[:, None] * sd_d + offs_l[None, :] * sd_l,
                        mask=mask, other=0.0).to(tl.float32)
            if SILU:
                pre = _pre_activation(w_ptr, b_ptr, k, offs_d, dim, mask_d, 0, xm3, xm2, xm1, x0, xp1, xp2, xp3, W,
                                      (REVERSE >> k) & 1, HAS_BIAS)
                sig = tl.sigmoid(pre)
                g = g * sig * (1.0 + pre * (1.0 - sig))
            tl.store(g_ptr + row * sg_b + k * sg_k + offs_d[:, None] * sg_d + offs_l[None, :] * sg_l, g, mask=mask)
            sign = 2 * ((REVERSE >> k) & 1) - 1  # tap j reads t + (W - 1 - j) * sign
            acc0 += g * _pick((W - 1) * sign, xm3, xm2, xm1, x0, xp1, xp2, xp3)
            if W > 1:
                acc1 += g * _pick((W - 2) * sign, xm3, xm2, xm1, x0, xp1, xp2, xp3)
            if W > 2:
                acc2 += g * _pick((W - 3) * sign, xm3, xm2, xm1, x0, xp1, xp2, xp3)
            if W > 3:
                acc3 += g * _pick((W - 4) * sign, xm3, xm2, xm1, x0, xp1, xp2, xp3)
            acc_g += g
        out = partial_base + (k * dim + offs_d) * (W + 1)
        tl.store(out, tl.sum(acc0, axis=1), mask=mask_d)
        if W > 1:
            tl.store(out + 1, tl.sum(acc1, axis=1), mask=mask_d)
        if W > 2:
            tl.store(out + 2, tl.sum(acc2, axis=1), mask=mask_d)
        if W > 3:
            tl.store(out + 3, tl.sum(acc3, axis=1), mask=mask_d)
        tl.store(out + W, tl.sum(acc_g, axis=1), mask=mask_d)


@triton.jit
def _conv_bwd_input_kernel(g_ptr, w_ptr, dx_ptr, dim, L, sg_b, sg_k, sg_d, sg_l, sdx_b, sdx_d, sdx_l,
                           K: tl.constexpr, W: tl.constexpr, REVERSE: tl.constexpr,
                           BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """dx[t] = sum over k and c of w[k, W-1-c] g_k[t + c] (forward directions) or g_k[t - c] (reversed ones)."""
    pid_b = tl.program_id(2)
    offs_d, offs_l, mask_d, mask = _tile(dim, L, BLOCK_D, BLOCK_L)
    g_base = g_ptr + pid_b * sg_b + offs_d[:, None] * sg_d
    dx = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
    for k in tl.static_range(K):
        for c in tl.static_range(W):
            t = offs_l + c * (1 - 2 * ((REVERSE >> k) & 1))
            g = tl.load(g_base + k * sg_k + t[None, :] * sg_l, mask=mask_d[:, None] & ((t >= 0) & (t < L))[None, :],
                        other=0.0)
            w = tl.load(w_ptr + (k * dim + offs_d) * W + (W - 1 - c), mask=mask_d, other=0.0).to(tl.float32)
            dx += w[:, None] * g
    tl.store(dx_ptr + pid_b * sdx_b + offs_d[:, None] * sdx_d + offs_l[None, :] * sdx_l,
             dx.to(dx_ptr.dtype.element_ty), mask=mask)


def causal_conv1d_fwd_triton(x: Tensor, weight: Tensor, bias: Tensor | None, reverse_mask: int, *,
                             silu: bool) -> Tensor:
    """x (batch, dim, L), weight (K, dim, W), bias (K, dim) -> (batch, K, dim, L) in x's dtype and axis order."""
    check_kernel_dtypes("triton causal_conv1d", x, weight, bias)
    batch, dim, length = x.shape
    num_directions, _, width = weight.shape
    out = empty_directions(x, num_directions)
    block_d, block_l, warps = _tiles(dim, length)
    weight = weight.contiguous()
    bias_arg = bias.contiguous() if bias is not None else weight
    grid = (cdiv(length, block_l), cdiv(dim, block_d), batch)
    _conv_fwd_kernel[grid](x, weight, bias_arg, out, dim, length, *x.stride(), *out.stride(),
                           K=num_directions, W=width, REVERSE=reverse_mask, HAS_BIAS=bias is not None, SILU=silu,
                           BLOCK_D=block_d, BLOCK_L=block_l, num_warps=warps)
    return out


def causal_conv1d_bwd_triton(dout: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, reverse_mask: int, *,
                             silu: bool, dx_into: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Gradients (dx in x's layout, dweight, dbias or None) for the output gradient dout (batch, K, dim, L).
    ``dx_into``: a (batch, dim, L) tensor of any strides that receives dx (and is returned as dx)."""
    batch, dim, length = x.shape
    num_directions, _, width = weight.shape
    block_d, block_l, warps = _tiles(dim, length)
    n_lblocks = cdiv(length, block_l)
    dx = empty_like_dense(x) if dx_into is None else dx_into
    gate = torch.empty(dout.shape, device=x.device, dtype=torch.float32)  # (batch, K, dim, L)
    row_groups = cdiv(batch, _ROWS_PER_PROGRAM)
    partial = torch.empty(row_groups * n_lblocks, num_directions, dim, width + 1, device=x.device, dtype=torch.float32)
    weight_c = weight.contiguous()
    bias_arg = bias.contiguous() if bias is not None else weight_c
    _conv_bwd_gate_kernel[(n_lblocks, cdiv(dim, block_d), row_groups)](
        dout, x, weight_c, bias_arg, gate, partial, batch, dim, length, n_lblocks,
        *x.stride(), *dout.stride(), *gate.stride(),
        K=num_directions, W=width, REVERSE=reverse_mask, HAS_BIAS=bias is not None, SILU=silu, ROWS=_ROWS_PER_PROGRAM,
        BLOCK_D=block_d, BLOCK_L=block_l, num_warps=warps)
    grid = (n_lblocks, cdiv(dim, block_d), batch)
    _conv_bwd_input_kernel[grid](gate, weight_c, dx, dim, length, *gate.stride(), *dx.stride(),
                                 K=num_directions, W=width, REVERSE=reverse_mask, BLOCK_D=block_d, BLOCK_L=block_l,
                                 num_warps=warps)
    sums = partial.sum(0)
    dweight = sums[..., :width].to(weight.dtype).contiguous()
    dbias = sums[..., width].to(bias.dtype).contiguous() if bias is not None else None
    return dx, dweight, dbias
