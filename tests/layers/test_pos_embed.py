"""The shared position embeddings: EVA-02 2-D RoPE (Vim, LocalVim), the class-token layouts, the position-embedding
resamplers (correct and the official DeiT resize) and the temporal resampler (VideoMamba)."""
import math

import pytest
import torch
import torch.nn.functional as F

from vssm.layers.pos_embed import (
    CLASS_TOKENS, Rope2d, apply_rope, join_class_tokens, resample_pos_embed, resample_temporal_embed,
    resize_pos_embed_official, rope_tables, split_class_tokens,
)


def official_rope(dim, side, ref_size=14, theta=10000.):
    """EVA-02 ``VisionRotaryEmbeddingFast`` (square grid): freqs over dim/2, positions t * ref_size / side, the two
    axes concatenated (rows first), each frequency repeated for a channel pair."""
    freqs = 1. / (theta ** (torch.arange(0, dim // 2, 2)[:dim // 4].float() / (dim // 2)))
    t = torch.arange(side).float() / side * ref_size
    freqs = torch.einsum("i,f->if", t, freqs).repeat_interleave(2, dim=-1)  # (side, dim/2)
    table = torch.cat([freqs[:, None, :].expand(side, side, -1), freqs[None, :, :].expand(side, side, -1)], dim=-1)
    return table.reshape(side * side, dim).cos(), table.reshape(side * side, dim).sin()


@pytest.mark.parametrize("dim,side", [(16, 4), (32, 7)])
def test_rope_tables_match_official(dim, side):
    cos, sin = rope_tables(dim, [side, side], 14)
    ref_cos, ref_sin = official_rope(dim, side)
    torch.testing.assert_close(cos, ref_cos)
    torch.testing.assert_close(sin, ref_sin)


def test_rope_rotates_pairs_and_keeps_norms():
    x = torch.randn(2, 12, 8)
    rope = Rope2d(8, [3, 4])
    y = rope(x, [3, 4])
    cos, sin = rope_tables(8, [3, 4])
    a, b = x[..., 0::2], x[..., 1::2]
    torch.testing.assert_close(y[..., 0::2], a * cos[:, 0::2] - b * sin[:, 0::2])
    torch.testing.assert_close(y[..., 1::2], b * cos[:, 1::2] + a * sin[:, 1::2])
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    # another grid: tables computed on the fly, equal to the tables of a module built for it
    x5 = torch.randn(1, 10, 8)
    torch.testing.assert_close(rope(x5, [5, 2]), Rope2d(8, [5, 2])(x5, [5, 2]))
    torch.testing.assert_close(apply_rope(x, cos, sin), y)
    assert not dict(rope.state_dict())  # the tables are not state


def test_rope_dim_must_be_multiple_of_4():
    with pytest.raises(ValueError, match="multiple of 4"):
        Rope2d(6, [2, 2])


@pytest.mark.parametrize("class_token", CLASS_TOKENS)
def test_class_token_layouts_round_trip(class_token):
    prefix_len = {"middle": 1, "head": 1, "double": 2, "none": 0}[class_token]
    patches, prefix = torch.randn(2, 9, 4), torch.randn(2, prefix_len, 4)
    tokens = join_class_tokens(prefix, patches, class_token)
    assert tokens.shape == (2, 9 + prefix_len, 4)
    got_prefix, got_patches = split_class_tokens(tokens, class_token)
    assert torch.equal(got_prefix, prefix) and torch.equal(got_patches, patches)
    if class_token == "middle":
        assert torch.equal(tokens[:, 4], prefix[:, 0])


@pytest.mark.parametrize("class_token", CLASS_TOKENS)
def test_resample_pos_embed_keeps_class_slots(class_token):
    prefix_len = {"middle": 1, "head": 1, "double": 2, "none": 0}[class_token]
    patches, prefix = torch.randn(1, 12, 4), torch.randn(1, prefix_len, 4)
    pos_embed = join_class_tokens(prefix, patches, class_token)
    out = resample_pos_embed(pos_embed, [5, 6], [3, 4], class_token)
    got_prefix, got_patches = split_class_tokens(out, class_token)
    assert torch.equal(got_prefix, prefix)
    expected = F.interpolate(patches.reshape(1, 3, 4, 4).permute(0, 3, 1, 2), size=[5, 6], mode="bicubic",
                             align_corners=False).permute(0, 2, 3, 1).reshape(1, 30, 4)
    torch.testing.assert_close(got_patches, expected)
    assert torch.equal(resample_pos_embed(pos_embed, [3, 4], [3, 4], class_token), pos_embed)


@pytest.mark.parametrize("num_extra_tokens", [0, 1, 2])
def test_resize_pos_embed_official_is_deit(num_extra_tokens):
    """The official fine-tune resize: the first entries kept whatever they are, the rest a square grid."""
    pos_embed = torch.randn(1, num_extra_tokens + 16, 4)
    out = resize_pos_embed_official(pos_embed, [6, 6], num_extra_tokens)
    side = int(math.sqrt(16))
    grid = pos_embed[:, num_extra_tokens:].reshape(1, side, side, 4).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=[6, 6], mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    assert torch.equal(out[:, :num_extra_tokens], pos_embed[:, :num_extra_tokens])
    torch.testing.assert_close(out[:, num_extra_tokens:], expected.reshape(1, 36, 4))


def test_resample_temporal_embed_is_linear():
    embed = torch.arange(4.).view(1, 4, 1).expand(1, 4, 3)
    out = resample_temporal_embed(embed, 8)
    expected = F.interpolate(embed.transpose(1, 2), size=8, mode="linear", align_corners=False).transpose(1, 2)
    torch.testing.assert_close(out, expected)
    assert resample_temporal_embed(embed.to(torch.bfloat16), 2).dtype == torch.bfloat16
