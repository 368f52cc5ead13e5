"""Position embeddings shared by the isotropic families (Vim, LocalVim, VideoMamba): the EVA-02 2-D rotary embedding
and the absolute position-embedding resamplers.

Class-token layouts (``CLASS_TOKENS``) name where the class slot(s) sit in a token sequence of M patch tokens in
row-major order: 'head' (index 0), 'middle' (index M // 2, Vim / LocalVim), 'double' (index 0 and the last index) or
'none'. ``split_class_tokens`` / ``join_class_tokens`` take them out and put them back, so that resampling or rotating
touches the patch tokens only.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

__all__ = [
    "CLASS_TOKENS", "Rope2d", "rope_tables", "apply_rope", "split_class_tokens", "join_class_tokens",
    "resample_pos_embed", "resample_temporal_embed", "resize_pos_embed_official",
]

CLASS_TOKENS = ("middle", "head", "double", "none")


def rope_tables(
        dim: int,
        grid: List[int],
        ref_size: int = 14,
        device: Optional[torch.device] = None,
        theta: float = 10000.,
) -> Tuple[Tensor, Tensor]:
    """cos and sin (h * w, dim) of the EVA-02 2-D rotary embedding (Vim's and LocalVim's ``VisionRotaryEmbeddingFast``).

    Channels [0, dim/2) rotate with the row index, [dim/2, dim) with the column index, both scaled to ``ref_size``
    positions (t_i = i * ref_size / size, the official ``pt_hw_seq_len``); channel pairs (2i, 2i+1) share the
    frequency theta^(-4i/dim), i < dim/4. (The official tables come from a square grid; other grids get their own
    table here.)
    """
    half = dim // 2
    inv_freq = 1. / (theta ** (torch.arange(0, half, 2, device=device)[:half // 2].float() / half))  # (dim/4,)
    angles: List[Tensor] = []
    for size in grid:
        pos = torch.arange(size, device=device).float() / size * ref_size
        angles.append((pos[:, None] * inv_freq[None, :]).repeat_interleave(2, dim=1))  # (size, dim/2)
    rows = angles[0][:, None, :].expand(grid[0], grid[1], half)
    cols = angles[1][None, :, :].expand(grid[0], grid[1], half)
    table = torch.cat([rows, cols], dim=-1).reshape(grid[0] * grid[1], dim)
    return table.cos(), table.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (..., L, dim) tokens by (L, dim) tables: channel pairs (a, b) -> (a cos - b sin, b cos + a sin)."""
    rotated = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)  # pairs (a, b) -> (-b, a)
    return x * cos + rotated * sin


class Rope2d(nn.Module):
    """2-D rotary position embedding of patch tokens (B, h * w, dim) in row-major order (the official ``if_rope``).

    The tables of the default grid are non-persistent buffers (no state-dict keys); other grids get theirs computed
    on the fly.
    """

    def __init__(self, dim: int, grid_size: Sequence[int], ref_size: int = 14, device=None):
        """
        Args:
            dim: Token width (a multiple of 4).
            grid_size: Default token grid (h, w).
            ref_size: Positions are scaled to a grid of this side (official ``pt_hw_seq_len``).
        """
        super().__init__()
        if dim % 4:
            raise ValueError(f"Rope2d: dim must be a multiple of 4, got {dim}")
        self.dim = dim
        self.grid_size = list(grid_size)
        self.ref_size = ref_size
        cos, sin = rope_tables(dim, self.grid_size, ref_size, device)
        self.register_buffer("freqs_cos", cos, persistent=False)
        self.register_buffer("freqs_sin", sin, persistent=False)

    def forward(self, x: Tensor, grid: List[int]) -> Tensor:
        """(B, h * w, dim) patch tokens of a token ``grid`` (h, w) -> rotated, same shape."""
        if grid == self.grid_size:
            cos, sin = self.freqs_cos, self.freqs_sin
        else:
            cos, sin = rope_tables(self.dim, grid, self.ref_size, x.device)
        return apply_rope(x, cos, sin)


def split_class_tokens(x: Tensor, class_token: str) -> Tuple[Tensor, Tensor]:
    """Token sequence (B, P + M, C) -> (class token(s) (B, P, C), patch tokens (B, M, C) in row-major order)."""
    if class_token == "head":
        return x[:, :1], x[:, 1:]
    if class_token == "middle":
        middle = (x.shape[1] - 1) // 2
        return x[:, middle:middle + 1], torch.cat([x[:, :middle], x[:, middle + 1:]], dim=1)
    if class_token == "double":
        return torch.cat([x[:, :1], x[:, -1:]], dim=1), x[:, 1:-1]
    return x[:, :0], x


def join_class_tokens(prefix: Tensor, patches: Tensor, class_token: str) -> Tensor:
    """Class token(s) (B, P, C) and patch tokens (B, M, C) -> the token sequence (B, P + M, C)."""
    if class_token == "head":
        return torch.cat([prefix, patches], dim=1)
    if class_token == "middle":
        middle = patches.shape[1] // 2
        return torch.cat([patches[:, :middle], prefix, patches[:, middle:]], dim=1)
    if class_token == "double":
        return torch.cat([prefix[:, :1], patches, prefix[:, 1:]], dim=1)
    return patches


def resample_pos_embed(pos_embed: Tensor, new_grid: List[int], old_grid: List[int], class_token: str) -> Tensor:
    """(1, P + M, C) position embedding of ``old_grid`` -> ``new_grid``: the patch part resampled bicubically (no
    antialias, as the official detection backbones), the class slot(s) kept where ``class_token`` puts them."""
    prefix, patches = split_class_tokens(pos_embed, class_token)
    patches = resample_abs_pos_embed(patches, new_grid, old_grid, num_prefix_tokens=0, antialias=False)
    return join_class_tokens(prefix, patches, class_token)


def resize_pos_embed_official(pos_embed: Tensor, new_grid: List[int], num_extra_tokens: int) -> Tensor:
    """The official fine-tuning resize (DeiT's, used by Vim and VideoMamba converters): keep the first
    ``num_extra_tokens`` entries, resample the rest as a square grid to ``new_grid`` (bicubic, no antialias).

    With Vim's middle class token this keeps patch 0 as if it were the class token and resamples the class slot as a
    patch; that is what produced the official stride-8 fine-tunes, so it is what official weights get
    (``resample_pos_embed`` is the correct resize).
    """
    return resample_abs_pos_embed(pos_embed, new_grid, None, num_prefix_tokens=num_extra_tokens, antialias=False)


def resample_temporal_embed(embed: Tensor, length: int) -> Tensor:
    """(1, T, C) embedding along time (VideoMamba's ``temporal_pos_embedding``) -> (1, length, C), linear
    (align_corners=False, computed in float32), as the official code for other frame counts."""
    resampled = F.interpolate(embed.transpose(1, 2).float(), size=length, mode="linear", align_corners=False)
    return resampled.transpose(1, 2).to(embed.dtype)
