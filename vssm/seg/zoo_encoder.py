"""Any registered timm model (the vssm zoo first) as a 2-D segmentation encoder: four NCHW maps at strides 4, 8, 16
and 32.

The model is built by ``timm.create_model`` (so ``pretrained=True``, ``pretrained_cfg_overlay=dict(file=...)``,
``checkpoint_path``, ``in_chans`` and the stem adaptation of pretrained weights to other channel counts work as for
classification), pruned to the blocks the maps come from (``prune_intermediate_layers``: no head, no final norm) and
run through ``forward_intermediates`` (what timm's ``features_only`` getter wrapper does; the head is dropped whole,
so every parameter left takes part in the forward).

- Hierarchical models (VMamba v0/v2, LocalVMamba, SiMBA, S4ND-ConvNeXt, timm's ConvNeXt or Swin): the last feature
  level at each stride 4, 8, 16, 32 of ``feature_info``.
- Isotropic models (Vim, VideoMamba-image, PlainMamba, LocalVim, S4ND-ViT): four blocks spread over the depth
  (``spread_indices``: depth 12 -> blocks 2, 5, 8, 11, UNETR's z3/z6/z9/z12), turned into a pyramid by
  ``SimpleFeaturePyramid`` (ViTDet's simple feature pyramid: stride-2 transposed convs up, 2x2 max-pooling down).
  Models with a fixed input size (absolute position embeddings) are built with ``dynamic_img_size=True``.
"""
import math
import re
from typing import Dict, List, Optional, Sequence

import timm
import torch
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from ..convert import registered_model

__all__ = [
    "ZooEncoder", "SimpleFeaturePyramid", "spread_indices", "first_conv", "replace_first_conv", "LEVEL_REDUCTIONS",
]

LEVEL_REDUCTIONS = (4, 8, 16, 32)


def spread_indices(depth: int, count: int = 4) -> List[int]:
    """``count`` block indices spread evenly over ``depth`` blocks, ending at the last one (12 -> [2, 5, 8, 11],
    24 -> [5, 11, 17, 23]); shallow models repeat indices (3 -> [0, 1, 1, 2])."""
    return [max(0, round(depth * (i + 1) / count) - 1) for i in range(count)]


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid: maps of one stride r -> maps at strides 4, 8, 16, 32.

    Per level of target stride t: t < r: log2(r / t) stride-2 2x2 transposed convs, each halving the channels, with
    LayerNorm2d + GELU between them; t == r: identity; t > r: log2(t / r) 2x2 max-pools. Level k reads ``maps[k]``.
    """

    def __init__(self, channels: Sequence[int], reduction: int, device=None, dtype=None):
        """
        Args:
            channels: Channels of the four input maps.
            reduction: Their stride r (a power of two).
        """
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        if reduction < 1 or reduction & (reduction - 1):
            raise ValueError(f"SimpleFeaturePyramid: an isotropic encoder of stride {reduction} cannot give strides "
                             f"{LEVEL_REDUCTIONS}; its patch stride must be a power of two")
        self.levels = nn.ModuleList()
        self.out_channels = []
        for width, target in zip(channels, LEVEL_REDUCTIONS):
            layers: List[nn.Module] = []
            if target < reduction:
                for step in range(int(math.log2(reduction // target))):
                    if step > 0:
                        layers += [LayerNorm2d(width, **dd), nn.GELU()]
                    layers.append(nn.ConvTranspose2d(width, width // 2, kernel_size=2, stride=2, **dd))
                    width //= 2
            else:
                layers += [nn.MaxPool2d(kernel_size=2, stride=2) for _ in range(int(math.log2(target // reduction)))]
            self.levels.append(nn.Sequential(*layers))
            self.out_channels.append(width)

    def forward(self, maps: Sequence[Tensor]) -> List[Tensor]:
        """Four (B, C_k, H / r, W / r) maps -> (B, C'_k, H / t_k, W / t_k) for t_k = 4, 8, 16, 32."""
        return [level(x) for level, x in zip(self.levels, maps)]


class ZooEncoder(nn.Module):
    """A timm model as a four-level 2-D feature pyramid (strides 4, 8, 16, 32, NCHW); see the module docstring.

    Attributes:
        model: The pruned timm model.
        adapter: ``SimpleFeaturePyramid`` for isotropic models, else None.
        channels: Channels of the four maps.
        reductions: (4, 8, 16, 32).
        is_isotropic: The model has one stride for all its blocks.
    """

    def __init__(
            self,
            name: str,
            in_chans: int = 3,
            pretrained: bool = False,
            drop_path_rate: Optional[float] = None,
            out_norms: bool = False,
            block_indices: Optional[Sequence[int]] = None,
            device=None,
            dtype=None,
            **model_kwargs,
    ):
        """
        Args:
            name: A timm model name (``import vssm`` registers the zoo); ``name.tag`` picks pretrained weights.
            in_chans: Input channels; with ``pretrained`` timm adapts the stem weights (1 channel: the sum over RGB,
                the same as feeding the channel repeated 3 times).
            pretrained: Load the model's pretrained weights through timm (``pretrained_cfg_overlay=dict(file=...)``
                for a local file).
            drop_path_rate: Stochastic depth of the model (None: the model's default).
            out_norms: A LayerNorm2d on each output map (mmseg's VMamba and Swin segmentation backbones have them).
            block_indices: Isotropic models only: the four blocks whose outputs make the pyramid (default
                ``spread_indices(depth)``).
            **model_kwargs: More ``timm.create_model`` arguments (model options, ``pretrained_cfg_overlay``,
                ``checkpoint_path``, ``pretrained_strict``).
        """
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        info = registered_model(name)  # ValueError for a name timm does not know
        kwargs = dict(model_kwargs)
        if info.pretrained_cfg.get("fixed_input_size"):
            kwargs.setdefault("dynamic_img_size", True)
        if drop_path_rate is not None:
            kwargs["drop_path_rate"] = drop_path_rate
        self.name = name
        self.pretrained_cfg = info.pretrained_cfg
        self.model = timm.create_model(name, pretrained=pretrained, in_chans=in_chans, **kwargs, **dd)
        feature_info = list(self.model.feature_info)
        reductions = [int(f["reduction"]) for f in feature_info]
        self.is_isotropic = len(set(reductions)) == 1
        if self.is_isotropic:
            level_blocks = list(spread_indices(len(feature_info)) if block_indices is None else block_indices)
            if len(level_blocks) != len(LEVEL_REDUCTIONS) or not all(0 <= i < len(feature_info) for i in level_blocks):
                raise ValueError(f"ZooEncoder({name!r}): block_indices must be 4 block indices in [0, "
                                 f"{len(feature_info)}), got {block_indices!r}")
        elif block_indices is not None:
            raise ValueError(f"ZooEncoder({name!r}): block_indices is for isotropic models; {name} is hierarchical")
        else:
            level_blocks = []
            for target in LEVEL_REDUCTIONS:
                at_target = [i for i, r in enumerate(reductions) if r == target]
                if not at_target:
                    raise ValueError(f"ZooEncoder({name!r}): feature_info has strides {reductions}; a hierarchical "
                                     f"encoder needs a level at each stride {LEVEL_REDUCTIONS}")
                level_blocks.append(at_target[-1])
        self.take_indices = sorted(set(level_blocks))
        self.level_positions = [self.take_indices.index(i) for i in level_blocks]
        self.model.prune_intermediate_layers(self.take_indices, prune_norm=True, prune_head=True)
        if isinstance(getattr(self.model, "head", None), nn.Module):
            self.model.head = nn.Identity()  # a pruned head may keep a pre-logits norm that nothing reads
        channels = [int(feature_info[i]["num_chs"]) for i in level_blocks]
        self.adapter = SimpleFeaturePyramid(channels, reductions[0], **dd) if self.is_isotropic else None
        self.channels = list(self.adapter.out_channels) if self.adapter is not None else channels
        self.reductions = list(LEVEL_REDUCTIONS)
        self.out_norms = nn.ModuleList([LayerNorm2d(c, **dd) for c in self.channels]) if out_norms else None

    @torch.jit.ignore
    def stem_parameter_names(self) -> List[str]:
        """Names (in ``self.model``) of the stem / patch-embedding parameters, by the model's ``group_matcher``."""
        stem = self.model.group_matcher()["stem"]
        patterns = [stem] if isinstance(stem, str) else [p if isinstance(p, str) else p[0] for p in stem]
        return [n for n, _ in self.model.named_parameters() if any(re.match(p, n) for p in patterns)]

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """The model's no-weight-decay names and patterns, under ``model.``."""
        names = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else set()
        return {n if n.startswith("*") else f"model.{n}" for n in names}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def forward(self, x: Tensor) -> List[Tensor]:
        """(B, C, H, W) -> four maps (B, channels[k], ~H / 4 * 2^k, ~W / 4 * 2^k), NCHW (exact for multiples of 32)."""
        maps = self.model.forward_intermediates(
            x, indices=self.take_indices, norm=False, stop_early=True, output_fmt="NCHW", intermediates_only=True,
        )
        maps = [maps[k] for k in self.level_positions]
        if self.adapter is not None:
            maps = self.adapter(maps)
        if self.out_norms is not None:
            maps = [norm(m) for norm, m in zip(self.out_norms, maps)]
        return maps


def first_conv(encoder: ZooEncoder) -> nn.Conv2d:
    """The model's first conv (its pretrained cfg's ``first_conv``)."""
    name = encoder.pretrained_cfg.get("first_conv")
    module = encoder.model.get_submodule(name) if name else None
    if not isinstance(module, nn.Conv2d):
        raise ValueError(f"{encoder.name}: no Conv2d first conv (pretrained cfg first_conv={name!r})")
    return module


def replace_first_conv(encoder: ZooEncoder, in_chans: int, patch_size: int) -> Dict[str, nn.Conv2d]:
    """Swap the model's first conv (a k x k, stride k patchify conv) for a ``patch_size`` one on ``in_chans`` channels
    (default init); the model then reads (B, in_chans, H, W) maps at the same width. Returns {'old', 'new'}."""
    old = first_conv(encoder)
    if old.kernel_size != old.stride or old.padding != (0, 0) or old.groups != 1:
        raise ValueError(f"{encoder.name}: the first conv is not a patchify conv (kernel {old.kernel_size}, stride "
                         f"{old.stride}, padding {old.padding})")
    new = nn.Conv2d(in_chans, old.out_channels, patch_size, stride=patch_size, bias=old.bias is not None,
                    device=old.weight.device, dtype=old.weight.dtype)
    parent_name, _, child = encoder.pretrained_cfg["first_conv"].rpartition(".")
    setattr(encoder.model.get_submodule(parent_name) if parent_name else encoder.model, child, new)
    if hasattr(encoder.model, "in_chans"):
        encoder.model.in_chans = in_chans
    return {"old": old, "new": new}
