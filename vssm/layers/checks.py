"""Input checks at the entry of the zoo's models: a clear error for the mistakes users make first. They are leaves for
FX and run as Python under TorchScript, so the messages may say what the input was."""
from typing import List

import torch
from timm.layers import register_notrace_function
from torch import Tensor


@register_notrace_function
@torch.jit.ignore
def check_batched_input(x: Tensor, spatial_dims: int, in_chans: int) -> None:
    """Raise ``ValueError`` unless ``x`` is a batch (B, C, H, W) (``spatial_dims`` 2) or (B, C, T, H, W) (3) of
    ``in_chans`` channels; an unbatched input is told to add the batch axis."""
    expected = "(B, C, H, W) images" if spatial_dims == 2 else "(B, C, T, H, W) clips"
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a tensor of {expected}, got {type(x).__name__}")
    if x.dim() != spatial_dims + 2:
        hint = " (an unbatched input: add the batch axis with x.unsqueeze(0))" if x.dim() == spatial_dims + 1 else ""
        raise ValueError(f"expected a batch of {expected}, got a tensor of shape {tuple(x.shape)}{hint}")
    if x.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} input channels (B, C={in_chans}, ...), got shape {tuple(x.shape)}")


@register_notrace_function
@torch.jit.ignore
def check_fixed_size(x: Tensor, img_size: List[int]) -> None:
    """Raise ``AssertionError`` (timm's convention for a fixed-size model) unless ``x``'s last two axes are
    ``img_size``; the message says what came and how to accept other sizes."""
    if list(x.shape[-2:]) != list(img_size):
        raise AssertionError(f"input size must be {list(img_size)}, got {list(x.shape[-2:])} (or create the model "
                             "with dynamic_img_size=True)")
