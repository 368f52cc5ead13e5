"""Depthwise causal 1-D convolutions of one sequence along K scan directions, with an optional SiLU (Mamba's conv).

``causal_conv1d(x, weight, bias, reverse)`` maps x (batch, dim, L) to (batch, K, dim, L): direction k convolves each
channel with its own width-W kernel, causally in its scan order::

    forward  (reverse[k] False): out[k, t] = act(bias[k] + sum_j weight[k, j] x[t - (W - 1) + j])
    reversed (reverse[k] True):  out[k, t] = act(bias[k] + sum_j weight[k, j] x[t + (W - 1) - j])

(the reversed direction is the forward conv of the flipped sequence, flipped back), with zeros outside [0, L). So
Vim's and VideoMamba's per-direction convs read one (batch, dim, L) tensor in spatial order and nothing is flipped or
copied. On CUDA (and on CPU under TRITON_INTERPRET=1) one Triton kernel computes every direction, reading x with its
strides and writing the output with x's axis order (directions outermost); the backward recomputes the
pre-activations. ``causal_conv1d_ref`` (``F.conv1d`` in float32) is the definition the kernels are tested against.
The op is a ``torch.library.custom_op`` with a fake and an autograd formula (torch.compile, torch.export) and an FX /
TorchScript leaf; eager tensors take an ``autograd.Function`` that skips the custom op's dispatch.
"""
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .common import check_kernel_backend, eager, empty_like_dense, resolve_backend, trace_quiet

__all__ = ["causal_conv1d", "causal_conv1d_ref"]

_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_ACTIVATIONS = (None, "silu")
MAX_TRITON_WIDTH = 4  # the kernels keep x at t - 3 .. t + 3 in registers (mamba's causal_conv1d also stops at 4)


def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor], reverse: Sequence[bool],
                      activation: Optional[str] = "silu") -> Tensor:
    """Reference: per direction a padded ``F.conv1d`` (kernel mirrored for reversed directions), computed in float32
    (float64 for float64 input), stacked to (batch, K, dim, L) in x's dtype."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    width = weight.shape[-1]
    outs = []
    with torch.autocast(x.device.type, enabled=False):
        xc = x.to(compute)
        for k, rev in enumerate(reverse):
            w = weight[k].to(compute)
            b = None if bias is None else bias[k].to(compute)
            if rev:  # out[t] sees x[t .. t + W - 1] with the kernel mirrored
                out = F.conv1d(F.pad(xc, (0, width - 1)), w.flip(-1).unsqueeze(1), b, groups=x.shape[1])
            else:  # out[t] sees x[t - W + 1 .. t]
                out = F.conv1d(F.pad(xc, (width - 1, 0)), w.unsqueeze(1), b, groups=x.shape[1])
            outs.append(out)
        out = torch.stack(outs, 1)
        if activation == "silu":
            out = F.silu(out)
    return out.to(x.dtype)


def _reverse_mask(reverse: Sequence[bool]) -> int:
    return sum(1 << k for k, rev in enumerate(reverse) if rev)


@torch.library.custom_op("vssm::causal_conv1d_fwd", mutates_args=())
def _conv_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], reverse_mask: int, silu: bool) -> Tensor:
    from .triton.causal_conv import causal_conv1d_fwd_triton

    return causal_conv1d_fwd_triton(x, weight, bias, reverse_mask, silu=silu)


@_conv_fwd.register_fake
def _(x, weight, bias, reverse_mask, silu):
    from .triton.causal_conv import empty_directions

    return empty_directions(x, weight.shape[0])


@register_flop_formula(torch.ops.vssm.causal_conv1d_fwd)
def _conv_flops(x, weight, bias, reverse_mask, silu, out_shape=None, **kwargs) -> int:
    """2 FLOPs per multiply-add, as torch's formula for ``F.conv1d`` (the reference) counts them."""
    num_directions, dim, width = weight
    return 2 * x[0] * num_directions * dim * x[-1] * width


@torch.library.custom_op("vssm::causal_conv1d_bwd", mutates_args=())
def _conv_bwd(dout: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], reverse_mask: int,
              silu: bool) -> tuple[Tensor, Tensor, Tensor]:
    from .triton.causal_conv import causal_conv1d_bwd_triton

    dx, dw, db = causal_conv1d_bwd_triton(dout, x, weight, bias, reverse_mask, silu=silu)
    return dx, dw, db if db is not None else dw.new_empty(0)


@_conv_bwd.register_fake
def _(dout, x, weight, bias, reverse_mask, silu):
    return (empty_like_dense(x), weight.new_empty(weight.shape),
            weight.new_empty(bias.shape if bias is not None else 0))


def _setup_context(ctx, inputs, output):
    x, weight, bias, reverse_mask, silu = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.flags = (reverse_mask, silu)


def _backward(ctx, dout, conv_bwd=torch.ops.vssm.causal_conv1d_bwd):
    x, weight, bias = ctx.saved_tensors
    reverse_mask, silu = ctx.flags
    dx, dw, db = conv_bwd(dout, x, weight, bias, reverse_mask, silu=silu)
    return dx, dw, db if bias is not None else None, None, None


torch.library.register_autograd("vssm::causal_conv1d_fwd", _backward, setup_context=_setup_context)


class _EagerCausalConv(torch.autograd.Function):
    """The same kernels without the custom op's dispatch: the path for eager tensors."""

    @staticmethod
    def forward(ctx, x, weight, bias, reverse_mask, silu):
        from .triton.causal_conv import causal_conv1d_fwd_triton

        output = causal_conv1d_fwd_triton(x, weight, bias, reverse_mask, silu=silu)
        _setup_context(ctx, (x, weight, bias, reverse_mask, silu), output)
        return output

    @staticmethod
    def backward(ctx, dout):
        from .triton.causal_conv import causal_conv1d_bwd_triton

        return _backward(ctx, dout, conv_bwd=causal_conv1d_bwd_triton)


def _check(x: Tensor, weight: Tensor, bias: Optional[Tensor], reverse: Sequence[bool], activation) -> None:
    fn = "causal_conv1d"
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None and (not isinstance(t, Tensor) or t.dtype not in _FLOATS):
            raise TypeError(f"{fn}: {name} must be a floating tensor, got "
                            f"{t.dtype if isinstance(t, Tensor) else type(t).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{fn}: x must be (batch, dim, L), got {tuple(x.shape)}")
    if x.shape[-1] < 1:
        raise ValueError(f"{fn}: L must be >= 1, got shape {tuple(x.shape)} for x")
    if weight.dim() != 3 or weight.shape[:2] != (len(reverse), x.shape[1]):
        raise ValueError(f"{fn}: weight must be (K, dim, W) = ({len(reverse)}, {x.shape[1]}, W) for "
                         f"{len(reverse)} directions, got {tuple(weight.shape)}")
    if bias is not None and bias.shape != weight.shape[:2]:
        raise ValueError(f"{fn}: bias must be (K, dim) = {tuple(weight.shape[:2])}, got {tuple(bias.shape)}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{fn}: activation must be one of {_ACTIVATIONS}, got {activation!r}")
    if len({t.device for t in (x, weight, bias) if t is not None}) > 1:
        raise ValueError(f"{fn}: x, weight and bias must be on one device")


@register_notrace_function
@torch.jit.ignore
@trace_quiet
def causal_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor], reverse: List[bool],
                  activation: Optional[str] = "silu", backend: Optional[str] = None) -> Tensor:
    """Per-direction depthwise causal conv (module docstring) of x (batch, dim, L) -> (batch, K, dim, L).

    Args:
        weight: (K, dim, W) kernels; bias: (K, dim) or None.
        reverse: K flags, True where direction k scans the sequence from its end.
        activation: 'silu' or None.
        backend: 'triton' (kernel widths up to 4) or 'torch' (``causal_conv1d_ref``); by default the scan's backend
            (Triton for CUDA tensors other than float64, ``VSSM_SCAN_BACKEND`` when set; CPU tensors need
            TRITON_INTERPRET=1 for Triton), the reference for wider kernels.

    Returns:
        (batch, K, dim, L) in x's dtype; a batch of 0 gives an empty output.

    Raises:
        ValueError: Shapes that do not fit, or L = 0 ("L must be >= 1").
    """
    _check(x, weight, bias, reverse, activation)
    if backend is None:  # as the scan's (VSSM_SCAN_BACKEND overrides), 'ref' and 'torch' both mean the reference
        use_triton = resolve_backend(x.device, x.dtype) == "triton" and weight.shape[-1] <= MAX_TRITON_WIDTH
        backend = "triton" if use_triton else "torch"
    check_kernel_backend("causal_conv1d", backend, x.device, (x.dtype, weight.dtype))
    if backend == "torch":
        return causal_conv1d_ref(x, weight, bias, reverse, activation)
    if weight.shape[-1] > MAX_TRITON_WIDTH:
        raise ValueError(f"causal_conv1d: the triton backend supports kernel widths up to {MAX_TRITON_WIDTH}, got "
                         f"weight {tuple(weight.shape)}")
    args = (x, weight, bias, _reverse_mask(reverse), activation == "silu")
    if eager(x, weight, bias):
        return _EagerCausalConv.apply(*args)
    return _conv_fwd(*args)
