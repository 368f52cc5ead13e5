"""VideoMamba: the Vim trunk on video clips (spatio-temporal token order) and images.

Paper: "VideoMamba: State Space Model for Efficient Video Understanding", Kunchang Li, Xinhao Li, Yi Wang, Yinan He,
Yali Wang, Limin Wang, Yu Qiao, ECCV 2024, arXiv 2403.06977 (https://arxiv.org/abs/2403.06977). Official code:
https://github.com/OpenGVLab/VideoMamba (commit f3427e4, Apache-2.0); weights: HF hub ``OpenGVLab/VideoMamba``.

```
@inproceedings{li2024videomamba,
  title={VideoMamba: State Space Model for Efficient Video Understanding},
  author={Li, Kunchang and Li, Xinhao and Wang, Yi and He, Yinan and Wang, Yali and Wang, Limin and Qiao, Yu},
  booktitle={European Conference on Computer Vision},
  year={2024}
}
```

The trunk is Vim's (``vssm.models.vim``) with the class token at the HEAD, the two scan directions SUMMED (no
division by 2) and the official VideoMamba initialisation (every linear map, the mixers' dt_proj included,
trunc-normal(0.02) with zero bias; zero class token and temporal embedding). Drop path is Vim's: linear
0..drop_path_rate over the blocks (default 0.1), as the official code.

- Image variants (``videomamba_{tiny,small,middle,base}_image``, ImageNet-1k): ``Vim`` built with
  ``class_token='head', merge='sum', weight_init='videomamba'``.
- Video variants (``videomamba_{tiny,small,middle}``, Kinetics-400, input (B, 3, T, H, W), default 16 frames;
  ``num_frames`` and ``tubelet_size`` are model kwargs): ``VideoMamba``. A Conv3d with kernel = stride =
  (tubelet, 16, 16) embeds the clip; tokens are ordered frame-major, [cls, frame 0 (row-major), frame 1, ...];
  every patch token gets the spatial ``pos_embed`` of its position (the table of the image model, shared by the
  frames) plus ``temporal_pos_embedding`` of its frame; the class token gets ``pos_embed[:, 0]`` and no temporal
  term. The scan runs forward and backward over that 1-D order (the paper's "spatial-first" scan, the only one the
  code implements).

Official checkpoints (``checkpoint_filter_fn`` / ``vssm.convert.load_official('videomamba', ...)``): image checkpoints
nested under 'model' and flat video ones are both accepted, ``backbone.`` / ``encoder.`` prefixes stripped, the
self-distillation ``distill_head.*`` dropped; an image checkpoint loaded into a video model is inflated as the official
``load_state_dict(model, sd, center=True)`` does: the 2-D patch kernel is placed unscaled at temporal index
tubelet // 2 with zeros elsewhere, the head is not taken from the image checkpoint and the temporal embedding keeps its
(zero) init; position embeddings of another size are resized as the official fine-tuning script does (spatial:
bicubic with index 0 kept as the class token; temporal: linear, align_corners=False).

Modifications: timm layout and API (``blocks``, ``norm``, ``head``; stacked per-direction mixer parameters); the
official ``fc_drop_rate`` is ``drop_rate`` and its ``drop_rate`` is ``pos_drop_rate``; ``use_checkpoint`` is
``set_grad_checkpointing``; ``dynamic_img_size=True`` also accepts other frame counts (the temporal embedding is
resampled linearly).
"""
import re
from functools import partial
from typing import Dict, List, Optional, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from ..convert import register_checkpoint_filter, register_official, unwrap_checkpoint
from ..layers.mamba_mixer import stack_official_directions
from ..layers.pos_embed import resample_temporal_embed, resize_pos_embed_official
from .vim import Vim

__all__ = ["VideoMamba", "TubeletEmbed", "checkpoint_filter_fn", "convert_official", "inflate_patch_weight"]


class TubeletEmbed(nn.Module):
    """Conv3d patch embedding of clips (B, C, T, H, W) -> (B, D, T / tubelet, h, w), kernel (tubelet, patch, patch)
    with stride (tubelet, stride, stride)."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            stride: Optional[int] = None,
            in_chans: int = 3,
            embed_dim: int = 192,
            num_frames: int = 16,
            tubelet_size: int = 1,
            strict_img_size: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if num_frames % tubelet_size:
            raise ValueError(f"TubeletEmbed: num_frames={num_frames} is not a multiple of tubelet_size={tubelet_size}")
        self.img_size = list(to_2tuple(img_size))
        self.num_frames = num_frames
        self.tubelet_size = tubelet_size
        self.patch_size = patch_size
        self.stride = patch_size if stride is None else stride
        self.strict_img_size = strict_img_size
        self.grid_size = [num_frames // tubelet_size] + [(s - patch_size) // self.stride + 1 for s in self.img_size]
        self.proj = nn.Conv3d(
            in_chans, embed_dim, (tubelet_size, patch_size, patch_size), (tubelet_size, self.stride, self.stride),
            device=device, dtype=dtype,
        )

    def forward(self, x: Tensor) -> Tensor:
        torch._assert(x.dim() == 5, "VideoMamba takes clips (B, C, T, H, W)")
        if self.strict_img_size:
            message = f"clips must be {self.num_frames} x {self.img_size} (or create the model with dynamic_img_size)"
            torch._assert(x.shape[2] == self.num_frames, message)
            torch._assert(x.shape[3] == self.img_size[0], message)
            torch._assert(x.shape[4] == self.img_size[1], message)
        return self.proj(x)


class VideoMamba(Vim):
    """VideoMamba for clips (B, C, T, H, W): the Vim trunk over [cls, frame-major patch tokens] with spatial and
    temporal position embeddings (timm model API; features are (B, D, t, h, w) maps)."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            num_frames: int = 16,
            tubelet_size: int = 1,
            in_chans: int = 3,
            num_classes: int = 400,
            global_pool: Optional[str] = None,
            embed_dim: int = 192,
            depth: int = 24,
            d_state: int = 16,
            d_conv: int = 4,
            expand: float = 2,
            dt_rank: Optional[int] = None,
            bidirectional: bool = True,
            norm_layer: str = "rmsnorm",
            norm_eps: float = 1e-5,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            dynamic_img_size: bool = False,
            weight_init: str = "videomamba",
            device=None,
            dtype=None,
    ):
        """
        Args:
            img_size: Frame size (H, W).
            patch_size: Spatial patch size (kernel = stride).
            num_frames: Frames T per clip.
            tubelet_size: Frames per token (temporal kernel = stride).
            global_pool: 'token' (class token, default), 'avg' (mean of the patch tokens) or ''.
            drop_rate: Dropout before the head (official ``fc_drop_rate``).
            pos_drop_rate: Dropout after the position embeddings (official ``drop_rate``).
            dynamic_img_size: Accept other frame sizes and frame counts (position embeddings resampled).
            weight_init: 'videomamba' (official: dt_proj bias 0, i.e. softplus(dt) = 0.69 everywhere, which the
                official code does by accident) or 'vim' (Mamba's dt init, log-uniform in [1e-3, 0.1]).
            Others: as ``Vim``.
        """
        super().__init__(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            global_pool=global_pool, embed_dim=embed_dim, depth=depth, d_state=d_state, d_conv=d_conv,
            expand=expand, dt_rank=dt_rank, class_token="head", bidirectional=bidirectional, merge="sum",
            norm_layer=norm_layer, norm_eps=norm_eps, drop_rate=drop_rate, pos_drop_rate=pos_drop_rate,
            drop_path_rate=drop_path_rate, dynamic_img_size=dynamic_img_size, weight_init=weight_init,
            embed_layer=partial(TubeletEmbed, num_frames=num_frames, tubelet_size=tubelet_size),
            device=device, dtype=dtype,
        )
        self.input_spatial_dims = 3  # (B, C, T, H, W) clips
        self.temporal_pos_embedding = nn.Parameter(
            torch.zeros(1, self.patch_embed.grid_size[0], embed_dim, device=device, dtype=dtype))

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return super().no_weight_decay() | {"temporal_pos_embedding"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        matcher = super().group_matcher(coarse)
        matcher["stem"] += r"|^temporal_pos_embedding"
        return matcher

    def _resampled_temporal_embed(self, frames: int) -> Tensor:
        """Temporal embedding (1, frames, D), linearly resampled when the clip has another token count in time."""
        if frames == self.patch_embed.grid_size[0]:
            return self.temporal_pos_embedding
        return resample_temporal_embed(self.temporal_pos_embedding, frames)

    def _pos_embed(self, x: Tensor, grid: List[int]) -> Tensor:
        """Patch tokens (B, t * h * w, D), frame-major -> [cls, patches] with spatial + temporal embeddings."""
        batch, frames = x.shape[0], grid[0]
        cls_token = self.cls_token
        if cls_token is None:  # built by __init__ (class_token='head')
            raise RuntimeError("VideoMamba: the class token is missing")
        pos_embed = self._resampled_pos_embed(grid[1:])  # (1, 1 + h * w, D), class slot first
        temporal = self._resampled_temporal_embed(frames)  # (1, t, D)
        x = x.reshape(batch, frames, -1, self.embed_dim) + pos_embed[:, None, 1:]  # (B, t, h * w, D)
        x = (x + temporal[:, :, None]).flatten(1, 2)  # (B, t * h * w, D)
        x = torch.cat([(cls_token + pos_embed[:, :1]).expand(batch, -1, -1), x], dim=1)
        return self.pos_drop(x)


def inflate_patch_weight(weight: Tensor, tubelet_size: int, center: bool = True) -> Tensor:
    """2-D patch kernel (D, C, p, p) -> 3-D (D, C, tubelet, p, p), as the official loader: ``center`` puts the kernel
    unscaled at temporal index tubelet // 2 with zeros elsewhere; otherwise it is repeated and divided by tubelet."""
    if not center:
        return weight.unsqueeze(2).repeat(1, 1, tubelet_size, 1, 1) / tubelet_size
    inflated = weight.new_zeros(weight.shape[0], weight.shape[1], tubelet_size, *weight.shape[2:])
    inflated[:, :, tubelet_size // 2] = weight
    return inflated


def convert_official(state_dict: Dict[str, Tensor], model: Vim) -> Dict[str, Tensor]:
    """Official VideoMamba state dict (image or video) -> keys of ``model`` (``Vim`` image trunk or ``VideoMamba``).

    Strips ``backbone.`` / ``encoder.`` prefixes, drops ``distill_head.*``, stacks the mixer directions, inflates an
    image checkpoint into a video model (the model keeps its own head and temporal embedding, as officially) and
    resizes position embeddings of another size the official way.
    """
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r"^(backbone|encoder)\.", "", key)
        if key.startswith("distill_head."):  # self-distillation head of the M / B image checkpoints
            continue
        key = re.sub(r"^layers\.", "blocks.", key)
        key = re.sub(r"^norm_f\.", "norm.", key)
        out[key] = value
    out = stack_official_directions(out, model.blocks[0].mixer.num_directions)
    own = model.state_dict()
    if isinstance(model, VideoMamba):
        patch_weight = out.get("patch_embed.proj.weight")
        if patch_weight is not None and patch_weight.dim() == 4:  # image checkpoint -> video model
            out["patch_embed.proj.weight"] = inflate_patch_weight(patch_weight, model.patch_embed.tubelet_size)
            for key in ("head.weight", "head.bias", "temporal_pos_embedding"):
                out.pop(key, None)
                if key in own:
                    out[key] = own[key]
        temporal = out.get("temporal_pos_embedding")
        if temporal is not None and temporal.shape != own["temporal_pos_embedding"].shape:
            out["temporal_pos_embedding"] = resample_temporal_embed(temporal, own["temporal_pos_embedding"].shape[1])
    if "pos_embed" in out and "pos_embed" in own and out["pos_embed"].shape != own["pos_embed"].shape:
        out["pos_embed"] = resize_pos_embed_official(out["pos_embed"], model.patch_embed.grid_size[-2:], 1)
    return out


@register_checkpoint_filter
def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: Vim) -> Dict[str, Tensor]:
    """Official checkpoint as distributed (image: ``{'model': ...}``, video: flat) or a vssm one -> ``model``'s keys."""
    state_dict = unwrap_checkpoint(state_dict)
    if any(key.endswith("mixer.conv_weight") for key in state_dict):
        return state_dict
    return convert_official(state_dict, model)


def _kwargs_from_official(kwargs: dict, video: bool) -> dict:
    """Official ``VisionMamba(**kwargs)`` (image_sm or video_sm file) -> ``Vim`` / ``VideoMamba`` kwargs."""
    kw = dict(kwargs)
    ssm_cfg = dict(kw.pop("ssm_cfg", None) or {})
    unsupported_ssm = sorted(set(ssm_cfg) - {"d_state", "d_conv", "expand", "dt_rank"})
    if unsupported_ssm:
        raise NotImplementedError(f"videomamba: ssm_cfg options {unsupported_ssm} are not supported")
    dt_rank = ssm_cfg.get("dt_rank", "auto")
    for ignored in ("residual_in_fp32", "fused_add_norm", "initializer_cfg", "use_checkpoint", "checkpoint_num"):
        kw.pop(ignored, None)  # same function in float32 (float32 stream, fused add+norm = same math) / no effect
    out = dict(
        img_size=kw.pop("img_size", 224), patch_size=kw.pop("patch_size", 16), in_chans=kw.pop("channels", 3),
        num_classes=kw.pop("num_classes", 1000), global_pool="token", embed_dim=kw.pop("embed_dim", 192),
        depth=kw.pop("depth", 24), d_state=ssm_cfg.get("d_state", 16), d_conv=ssm_cfg.get("d_conv", 4),
        expand=ssm_cfg.get("expand", 2), dt_rank=None if dt_rank == "auto" else dt_rank,
        bidirectional=kw.pop("bimamba", True), norm_layer="rmsnorm" if kw.pop("rms_norm", True) else "layernorm",
        norm_eps=kw.pop("norm_epsilon", 1e-5), pos_drop_rate=kw.pop("drop_rate", 0.),
        drop_path_rate=kw.pop("drop_path_rate", 0.1), device=kw.pop("device", None), dtype=kw.pop("dtype", None),
    )
    if video:
        out.update(num_frames=kw.pop("num_frames", 8), tubelet_size=kw.pop("kernel_size", 1),
                   drop_rate=kw.pop("fc_drop_rate", 0.))
    else:
        out.update(stride=kw.pop("stride", 16), class_token="head", merge="sum", weight_init="videomamba")
    if kw:
        raise TypeError(f"videomamba: unknown official {'video' if video else 'image'} VisionMamba arguments "
                        f"{sorted(kw)}")
    return out


@register_official("videomamba")
def _official_builder(kwargs: dict, entry: Optional[str]):
    """``entry``: 'video' / 'image', an official entry path (``video_sm/...`` / ``image_sm/...``) or None (video if
    the kwargs name ``num_frames`` or ``kernel_size``)."""
    if entry is None:
        video = "num_frames" in kwargs or "kernel_size" in kwargs
    elif entry == "video" or "video_sm" in entry:
        video = True
    elif entry == "image" or "image_sm" in entry:
        video = False
    else:
        raise ValueError(f"videomamba: entry must be 'image', 'video' or an official image_sm / video_sm path, "
                         f"got {entry!r}")
    model = (VideoMamba if video else Vim)(**_kwargs_from_official(kwargs, video))
    return model, partial(convert_official, model=model)


# Variants: official factories videomamba_{tiny,small,middle[,base]} of the image_sm and video_sm files (patch 16,
# RMSNorm, float32 residual, bimamba); the video ones default to 16 frames, tubelet 1 and the 400 K400 classes. The
# ``*_image`` variants are the ``Vim`` image trunk (head class token, (fwd + bwd) summed, the official init).
_IMAGE_TRUNK = dict(class_token="head", merge="sum", weight_init="videomamba")
MODEL_VARIANTS: Dict[str, dict] = {
    "videomamba_tiny": dict(embed_dim=192, depth=24),
    "videomamba_small": dict(embed_dim=384, depth=24),
    "videomamba_middle": dict(embed_dim=576, depth=32),
    "videomamba_tiny_image": dict(_IMAGE_TRUNK, embed_dim=192, depth=24),
    "videomamba_small_image": dict(_IMAGE_TRUNK, embed_dim=384, depth=24),
    "videomamba_middle_image": dict(_IMAGE_TRUNK, embed_dim=576, depth=32),
    "videomamba_base_image": dict(_IMAGE_TRUNK, embed_dim=768, depth=24),
    "test_videomamba": dict(embed_dim=32, depth=3, d_state=8, num_frames=4),
}


def _create_videomamba(variant: str, pretrained: bool = False, **kwargs) -> Vim:
    out_indices = kwargs.pop("out_indices", 3)
    model_cls = Vim if variant.endswith("_image") else VideoMamba
    return build_model_with_cfg(
        model_cls, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **dict(MODEL_VARIANTS[variant], **kwargs),
    )


def _cfg(**kwargs) -> Dict:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "fixed_input_size": True,
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head", "license": "apache-2.0",
        "hf_hub_id": "OpenGVLab/VideoMamba", "paper_ids": "arXiv:2403.06977",
        "paper_name": "VideoMamba: State Space Model for Efficient Video Understanding",
        "origin_url": "https://github.com/OpenGVLab/VideoMamba", **kwargs,
    }


def _video_cfg(**kwargs) -> Dict:
    """Kinetics-400 clips: 16 frames (model kwarg ``num_frames``), short side 224, official test protocol 4 temporal
    clips x 3 spatial crops."""
    return _cfg(num_classes=400, crop_pct=1.0, interpolation="bilinear",
                notes=("input (B, 3, 16, 224, 224); K400 top-1 with 4 clips x 3 crops",), **kwargs)


default_cfgs = generate_default_cfgs({
    # Kinetics-400 fine-tunes of the ImageNet-1k models, 16 frames (other frame counts on the hub: f8 / f32 / f64)
    "videomamba_tiny.k400_f16": _video_cfg(hf_hub_filename="videomamba_t16_k400_f16_res224.pth"),
    "videomamba_small.k400_f16": _video_cfg(hf_hub_filename="videomamba_s16_k400_f16_res224.pth"),
    "videomamba_middle.k400_f16": _video_cfg(hf_hub_filename="videomamba_m16_k400_f16_res224.pth"),
    # ImageNet-1k; middle and base were trained with self-distillation from a small teacher
    "videomamba_tiny_image.in1k": _cfg(hf_hub_filename="videomamba_t16_in1k_res224.pth"),
    "videomamba_small_image.in1k": _cfg(hf_hub_filename="videomamba_s16_in1k_res224.pth"),
    "videomamba_middle_image.in1k": _cfg(hf_hub_filename="videomamba_m16_in1k_res224.pth"),
    "videomamba_base_image.in1k": _cfg(hf_hub_filename="videomamba_b16_in1k_res224.pth"),
    # tiny untrained variant for tests
    "test_videomamba": _video_cfg(input_size=(3, 64, 64), hf_hub_id=None, license=None),
})


@register_model
def videomamba_tiny(pretrained: bool = False, **kwargs) -> VideoMamba:
    return _create_videomamba("videomamba_tiny", pretrained, **kwargs)


@register_model
def videomamba_small(pretrained: bool = False, **kwargs) -> VideoMamba:
    return _create_videomamba("videomamba_small", pretrained, **kwargs)


@register_model
def videomamba_middle(pretrained: bool = False, **kwargs) -> VideoMamba:
    return _create_videomamba("videomamba_middle", pretrained, **kwargs)


@register_model
def videomamba_tiny_image(pretrained: bool = False, **kwargs) -> Vim:
    return _create_videomamba("videomamba_tiny_image", pretrained, **kwargs)


@register_model
def videomamba_small_image(pretrained: bool = False, **kwargs) -> Vim:
    return _create_videomamba("videomamba_small_image", pretrained, **kwargs)


@register_model
def videomamba_middle_image(pretrained: bool = False, **kwargs) -> Vim:
    return _create_videomamba("videomamba_middle_image", pretrained, **kwargs)


@register_model
def videomamba_base_image(pretrained: bool = False, **kwargs) -> Vim:
    return _create_videomamba("videomamba_base_image", pretrained, **kwargs)


@register_model
def test_videomamba(pretrained: bool = False, **kwargs) -> VideoMamba:
    return _create_videomamba("test_videomamba", pretrained, **kwargs)
