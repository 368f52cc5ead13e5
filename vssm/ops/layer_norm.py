"""LayerNorm and RMSNorm over the last axis that write their output in a chosen dtype (Triton on CUDA, PyTorch
elsewhere).

Under autocast PyTorch runs ``layer_norm`` in float32: it casts a bf16 input up, writes a float32 output, and the
matmul that follows casts it back down. ``layer_norm(x, weight, bias, eps, out_dtype)`` reads x in its own dtype,
normalises in float32 and writes ``out_dtype`` directly (one pass over memory each way). ``rms_norm(x, weight, eps,
out_dtype)`` does the same for RMSNorm, which PyTorch (timm's ``RmsNorm``) computes as six separate ops. Both are one
``torch.library.custom_op`` with a fake and an autograd formula (torch.compile, torch.export) and notrace leaves for
FX; the PyTorch paths (``layer_norm_ref``, ``rms_norm_ref``) are the definitions the Triton kernels are tested
against. Inputs without rows (a batch or length of 0) give empty outputs and gradients; C = 0 raises a ValueError.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor

from .common import check_kernel_backend, eager, trace_quiet, triton_available

__all__ = ["layer_norm", "layer_norm_ref", "rms_norm", "rms_norm_ref"]

_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def layer_norm_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor], eps: float = 1e-5,
                   out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """LayerNorm of x (..., C) over C, computed in float32 (float64 for float64 input), returned as ``out_dtype``
    (x's dtype when None)."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(x.device.type, enabled=False):
        y = F.layer_norm(x.to(compute), x.shape[-1:], weight.to(compute), None if bias is None else bias.to(compute),
                         eps)
    return y.to(out_dtype or x.dtype)


def rms_norm_ref(x: Tensor, weight: Tensor, eps: float = 1e-6, out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """RMSNorm x / sqrt(mean(x^2) + eps) * weight of x (..., C) over C, computed in float32 (float64 for float64
    input), returned as ``out_dtype`` (x's dtype when None)."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(x.device.type, enabled=False):
        xc = x.to(compute)
        y = xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps) * weight.to(compute)
    return y.to(out_dtype or x.dtype)


@torch.library.custom_op("vssm::layer_norm_fwd", mutates_args=())
def _layer_norm_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], eps: float, out_dtype: torch.dtype,
                    rms: bool) -> tuple[Tensor, Tensor, Tensor]:
    from .triton.layer_norm import layer_norm_fwd_triton

    return layer_norm_fwd_triton(x, weight, bias, eps, out_dtype, rms=rms)


@_layer_norm_fwd.register_fake
def _(x, weight, bias, eps, out_dtype, rms):
    rows = x.numel() // x.shape[-1]
    return (x.new_empty(x.shape, dtype=out_dtype), x.new_empty(0 if rms else rows, dtype=torch.float32),
            x.new_empty(rows, dtype=torch.float32))


@torch.library.custom_op("vssm::layer_norm_bwd", mutates_args=())
def _layer_norm_bwd(dy: Tensor, x: Tensor, weight: Tensor, has_bias: bool, mean: Tensor, rstd: Tensor,
                    rms: bool) -> tuple[Tensor, Tensor, Tensor]:
    from .triton.layer_norm import layer_norm_bwd_triton

    dx, dw, db = layer_norm_bwd_triton(dy, x, weight, mean, rstd, has_bias=has_bias, rms=rms)
    return dx, dw, db if db is not None else dw.new_empty(0)


@_layer_norm_bwd.register_fake
def _(dy, x, weight, has_bias, mean, rstd, rms):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape if has_bias else 0)


def _setup_context(ctx, inputs, output):
    x, weight, bias, eps, out_dtype, rms = inputs
    ctx.save_for_backward(x, weight, output[1], output[2])
    ctx.has_bias = bias is not None
    ctx.rms = rms


def _backward(ctx, dy, dmean, drstd, layer_norm_bwd=torch.ops.vssm.layer_norm_bwd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = layer_norm_bwd(dy, x, weight, mean=mean, rstd=rstd, has_bias=ctx.has_bias, rms=ctx.rms)
    return dx, dw, db if ctx.has_bias else None, None, None, None


torch.library.register_autograd("vssm::layer_norm_fwd", _backward, setup_context=_setup_context)


class _EagerLayerNorm(torch.autograd.Function):
    """The same kernels without the custom op's dispatch (less host time per forward + backward; BENCHMARKS.md,
    launch-plan figures): the path for eager tensors; compile and export trace the custom op."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, out_dtype, rms):
        from .triton.layer_norm import layer_norm_fwd_triton

        output = layer_norm_fwd_triton(x, weight, bias, eps, out_dtype, rms=rms)
        _setup_context(ctx, (x, weight, bias, eps, out_dtype, rms), output)
        ctx.mark_non_differentiable(output[1], output[2])
        return output

    @staticmethod
    def backward(ctx, dy, dmean, drstd):
        from .triton.layer_norm import layer_norm_bwd_triton

        return _backward(ctx, dy, dmean, drstd, layer_norm_bwd=layer_norm_bwd_triton)


def _check(fn: str, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    if not isinstance(x, Tensor) or x.dtype not in _FLOATS or x.dim() < 1:
        raise TypeError(f"{fn}: x must be a floating tensor (..., C), got "
                        f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
    if x.shape[-1] < 1:
        raise ValueError(f"{fn}: C must be >= 1, got shape {tuple(x.shape)} for x")
    for name, t in (("weight", weight), ("bias", bias)):
        if name == "bias" and t is None:  # the weight is required, the bias optional
            continue
        if not isinstance(t, Tensor) or t.dim() != 1 or t.shape[0] != x.shape[-1]:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{fn}: {name} must be (C,) = ({x.shape[-1]},) for x {tuple(x.shape)}, got {got}")


def _norm(fn: str, x: Tensor, weight: Tensor, bias: Optional[Tensor], eps: float, out_dtype: Optional[torch.dtype],
          backend: Optional[str], rms: bool) -> Tensor:
    _check(fn, x, weight, bias)
    out_dtype = out_dtype or x.dtype
    if backend is None:
        use_triton = x.is_cuda and x.dtype != torch.float64 and triton_available()
        backend = "triton" if use_triton else "torch"
    check_kernel_backend(fn, backend, x.device, (x.dtype, out_dtype))
    if backend == "torch":
        return rms_norm_ref(x, weight, eps, out_dtype) if rms else layer_norm_ref(x, weight, bias, eps, out_dtype)
    if eager(x, weight, bias):
        return _EagerLayerNorm.apply(x, weight, bias, float(eps), out_dtype, rms)[0]
    return _layer_norm_fwd(x, weight, bias, float(eps), out_dtype, rms)[0]


@register_notrace_function
@torch.jit.ignore
@trace_quiet
def layer_norm(x: Tensor, weight: Tensor, bias: Optional[Tensor], eps: float = 1e-5,
               out_dtype: Optional[torch.dtype] = None, backend: Optional[str] = None) -> Tensor:
    """LayerNorm of x (..., C) over its last axis with weight/bias (C,), output in ``out_dtype`` (default x's).

    Args:
        backend: 'triton' (default for CUDA tensors other than float64; CPU tensors need TRITON_INTERPRET=1) or
            'torch' (``layer_norm_ref``, the default elsewhere).
    """
    return _norm("layer_norm", x, weight, bias, eps, out_dtype, backend, False)


@register_notrace_function
@torch.jit.ignore
@trace_quiet
def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6, out_dtype: Optional[torch.dtype] = None,
             backend: Optional[str] = None) -> Tensor:
    """RMSNorm x / sqrt(mean(x^2) + eps) * weight of x (..., C) over its last axis, weight (C,), output in
    ``out_dtype`` (default x's); ``backend`` as for ``layer_norm``."""
    return _norm("rms_norm", x, weight, None, eps, out_dtype, backend, True)
