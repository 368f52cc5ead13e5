"""PlainMamba: Improving Non-hierarchical Mamba in Visual Recognition.

Paper: Chenhongyi Yang, Zehui Chen, Miguel Espinosa, Linus Ericsson, Zhenyu Wang, Jiaming Liu, Elliot J. Crowley,
BMVC 2024, arXiv 2403.17695 (https://arxiv.org/abs/2403.17695).
Official code and weights: https://github.com/ChenhongyiYang/PlainMamba (mmcls fork; commit 0975a1d), ImageNet-1k
checkpoints on https://huggingface.co/ChenhongyiYang/PlainMamba (l1.pth, l2.pth, l3.pth); the repository carries no
licence file.

```
@inproceedings{yang2024plainmamba,
  title={PlainMamba: Improving Non-hierarchical Mamba in Visual Recognition},
  author={Yang, Chenhongyi and Chen, Zehui and Espinosa, Miguel and Ericsson, Linus and Wang, Zhenyu and Liu, Jiaming
          and Crowley, Elliot J.},
  booktitle={British Machine Vision Conference (BMVC)},
  year={2024}
}
```

Network: conv stem (7x7/2 conv, BN-ReLU, ``stem_convs`` x [3x3 conv, BN-ReLU], zero padding at the bottom/right to a
multiple of patch/2, patch/2 x patch/2 projection) -> + learned position embedding (resized bicubically for other
grids) -> ``depth`` blocks of x + DropPath(ZigzagMamba2D(LN(x))) at constant width (block 0 of L1 adds a
depthwise 3x3 conv -> BN -> GELU that replaces the stream) -> LayerNorm -> token mean -> Linear. No class token.
The token mixer (``vssm.layers.zigzag_mixer``) runs four zig-zag scans with direction tokens added to B; the two
quirks of the official mixer (only the input is reordered per direction, the dt bias is added twice) are the
default, ``reorder_params=True`` / ``dt_bias_twice=False`` give the corrected mixer.

Modifications: vssm layout (``patch_embed``, ``pos_embed``, ``blocks.i.{norm,token_mixer,dwconv}``, ``norm``,
``head``; ``checkpoint_filter_fn`` converts the mmcls checkpoints); the scan runs on ``vssm.ops.multi_scan``.
"""
import math
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, calculate_drop_path_rates, resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint, checkpoint_seq
from torch import Tensor

from ..convert import register_checkpoint_filter, register_official, unwrap_checkpoint
from ..layers.checks import check_batched_input
from ..layers.norm import LayerNorm
from ..layers.ssm_init import init_dt_projection_
from ..layers.zigzag_mixer import ZigzagMamba2D

__all__ = ["PlainMamba"]


class ConvPatchEmbed(nn.Module):
    """Conv stem of stride ``patch_size``: (B, 3, H, W) -> (B, ceil(ceil(H/2) / (p/2)), ..., C) channels-last.

    7x7/2 conv -> BN-ReLU -> ``num_convs`` x (3x3 conv -> BN-ReLU) -> zero pad bottom/right to a multiple of p/2 ->
    (p/2 x p/2, stride p/2) projection with bias.
    """

    def __init__(
            self,
            in_chans: int,
            dim: int,
            patch_size: int = 16,
            num_convs: int = 1,
            width: int = 64,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if patch_size % 2:
            raise ValueError(f"PlainMamba patch_size must be even, got {patch_size}")
        dd = {"device": device, "dtype": dtype}
        self.proj_size = patch_size // 2
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False, **dd), nn.BatchNorm2d(width, **dd),
            nn.ReLU(True))
        self.convs = nn.Sequential(*[layer for _ in range(num_convs) for layer in (
            nn.Conv2d(width, width, 3, padding=1, bias=False, **dd), nn.BatchNorm2d(width, **dd), nn.ReLU(True))])
        self.projection = nn.Conv2d(width, dim, self.proj_size, stride=self.proj_size, **dd)

    def grid_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """Token grid of an image size, as the official code sizes its position embedding."""
        return (-(-(img_size[0] // 2) // self.proj_size), -(-(img_size[1] // 2) // self.proj_size))

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(self.stem(x))
        pad_h, pad_w = (-x.shape[2]) % self.proj_size, (-x.shape[3]) % self.proj_size
        x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.projection(x).permute(0, 2, 3, 1)


class PlainMambaBlock(nn.Module):
    """x + DropPath(ZigzagMamba2D(LN(x))) on (B, H, W, C), then optionally dwconv 3x3 -> BN -> GELU (no residual)."""

    def __init__(
            self,
            dim: int,
            d_state: int,
            expand: int,
            conv_size: int,
            with_dwconv: bool,
            drop_path: float,
            reorder_params: bool,
            dt_bias_twice: bool,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm = LayerNorm(dim, autocast_output=True, **dd)  # feeds the mixer's in_proj
        self.token_mixer = ZigzagMamba2D(dim, d_state=d_state, expand=expand, conv_size=conv_size,
                                         reorder_params=reorder_params, dt_bias_twice=dt_bias_twice, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.dwconv = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False, **dd), nn.BatchNorm2d(dim, **dd), nn.GELU(),
        ) if with_dwconv else None

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.token_mixer(self.norm(x)))
        if self.dwconv is not None:
            x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x


class PlainMamba(nn.Module):
    """PlainMamba image classifier (see the module docstring)."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dim: int = 192,
            depth: int = 24,
            stem_convs: int = 1,
            stem_width: int = 64,
            dwconv_layers: Sequence[int] = (),
            d_state: int = 16,
            expand: int = 2,
            conv_size: int = 7,
            reorder_params: bool = False,
            dt_bias_twice: bool = True,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            mamba_dt_init: bool = False,
            dynamic_img_size: bool = True,
            device=None,
            dtype=None,
    ):
        """
        Args:
            img_size: Image size the position embedding is laid out for; other sizes resize it on the fly (bicubic).
            dynamic_img_size: Accepted as timm's models accept it; PlainMamba always takes any input size.
            patch_size: Overall stride (even).
            in_chans: Input channels.
            num_classes: Classes (0: no classifier).
            global_pool: 'avg' (token mean, official) or '' (tokens).
            embed_dim: Channels C.
            depth: Blocks.
            stem_convs: 3x3 convs in the stem.
            stem_width: Stem channels.
            dwconv_layers: Blocks followed by the depthwise-conv layer.
            d_state: State size N of the zig-zag mixer.
            expand: Inner channels E = expand * C.
            conv_size: Depthwise conv kernel of the mixer.
            reorder_params: Read dt, B, C along each scan route (corrected); False = official.
            dt_bias_twice: Add the dt bias twice (official); False adds it once.
            drop_rate: Dropout before the head.
            pos_drop_rate: Dropout after the position embedding.
            drop_path_rate: Stochastic depth, linear 0..drop_path_rate over the blocks, Mamba branch only, as the
                official code (default 0; official training 0.2 / 0.2 / 0.4 for L1 / L2 / L3).
            mamba_dt_init: Keep Mamba's step-size initialisation; the official init (False) re-initialises every
                Linear, dt_proj included, to trunc-normal(0.02) with zero bias.
        """
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.global_pool = self._check_pool(global_pool)
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.grad_checkpointing = False

        self.in_chans = in_chans
        self.patch_embed = ConvPatchEmbed(in_chans, embed_dim, patch_size, stem_convs, stem_width, **dd)
        self.grid_size = self.patch_embed.grid_size(to_2tuple(img_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        rates = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            PlainMambaBlock(embed_dim, d_state, expand, conv_size, i in dwconv_layers, rates[i], reorder_params,
                            dt_bias_twice, **dd)
            for i in range(depth)])
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size) for i in range(depth)]
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

        self.apply(self._init_weights)
        trunc_normal_(self.pos_embed, std=0.02)
        if isinstance(self.head, nn.Linear):
            nn.init.normal_(self.head.weight, std=0.01)
        if mamba_dt_init:
            for block in self.blocks:
                init_dt_projection_(block.token_mixer.dt_proj.weight, block.token_mixer.dt_proj.bias)

    @staticmethod
    def _check_pool(global_pool: str) -> str:
        if global_pool not in ("avg", ""):
            raise ValueError(f"PlainMamba global_pool must be 'avg' or '', got {global_pool!r}")
        return global_pool

    @staticmethod
    def _init_weights(module: nn.Module):
        """Official (mmcls) init: every Linear trunc-normal(0.02) with zero bias, LayerNorm 1 / 0."""
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"pos_embed", "*.A_log", "*.D", "*.direction_tokens"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(stem=r"^pos_embed|^patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = self._check_pool(global_pool)
        dd = {"device": self.pos_embed.device, "dtype": self.pos_embed.dtype}
        self.head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def _embed(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> position-embedded tokens (B, Hp, Wp, C)."""
        check_batched_input(x, 2, self.in_chans)
        x = self.patch_embed(x)
        batch, height, width, dim = x.shape
        pos_embed = resample_abs_pos_embed(self.pos_embed, new_size=[height, width], old_size=list(self.grid_size),
                                           num_prefix_tokens=0, antialias=False)
        return self.pos_drop(x + pos_embed.reshape(1, height, width, dim))

    def forward_intermediates(self, x: Tensor, indices: Optional[Union[int, List[int]]] = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Block outputs.

        Args:
            x: (B, C, H, W) images.
            indices: last n blocks if int, all if None, else the block indices to take.
            norm: apply the final norm to the intermediates.
            stop_early: stop after the last block taken.
            output_fmt: 'NCHW' or 'NLC'.
            intermediates_only: return only the intermediates.

        Returns:
            (final tokens (B, L, C) as forward_features, intermediates) or the intermediates.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x = self._embed(x)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:max_index + 1]
        for i, block in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x)
            else:
                x = block(x)
            if i in take_indices:
                feature = self.norm(x) if norm else x
                intermediates.append(feature.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW"
                                     else feature.flatten(1, 2))
        if intermediates_only:
            return intermediates
        return self.norm(x).flatten(1, 2), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the blocks after the last one ``indices`` needs (and the norm / head when asked)."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> final-normed tokens (B, L, C), raster order."""
        x = self._embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x).flatten(1, 2)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Tokens (B, L, C) -> logits (B, num_classes), or the pooled features with ``pre_logits``."""
        if self.global_pool == "avg":
            x = x.mean(1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------------------------------
# Official checkpoints

_OFFICIAL_RULES = (
    (r"^backbone\.", ""),
    (r"^layers\.(\d+)\.mamba\.direction_Bs$", r"blocks.\1.token_mixer.direction_tokens"),
    (r"^layers\.(\d+)\.mamba\.", r"blocks.\1.token_mixer."),
    (r"^layers\.(\d+)\.dw\.", r"blocks.\1.dwconv."),
    (r"^layers\.", "blocks."),
    (r"^ln1\.", "norm."),
    (r"^head\.fc\.", "head."),
)


def convert_official(state_dict: Dict[str, Tensor], grid_size: Optional[Tuple[int, int]] = None
                     ) -> Dict[str, Tensor]:
    """Official (mmcls) keys -> vssm keys; drops EMA-hook buffers (``ema_*``); resizes a square-grid position
    embedding (the released checkpoints: 14 x 14) to ``grid_size`` (bicubic, as the official forward does)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("ema_"):
            continue
        for pattern, repl in _OFFICIAL_RULES:
            key = re.sub(pattern, repl, key)
        if key == "pos_embed" and grid_size is not None and value.shape[1] != grid_size[0] * grid_size[1]:
            side = int(math.isqrt(value.shape[1]))
            value = resample_abs_pos_embed(value, new_size=list(grid_size), old_size=[side, side],
                                           num_prefix_tokens=0, antialias=False)
        out[key] = value
    return out


@register_checkpoint_filter
def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: PlainMamba) -> Dict[str, Tensor]:
    """Official checkpoint ({'meta', 'state_dict'} from mmcv, or a flat state dict) -> vssm keys."""
    state_dict = unwrap_checkpoint(state_dict)
    return convert_official(state_dict, model.grid_size)


_OFFICIAL_LAYER_CFGS = dict(use_rms_norm=False, mamba_cfg=dict(
    d_state=16, expand=2, conv_size=7, dt_init="random", conv_bias=True, bias=True, default_hw_shape=(14, 14)))
_OFFICIAL_ARCHS = {  # mmcls PlainMamba.arch_zoo
    "L1": dict(embed_dims=192, num_layers=24, num_convs_patch_embed=1, layers_with_dwconv=[0]),
    "L2": dict(embed_dims=384, num_layers=24, num_convs_patch_embed=2, layers_with_dwconv=[]),
    "L3": dict(embed_dims=448, num_layers=36, num_convs_patch_embed=2, layers_with_dwconv=[]),
}
# official options that only matter for initialisation, training or the orders cache: no effect on the function
_NO_EFFECT = dict(
    classifier=("type", "neck", "init_cfg", "train_cfg", "pretrained"),
    backbone=("type", "init_cfg", "test_cfg", "convert_syncbn", "freeze_patch_embed"),
    mamba_cfg=("dt_init", "dt_min", "dt_max", "dt_scale", "dt_init_floor", "default_hw_shape"),
    head=("type", "in_channels", "loss", "topk", "cal_acc", "init_cfg"),
)


@register_official("plainmamba")
def _official_builder(kwargs: dict, entry: Optional[str]):
    """mmcls ``ImageClassifier`` config (backbone PlainMamba, CustomAveragePooling neck, LinearClsHead), or a bare
    ``PlainMamba`` backbone config (then no classifier). Raises ValueError for options vssm does not implement."""
    classifier = dict(kwargs) if "backbone" in kwargs else dict(backbone=kwargs)
    backbone = dict(classifier.pop("backbone"))
    head = dict(classifier.pop("head", {}))
    num_classes = head.pop("num_classes", 0)
    arch = backbone.pop("arch", None)
    if arch is not None:  # the arch_zoo entry replaces these options, as in the official constructor
        backbone.update(_OFFICIAL_ARCHS[arch.upper()], patch_size=16, layer_cfgs=_OFFICIAL_LAYER_CFGS)
    layer_cfgs = dict(backbone.pop("layer_cfgs", {}))
    mamba_cfg = dict(layer_cfgs.pop("mamba_cfg", {}))
    required = (  # (config, option, official default, the only value supported here: what every config uses)
        (layer_cfgs, "use_rms_norm", False, False), (mamba_cfg, "bias", False, True),
        (mamba_cfg, "conv_bias", True, True), (mamba_cfg, "dt_rank", "auto", "auto"),
        (mamba_cfg, "init_layer_scale", None, None), (backbone, "with_pos_embed", True, True),
        (backbone, "final_norm", True, True), (backbone, "interpolate_mode", "bicubic", "bicubic"),
        (backbone, "out_indices", -1, -1), (backbone, "norm_cfg", dict(type="LN", eps=1e-6), dict(type="LN", eps=1e-6)),
    )
    bad = {}
    for cfg, name, default, supported in required:
        value = cfg.pop(name, default)
        if value not in (supported, [supported]):
            bad[name] = value
    model = PlainMamba(
        img_size=tuple(to_2tuple(backbone.pop("img_size", 224))), patch_size=backbone.pop("patch_size", 16),
        in_chans=backbone.pop("in_channels", 3), num_classes=num_classes,
        embed_dim=backbone.pop("embed_dims", 192), depth=backbone.pop("num_layers", 20),
        stem_convs=backbone.pop("num_convs_patch_embed", 1),
        dwconv_layers=tuple(backbone.pop("layers_with_dwconv", ())), d_state=mamba_cfg.pop("d_state", 16),
        expand=mamba_cfg.pop("expand", 2), conv_size=mamba_cfg.pop("conv_size", 7),
        pos_drop_rate=backbone.pop("drop_rate", 0.), drop_path_rate=backbone.pop("drop_path_rate", 0.))
    for name, cfg in (("classifier", classifier), ("backbone", backbone), ("layer_cfgs", layer_cfgs),
                      ("mamba_cfg", mamba_cfg), ("head", head)):
        bad.update({f"{name}.{key}": value for key, value in cfg.items() if key not in _NO_EFFECT.get(name, ())})
    if bad:
        raise ValueError(f"plainmamba: official options without a vssm equivalent: {bad}")
    return model, lambda sd: convert_official(sd, model.grid_size)


# ---------------------------------------------------------------------------------------------------------------------
# Variants

MODEL_VARIANTS: Dict[str, dict] = {
    "plainmamba_l1": dict(embed_dim=192, depth=24, stem_convs=1, dwconv_layers=(0,)),
    "plainmamba_l2": dict(embed_dim=384, depth=24, stem_convs=2),
    "plainmamba_l3": dict(embed_dim=448, depth=36, stem_convs=2),
    "test_plainmamba": dict(embed_dim=32, depth=3, stem_convs=1, stem_width=16, dwconv_layers=(0,), d_state=8),
}


def _create_plainmamba(variant: str, pretrained: bool = False, **kwargs) -> PlainMamba:
    return build_model_with_cfg(
        PlainMamba, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        **dict(MODEL_VARIANTS[variant], **kwargs),
    )


def _cfg(url: str = "", **kwargs) -> Dict:
    """ImageNet evaluation of the official configs: resize 256 bicubic + center crop 224, ImageNet mean/std."""
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.stem.0", "classifier": "head",
        "license": "unknown", "paper_ids": "arXiv:2403.17695",
        "paper_name": "PlainMamba: Improving Non-hierarchical Mamba in Visual Recognition",
        "origin_url": "https://github.com/ChenhongyiYang/PlainMamba",
        **kwargs,
    }


_HF = "https://huggingface.co/ChenhongyiYang/PlainMamba/resolve/main/"
default_cfgs = generate_default_cfgs({
    # official ImageNet-1k weights (mmcls checkpoints, converted by checkpoint_filter_fn)
    "plainmamba_l1.in1k": _cfg(url=_HF + "l1.pth"),
    "plainmamba_l2.in1k": _cfg(url=_HF + "l2.pth"),
    "plainmamba_l3.in1k": _cfg(url=_HF + "l3.pth"),
    "test_plainmamba": _cfg(input_size=(3, 64, 64)),
})


@register_model
def plainmamba_l1(pretrained: bool = False, **kwargs) -> PlainMamba:
    """PlainMamba-L1: C=192, 24 blocks, 7.55M with head (7.36M backbone), 77.9 top-1."""
    return _create_plainmamba("plainmamba_l1", pretrained, **kwargs)


@register_model
def plainmamba_l2(pretrained: bool = False, **kwargs) -> PlainMamba:
    """PlainMamba-L2: C=384, 24 blocks, 26.1M with head (25.8M backbone), 81.6 top-1."""
    return _create_plainmamba("plainmamba_l2", pretrained, **kwargs)


@register_model
def plainmamba_l3(pretrained: bool = False, **kwargs) -> PlainMamba:
    """PlainMamba-L3: C=448, 36 blocks, 51.0M with head (50.5M backbone), 82.3 top-1."""
    return _create_plainmamba("plainmamba_l3", pretrained, **kwargs)


@register_model
def test_plainmamba(pretrained: bool = False, **kwargs) -> PlainMamba:
    """Tiny PlainMamba (C=32, 3 blocks, d_state 8) for fast tests."""
    return _create_plainmamba("test_plainmamba", pretrained, **kwargs)
