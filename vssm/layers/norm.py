"""LayerNorm and RMSNorm on vssm's kernels: drop-ins for ``nn.LayerNorm`` and timm's ``RmsNorm`` (same parameters and
state dicts) over the last axis."""
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import RmsNorm as TimmRmsNorm, register_notrace_function
from torch import Tensor, nn

from ..ops.layer_norm import layer_norm, rms_norm

__all__ = ["LayerNorm", "RmsNorm"]


# Where vssm's kernel pays on an H100 (BENCHMARKS.md): a forward on 401408 x 96 or x 192 rows takes 0.13 ms against
# 0.7-1.1 ms for autocast's casts and float32 norm, while on 25088 x 768 both take 0.11 ms and its backward is slower;
# smaller norms are dominated by the host's cost of a Triton launch, which eager models cannot hide.
KERNEL_MIN_ELEMENTS = 1 << 24
KERNEL_MAX_CHANNELS = 256


def _output_dtype(x: Tensor, autocast_output: bool) -> torch.dtype:
    """x's dtype without autocast; under autocast float32, or the autocast dtype when ``autocast_output``."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type) if autocast_output else torch.float32
    return x.dtype


# FX autowraps only names without a leading underscore
@register_notrace_function
@torch.jit.ignore
def norm_last_axis(x: Tensor, weight: Tensor, bias: Optional[Tensor], eps: float, autocast_output: bool) -> Tensor:
    """x's dtype without autocast; under autocast float32 (as PyTorch's autocast runs layer_norm), or the autocast
    dtype when ``autocast_output``. Large norms of at most 256 channels run on vssm's kernel, others on PyTorch's."""
    out_dtype = _output_dtype(x, autocast_output)
    if x.numel() < KERNEL_MIN_ELEMENTS or x.shape[-1] > KERNEL_MAX_CHANNELS:
        return layer_norm(x, weight, bias, eps, out_dtype, backend="torch")
    return layer_norm(x, weight, bias, eps, out_dtype)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last axis that reads its input in its own dtype and, with ``autocast_output``, writes
    the autocast dtype under autocast: for a norm whose output feeds a matmul (which would cast it down anyway), one
    pass over memory each way instead of autocast's float32 round trip. Without autocast it computes what
    ``nn.LayerNorm`` does (in float32, output in the input's dtype)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 autocast_output: bool = False, device=None, dtype=None):
        """
        Args:
            normalized_shape: Channels C of the last axis.
            autocast_output: Under autocast, return the autocast dtype rather than float32.
        """
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine, bias=bias, device=device,
                         dtype=dtype)
        if len(self.normalized_shape) != 1:
            raise ValueError(f"LayerNorm normalises the last axis only, got normalized_shape={normalized_shape}")
        self.autocast_output = autocast_output

    def forward(self, x: Tensor) -> Tensor:
        """(..., C) -> (..., C)."""
        if self.weight is None:
            return F.layer_norm(x, self.normalized_shape, None, None, self.eps)
        return norm_last_axis(x, self.weight, self.bias, self.eps, self.autocast_output)


@register_notrace_function
@torch.jit.ignore
def rms_norm_last_axis(x: Tensor, weight: Tensor, eps: float, autocast_output: bool) -> Tensor:
    """RMSNorm with ``norm_last_axis``'s output dtypes, on vssm's kernel for CUDA tensors at every size (PyTorch's
    path is six ops, each a launch and a pass over memory), on PyTorch's ops elsewhere."""
    return rms_norm(x, weight, eps, _output_dtype(x, autocast_output))


class RmsNorm(TimmRmsNorm):
    """timm's ``RmsNorm`` (same parameters and state dict) on one kernel: reads its input in its own dtype, normalises
    in float32 and, with ``autocast_output``, writes the autocast dtype under autocast for a matmul that follows.
    Without autocast it returns the input's dtype, as timm's does."""

    def __init__(self, channels: int, eps: float = 1e-6, affine: bool = True, autocast_output: bool = False,
                 device=None, dtype=None):
        """
        Args:
            channels: Channels C of the last axis.
            autocast_output: Under autocast, return the autocast dtype rather than float32.
        """
        super().__init__(channels, eps=eps, affine=affine, device=device, dtype=dtype)
        self.autocast_output = autocast_output

    def forward(self, x: Tensor) -> Tensor:
        """(..., C) -> (..., C)."""
        if self.weight is None:
            return super().forward(x)
        return rms_norm_last_axis(x, self.weight, self.eps, self.autocast_output)
