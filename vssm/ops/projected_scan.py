"""Multi-direction scan with its per-token input projections (the core of VMamba's SS2D), fused for eager GPU runs.

For a feature map x (batch, dim, L) in spatial order and K directions, each with its own projections,

    dt_low_k, B_k, C_k = split(x_proj_weight[k] @ x_t, [R, N, N])      (per token t, in spatial order)
    delta_k = dt_proj_weight[k] @ dt_low_k
    y = multi_scan(x, delta, -exp(A_log), B, C, paths, D, delta_bias=dt_proj_bias, delta_softplus=True, merge)

The scan runs under the promise ``a_nonpositive`` (A = -exp(A_log) <= 0, ``vssm.ops.scan_core``), so the Triton
backend may scan small N associatively.

``projected_multi_scan_composed`` writes this with PyTorch ops (the K dt projections as one GEMM with a block-diagonal
weight, or as K GEMMs without gradients) around ``multi_scan``; it is what the CPU, torch.compile, torch.export,
TorchScript and FX run. On CUDA (or under TRITON_INTERPRET=1) eager calls run the same GEMMs and the Triton scan
inside one ``autograd.Function`` with a hand-written backward: one autograd node where the composed form records
many, and fewer dispatched ops (BENCHMARKS.md, launch-plan figures), host time that eager models with small maps
pay on every step. Under autocast both run the GEMMs in the autocast dtype, as ``F.linear`` would.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor

from . import scan_paths
from .common import check_float_tensor, dense_strides, eager, resolve_backend, trace_quiet
from .multi_scan import multi_scan

__all__ = ["projected_multi_scan", "projected_multi_scan_composed", "scan_projections"]

_MERGES = ("sum", "none")


def block_diagonal(weight: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """(K, d, R) per-direction weights -> the (K d, K R) block-diagonal matrix that applies all K at once
    (differentiable). The K dt projections as one GEMM: its weight gradient is one wide GEMM, where a batched
    (K, R, batch L) x (K, batch L, d) product over the long batch L axis is
    slow (BENCHMARKS.md, launch-plan figures)."""
    num_directions, d, r = weight.shape
    out = weight.new_zeros(num_directions, d, num_directions, r, dtype=dtype)
    out.diagonal(dim1=0, dim2=2).copy_(weight.permute(1, 2, 0))
    return out.view(num_directions * d, num_directions * r)


def scan_projections(tokens: Tensor, x_proj_weight: Tensor, dt_proj_weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-direction scan inputs of (batch, L, dim) tokens, with PyTorch ops (differentiable, autocast-aware).

    Returns delta (batch, K, dim, L) before bias and softplus, B and C (batch, K, N, L): views whose fastest axis is
    dim / N, in spatial order.
    """
    num_directions, _, _ = x_proj_weight.shape
    rank = dt_proj_weight.shape[-1]
    d_state = (x_proj_weight.shape[1] - rank) // 2
    x_dbl = F.linear(tokens, x_proj_weight.flatten(0, 1)).unflatten(-1, (num_directions, -1))  # (batch, L, K, R + 2N)
    dt_low, B, C = torch.split(x_dbl, [rank, d_state, d_state], dim=-1)
    if torch.is_grad_enabled():  # one block-diagonal GEMM, whose weight gradient is one wide GEMM
        delta = F.linear(dt_low.flatten(-2), block_diagonal(dt_proj_weight)).unflatten(-1, (num_directions, -1))
    else:  # K GEMMs of their own size (K times fewer multiply-adds, and what FLOP counts should see)
        delta = torch.einsum("...kr,kdr->...kd", dt_low, dt_proj_weight)
    return delta.permute(0, 2, 3, 1), B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1)


def projected_multi_scan_composed(x: Tensor, x_proj_weight: Tensor, dt_proj_weight: Tensor, dt_proj_bias: Tensor,
                                  A_log: Tensor, D: Tensor, paths: Tensor, merge: str = "sum") -> Tensor:
    """``projected_multi_scan`` as PyTorch ops around ``multi_scan`` (the definition the fused path is tested
    against)."""
    delta, B, C = scan_projections(x.transpose(1, 2), x_proj_weight, dt_proj_weight)
    # every argument positional, as the layers pass them; the last: A = -exp(A_log) <= 0 (``a_nonpositive``)
    return multi_scan(x, delta, -torch.exp(A_log.float()), B, C, paths, D.float(), None, dt_proj_bias.float(), True,
                      merge, False, False, True)


def _check(x, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, paths, merge) -> None:
    fn = "projected_multi_scan"
    if merge not in _MERGES:
        raise ValueError(f"{fn}: merge must be one of {_MERGES}, got {merge!r}")
    params = dict(x_proj_weight=x_proj_weight, dt_proj_weight=dt_proj_weight, dt_proj_bias=dt_proj_bias,
                  A_log=A_log, D=D)
    for name, t in (("x", x), *params.items()):  # dtypes here, shapes below
        check_float_tensor(name, t, (t.dim(),) if isinstance(t, Tensor) else (), fn)
    devices = {t.device for t in (x, paths, *params.values()) if isinstance(t, Tensor)}
    if len(devices) > 1:
        raise ValueError(f"{fn}: all tensors must be on one device, got {sorted(map(str, devices))}")
    if x.dim() != 3:
        raise ValueError(f"{fn}: x must be a (batch, dim, L) tensor, got {tuple(x.shape)}")
    dim = x.shape[1]
    if x_proj_weight.dim() != 3 or x_proj_weight.shape[2] != dim:
        raise ValueError(f"{fn}: x_proj_weight must be (K, R + 2N, dim={dim}), got {tuple(x_proj_weight.shape)}")
    num_directions, rank2n, _ = x_proj_weight.shape
    if (dt_proj_weight.dim() != 3 or dt_proj_weight.shape[:2] != (num_directions, dim)
            or (rank2n - dt_proj_weight.shape[2]) % 2):
        raise ValueError(f"{fn}: dt_proj_weight must be (K={num_directions}, dim={dim}, R) with R + 2N = {rank2n}, got "
                         f"{tuple(dt_proj_weight.shape)}")
    d_state = (rank2n - dt_proj_weight.shape[2]) // 2
    if d_state < 1 or A_log.shape != (num_directions, dim, d_state):
        raise ValueError(f"{fn}: A_log must be (K, dim, N) = ({num_directions}, {dim}, {d_state}), got "
                         f"{tuple(A_log.shape)}")
    for name, t in (("dt_proj_bias", dt_proj_bias), ("D", D)):
        if t.shape != (num_directions, dim):
            raise ValueError(f"{fn}: {name} must be (K, dim) = ({num_directions}, {dim}), got {tuple(t.shape)}")
    if x.shape[-1] < 1:
        raise ValueError(f"{fn}: L must be >= 1, got shape {tuple(x.shape)} for x")
    scan_paths.check_layout(paths, x.shape[-1], fn)
    if paths.shape[0] != num_directions:
        raise ValueError(f"{fn}: paths must be a (K={num_directions}, Lp) index tensor, got {tuple(paths.shape)}")
    scan_paths.check(paths, x.shape[-1], fn)  # once per paths tensor (see vssm.ops.scan_paths)


@register_notrace_function
@torch.jit.ignore
@trace_quiet
def projected_multi_scan(x: Tensor, x_proj_weight: Tensor, dt_proj_weight: Tensor, dt_proj_bias: Tensor,
                         A_log: Tensor, D: Tensor, paths: Tensor, merge: str = "sum") -> Tensor:
    """Project x per direction and scan it along ``paths`` (see the module docstring); fused on the GPU.

    Args:
        x: (batch, dim, L) feature map in spatial order; channels-last storage ((batch, L, dim) memory) is read
            without copies.
        x_proj_weight: (K, R + 2N, dim). dt_proj_weight: (K, dim, R). dt_proj_bias, D: (K, dim). A_log: (K, dim, N).
        paths: (K, Lp) from ``vssm.ops.scan_paths.build``, or any valid routes (checked once per tensor,
            ``vssm.ops.scan_paths.check``).
        merge: 'sum' -> (batch, dim, L); 'none' -> (batch, K, dim, L), both in spatial order.

    Returns:
        y in x's dtype; a batch of 0 gives an empty output.

    Raises:
        ValueError: Shapes that do not fit, L = 0, or malformed ``paths`` (the message names the route).
    """
    _check(x, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, paths, merge)
    params = (x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D)
    if eager(x, *params, paths) and resolve_backend(x.device, x.dtype) == "triton":
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        if dtype != torch.float64 and all(p.dtype != torch.float64 for p in params):
            training = torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params))
            return _FusedProjectedScan.apply(x, *params, paths, merge == "sum", dtype, training)
    return projected_multi_scan_composed(x, *params, paths, merge)


class _FusedProjectedScan(torch.autograd.Function):
    """The GEMMs and the Triton scan of ``projected_multi_scan`` behind one autograd node (eager, Triton backend)."""

    @staticmethod
    def forward(ctx, x, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, paths, merge, dtype, training):
        from .triton.scan import scan_fwd_triton

        batch, dim, length = x.shape
        num_directions, rank2n, _ = x_proj_weight.shape
        rank = dt_proj_weight.shape[-1]
        d_state = (rank2n - rank) // 2
        with torch.autocast(x.device.type, enabled=False):
            tokens = x.transpose(1, 2).reshape(batch * length, dim).to(dtype)  # a view for channels-last x
            w_x = x_proj_weight.reshape(num_directions * rank2n, dim).to(dtype)
            x_dbl = torch.mm(tokens, w_x.t()).view(batch, length, num_directions, rank2n)
            dt_low = x_dbl[..., :rank].reshape(batch * length, num_directions * rank)
            w_dt = block_diagonal(dt_proj_weight, dtype)
            delta = torch.mm(dt_low, w_dt.t()).view(batch, length, num_directions, dim)
            delta = delta.permute(0, 2, 3, 1)  # (batch, K, dim, L)
            B = x_dbl[..., rank:rank + d_state].permute(0, 2, 3, 1).unsqueeze(2)  # (batch, K, 1, N, L)
            C = x_dbl[..., rank + d_state:].permute(0, 2, 3, 1).unsqueeze(2)
            A = -torch.exp(A_log.float())
            u = x.unsqueeze(1)
            y, _, states = scan_fwd_triton(u, delta, A, B, C, D.float(), None, dt_proj_bias.float(), paths,
                                           delta_softplus=True, merge=merge, params_at_step=False,
                                           save_states=training, a_nonpositive=True)
        if training:
            ctx.save_for_backward(u, tokens, w_x, dt_low, w_dt, delta, A, B, C, D, dt_proj_bias, paths, states)
            ctx.params_dtype = (x_proj_weight.dtype, dt_proj_weight.dtype, A_log.dtype)
            ctx.merge = merge
        return y

    @staticmethod
    def backward(ctx, dy):
        from .triton.scan import scan_bwd_triton

        u, tokens, w_x, dt_low, w_dt, delta, A, B, C, D, dt_proj_bias, paths, states = ctx.saved_tensors
        x_proj_dtype, dt_proj_dtype, a_log_dtype = ctx.params_dtype
        batch, num_directions, _, d_state, length = B.shape
        dim = u.shape[2]
        rank = dt_low.shape[1] // num_directions
        rank2n = rank + 2 * d_state
        with torch.autocast(u.device.type, enabled=False):
            # dB and dC accumulate in one float32 buffer (2, batch, K, 1, L, N), where a warp's atomics cover
            # consecutive steps (accumulating into their strided columns of x_dbl's gradient is slower; BENCHMARKS.md,
            # launch-plan figures)
            grad_BC = torch.zeros(2, batch, num_directions, 1, length, d_state, device=u.device, dtype=torch.float32)
            du, ddelta, dA, _, _, dD, _, dbias = scan_bwd_triton(
                dy if dense_strides(dy) else dy.contiguous(), None, u, delta, A, B, C, D.float(), None,
                dt_proj_bias.float(), paths, states, delta_softplus=True, merge=ctx.merge, params_at_step=False,
                a_nonpositive=True, grad_BC_into=grad_BC.transpose(-1, -2).unbind(0), accumulators=True)
            # a view of (batch, L, K, dim)
            ddelta = ddelta.permute(0, 3, 1, 2).reshape(batch * length, num_directions * dim)
            dB, dC = grad_BC.to(w_x.dtype)[:, :, :, 0].permute(0, 1, 3, 2, 4).unbind(0)  # (batch, L, K, N)
            ddt_low = torch.mm(ddelta, w_dt).view(batch, length, num_directions, rank)
            dx_dbl = torch.cat([ddt_low, dB, dC], dim=-1).view(batch * length, num_directions * rank2n)
            dtokens = torch.mm(dx_dbl, w_x).view(batch, length, dim).transpose(1, 2)  # (batch, dim, L)
            if dtokens.dtype == u.dtype:
                dx = dtokens.add_(du[:, 0])
            else:  # x not in the GEMMs' dtype (float32 under autocast): sum in float32
                dx = du[:, 0].add_(dtokens).to(u.dtype)
            dw_x = torch.mm(dx_dbl.t(), tokens).view(num_directions, rank2n, dim).to(x_proj_dtype)
            dw_dt = torch.mm(ddelta.t(), dt_low).view(num_directions, dim, num_directions, rank)
            dw_dt = dw_dt.diagonal(dim1=0, dim2=2)  # (dim, R, K)
            dw_dt = dw_dt.permute(2, 0, 1).to(dt_proj_dtype).contiguous()
            dA_log = (dA * A).to(a_log_dtype)
        return dx, dw_x, dw_dt, dbias.to(dt_proj_bias.dtype), dA_log, dD.to(D.dtype), None, None, None, None
