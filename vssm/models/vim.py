"""Vision Mamba (Vim): an isotropic backbone of bidirectional Mamba blocks with a class token in the middle.

Paper: "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model", Lianghui Zhu,
Bencheng Liao, Qian Zhang, Xinlong Wang, Wenyu Liu, Xinggang Wang, ICML 2024, arXiv 2401.09417
(https://arxiv.org/abs/2401.09417). Official code: https://github.com/hustvl/Vim (commit dd0358a, Apache-2.0);
weights: HF hub ``hustvl/Vim-{tiny,small,base}-midclstok``.

```
@inproceedings{zhu2024vision,
  title={Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model},
  author={Zhu, Lianghui and Liao, Bencheng and Zhang, Qian and Wang, Xinlong and Liu, Wenyu and Wang, Xinggang},
  booktitle={Forty-first International Conference on Machine Learning},
  year={2024}
}
```

Network (``Vim``): Conv2d patch embed (kernel 16, stride 16, or stride 8 for the ``stride8`` fine-tunes: 27x27 tokens
at 224) -> tokens in row-major order with the class token inserted at index M // 2 -> + ``pos_embed`` (added after the
insertion, so ``pos_embed[:, M // 2]`` is the class token's) -> ``depth`` x ``MambaBlock`` (RMSNorm -> bidirectional
Mamba mixer -> residual, the residual stream in float32) -> RMSNorm -> class token -> head.

What is reproduced from the official code (``vssm.convert.load_official('vim', ...)`` gives its outputs):
- bimamba "v2": separate backward-direction conv / x_proj / dt_proj / A / D, merged as (fwd + bwd) / 2
  (``merge='mean'``; ``merge='sum'`` is the official ``if_divide_out=False``), in/out projections shared.
- the drop-path schedule: the official Add -> Norm -> Mixer layers (rates ``[0] + linspace(0, r, depth)``, full rate
  before the final norm) are, re-associated as pre-norm blocks, exactly the per-block ``linspace(0, r, depth)``.
- the official ``final_pool_type`` is ignored whenever a class token exists; without one, 'mean' pools every token.
- constructor options for the other official flags: ``class_token='head'`` (``use_middle_cls_token=False``),
  ``'double'`` (head + tail tokens, feature = their mean), ``'none'`` with ``global_pool='avg'``;
  ``bidirectional=False`` (bimamba 'none'); ``norm_layer='layernorm'``; ``abs_pos_embed=False``; ``rope=True`` (EVA-02
  2-D rotary embedding of the patch tokens, applied to the residual stream before every block, i.e. the official
  ``if_rope`` + ``if_rope_residual``; the tables are computed, the official ``rope.freqs_*`` buffers are not loaded).
- position embeddings of official checkpoints at another size are resized the official way (``checkpoint_filter_fn``
  / ``vssm.layers.pos_embed.resize_pos_embed_official``): the fine-tune script's DeiT resize keeps index 0 as the
  class token, which with a middle class token is a patch, and resamples the real class slot as a patch. It is
  wrong, but it is how the stride-8 "+" checkpoints were initialised, so converted official weights behave as in the
  official code.
  ``dynamic_img_size=True`` resamples the patch grid only and keeps the class slot (the correct resize).

Modifications: timm layout and API (``blocks``, ``norm``, ``head``; per-direction mixer parameters stacked, see
``vssm.layers.mamba_mixer``); the scan runs on ``vssm.ops.multi_scan``; no generation cache; the official preprocessing
(bicubic, crop 0.875, ImageNet mean/std) replaces the ViT default cfg the official factories attach. Official flags
that change outputs and are not reproduced (``if_bidirectional``, ``flip_img_sequences_ratio``, bimamba 'v1',
``init_layer_scale``, RoPE without ``if_rope_residual`` or with a middle/double class token, pools other than the
class token or 'mean') make the converter raise.
"""
import math
import re
from functools import partial
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    calculate_drop_path_rates, get_norm_layer, lecun_normal_, to_2tuple, trunc_normal_,
)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from torch import Tensor, nn
from torch.jit import Final

from ..convert import register_checkpoint_filter, register_official, unwrap_checkpoint
from ..layers.checks import check_batched_input, check_fixed_size
from ..layers.mamba_mixer import MambaBlock, stack_official_directions
from ..layers.norm import RmsNorm
from ..layers.pos_embed import (
    CLASS_TOKENS, Rope2d, join_class_tokens, resample_pos_embed, resize_pos_embed_official, split_class_tokens,
)

__all__ = ["Vim", "StridedPatchEmbed", "checkpoint_filter_fn", "convert_official"]
POOLS = ("token", "avg", "")
WEIGHT_INITS = ("vim", "videomamba")


class StridedPatchEmbed(nn.Module):
    """Conv2d patch embedding whose stride may be smaller than the patch: (B, C, H, W) -> (B, D, h, w) with
    h = (H - patch) // stride + 1 (overlapping patches for Vim's stride-8 variants)."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            stride: Optional[int] = None,
            in_chans: int = 3,
            embed_dim: int = 192,
            strict_img_size: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        self.img_size = list(to_2tuple(img_size))
        self.patch_size = patch_size
        self.stride = patch_size if stride is None else stride
        self.strict_img_size = strict_img_size
        self.grid_size = self.feat_size(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, self.stride, device=device, dtype=dtype)

    def feat_size(self, img_size: List[int]) -> List[int]:
        """Token grid (h, w) of an (H, W) image."""
        return [(s - self.patch_size) // self.stride + 1 for s in img_size]

    def forward(self, x: Tensor) -> Tensor:
        if self.strict_img_size:
            check_fixed_size(x, self.img_size)
        return self.proj(x)


class Vim(nn.Module):
    """Vision Mamba: isotropic stack of Mamba blocks over patch tokens with class token(s) (timm model API).

    Also the image trunk of VideoMamba (``class_token='head'``, ``merge='sum'``, ``weight_init='videomamba'``).
    """
    dynamic_img_size: Final[bool]

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            stride: Optional[int] = None,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: Optional[str] = None,
            embed_dim: int = 192,
            depth: int = 24,
            d_state: int = 16,
            d_conv: int = 4,
            expand: float = 2,
            dt_rank: Optional[int] = None,
            class_token: str = "middle",
            abs_pos_embed: bool = True,
            rope: bool = False,
            rope_ref_size: int = 14,
            bidirectional: bool = True,
            merge: str = "mean",
            norm_layer: Union[str, Callable] = "rmsnorm",
            norm_eps: float = 1e-5,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            dynamic_img_size: bool = False,
            weight_init: str = "vim",
            embed_layer: Callable = StridedPatchEmbed,
            device=None,
            dtype=None,
    ):
        """
        Args:
            img_size: Input size (H, W); fixed unless ``dynamic_img_size``.
            patch_size: Patch (conv kernel) size.
            stride: Patch stride; ``patch_size`` when None (8 for the overlapping ``stride8`` variants).
            in_chans: Input channels.
            num_classes: Classes of the head; 0 for none.
            global_pool: 'token' (class token(s); the default with one), 'avg' (mean of the patch tokens; the
                default without) or '' (no pooling).
            embed_dim: Token width D.
            depth: Number of Mamba blocks.
            d_state, d_conv, expand, dt_rank: Mixer sizes (N, conv kernel, E / D, rank of delta; ceil(D/16) if None).
            class_token: 'middle' (index M // 2), 'head' (index 0), 'double' (index 0 and L - 1) or 'none'.
            abs_pos_embed: Learned absolute position embedding (1, prefix + M, D) in token order.
            rope: 2-D rotary embedding of the patch tokens before every block.
            rope_ref_size: Grid side the rotary positions are scaled to.
            bidirectional: Scan both directions (bimamba v2) or forward only.
            merge: 'mean' ((fwd + bwd) / 2, Vim) or 'sum' (VideoMamba) of the two directions.
            norm_layer: 'rmsnorm', 'layernorm' or a norm constructor.
            norm_eps: Norm epsilon.
            drop_rate: Dropout before the head.
            pos_drop_rate: Dropout after the position embedding (official ``drop_rate``).
            drop_path_rate: Stochastic depth, linear 0..drop_path_rate over the blocks, as the official code (see the
                module docstring).
            dynamic_img_size: Accept other input sizes, resampling the position embedding to the token grid.
            weight_init: 'vim' (official Vim init) or 'videomamba' (official VideoMamba init: every linear map
                trunc-normal(0.02) with zero bias, dt_proj included, zero class token).
            embed_layer: Patch embedding constructor (``StridedPatchEmbed`` or VideoMamba's tubelet embedding).
        """
        super().__init__()
        if class_token not in CLASS_TOKENS:
            raise ValueError(f"Vim: class_token must be one of {CLASS_TOKENS}, got {class_token!r}")
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"Vim: weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
        dd = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.class_token = class_token
        self.num_prefix_tokens = {"middle": 1, "head": 1, "double": 2, "none": 0}[class_token]
        self.global_pool = self._check_pool(global_pool)
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False
        self.weight_init = weight_init
        self.in_chans = in_chans
        self.input_spatial_dims = 2  # (B, C, H, W) images; VideoMamba: 3

        self.patch_embed = embed_layer(
            img_size=img_size, patch_size=patch_size, stride=stride, in_chans=in_chans, embed_dim=embed_dim,
            strict_img_size=not dynamic_img_size, **dd,
        )
        spatial_grid = self.patch_embed.grid_size[-2:]
        self.cls_token = (nn.Parameter(torch.zeros(1, self.num_prefix_tokens, embed_dim, **dd))
                          if self.num_prefix_tokens else None)
        num_pos = self.num_prefix_tokens + spatial_grid[0] * spatial_grid[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_pos, embed_dim, **dd)) if abs_pos_embed else None
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.rope = Rope2d(embed_dim, spatial_grid, rope_ref_size, device=device) if rope else None

        if norm_layer == "rmsnorm":  # vssm's one-kernel RMSNorm; a block's norm feeds in_proj in the autocast dtype
            block_norm = partial(RmsNorm, eps=norm_eps, autocast_output=True)
            norm_layer = partial(RmsNorm, eps=norm_eps)
        else:
            block_norm = norm_layer = partial(get_norm_layer(norm_layer), eps=norm_eps)
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList([
            MambaBlock(
                embed_dim, block_norm, drop_path=dpr[i], d_state=d_state, d_conv=d_conv, expand=expand,
                dt_rank=dt_rank, bidirectional=bidirectional, merge=merge, **dd,
            )
            for i in range(depth)
        ])
        reduction = self.patch_embed.stride
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=reduction) for i in range(depth)]
        self.norm = norm_layer(embed_dim, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def _check_pool(self, global_pool: Optional[str]) -> str:
        if global_pool is None:
            return "token" if self.num_prefix_tokens else "avg"
        if global_pool not in POOLS:
            raise ValueError(f"Vim: global_pool must be one of {POOLS}, got {global_pool!r}")
        if global_pool == "token" and not self.num_prefix_tokens:
            raise ValueError("Vim: global_pool='token' needs a class token (class_token != 'none')")
        return global_pool

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official initialisation of ``self.weight_init``; out_proj gets GPT-2's kaiming / sqrt(depth) in both."""
        if self.weight_init == "vim":
            lecun_normal_(self.patch_embed.proj.weight)
            nn.init.zeros_(self.patch_embed.proj.bias)
            if self.cls_token is not None:
                trunc_normal_(self.cls_token, std=.02)
        else:  # VideoMamba applies the segmentation init to every nn.Linear of the model, the mixers' included
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    trunc_normal_(module.weight, std=.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
            for block in self.blocks:
                trunc_normal_(block.mixer.x_proj_weight, std=.02)
                trunc_normal_(block.mixer.dt_proj_weight, std=.02)
                nn.init.zeros_(block.mixer.dt_proj_bias)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=.02)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=.02)
            nn.init.zeros_(self.head.bias)
        for block in self.blocks:
            nn.init.kaiming_uniform_(block.mixer.out_proj.weight, a=math.sqrt(5))
            block.mixer.out_proj.weight /= math.sqrt(len(self.blocks))

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Embeddings and the SSM parameters; the stacked per-direction vectors (official 1-D biases and D) too."""
        return {"pos_embed", "cls_token", "*.A_log", "*.D", "*.conv_bias", "*.dt_proj_bias"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r"^cls_token|^pos_embed|^temporal_pos_embedding|^patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = self._check_pool(global_pool)
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _resampled_pos_embed(self, grid: List[int]) -> Tensor:
        """Position embedding for a token grid: resample the patch part (bicubic), keep the class slot(s)."""
        pos_embed = self.pos_embed
        if pos_embed is None:
            raise RuntimeError("Vim: the model has no position embedding (abs_pos_embed=False)")
        default_grid = self.patch_embed.grid_size[-2:]
        if grid == default_grid:
            return pos_embed
        return resample_pos_embed(pos_embed, grid, default_grid, self.class_token)

    def _pos_embed(self, x: Tensor, grid: List[int]) -> Tensor:
        """Patch tokens (B, M, D) -> token sequence with class token(s) and position embedding (B, P + M, D)."""
        if self.cls_token is not None:
            x = join_class_tokens(self.cls_token.expand(x.shape[0], -1, -1), x, self.class_token)
        if self.pos_embed is not None:
            x = x + self._resampled_pos_embed(grid)
        return self.pos_drop(x)

    def _embed(self, x: Tensor) -> Tuple[Tensor, List[int]]:
        """Input -> (float32 residual stream (B, L, D), token grid)."""
        check_batched_input(x, self.input_spatial_dims, self.in_chans)
        x = self.patch_embed(x)  # (B, D, *grid)
        grid = list(x.shape[2:]) if self.dynamic_img_size else self.patch_embed.grid_size
        x = x.flatten(2).transpose(1, 2)  # (B, M, D), row-major (frame-major for video)
        return self._pos_embed(x, grid).float(), grid

    def _apply_rope(self, x: Tensor, grid: List[int]) -> Tensor:
        """RoPE on the patch tokens of the stream (class tokens untouched), when the model has it."""
        rope = self.rope
        if rope is None:
            return x
        prefix, patches = split_class_tokens(x, self.class_token)
        return join_class_tokens(prefix, rope(patches, grid), self.class_token)

    def _final_norm(self, x: Tensor) -> Tensor:
        """Final norm in the parameters' dtype (float32 under autocast)."""
        return self.norm(x.to(self.patch_embed.proj.weight.dtype))

    def forward_intermediates(
            self,
            x: Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Forward that also returns the residual stream after the blocks in ``indices``.

        Args:
            x: Input (B, C, H, W) (VideoMamba: (B, C, T, H, W)).
            indices: Last n blocks if int, all if None, these blocks if a sequence.
            return_prefix_tokens: Also return the class token(s) of each intermediate (not under TorchScript).
            norm: Apply the final norm to the intermediates.
            stop_early: Stop after the last requested block.
            output_fmt: 'NCHW' (maps (B, D, *grid): (B, D, h, w), or (B, D, t, h, w) for video) or 'NLC' (patch
                tokens (B, M, D)).
            intermediates_only: Return only the intermediates.

        Returns:
            The intermediates, or (final features as ``forward_features``, intermediates).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"Vim: output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        batch = x.shape[0]
        x, grid = self._embed(x)
        if torch.jit.is_scripting() or not stop_early:  # blocks cannot be sliced in TorchScript
            blocks = self.blocks
        else:
            blocks = self.blocks[:max_index + 1]
        intermediates = []
        for i, block in enumerate(blocks):
            x = self._apply_rope(x, grid)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x)
            else:
                x = block(x)
            if i in take_indices:
                intermediates.append(self._final_norm(x) if norm else x)
        prefix_tokens: List[Tensor] = []
        patch_tokens: List[Tensor] = []
        for y in intermediates:
            prefix, patches = split_class_tokens(y, self.class_token)
            prefix_tokens.append(prefix)
            if output_fmt == "NCHW":
                patches = patches.transpose(1, 2).reshape([batch, self.embed_dim] + grid)
            patch_tokens.append(patches)
        intermediates = patch_tokens
        if not torch.jit.is_scripting() and return_prefix_tokens and self.num_prefix_tokens:
            intermediates = list(zip(intermediates, prefix_tokens))
        if intermediates_only:
            return intermediates
        return self._final_norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last of ``indices`` (and the final norm / head); return the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        """Input -> normalised token sequence (B, L, D)."""
        x, grid = self._embed(x)
        for block in self.blocks:
            x = self._apply_rope(x, grid)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x)
            else:
                x = block(x)
        return self._final_norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Token sequence (B, L, D) -> logits (B, classes), or the pooled feature (B, D) if ``pre_logits``."""
        if self.global_pool == "token":
            if self.class_token == "head":
                x = x[:, 0]
            elif self.class_token == "middle":
                x = x[:, (x.shape[1] - 1) // 2]
            else:  # double: mean of the head and tail tokens
                x = (x[:, 0] + x[:, -1]) / 2
        elif self.global_pool == "avg":
            x = split_class_tokens(x, self.class_token)[1].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def convert_official(state_dict: Dict[str, Tensor], model: Vim) -> Dict[str, Tensor]:
    """Official Vim state dict (``layers.i.mixer.conv1d_b.weight``, ``norm_f``, ...) -> ``Vim`` keys.

    Stacks the two directions of each mixer, merges the double class tokens, drops the computed RoPE tables and
    resizes ``pos_embed`` the official way when the model's token count differs.
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith("rope."):  # cos/sin tables, computed by Rope2d
            continue
        key = re.sub(r"^layers\.", "blocks.", key)
        key = re.sub(r"^norm_f\.", "norm.", key)
        out[key] = value
    if "cls_token_head" in out:
        out["cls_token"] = torch.cat([out.pop("cls_token_head"), out.pop("cls_token_tail")], dim=1)
    out = stack_official_directions(out, model.blocks[0].mixer.num_directions)
    if model.pos_embed is not None and "pos_embed" in out and out["pos_embed"].shape != model.pos_embed.shape:
        out["pos_embed"] = resize_pos_embed_official(
            out["pos_embed"], model.patch_embed.grid_size[-2:], model.num_prefix_tokens)
    return out


@register_checkpoint_filter
def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: Vim) -> Dict[str, Tensor]:
    """Official checkpoint as distributed (``{'model': ...}``, ``module.`` prefixes) or a vssm one -> ``Vim`` keys."""
    state_dict = unwrap_checkpoint(state_dict)
    if any(key.endswith("mixer.conv_weight") for key in state_dict):
        return state_dict
    return convert_official(state_dict, model)


def _kwargs_from_official(kwargs: dict) -> dict:
    """Official ``VisionMamba(**kwargs)`` -> ``Vim`` kwargs; raises for official options not reproduced."""
    kw = dict(kwargs)
    ssm_cfg = dict(kw.pop("ssm_cfg", None) or {})
    unsupported_ssm = sorted(set(ssm_cfg) - {"d_conv", "expand", "dt_rank"})
    if unsupported_ssm:
        raise NotImplementedError(f"vim: ssm_cfg options {unsupported_ssm} are not supported")
    dt_rank = ssm_cfg.get("dt_rank", "auto")
    bimamba_type = "v1" if kw.pop("if_bimamba", False) else kw.pop("bimamba_type", "v2")
    if bimamba_type not in ("v2", "none"):
        raise NotImplementedError(f"vim: bimamba_type {bimamba_type!r} (only 'v2' and 'none' are reproduced)")
    for flag, ok in (("if_bidirectional", not kw.pop("if_bidirectional", False)),
                     ("flip_img_sequences_ratio", kw.pop("flip_img_sequences_ratio", -1.) <= 0),
                     ("init_layer_scale", kw.pop("init_layer_scale", None) is None)):
        if not ok:
            raise NotImplementedError(f"vim: official option {flag} is not reproduced")
    if not kw.pop("if_cls_token", True):
        class_token = "none"
    elif kw.pop("use_double_cls_token", False):
        class_token = "double"
    else:
        class_token = "middle" if kw.pop("use_middle_cls_token", True) else "head"
    for key in ("use_double_cls_token", "use_middle_cls_token"):
        kw.pop(key, None)
    final_pool_type = kw.pop("final_pool_type", "none")
    if class_token == "none" and final_pool_type != "mean":
        raise NotImplementedError(f"vim: final_pool_type {final_pool_type!r} without a class token (only 'mean')")
    rope = kw.pop("if_rope", False)
    rope_residual = kw.pop("if_rope_residual", False)
    if rope and (not rope_residual or class_token in ("middle", "double")):
        raise NotImplementedError("vim: RoPE is reproduced with if_rope_residual=True and a head or no class token")
    for ignored in ("residual_in_fp32", "fused_add_norm", "initializer_cfg", "ft_seq_len"):
        kw.pop(ignored, None)  # same function in float32: the stream is float32, the fused add+norm is the same math
    out = dict(
        img_size=kw.pop("img_size", 224), patch_size=kw.pop("patch_size", 16), stride=kw.pop("stride", 16),
        in_chans=kw.pop("channels", 3), num_classes=kw.pop("num_classes", 1000), embed_dim=kw.pop("embed_dim", 192),
        depth=kw.pop("depth", 24), d_state=kw.pop("d_state", 16), d_conv=ssm_cfg.get("d_conv", 4),
        expand=ssm_cfg.get("expand", 2), dt_rank=None if dt_rank == "auto" else dt_rank, class_token=class_token,
        global_pool="token" if class_token != "none" else "avg", abs_pos_embed=kw.pop("if_abs_pos_embed", True),
        rope=rope, rope_ref_size=kw.pop("pt_hw_seq_len", 14), bidirectional=bimamba_type == "v2",
        merge="mean" if kw.pop("if_divide_out", True) else "sum",
        norm_layer="rmsnorm" if kw.pop("rms_norm", True) else "layernorm", norm_eps=kw.pop("norm_epsilon", 1e-5),
        pos_drop_rate=kw.pop("drop_rate", 0.), drop_path_rate=kw.pop("drop_path_rate", 0.1),
        device=kw.pop("device", None), dtype=kw.pop("dtype", None),
    )
    if kw:
        raise TypeError(f"vim: unknown official VisionMamba arguments {sorted(kw)}")
    return out


@register_official("vim")
def _official_builder(kwargs: dict, entry: Optional[str]):
    if entry is not None and not entry.endswith("VisionMamba"):
        raise ValueError(f"vim: official entry must be VisionMamba (vim/models_mamba.py), got {entry!r}")
    model = Vim(**_kwargs_from_official(kwargs))
    return model, partial(convert_official, model=model)


# Variants: official factories vim_{tiny,small,base}_patch16[_stride8]_224_bimambav2_final_pool_mean_abs_pos_embed_
# with_midclstok_div2 (middle class token, bimamba v2, (fwd + bwd) / 2, RMSNorm, float32 residual).
MODEL_VARIANTS: Dict[str, dict] = {
    "vim_tiny_patch16_224": dict(embed_dim=192, depth=24),
    "vim_tiny_patch16_stride8_224": dict(embed_dim=192, depth=24, stride=8),
    "vim_small_patch16_224": dict(embed_dim=384, depth=24),
    "vim_small_patch16_stride8_224": dict(embed_dim=384, depth=24, stride=8),
    "vim_base_patch16_224": dict(embed_dim=768, depth=24),
    "test_vim": dict(embed_dim=32, depth=3, d_state=8),
}


def _create_vim(variant: str, pretrained: bool = False, **kwargs) -> Vim:
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        Vim, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **dict(MODEL_VARIANTS[variant], **kwargs),
    )


def _cfg(**kwargs) -> Dict:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "fixed_input_size": True,
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head", "license": "apache-2.0",
        "paper_ids": "arXiv:2401.09417", "origin_url": "https://github.com/hustvl/Vim",
        "paper_name": "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    # official ImageNet-1k weights (hustvl); the stride-8 ones are the 30-epoch "+" fine-tunes of the 224 models
    "vim_tiny_patch16_224.in1k": _cfg(
        hf_hub_id="hustvl/Vim-tiny-midclstok", hf_hub_filename="vim_t_midclstok_76p1acc.pth"),
    "vim_tiny_patch16_stride8_224.in1k": _cfg(
        hf_hub_id="hustvl/Vim-tiny-midclstok", hf_hub_filename="vim_t_midclstok_ft_78p3acc.pth"),
    "vim_small_patch16_224.in1k": _cfg(
        hf_hub_id="hustvl/Vim-small-midclstok", hf_hub_filename="vim_s_midclstok_80p5acc.pth"),
    "vim_small_patch16_stride8_224.in1k": _cfg(
        hf_hub_id="hustvl/Vim-small-midclstok", hf_hub_filename="vim_s_midclstok_ft_81p6acc.pth"),
    "vim_base_patch16_224.in1k": _cfg(
        hf_hub_id="hustvl/Vim-base-midclstok", hf_hub_filename="vim_b_midclstok_81p9acc.pth"),
    # tiny untrained variant for tests
    "test_vim": _cfg(input_size=(3, 64, 64), license=None),
})


@register_model
def vim_tiny_patch16_224(pretrained: bool = False, **kwargs) -> Vim:
    return _create_vim("vim_tiny_patch16_224", pretrained, **kwargs)


@register_model
def vim_tiny_patch16_stride8_224(pretrained: bool = False, **kwargs) -> Vim:
    return _create_vim("vim_tiny_patch16_stride8_224", pretrained, **kwargs)


@register_model
def vim_small_patch16_224(pretrained: bool = False, **kwargs) -> Vim:
    return _create_vim("vim_small_patch16_224", pretrained, **kwargs)


@register_model
def vim_small_patch16_stride8_224(pretrained: bool = False, **kwargs) -> Vim:
    return _create_vim("vim_small_patch16_stride8_224", pretrained, **kwargs)


@register_model
def vim_base_patch16_224(pretrained: bool = False, **kwargs) -> Vim:
    return _create_vim("vim_base_patch16_224", pretrained, **kwargs)


@register_model
def test_vim(pretrained: bool = False, **kwargs) -> Vim:
    return _create_vim("test_vim", pretrained, **kwargs)
