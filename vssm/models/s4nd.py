"""S4ND backbones: S4ND-ViT (1-D S4ND over the patch sequence), S4ND-ConvNeXt (2-D) and S4ND-ConvNeXt-3D (video).

Paper: "S4ND: Modeling Images and Videos as Multidimensional Signals Using State Spaces", Eric Nguyen, Karan Goel,
Albert Gu, Gordon W. Downs, Preey Shah, Tri Dao, Stephen A. Baccus, Christopher Re, NeurIPS 2022, arXiv 2210.06583
(https://arxiv.org/abs/2210.06583). Official code: https://github.com/state-spaces/s4 (commit e757cef, Apache-2.0;
``src/models/baselines/{vit_all,convnext_timm}.py``, itself built on timm's ConvNeXt / ViT). No weights are released.

```
@inproceedings{nguyen2022s4nd,
  title={S4ND: Modeling Images and Videos as Multidimensional Signals with State Spaces},
  author={Nguyen, Eric and Goel, Karan and Gu, Albert and Downs, Gordon and Shah, Preey and Dao, Tri and
          Baccus, Stephen and R{\\'e}, Christopher},
  booktitle={Advances in Neural Information Processing Systems},
  year={2022}
}
```

Networks (the S4ND layer is ``vssm.layers.s4nd.S4ND``; every S4ND here is the DPLR "S4" kernel):

* ``S4NDViT``: timm patch embed (no class token, no position embedding) -> ``depth`` x [pre-norm S4ND residual,
  pre-norm MLP residual] -> LayerNorm -> mean over tokens -> head. The S4ND is 1-D over the flattened patches
  (``transposed=False``, channels 2, GELU, output linear + GLU), l_max = number of patches.
* ``S4NDConvNeXt``: ConvNeXt with S4ND in place of the depthwise 7x7 conv in every block (l_max = stage size);
  2-D, or 3-D with ``num_frames`` (input (B, C, T, H, W)). Stem: ``'s4nd'`` (official
  ``new_s4nd_patch``: dense S4ND stem with ``stem_l_max`` kernels -> avg pool -> channel linear -> GLU -> LayerNorm)
  or ``'patch'`` (strided conv + LayerNorm); downsample: ``'s4nd'`` (LayerNorm -> S4ND at the current size -> avg
  pool 2 -> channel linear -> GLU) or ``'conv'`` (LayerNorm -> strided conv). ``forward(x, rate=r)`` reaches every
  S4ND (stem and downsample included) as the official ``resolution``: the same continuous kernels sampled for an image
  r times coarser/finer.

Converted official checkpoints (``checkpoint_filter_fn``, ``vssm.convert.load_official('s4nd', ...)`` with entry
``VisionTransformer`` / ``ConvNeXt`` / ``ConvNeXt3D`` / ``S4ND``) reproduce the official outputs. Key mapping (S4ND
sub-keys as in ``vssm.layers.s4nd``):

============================================================  ========================================================
official                                                      vssm
============================================================  ========================================================
ViT ``blocks.{2i}.layer.*`` / ``blocks.{2i}.norm.norm.*``     ``blocks.{i}.mixer.*`` / ``blocks.{i}.norm1.*``
ViT ``blocks.{2i+1}.layer.ff.0.0.*`` / ``ff.2.*``             ``blocks.{i}.mlp.fc1.*`` / ``blocks.{i}.mlp.fc2.*``
ViT ``blocks.{2i+1}.norm.norm.*`` / ``norm.norm.*``           ``blocks.{i}.norm2.*`` / ``norm.*``
ViT ``blocks.{2i}.layer.kernel.1.*`` (never used)             dropped (the layer is 1-D)
ConvNeXt ``stem.stem.*`` (S4ND stem; its ``D`` is unused)     ``stem.s4nd.*`` (no ``D``)
ConvNeXt ``stem.post_stem.1.*`` / ``stem.post_stem.3.*``      ``stem.fc.*`` / ``stem.norm.*``
ConvNeXt-3D ``stem.stem.0.*`` / ``stem.stem.1.*``             ``stem.conv.*`` / ``stem.norm.*``
``stages.{i}.norm_layer.*``                                   ``stages.{i}.downsample.norm.*``
``stages.{i}.downsample.s4conv.*`` / ``.fc.*`` / ``.conv.*``  ``stages.{i}.downsample.s4nd.*`` / ``fc.*`` / ``conv.*``
``stages.{i}.blocks.{j}.*``, ``head.norm.*``, ``head.fc.*``   same
============================================================  ========================================================

PyTorch-Lightning training checkpoints (``{'state_dict': {'model.<key>': ...}}``) are unwrapped first.

Image -> video inflation (official ``convnext_timm_tiny_s4nd_2d_to_3d``, ``inflate_2d_to_3d``): a 2-D S4ND-ConvNeXt
checkpoint given to a 3-D model (``timm.create_model('s4nd_convnext_tiny_3d', pretrained=True,
pretrained_cfg_overlay=dict(file=...))`` or ``model.pretrained_file`` in a training config) is inflated by
``checkpoint_filter_fn``: the 2-D kernels (height, width) become the 3-D model's ``kernel.1`` / ``kernel.2``, the time
kernel ``kernel.0`` is the 3-D model's own, conv weights are repeated along time, the head is the 3-D model's own.
The 2-D model must have the same stem and downsample kinds as the 3-D one: the README's HMDB-51 run inflates a
ConvNeXt-S4ND with a patch stem and conv downsampling (``stem_type='patch', downsample_type='conv'``) into
``s4nd_convnext_tiny_3d``. ``time_kernel_reinit=True`` builds the time kernels as the official ``S4ND._reinit`` hook
with the README's arguments (``TIME_KERNEL_REINIT``; at the official HEAD the README passes them under a config key
that train.py never reads, so the official run keeps the fresh time kernels, which is our default).

Modifications: timm layout and API; the S4ND re-implementation of ``vssm.layers.s4nd`` (kernel cache in eval, fp32
FFTs under autocast); plain logits instead of the official ``(logits, None)``; the unused official parameters
(ViT ``kernel.1``, stem ``D``) are not built, so the parameter counts are the used ones (ViT-B 88,786,408,
ConvNeXt-T 29,409,454, ConvNeXt-3D-T 30,113,235); the pretrained cfgs carry the training eval transform (crop 0.9).
"""
import math
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from einops import repeat
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..convert import register_checkpoint_filter, register_official, unwrap_checkpoint
from ..layers.checks import check_batched_input
from ..layers.s4nd import S4ND, convert_official_s4nd, s4nd_from_official

__all__ = ["S4NDViT", "S4NDConvNeXt", "TIME_KERNEL_REINIT", "checkpoint_filter_fn", "convert_official",
           "inflate_2d_to_3d"]

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
# the official _reinit hook's arguments in the README's HMDB-51 launch command (S4ND.reinit_time_kernel)
TIME_KERNEL_REINIT = dict(init="hippo", n_ssm=None, deterministic=True, dt_min=2.0, dt_max=2.0, normalize=False)


def _s4nd(cfg: Optional[dict], **overrides) -> S4ND:
    """S4ND from an official layer config (``_name_`` and the official-only keys allowed) plus overrides."""
    cfg = {k: v for k, v in (cfg or {}).items() if k != "_name_"}
    return s4nd_from_official(cfg, **overrides)


def _tuple(value, n: int) -> Tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


# --- building blocks -----------------------------------------------------------------------------------------------

class LayerNormNd(nn.LayerNorm):
    """LayerNorm over the channel axis of (B, C, *spatial) (official ``LayerNorm2d`` / ``LayerNorm3d``)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.movedim(1, -1), self.normalized_shape, self.weight, self.bias, self.eps).movedim(-1, 1)


class ChannelLinear(nn.Module):
    """Linear map over the channel axis of (B, C, *spatial) (official ``TransposedLinear``): nn.Linear's default init
    (it is not re-initialised with the network), bias without weight decay (``_optim``)."""

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **dd))
        self.bias = nn.Parameter(torch.empty(out_features, **dd))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.bias, -bound, bound)
        self.bias._optim = {"weight_decay": 0.0}

    def forward(self, x: Tensor) -> Tensor:
        # NOTE: contiguous for the GLU after it: on a channels-last-strided input, glu_backward's CPU kernel and its
        # meta function disagree on the gradient's strides, which breaks compiled (AOT) backward graphs
        return F.linear(x.movedim(1, -1), self.weight, self.bias).movedim(-1, 1).contiguous()


def _avg_pool(ndim: int, stride: Sequence[int]) -> nn.Module:
    return (nn.AvgPool2d if ndim == 2 else nn.AvgPool3d)(kernel_size=tuple(stride), stride=tuple(stride))


def _conv(ndim: int, *args, **kwargs) -> nn.Module:
    return (nn.Conv2d if ndim == 2 else nn.Conv3d)(*args, **kwargs)


class S4NDStem(nn.Module):
    """Official ``new_s4nd_patch`` stem: dense S4ND (in_chans -> stem_channels, kernels of ``l_max`` taps) -> avg pool
    by the patch -> channel linear (-> 2 dim) -> GLU -> LayerNorm."""

    def __init__(self, in_chans: int, dim: int, patch_size: Sequence[int], stem_channels: int,
                 l_max: Sequence[int], s4nd_cfg: dict, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.s4nd = _s4nd(s4nd_cfg, d_model=in_chans, out_channels=stem_channels, l_max=list(l_max), **dd)
        self.pool = _avg_pool(len(patch_size), patch_size)
        self.fc = ChannelLinear(stem_channels, 2 * dim, **dd)
        self.norm = LayerNormNd(dim, eps=1e-6, **dd)

    def forward(self, x: Tensor, rate: float = 1.0) -> Tensor:
        x = self.pool(self.s4nd(x, rate))
        return self.norm(F.glu(self.fc(x), dim=1))


class PatchStem(nn.Module):
    """Strided conv patchify (kernel = stride = patch) + LayerNorm (official ``patch`` stem)."""

    def __init__(self, in_chans: int, dim: int, patch_size: Sequence[int], device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv = _conv(len(patch_size), in_chans, dim, kernel_size=tuple(patch_size), stride=tuple(patch_size),
                          **dd)
        self.norm = LayerNormNd(dim, eps=1e-6, **dd)

    def forward(self, x: Tensor, rate: float = 1.0) -> Tensor:
        return self.norm(self.conv(x))


class S4NDDownsample(nn.Module):
    """LayerNorm -> S4ND at the stage input size -> (GELU) -> avg pool -> channel linear -> (GLU) (official
    ``norm_layer`` + ``S4DownSample``)."""

    def __init__(self, in_chs: int, out_chs: int, stride: Sequence[int], l_max: Sequence[int], s4nd_cfg: dict,
                 act: bool = False, glu: bool = True, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm = LayerNormNd(in_chs, eps=1e-6, **dd)
        self.s4nd = _s4nd(s4nd_cfg, d_model=in_chs, l_max=list(l_max), **dd)
        self.act = nn.GELU() if act else nn.Identity()
        self.pool = _avg_pool(len(stride), stride)
        self.glu = glu
        self.fc = ChannelLinear(in_chs, 2 * out_chs if glu else out_chs, **dd)

    def forward(self, x: Tensor, rate: float = 1.0) -> Tensor:
        x = self.pool(self.act(self.s4nd(self.norm(x), rate)))
        x = self.fc(x)
        return F.glu(x, dim=1) if self.glu else x


class ConvDownsample(nn.Module):
    """LayerNorm -> strided conv (official ``norm_layer`` + ``Conv2dWrapper`` / ``Conv3dWrapper``)."""

    def __init__(self, in_chs: int, out_chs: int, stride: Sequence[int], device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm = LayerNormNd(in_chs, eps=1e-6, **dd)
        self.conv = _conv(len(stride), in_chs, out_chs, kernel_size=tuple(stride), stride=tuple(stride), **dd)

    def forward(self, x: Tensor, rate: float = 1.0) -> Tensor:
        return self.conv(self.norm(x))


class S4NDConvNeXtBlock(nn.Module):
    """ConvNeXt block with S4ND as the spatial mixer: S4ND -> LayerNorm -> MLP (GELU) -> layer scale -> drop path ->
    + shortcut."""

    def __init__(self, dim: int, l_max: Sequence[int], s4nd_cfg: dict, drop_path: float = 0.,
                 ls_init_value: float = 1e-6, mlp_ratio: float = 4., drop_mlp: float = 0., device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv_dw = _s4nd(s4nd_cfg, d_model=dim, l_max=list(l_max), **dd)
        self.norm = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU, drop=drop_mlp, **dd)
        self.gamma = nn.Parameter(ls_init_value * torch.ones(dim, **dd)) if ls_init_value > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: Tensor, rate: float = 1.0) -> Tensor:
        shortcut = x
        x = self.conv_dw(x, rate)
        x = self.mlp(self.norm(x.movedim(1, -1)))  # channels last
        if self.gamma is not None:
            x = x * self.gamma
        return self.drop_path(x.movedim(-1, 1)) + shortcut


class NoDownsample(nn.Module):
    """Identity that takes the rate (stage 0 of a stride-4 stem)."""

    def forward(self, x: Tensor, rate: float = 1.0) -> Tensor:
        return x


class S4NDConvNeXtStage(nn.Module):
    def __init__(self, downsample: Optional[nn.Module], blocks: List[nn.Module]):
        super().__init__()
        self.downsample = downsample if downsample is not None else NoDownsample()
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: Tensor, rate: float = 1.0) -> Tensor:
        x = self.downsample(x, rate)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = checkpoint(block, x, rate, use_reentrant=False)
            else:
                x = block(x, rate)
        return x


class S4NDHead(nn.Module):
    """Global average pool -> LayerNorm -> dropout -> fc (official ConvNeXt head: pool, norm, flatten, drop, fc)."""

    def __init__(self, in_features: int, num_classes: int, pool_type: str = "avg", drop_rate: float = 0.,
                 spatial_dims: int = 2, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.pool_dims = list(range(2, 2 + spatial_dims))
        self.pool_type = pool_type
        self.norm = nn.LayerNorm(in_features, eps=1e-6, **dd)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, pool_type: Optional[str] = None) -> None:
        if pool_type is not None:
            self.pool_type = pool_type
        weight = self.norm.weight
        self.fc = (nn.Linear(self.in_features, num_classes, device=weight.device, dtype=weight.dtype)
                   if num_classes > 0 else nn.Identity())

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, C, *spatial) -> (B, classes) (or (B, C) with ``pre_logits``); without pooling the map is normalised
        per position and returned channels first."""
        if self.pool_type == "avg":
            x = self.drop(self.norm(x.mean(dim=self.pool_dims)))
            return x if pre_logits else self.fc(x)
        x = self.drop(self.norm(x.movedim(1, -1)))
        return (x if pre_logits else self.fc(x)).movedim(-1, 1)


# --- S4ND-ConvNeXt -------------------------------------------------------------------------------------------------

class S4NDConvNeXt(nn.Module):
    """ConvNeXt with S4ND mixers, 2-D (images) or 3-D (videos, (B, C, T, H, W)).

    Args:
        img_size: input size (H, W) (or int) the S4ND kernels are made for.
        num_frames: None for the 2-D model; T for the 3-D model (clips (B, C, T, H, W) of T frames).
        in_chans: input channels.
        num_classes: classes of the head (0: none).
        global_pool: 'avg' or '' (no pooling).
        patch_size: stem stride (int, or per axis, e.g. (2, 4, 4)).
        depths, dims: blocks and channels per stage.
        stem_type: 's4nd' (official ``new_s4nd_patch``) or 'patch' (strided conv).
        stem_channels, stem_l_max: dense S4ND stem width and kernel length per axis.
        downsample_type: 's4nd' (S4ND + avg pool + channel linear) or 'conv' (strided conv).
        downsample_act, downsample_glu: GELU after / GLU at the end of the S4ND downsample.
        temporal_stage_strides: 3-D: temporal stride of stages 1-3 (official; None entries mean 2).
        ls_init_value: layer scale init.
        drop_rate: head dropout; drop_path_rate: stochastic depth (linear over all blocks); drop_mlp: MLP dropout.
        s4nd_cfg: official S4ND layer kwargs shared by every S4ND (l_max is set per place).
        stem_s4nd_cfg, stage_s4nd_cfgs: overrides for the stem and per stage (stage i: downsample and blocks).
        time_kernel_reinit: 3-D: rebuild the time kernel of every S4ND by ``S4ND.reinit_time_kernel`` (the official
            ``_reinit`` hook): True for the README's HMDB-51 arguments (``TIME_KERNEL_REINIT``), or a dict of them.
    """

    def __init__(
            self,
            img_size: Union[int, Sequence[int]] = 224,
            num_frames: Optional[int] = None,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            patch_size: Union[int, Sequence[int]] = 4,
            depths: Sequence[int] = (3, 3, 9, 3),
            dims: Sequence[int] = (96, 192, 384, 768),
            stem_type: str = "s4nd",
            stem_channels: int = 32,
            stem_l_max: Optional[Sequence[int]] = (16, 16),
            downsample_type: str = "s4nd",
            downsample_act: bool = False,
            downsample_glu: bool = True,
            temporal_stage_strides: Optional[Sequence[Optional[int]]] = None,
            ls_init_value: float = 1e-6,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            drop_mlp: float = 0.,
            s4nd_cfg: Optional[dict] = None,
            stem_s4nd_cfg: Optional[dict] = None,
            stage_s4nd_cfgs: Optional[Sequence[dict]] = None,
            time_kernel_reinit: Union[None, bool, dict] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        img_size = _tuple(img_size, 2)
        if num_frames is not None:
            img_size = (num_frames, *img_size)
        ndim = len(img_size)
        patch = _tuple(patch_size, ndim)
        if stem_type not in ("s4nd", "patch") or downsample_type not in ("s4nd", "conv"):
            raise ValueError(f"S4NDConvNeXt: stem_type 's4nd'|'patch' and downsample_type 's4nd'|'conv', got "
                             f"{stem_type!r}, {downsample_type!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.input_spatial_dims = ndim  # (B, C, H, W) images or (B, C, T, H, W) clips
        self.img_size = img_size[-2:]
        if num_frames is not None:
            self.num_frames = num_frames
        self.num_features = self.head_hidden_size = dims[-1]
        self.output_fmt = "NCHW" if ndim == 2 else "NCTHW"
        s4nd_cfg = dict(s4nd_cfg or {})
        stage_s4nd_cfgs = list(stage_s4nd_cfgs or [{}] * len(depths))

        if stem_type == "s4nd":
            self.stem = S4NDStem(in_chans, dims[0], patch, stem_channels, _tuple(stem_l_max, ndim),
                                 {**s4nd_cfg, **(stem_s4nd_cfg or {})}, **dd)
        else:
            self.stem = PatchStem(in_chans, dims[0], patch, **dd)
        size = [s // p for s, p in zip(img_size, patch)]
        reduction = patch[-1]
        dp_rates = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths), device="cpu").split(depths)]
        self.stages = nn.ModuleList()
        self.feature_info = []
        prev = dims[0]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i == 0:  # the official rule: the stem already made the first reduction
                first = any(p >= 2 for p in patch) if ndim == 3 else patch[0] == 4
                stride = [1] * ndim if first else [2] * ndim
            elif ndim == 3:
                t = temporal_stage_strides[i] if temporal_stage_strides is not None else None
                stride = [2 if t is None else t, 2, 2]
            else:
                stride = [2, 2]
            cfg = {**s4nd_cfg, **stage_s4nd_cfgs[i]}
            downsample = None
            if prev != dim or any(s > 1 for s in stride):
                if downsample_type == "s4nd":
                    downsample = S4NDDownsample(prev, dim, stride, size, cfg, downsample_act, downsample_glu, **dd)
                else:
                    downsample = ConvDownsample(prev, dim, stride, **dd)
            size = [s // st for s, st in zip(size, stride)]
            reduction *= stride[-1]
            blocks = [S4NDConvNeXtBlock(dim, size, cfg, dp_rates[i][j], ls_init_value, drop_mlp=drop_mlp, **dd)
                      for j in range(depth)]
            self.stages.append(S4NDConvNeXtStage(downsample, blocks))
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f"stages.{i}"))
            prev = dim
        self.head = S4NDHead(prev, num_classes, global_pool, drop_rate, ndim, **dd)
        self.init_weights(conv_init=ndim == 2)
        if time_kernel_reinit:
            if ndim != 3:
                raise ValueError("S4NDConvNeXt: time_kernel_reinit applies to the 3-D model (num_frames) only")
            reinit = TIME_KERNEL_REINIT if time_kernel_reinit is True else dict(time_kernel_reinit)
            for module in self.modules():
                if isinstance(module, S4ND):
                    module.reinit_time_kernel(**reinit)

    @torch.no_grad()
    def init_weights(self, conv_init: bool = True) -> None:
        """Official ``_init_weights``: nn.Linear (and nn.Conv2d; the 3-D model's Conv3d keep PyTorch's init)
        trunc_normal(0.02), bias 0. The channel linears of the stem / downsample keep their own init."""
        for module in self.modules():
            if isinstance(module, nn.Linear) or (conv_init and isinstance(module, nn.Conv2d)):
                trunc_normal_(module.weight, std=.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """The S4ND kernel parameters carry their own hints (``_optim``); nothing else is exempt by name."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head.reset(num_classes, global_pool)

    def forward_intermediates(
            self,
            x: Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
            rate: float = 1.0,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Forward that also returns the outputs of the stages in ``indices`` (channels first; ``norm`` has no
        effect: the final norm sits in the head)."""
        if output_fmt not in ("NCHW", "NCTHW"):
            raise ValueError(f"S4NDConvNeXt: output_fmt must be channels first, got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages if not stop_early else self.stages[:max_index + 1]
        intermediates = []
        check_batched_input(x, self.input_spatial_dims, self.in_chans)
        x = self.stem(x, rate)
        for i, stage in enumerate(stages):
            x = stage(x, rate)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: Tensor, rate: float = 1.0) -> Tensor:
        """(B, C, [T,] H, W) -> (B, dims[-1], ...) feature map; ``rate``: resolution change of every S4ND."""
        check_batched_input(x, self.input_spatial_dims, self.in_chans)
        x = self.stem(x, rate)
        for stage in self.stages:
            x = stage(x, rate)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor, rate: float = 1.0) -> Tensor:
        return self.forward_head(self.forward_features(x, rate))


# --- S4ND-ViT ------------------------------------------------------------------------------------------------------

class S4NDViTBlock(nn.Module):
    """The official pair of pre-norm residual blocks of one depth: S4ND (1-D over the tokens) and the MLP, with the
    same drop-path rate."""

    def __init__(self, dim: int, l_max: int, s4nd_cfg: dict, mlp_ratio: float = 4., drop_path: float = 0.,
                 device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.mixer = _s4nd(s4nd_cfg, d_model=dim, l_max=l_max, dim=1, transposed=False, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.mixer(self.norm1(x), 1.0))  # (the official ViT passes no rate)
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class S4NDViT(nn.Module):
    """ViT with 1-D S4ND token mixers instead of attention (no class token, no position embedding, mean pool).

    Args:
        img_size, patch_size, in_chans: patch embedding (l_max = number of patches unless ``s4nd_cfg`` sets it).
        num_classes, global_pool: head ('avg' or '').
        embed_dim, depth, mlp_ratio: width, number of (S4ND, MLP) block pairs, MLP expansion.
        drop_rate: head dropout; drop_path_rate: stochastic depth (linear over the depth).
        s4nd_cfg: official S4ND layer kwargs.
        dynamic_img_size: accept other input sizes (the kernels are then truncated or zero-padded).
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dim: int = 768,
            depth: int = 12,
            mlp_ratio: float = 4.,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            s4nd_cfg: Optional[dict] = None,
            dynamic_img_size: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 0
        self.in_chans = in_chans
        self.dynamic_img_size = dynamic_img_size
        self.output_fmt = "NLC"
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, strict_img_size=not dynamic_img_size,
                                      **dd)
        s4nd_cfg = dict(s4nd_cfg or {})
        l_max = s4nd_cfg.pop("l_max", None) or self.patch_embed.num_patches
        if isinstance(l_max, (list, tuple)):
            l_max = l_max[0]
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.Sequential(*[S4NDViTBlock(embed_dim, l_max, s4nd_cfg, mlp_ratio, dpr[i], **dd)
                                      for i in range(depth)])
        reduction = self.patch_embed.patch_size[0]
        self.feature_info = [dict(num_chs=embed_dim, reduction=reduction, module=f"blocks.{i}") for i in range(depth)]
        self.norm = nn.LayerNorm(embed_dim, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Official ``_init_vit_weights`` (non-jax): every nn.Linear (S4ND output linears, MLPs, head)
        trunc_normal(0.02), bias 0; LayerNorms 1 / 0; the patch-embed conv keeps PyTorch's init."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(stem=r"^patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        weight = self.patch_embed.proj.weight
        self.head = (nn.Linear(self.embed_dim, num_classes, device=weight.device, dtype=weight.dtype)
                     if num_classes > 0 else nn.Identity())

    def _run_block(self, block: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_intermediates(
            self,
            x: Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Forward that also returns the token stream after the blocks in ``indices`` ('NCHW': (B, D, h, w),
        'NLC': (B, L, D)); ``norm`` applies the final norm to them."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"S4NDViT: output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        check_batched_input(x, 2, self.in_chans)
        batch, _, height, width = x.shape
        grid = [height // self.patch_embed.patch_size[0], width // self.patch_embed.patch_size[1]]
        x = self.patch_embed(x)
        blocks = self.blocks if not stop_early else self.blocks[:max_index + 1]
        intermediates = []
        for i, block in enumerate(blocks):
            x = self._run_block(block, x)
            if i in take_indices:
                y = self.norm(x) if norm else x
                if output_fmt == "NCHW":
                    y = y.transpose(1, 2).reshape(batch, self.embed_dim, *grid)
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> normalised tokens (B, L, D)."""
        check_batched_input(x, 2, self.in_chans)
        x = self.patch_embed(x)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# --- official checkpoints ------------------------------------------------------------------------------------------

_CONVNEXT_RULES = [
    (r"^stem\.stem\.0\.", "stem.conv."),
    (r"^stem\.stem\.1\.", "stem.norm."),
    (r"^stem\.stem\.", "stem.s4nd."),
    (r"^stem\.post_stem\.1\.", "stem.fc."),
    (r"^stem\.post_stem\.3\.", "stem.norm."),
    (r"^stages\.(\d+)\.norm_layer\.", r"stages.\1.downsample.norm."),
    (r"^stages\.(\d+)\.downsample\.s4conv\.", r"stages.\1.downsample.s4nd."),
]


def _vit_key(key: str) -> str:
    match = re.match(r"^blocks\.(\d+)\.(.*)$", key)
    if match is None:
        return re.sub(r"^norm\.norm\.", "norm.", key)
    index, rest = int(match.group(1)), match.group(2)
    block = f"blocks.{index // 2}."
    if index % 2 == 0:  # the S4ND residual block
        rest = re.sub(r"^layer\.", "mixer.", rest)
        rest = re.sub(r"^norm\.norm\.", "norm1.", rest)
    else:  # the FFN residual block
        rest = re.sub(r"^layer\.ff\.0\.0\.", "mlp.fc1.", rest)
        rest = re.sub(r"^layer\.ff\.2\.", "mlp.fc2.", rest)
        rest = re.sub(r"^norm\.norm\.", "norm2.", rest)
    return block + rest


def _convnext_key(key: str) -> str:
    for pattern, repl in _CONVNEXT_RULES:
        new = re.sub(pattern, repl, key)
        if new != key:
            return new
    return key


def _convert_s4nd_layers(state_dict: Dict[str, Tensor], model: nn.Module) -> Dict[str, Tensor]:
    """Apply the S4ND layer conversion (``convert_official_s4nd``) under every S4ND of ``model``."""
    out = dict(state_dict)
    for name, module in model.named_modules():
        if not isinstance(module, S4ND):
            continue
        prefix = name + "."
        sub = {k[len(prefix):]: out.pop(k) for k in list(out) if k.startswith(prefix)}
        out.update({prefix + k: v for k, v in convert_official_s4nd(sub, module).items()})
    return out


def convert_official(state_dict: Dict[str, Tensor], model: nn.Module) -> Dict[str, Tensor]:
    """Official ``VisionTransformer`` / ``ConvNeXt`` / ``ConvNeXt3D`` (``convnext_timm``) state dict -> ``model``'s
    keys (see the module docstring); drops the never-used ViT ``kernel.1`` and stem ``D``."""
    rename = _vit_key if isinstance(model, S4NDViT) else _convnext_key
    return _convert_s4nd_layers({rename(k): v for k, v in state_dict.items()}, model)


def _video_s4nd_prefixes(model: nn.Module) -> List[str]:
    """``'<name>.kernel.'`` of every S4ND of ``model`` with three kernels (time, height, width)."""
    return [f"{name}.kernel." for name, module in model.named_modules()
            if isinstance(module, S4ND) and len(module.kernel) == 3]


def _is_image_state_dict(state_dict: Dict[str, Tensor], model: nn.Module) -> bool:
    """Whether ``state_dict`` (vssm keys) is of a 2-D model while ``model`` is 3-D: its S4NDs have two kernels, or its
    convolutions 2-D weights."""
    if getattr(model, "input_spatial_dims", 2) != 3:
        return False
    for prefix in _video_s4nd_prefixes(model):
        if any(k.startswith(prefix + "1.") for k in state_dict) and not any(k.startswith(prefix + "2.")
                                                                            for k in state_dict):
            return True
    ours = model.state_dict()
    return any(k in ours and ours[k].dim() == 5 and v.dim() == 4 for k, v in state_dict.items())


def inflate_2d_to_3d(state_dict: Dict[str, Tensor], model: nn.Module, ignore_head: bool = True) -> Dict[str, Tensor]:
    """S4ND's image -> video inflation (official ``convnext_timm_tiny_s4nd_2d_to_3d``): a 2-D S4ND-ConvNeXt state dict
    (vssm keys) -> a state dict of the 3-D ``model`` with every key filled.

    * Each S4ND of the 3-D model has kernels (time, height, width): ``kernel.1.*`` / ``kernel.2.*`` <- the 2-D
      ``kernel.0.*`` / ``kernel.1.*`` (height, width: their C~ and ``l_kernel`` included); ``kernel.0.*`` (time) is the
      3-D model's own (fresh, or rebuilt by ``time_kernel_reinit``).
    * A weight with one more axis in the 3-D model (the patch stem's and the downsampling convolutions) is repeated
      along time (``... h w -> ... t h w``, not rescaled: a constant clip gives t times the 2-D response).
    * ``ignore_head``: the head (``head.*``) is the 3-D model's own (a new task, e.g. 51 HMDB classes); everything
      else is copied.

    Raises:
        ValueError: the 2-D state dict lacks keys the 3-D model needs, has keys it does not take (e.g. an S4ND stem for
            a patch stem), or a shape does not fit.
    """
    prefixes = _video_s4nd_prefixes(model)
    out, missing, mismatched, used = {}, [], [], set()
    for key, own in model.state_dict().items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is not None:
            axis, rest = key[len(prefix):].split(".", 1)
            if axis == "0":  # time: the 3-D model's own
                out[key] = own
                continue
            source = f"{prefix}{int(axis) - 1}.{rest}"
        elif ignore_head and key.startswith("head."):
            out[key] = own
            continue
        else:
            source = key
        if source not in state_dict:
            missing.append(source)
            continue
        value = state_dict[source]
        used.add(source)
        if value.dim() == own.dim() - 1 and own.dim() >= 3:
            value = repeat(value, "... h w -> ... t h w", t=own.shape[-3])
        if value.shape != own.shape:
            mismatched.append(f"{source} {tuple(value.shape)} -> {key} {tuple(own.shape)}")
            continue
        out[key] = value
    unused = sorted(k for k in state_dict if k not in used and not (ignore_head and k.startswith("head.")))
    if missing or unused or mismatched:
        raise ValueError(
            "s4nd: the 2-D checkpoint does not inflate into this 3-D model (the stem and downsample kinds must match): "
            + "; ".join(f"{what} ({len(items)}) {items[:4]}{' ...' if len(items) > 4 else ''}" for what, items in
                        (("missing", missing), ("not taken", unused), ("shapes", mismatched)) if items))
    return out


@register_checkpoint_filter
def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: nn.Module) -> Dict[str, Tensor]:
    """Official checkpoint (plain, or a PyTorch-Lightning ``{'state_dict': {'model.<key>': ...}}``) or a vssm one ->
    ``model`` keys; a 2-D checkpoint for a 3-D model is inflated (``inflate_2d_to_3d``)."""
    state_dict = unwrap_checkpoint(state_dict)
    while state_dict and all(k.startswith("model.") for k in state_dict):
        state_dict = {k[len("model."):]: v for k, v in state_dict.items()}
    if not set(state_dict) <= set(model.state_dict()):
        state_dict = convert_official(state_dict, model)
    if _is_image_state_dict(state_dict, model):
        return inflate_2d_to_3d(state_dict, model)
    return state_dict


def _unsupported(name: str, value, allowed) -> None:
    if value not in allowed:
        raise NotImplementedError(f"s4nd: official option {name}={value!r} is not reproduced")


def _vit_kwargs_from_official(kwargs: dict) -> dict:
    """Official ``vit_all.VisionTransformer(**kwargs)`` -> ``S4NDViT`` kwargs."""
    kw = dict(kwargs)
    layer = kw.pop("layer", None)
    if isinstance(layer, (list, tuple)):
        if len(layer) != 1:
            raise NotImplementedError("s4nd: ViT with several layers per depth is not reproduced")
        layer = layer[0]
    if layer is None or layer.get("_name_", "s4nd") != "s4nd":
        raise NotImplementedError("s4nd: the ViT is reproduced with an S4ND layer only")
    _unsupported("layer_reps", kw.pop("layer_reps", 1), (1,))
    _unsupported("use_cls_token", kw.pop("use_cls_token", False), (False,))
    _unsupported("use_pos_embed", kw.pop("use_pos_embed", False), (False,))
    _unsupported("distilled", kw.pop("distilled", False), (False,))
    _unsupported("representation_size", kw.pop("representation_size", None), (None, 0))
    _unsupported("norm", kw.pop("norm", "layer"), ("layer",))
    _unsupported("transposed", kw.pop("transposed", False), (False,))
    _unsupported("weight_init", kw.pop("weight_init", ""), ("",))
    _unsupported("dropout", kw.pop("dropout", 0.0), (0, 0.0))
    _unsupported("expand", kw.get("expand", 4) > 0, (True,))
    kw.pop("track_norms", None)
    layer = {k: v for k, v in layer.items() if k not in ("transposed",)}
    if layer.get("dropout") is None:
        layer["dropout"] = 0.0
    out = dict(img_size=kw.pop("img_size", 224), patch_size=kw.pop("patch_size", 16), in_chans=kw.pop("in_chans", 3),
               num_classes=kw.pop("num_classes", 1000), embed_dim=kw.pop("d_model", 768), depth=kw.pop("depth", 12),
               mlp_ratio=kw.pop("expand", 4), drop_path_rate=kw.pop("drop_path_rate", 0.), s4nd_cfg=layer)
    if kw:
        raise TypeError(f"s4nd: unknown official VisionTransformer arguments {sorted(kw)}")
    return out


def _convnext_kwargs_from_official(kwargs: dict, video: bool) -> dict:
    """Official ``convnext_timm.ConvNeXt`` / ``ConvNeXt3D`` kwargs -> ``S4NDConvNeXt`` kwargs."""
    kw = dict(kwargs)
    stem_type = kw.pop("stem_type", "patch")
    if stem_type not in ("patch", "new_s4nd_patch"):
        raise NotImplementedError(f"s4nd: stem_type {stem_type!r} is not reproduced ('patch', 'new_s4nd_patch')")
    if kw.get("layer") is None:
        raise NotImplementedError("s4nd: ConvNeXt without S4ND layers (plain depthwise convs) is not reproduced")
    for name, allowed in (("conv_mlp", (False,)), ("custom_ln", (False,)), ("head_norm_first", (False,)),
                          ("norm_layer", (None,)), ("factor_3d", (False,)), ("global_pool", ("avg",)),
                          ("output_stride", (32,)), ("output_spatial_stride", (32,))):
        _unsupported(name, kw.pop(name, allowed[0]), allowed)
    for ignored in ("head_init_scale", "block_tempor_kernel"):  # init only / conv blocks only
        kw.pop(ignored, None)
    frames = None
    if video:
        frames, *size = kw.pop("video_size")
        spatial = kw.pop("spatial_patch_size", 4)
        patch = (kw.pop("tempor_patch_size", 4), spatial, spatial)
    else:
        size = kw.pop("img_size")
        patch = kw.pop("patch_size", 4)
    out = dict(
        img_size=tuple(size) if isinstance(size, (list, tuple)) else size, num_frames=frames,
        in_chans=kw.pop("in_chans", 3),
        num_classes=kw.pop("num_classes", 1000), patch_size=patch, depths=tuple(kw.pop("depths", (3, 3, 9, 3))),
        dims=tuple(kw.pop("dims", (96, 192, 384, 768))), stem_type="s4nd" if stem_type == "new_s4nd_patch" else "patch",
        stem_channels=kw.pop("stem_channels", 8), stem_l_max=kw.pop("stem_l_max", None),
        downsample_type="s4nd" if kw.pop("downsample_type", "patch") == "s4nd" else "conv",
        downsample_act=kw.pop("downsample_act", False), downsample_glu=kw.pop("downsample_glu", False),
        temporal_stage_strides=kw.pop("temporal_stage_strides", None), ls_init_value=kw.pop("ls_init_value", 1e-6),
        drop_rate=kw.pop("drop_head", 0.), drop_path_rate=kw.pop("drop_path_rate", 0.),
        drop_mlp=kw.pop("drop_mlp", 0.), s4nd_cfg=dict(kw.pop("layer")), stem_s4nd_cfg=dict(kw.pop("stem_layer", {})),
        stage_s4nd_cfgs=[dict(c) for c in kw.pop("stage_layers")],
    )
    if kw:
        raise TypeError(f"s4nd: unknown official ConvNeXt arguments {sorted(kw)}")
    return out


@register_official("s4nd")
def _official_builder(kwargs: dict, entry: Optional[str]):
    """``entry``: the official class (``S4ND`` layer, the default; ``VisionTransformer``; ``ConvNeXt``;
    ``ConvNeXt3D``), given as its name or dotted path (text after a space is ignored)."""
    name = (entry or "S4ND").split()[0].rsplit(".", 1)[-1]
    if name == "S4ND":
        layer = s4nd_from_official(kwargs)
        return layer, lambda sd: convert_official_s4nd(sd, layer)
    if name == "VisionTransformer":
        model = S4NDViT(**_vit_kwargs_from_official(kwargs))
    elif name in ("ConvNeXt", "ConvNeXt3D"):
        model = S4NDConvNeXt(**_convnext_kwargs_from_official(kwargs, video=name == "ConvNeXt3D"))
    else:
        raise ValueError(f"s4nd: official entry must be S4ND, VisionTransformer, ConvNeXt or ConvNeXt3D, got {entry!r}")
    return model, lambda sd: convert_official(sd, model)


# --- variants ------------------------------------------------------------------------------------------------------

# S4ND settings of the official configs (configs/experiment/s4nd/...; every S4ND is the DPLR kernel)
_VIT_S4ND = dict(d_state=64, channels=2, bidirectional=True, activation="gelu", final_act="glu", init="legs", rank=1,
                 trank=1, dt_min=0.001, dt_max=0.1, lr=0.001, n_ssm=1, linear=False)
_CONVNEXT_S4ND = dict(d_state=64, channels=1, bidirectional=True, activation=None, final_act="none", init="fourier",
                      rank=1, trank=1, dt_min=0.01, dt_max=1.0, lr=0.001, n_ssm=1, linear=True, bandlimit=None)
_CONVNEXT_STEM = dict(dt_min=0.1, dt_max=1.0, init="fourier")
_CONVNEXT_STAGES = [dict(dt_min=0.1, dt_max=1.0)] * 4

MODEL_VARIANTS: Dict[str, dict] = {
    # vit/vit_b_16_s4_imagenet_v2.yaml + README overrides (channels 2, no class token / position embedding)
    "s4nd_vit_base": dict(embed_dim=768, depth=12, patch_size=16, drop_path_rate=0.1, s4nd_cfg=_VIT_S4ND),
    # convnext/convnext_timm_tiny_s4nd_imagenet.yaml
    "s4nd_convnext_tiny": dict(
        depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), stem_type="s4nd", stem_channels=32, stem_l_max=(16, 16),
        downsample_type="s4nd", drop_path_rate=0.1, s4nd_cfg=_CONVNEXT_S4ND, stem_s4nd_cfg=_CONVNEXT_STEM,
        stage_s4nd_cfgs=_CONVNEXT_STAGES),
    # convnext/convnext_timm_tiny_inflate3d_s4nd_hmdb.yaml + README launch overrides (patch stem, conv downsample,
    # 30 frames, optimizer.lr=1e-4, which the yaml's layer lr ${optimizer.lr} follows), HMDB-51
    "s4nd_convnext_tiny_3d": dict(
        num_frames=30, patch_size=(2, 4, 4), num_classes=51, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768),
        stem_type="patch", downsample_type="conv", temporal_stage_strides=(None, 1, 1, 1), drop_rate=0.2,
        drop_path_rate=0.2, s4nd_cfg=dict(_CONVNEXT_S4ND, lr=1e-4), stage_s4nd_cfgs=_CONVNEXT_STAGES),
    # tiny untrained variants for tests
    "test_s4nd_vit": dict(img_size=32, patch_size=8, embed_dim=32, depth=3, s4nd_cfg=dict(_VIT_S4ND, d_state=8)),
    "test_s4nd_convnext": dict(
        img_size=32, depths=(1, 1, 1, 1), dims=(16, 24, 32, 48), stem_type="s4nd", stem_channels=8, stem_l_max=(8, 8),
        downsample_type="s4nd", s4nd_cfg=dict(_CONVNEXT_S4ND, d_state=8), stem_s4nd_cfg=_CONVNEXT_STEM,
        stage_s4nd_cfgs=_CONVNEXT_STAGES),
    # the 3-D layout of s4nd_convnext_tiny_3d (inflates test_s4nd_convnext built with stem_type='patch',
    # downsample_type='conv')
    "test_s4nd_convnext_3d": dict(
        img_size=32, num_frames=4, patch_size=(2, 4, 4), depths=(1, 1, 1, 1), dims=(16, 24, 32, 48),
        stem_type="patch", downsample_type="conv", temporal_stage_strides=(None, 1, 1, 1),
        s4nd_cfg=dict(_CONVNEXT_S4ND, d_state=8), stage_s4nd_cfgs=_CONVNEXT_STAGES),
}


def _create_s4nd(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    cls = S4NDViT if "vit" in variant else S4NDConvNeXt
    default_out = 3 if cls is S4NDViT else (0, 1, 2, 3)
    out_indices = kwargs.pop("out_indices", default_out)
    return build_model_with_cfg(
        cls, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **dict(MODEL_VARIANTS[variant], **kwargs),
    )


def _cfg(**kwargs) -> Dict:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.9,
        "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        # NOTE: the S4ND stem has no conv; its first weight is the channel linear after the dense S4ND (no weights are
        # released, so timm's in_chans adaptation of pretrained weights never applies)
        "first_conv": "stem.fc", "classifier": "head.fc", "license": "apache-2.0", "paper_ids": "arXiv:2210.06583",
        "origin_url": "https://github.com/state-spaces/s4",
        "paper_name": "S4ND: Modeling Images and Videos as Multidimensional Signals Using State Spaces",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    # no official weights are released; the cfgs carry the official evaluation transforms
    "s4nd_vit_base": _cfg(pool_size=None, first_conv="patch_embed.proj", classifier="head", fixed_input_size=True),
    "s4nd_convnext_tiny": _cfg(),
    "s4nd_convnext_tiny_3d": _cfg(
        num_classes=51, input_size=(3, 224, 224), pool_size=(15, 7, 7), crop_pct=224 / 256,  # 30-frame clips
        mean=KINETICS_MEAN, std=KINETICS_STD, first_conv="stem.conv"),
    "test_s4nd_vit": _cfg(input_size=(3, 32, 32), pool_size=None, first_conv="patch_embed.proj", classifier="head",
                          fixed_input_size=True, license=None),
    "test_s4nd_convnext": _cfg(input_size=(3, 32, 32), pool_size=(1, 1), license=None),
    "test_s4nd_convnext_3d": _cfg(input_size=(3, 32, 32), pool_size=(2, 1, 1), mean=KINETICS_MEAN, std=KINETICS_STD,
                                  first_conv="stem.conv", license=None),
})


@register_model
def s4nd_vit_base(pretrained: bool = False, **kwargs) -> S4NDViT:
    return _create_s4nd("s4nd_vit_base", pretrained, **kwargs)


@register_model
def s4nd_convnext_tiny(pretrained: bool = False, **kwargs) -> S4NDConvNeXt:
    return _create_s4nd("s4nd_convnext_tiny", pretrained, **kwargs)


@register_model
def s4nd_convnext_tiny_3d(pretrained: bool = False, **kwargs) -> S4NDConvNeXt:
    return _create_s4nd("s4nd_convnext_tiny_3d", pretrained, **kwargs)


@register_model
def test_s4nd_vit(pretrained: bool = False, **kwargs) -> S4NDViT:
    return _create_s4nd("test_s4nd_vit", pretrained, **kwargs)


@register_model
def test_s4nd_convnext(pretrained: bool = False, **kwargs) -> S4NDConvNeXt:
    return _create_s4nd("test_s4nd_convnext", pretrained, **kwargs)


@register_model
def test_s4nd_convnext_3d(pretrained: bool = False, **kwargs) -> S4NDConvNeXt:
    return _create_s4nd("test_s4nd_convnext_3d", pretrained, **kwargs)
