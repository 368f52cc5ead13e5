"""Triton LayerNorm and RMSNorm over the last axis, forward and backward (references: ``layer_norm_ref`` and
``rms_norm_ref`` in ``vssm.ops.layer_norm``).

The forward reads rows in their own dtype, normalises in fp32 and writes the output in a requested dtype, so a norm
under autocast reads a float32 residual stream (or a bf16 scan output) once and writes bf16 for the matmul that
follows, where autocast would run it in float32 and add a cast before and after. Mean (LayerNorm only) and 1/std
(fp32, one per row) are kept for the backward. RMSNorm (``RMS``) skips the centring: x / sqrt(mean(x^2) + eps) * w,
one kernel where PyTorch (timm's ``RmsNorm``) runs five elementwise ops and a reduction. The backward gives each
program a strided set of row blocks: it writes dx and keeps the weight and bias gradients of its rows in registers,
stored once as per-program partial sums that the host adds up.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..common import cdiv, next_power_of_2, triton_interpret

# elements per program tile (rows x padded channels)
_TILE = 4096


def _tiles(channels: int) -> tuple[int, int, int]:
    """(BLOCK_M rows, BLOCK_C channels, num_warps) for rows of ``channels`` elements."""
    block_c = next_power_of_2(channels)
    block_m = max(1, _TILE // block_c)
    warps = 4 if block_c * block_m <= 4096 else 8
    return block_m, block_c, warps


@triton.jit
def _layer_norm_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, M, C, sx_m, sy_m, eps,
                           HAS_BIAS: tl.constexpr, RMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    mask_m = rows < M
    mask_c = cols < C
    mask = mask_m[:, None] & mask_c[None, :]
    x = tl.load(x_ptr + rows[:, None] * sx_m + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if RMS:
        xc = x
    else:
        mean = tl.sum(x, axis=1) / C
        xc = tl.where(mask, x - mean[:, None], 0.0)
        tl.store(mean_ptr + rows, mean, mask=mask_m)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / C + eps)
    w = tl.load(w_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows[:, None] * sy_m + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=mask_m)


@triton.jit
def _layer_norm_bwd_kernel(dy_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_ptr, db_ptr, M, C, sdy_m, sx_m,
                           sdx_m, n_progs, HAS_BIAS: tl.constexpr, RMS: tl.constexpr, BLOCK_M: tl.constexpr,
                           BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    mask_c = cols < C
    w = tl.load(w_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    for start in range(pid * BLOCK_M, M, n_progs * BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask_m = rows < M
        mask = mask_m[:, None] & mask_c[None, :]
        x = tl.load(x_ptr + rows[:, None] * sx_m + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + rows[:, None] * sdy_m + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=mask_m, other=0.0)
        wdy = dy * w[None, :]
        if RMS:
            xhat = x * rstd[:, None]
            c1 = tl.sum(xhat * wdy, axis=1) / C
            dx = (wdy - xhat * c1[:, None]) * rstd[:, None]
        else:
            mean = tl.load(mean_ptr + rows, mask=mask_m, other=0.0)
            xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
            c1 = tl.sum(xhat * wdy, axis=1) / C
            c2 = tl.sum(wdy, axis=1) / C
            dx = (wdy - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        tl.store(dx_ptr + rows[:, None] * sdx_m + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw_acc += dy * xhat
        if HAS_BIAS:
            db_acc += dy
    tl.store(dw_ptr + pid * C + cols, tl.sum(dw_acc, axis=0), mask=mask_c)
    if HAS_BIAS:
        tl.store(db_ptr + pid * C + cols, tl.sum(db_acc, axis=0), mask=mask_c)


def _rows(t: Tensor) -> Tensor:
    """(..., C) -> (M, C) with unit stride along C (a view when possible)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def layer_norm_fwd_triton(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float, out_dtype: torch.dtype, *,
                          rms: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """y (x's shape, ``out_dtype``), mean and rstd (M,) float32 of rows x (..., C); with ``rms`` the RMSNorm
    (no bias; mean is empty and the kernel is handed rstd in its place, never reading it)."""
    channels = x.shape[-1]
    x2 = _rows(x)
    rows = x2.shape[0]
    y = torch.empty(rows, channels, device=x.device, dtype=out_dtype)
    rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
    mean = rstd.new_empty(0 if rms else rows)
    block_m, block_c, warps = _tiles(channels)
    _layer_norm_fwd_kernel[(cdiv(rows, block_m),)](
        x2, weight, bias if bias is not None else weight, y, rstd if rms else mean, rstd, rows, channels,
        x2.stride(0), y.stride(0), eps, HAS_BIAS=bias is not None, RMS=rms, BLOCK_M=block_m, BLOCK_C=block_c,
        num_warps=warps)
    return y.view(x.shape), mean, rstd


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _programs(device: torch.device, blocks: int) -> int:
    """Backward programs: up to 4 per SM (one per row block when there are fewer blocks), measured best on an H100
    (BENCHMARKS.md, launch-plan figures)."""
    if device.type == "cuda" and not triton_interpret():
        slots = 4 * _sm_count(device)
    else:
        slots = 4
    return max(1, min(blocks, slots))


def layer_norm_bwd_triton(dy: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor, *, has_bias: bool,
                          rms: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """dx (x's shape and dtype), dweight and dbias (weight's dtype; dbias None without a bias); ``rms`` for RMSNorm
    (mean unused)."""
    channels = x.shape[-1]
    x2, dy2 = _rows(x), _rows(dy)
    rows = x2.shape[0]
    dx = torch.empty(rows, channels, device=x.device, dtype=x.dtype)
    block_m, block_c, warps = _tiles(channels)
    n_progs = _programs(x.device, cdiv(rows, block_m))
    dw = torch.empty(n_progs, channels, device=x.device, dtype=torch.float32)
    db = torch.empty_like(dw) if has_bias else dw
    _layer_norm_bwd_kernel[(n_progs,)](
        dy2, x2, weight, rstd if rms else mean, rstd, dx, dw, db, rows, channels, dy2.stride(0), x2.stride(0),
        dx.stride(0), n_progs, HAS_BIAS=has_bias, RMS=rms, BLOCK_M=block_m, BLOCK_C=block_c, num_warps=warps)
    return (dx.view(x.shape), dw.sum(0).to(weight.dtype),
            db.sum(0).to(weight.dtype) if has_bias else None)
