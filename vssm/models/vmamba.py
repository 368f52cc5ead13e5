"""VMamba: hierarchical vision backbones on the 2-D selective scan (SS2D).

Paper: `VMamba: Visual State Space Model` - https://arxiv.org/abs/2401.10166

@article{liu2024vmamba,
  title={VMamba: Visual State Space Model},
  author={Liu, Yue and Tian, Yunjie and Zhao, Yuzhong and Yu, Hongtian and Xie, Lingxi and Wang, Yaowei and Ye, Qixiang
          and Jiao, Jianbin and Liu, Yunfan},
  journal={arXiv preprint arXiv:2401.10166},
  year={2024}
}

Original code and weights: https://github.com/MzeroMiko/VMamba (MIT licence), commit 2ed52ea. Re-implemented for vssm:
the scan runs on ``vssm.ops.multi_scan`` (fused Triton kernel on the GPU), the variants are named configurations
instead of version strings, the module layout follows timm (``stem``, ``stages.i.downsample``, ``stages.i.blocks.j``,
``norm``, ``head.fc``), and ``checkpoint_filter_fn`` converts the official checkpoints (both the current key names and
the January 2024 ones of the v0 release).

Two generations, both released with ImageNet-1k weights:
    v2 (``vmamba_tiny/small/base`` and the extras): d_state 1, no z gate, MLP ratio 4, stem of two stride-2 3x3
        convs, strided 3x3 conv downsampling; the official code runs them channel-first.
    v0 (``vmamba_*_v0``, "Vanilla VMamba", the paper-v1 numbers): d_state 16, ssm_ratio 2, z-gated SS2D, no MLP,
        4x4 patchify stem, Swin's patch merging; the official code runs them channel-last.
Both layouts give the same numbers from the same weights. We default to channel-last (``channel_first=False``): the
mixers compute channels-last either way, and LayerNorm / Linear are cheapest on (B, H, W, C); ``forward_intermediates``
and ``features_only`` return NCHW maps in both layouts.

Official training drop-path rates (our default is 0, set ``drop_path_rate`` to train): tiny 0.2, small 0.3,
base 0.6 (v2 s2l15), base_s1l20 0.5, tiny_s2l5 0.2, small_s1l20 0.3; v0: 0.2 (the tiny checkpoint was trained with
0.1), 0.3, 0.6.
"""
import re
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, LayerNorm2d, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import Tensor, nn

from vssm.convert import register_checkpoint_filter, register_official, unwrap_checkpoint
from vssm.layers.checks import check_batched_input
from vssm.layers.norm import LayerNorm
from vssm.layers.ss2d import SS2D

__all__ = ["VMamba", "checkpoint_filter_fn", "convert_official_vssm"]

STEMS = ("patchify", "conv_pair")
DOWNSAMPLES = ("patch_merging", "conv3x3")


def _norm_layer(channel_first: bool, feeds_matmul: bool = False):
    """LayerNorm over channels. Channels-last norms whose output feeds a Linear write the autocast dtype under autocast
    (``vssm.layers.LayerNorm``); those that start a residual stream keep autocast's float32."""
    if channel_first:
        return LayerNorm2d
    return partial(LayerNorm, autocast_output=feeds_matmul)


class Linear2d(nn.Linear):
    """Linear map over the channels of a (B, C, H, W) map: a 1x1 conv that keeps nn.Linear's (out, in) weight, so
    channel-first and channel-last models share state dicts."""

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


class PatchifyStem(nn.Module):
    """4x4 stride-4 conv -> LayerNorm (VMamba v0, LocalVMamba)."""

    def __init__(self, in_chans: int, dim: int, channel_first: bool = False, device=None, dtype=None):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self.channel_first = channel_first
        self.conv = nn.Conv2d(in_chans, dim, kernel_size=4, stride=4, **dd)
        self.norm = _norm_layer(channel_first)(dim, eps=1e-5, **dd)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if not self.channel_first:
            x = x.permute(0, 2, 3, 1)
        return self.norm(x)


class ConvPairStem(nn.Module):
    """Two stride-2 3x3 convs with LayerNorm + GELU between them and LayerNorm after (VMamba v2)."""

    def __init__(self, in_chans: int, dim: int, channel_first: bool = False, device=None, dtype=None):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self.channel_first = channel_first
        self.conv1 = nn.Conv2d(in_chans, dim // 2, kernel_size=3, stride=2, padding=1, **dd)
        self.norm1 = LayerNorm2d(dim // 2, eps=1e-5, **dd)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim // 2, dim, kernel_size=3, stride=2, padding=1, **dd)
        self.norm2 = _norm_layer(channel_first)(dim, eps=1e-5, **dd)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv2(self.act(self.norm1(self.conv1(x))))
        if not self.channel_first:
            x = x.permute(0, 2, 3, 1)
        return self.norm2(x)


class PatchMerging(nn.Module):
    """Swin's 2x2 patch merging: concat the (0,0), (1,0), (0,1), (1,1) sub-grids -> LN(4C) -> Linear(4C -> C_out).

    Odd sizes are zero-padded at the bottom/right first.
    """

    def __init__(self, dim: int, dim_out: int, channel_first: bool = False, device=None, dtype=None):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self.channel_first = channel_first
        self.norm = _norm_layer(channel_first, feeds_matmul=True)(4 * dim, eps=1e-5, **dd)
        self.reduction = (Linear2d if channel_first else nn.Linear)(4 * dim, dim_out, bias=False, **dd)

    def forward(self, x: Tensor) -> Tensor:
        if self.channel_first:
            height, width = x.shape[-2:]
            x = F.pad(x, (0, width % 2, 0, height % 2))
            x = torch.cat([x[..., 0::2, 0::2], x[..., 1::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 1::2]], 1)
        else:
            height, width = x.shape[1:3]
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
            x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class ConvDownsample(nn.Module):
    """Stride-2 3x3 conv -> LayerNorm (VMamba v2)."""

    def __init__(self, dim: int, dim_out: int, channel_first: bool = False, device=None, dtype=None):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self.channel_first = channel_first
        self.conv = nn.Conv2d(dim, dim_out, kernel_size=3, stride=2, padding=1, **dd)
        self.norm = _norm_layer(channel_first)(dim_out, eps=1e-5, **dd)

    def forward(self, x: Tensor) -> Tensor:
        if self.channel_first:
            return self.norm(self.conv(x))
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class Mlp(nn.Module):
    """Linear -> GELU -> Linear over channels (1x1 convs with nn.Linear weights when channel-first)."""

    def __init__(self, dim: int, hidden: int, channel_first: bool = False, device=None, dtype=None):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        linear = Linear2d if channel_first else nn.Linear
        self.fc1 = linear(dim, hidden, **dd)
        self.act = nn.GELU()
        self.fc2 = linear(hidden, dim, **dd)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VSSBlock(nn.Module):
    """x + DropPath(SS2D(LN(x))), then x + DropPath(MLP(LN(x))) when mlp_ratio > 0."""

    def __init__(
            self,
            dim: int,
            mixer: nn.Module,
            mlp_ratio: float = 4.0,
            channel_first: bool = False,
            drop_path: float = 0.0,
            device=None,
            dtype=None,
    ):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        norm = _norm_layer(channel_first, feeds_matmul=True)
        self.norm1 = norm(dim, eps=1e-5, **dd)
        self.mixer = mixer
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if mlp_ratio > 0:
            self.norm2 = norm(dim, eps=1e-5, **dd)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), channel_first, **dd)
        else:
            self.norm2 = None
            self.mlp = None

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.mixer(self.norm1(x)))
        if self.mlp is not None and self.norm2 is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class VMambaStage(nn.Module):
    """Optional downsample (the official code puts it at the end of the previous stage), then VSS blocks."""

    def __init__(
            self,
            dim: int,
            dim_out: int,
            depth: int,
            downsample: str,
            mixer_args: dict,
            directions: Optional[Sequence[Sequence[str]]] = None,
            mlp_ratio: float = 4.0,
            channel_first: bool = False,
            drop_path: Sequence[float] = (),
            device=None,
            dtype=None,
    ):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self.grad_checkpointing = False
        if downsample == "patch_merging":
            self.downsample = PatchMerging(dim, dim_out, channel_first, **dd)
        elif downsample == "conv3x3":
            self.downsample = ConvDownsample(dim, dim_out, channel_first, **dd)
        else:
            self.downsample = nn.Identity()

        def mixer(j: int) -> nn.Module:
            if directions is None:
                return SS2D(dim_out, channel_first=channel_first, **mixer_args, **dd)
            return SS2D(dim_out, channel_first=channel_first, path_kind="local", directions=directions[j], **mixer_args,
                        **dd)

        self.blocks = nn.Sequential(*[
            VSSBlock(dim_out, mixer(j), mlp_ratio, channel_first, drop_path[j], **dd) for j in range(depth)
        ])

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class VMamba(nn.Module):
    """VMamba (and LocalVMamba when ``directions`` is given): stem, four stages of VSS blocks, norm, head."""

    def __init__(
            self,
            depths: Tuple[int, ...] = (2, 2, 9, 2),
            dims: Tuple[int, ...] = (96, 192, 384, 768),
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            d_state: int = 16,
            ssm_ratio: float = 2.0,
            dt_rank: Union[int, str] = "auto",
            conv_bias: bool = True,
            gated: bool = True,
            mlp_ratio: float = 0.0,
            stem: str = "patchify",
            downsample: str = "patch_merging",
            directions: Optional[Sequence[Sequence[str]]] = None,
            reproduce_v_unscan_bug: bool = True,
            channel_first: bool = False,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            dynamic_img_size: bool = True,
            device=None,
            dtype=None,
    ):
        """
        Args:
            depths: Blocks per stage.
            dims: Stage widths.
            in_chans: Input image channels.
            num_classes: Classifier outputs (0: no classifier).
            global_pool: Head pooling ('avg', '' for none, ...).
            d_state: SSM state size N.
            ssm_ratio: SS2D inner width / stage width.
            dt_rank: Delta projection rank, 'auto' = ceil(stage width / 16).
            conv_bias: Bias in SS2D's depthwise conv.
            gated: z-gated SS2D (v0) or no z branch (v2).
            mlp_ratio: MLP hidden ratio; 0 drops the MLP branch and its norm (v0).
            stem: 'patchify' (4x4 conv + LN) or 'conv_pair' (two stride-2 3x3 convs).
            downsample: 'patch_merging' (Swin) or 'conv3x3' (stride-2 3x3 conv + LN).
            directions: LocalVMamba: one list of local route names per block (all stages, in order), e.g.
                ['h', 'h_flip', 'w7', 'w7_flip']; None: VMamba's cross scan.
            reproduce_v_unscan_bug: LocalVMamba only: un-scan 'v' routes as the official code (wrong on non-square
                maps; needed for official weights at non-square sizes), see ``vssm.layers.ss2d``.
            channel_first: NCHW layout between the layers (the official v2 default) instead of NHWC (the official
                v0 default and ours: faster, the mixers compute channels-last anyway); same weights, same numbers.
            drop_rate: Dropout before the classifier.
            drop_path_rate: Stochastic depth, linear 0..drop_path_rate over all blocks, as the official code
                (default 0; official training rates in the module docstring).
            img_size, dynamic_img_size: Accepted as timm's hierarchical models accept them; VMamba takes any input
                size (multiples of 32 keep every feature map whole), so neither changes the model.
        """
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if downsample not in DOWNSAMPLES:
            raise ValueError(f"downsample must be one of {DOWNSAMPLES}, got {downsample!r}")
        if len(dims) != len(depths):
            raise ValueError(f"dims {tuple(dims)} and depths {tuple(depths)} must have the same length")
        if directions is not None and len(directions) != sum(depths):
            raise ValueError(f"directions must list one route set per block ({sum(depths)}), got {len(directions)}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.channel_first = channel_first
        self.output_fmt = "NCHW" if channel_first else "NHWC"
        self.num_features = self.head_hidden_size = dims[-1]
        self.drop_rate = drop_rate

        stem_cls = PatchifyStem if stem == "patchify" else ConvPairStem
        self.stem = stem_cls(in_chans, dims[0], channel_first, **dd)

        mixer_args = dict(d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, conv_bias=conv_bias, gated=gated)
        if directions is not None:
            mixer_args["reproduce_v_unscan_bug"] = reproduce_v_unscan_bug
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.Sequential()
        self.feature_info = []
        first = 0
        for i, depth in enumerate(depths):
            self.stages.append(VMambaStage(
                dims[max(i - 1, 0)],
                dims[i],
                depth,
                downsample if i > 0 else "",
                mixer_args,
                directions=None if directions is None else directions[first:first + depth],
                mlp_ratio=mlp_ratio,
                channel_first=channel_first,
                drop_path=rates[first:first + depth],
                **dd,
            ))
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"stages.{i}"))
            first += depth
        self.norm = _norm_layer(channel_first)(self.num_features, eps=1e-5, **dd)
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt=self.output_fmt, **dd,
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module):
        """The official init: Linear weights trunc-normal(0.02), biases 0; the SSM parameters keep SS2D's init."""
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"*.A_log", "*.D", "*.dt_proj_bias"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        parameter = next(self.parameters())
        self.head.reset(num_classes, global_pool)  # timm < 1.0.23 (nnunetv2's pin) takes no device/dtype here
        self.head.to(device=parameter.device, dtype=parameter.dtype)

    def forward_intermediates(
            self,
            x: Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Stage outputs (strides 4, 8, 16, 32), taken before the next stage's downsample.

        Args:
            x: (B, C, H, W) images.
            indices: Last n stages if int, all if None, else the stage indices to return.
            norm: Apply the final norm to the last stage's output.
            stop_early: Stop after the last requested stage.
            output_fmt: 'NCHW' or 'NHWC'.
            intermediates_only: Return only the intermediates.

        Returns:
            (final features as ``forward_features`` returns them, [intermediates]) or the intermediates.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        last_index = len(self.stages) - 1
        intermediates = []
        check_batched_input(x, 2, self.in_chans)
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                feat = self.norm(x) if norm and i == last_index else x
                if self.output_fmt != output_fmt:
                    feat = feat.permute(0, 3, 1, 2) if self.output_fmt == "NHWC" else feat.permute(0, 2, 3, 1)
                intermediates.append(feat)
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.stages):
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last index in ``indices`` (and the norm / head on request)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        check_batched_input(x, 2, self.in_chans)
        x = self.stem(x)
        x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# Official key names -> ours. The January 2024 (v0 release) names are first brought to the current official ones, as
# the official ``VSSM._load_from_state_dict`` does.
_LEGACY_RENAMES = (
    (r"^patch_embed\.proj\.", "patch_embed.0."),
    (r"^patch_embed\.norm\.", "patch_embed.2."),
    (r"^(layers\.\d+\.blocks\.\d+)\.ln_1\.", r"\1.norm."),
    (r"^(layers\.\d+\.blocks\.\d+)\.self_attention\.", r"\1.op."),
    (r"^norm\.", "classifier.norm."),
    (r"^head\.", "classifier.head."),
)
_RENAMES = (
    (r"^patch_embed\.5\.", "stem.conv2."),
    (r"^patch_embed\.7\.", "stem.norm2."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.norm\.", r"stages.\1.blocks.\2.norm1."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.op\.multi_scan\.attn\.", r"stages.\1.blocks.\2.mixer.attn."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.op\.dt_projs_", r"stages.\1.blocks.\2.mixer.dt_proj_"),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.op\.A_logs$", r"stages.\1.blocks.\2.mixer.A_log"),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.op\.Ds$", r"stages.\1.blocks.\2.mixer.D"),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.op\.", r"stages.\1.blocks.\2.mixer."),
    (r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks."),
    # the official downsample ends stage i, ours starts stage i + 1
    (r"^layers\.(\d+)\.downsample\.1\.", lambda m: f"stages.{int(m[1]) + 1}.downsample.conv."),
    (r"^layers\.(\d+)\.downsample\.3\.", lambda m: f"stages.{int(m[1]) + 1}.downsample.norm."),
    (r"^layers\.(\d+)\.downsample\.", lambda m: f"stages.{int(m[1]) + 1}.downsample."),
    (r"^classifier\.norm\.", "norm."),
    (r"^classifier\.head\.", "head.fc."),
)
_LINEAR_WEIGHTS = ("in_proj.weight", "out_proj.weight", "fc1.weight", "fc2.weight", "reduction.weight")


def convert_official_vssm(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Official VMamba / LocalVMamba ``VSSM`` state dict -> ``VMamba`` keys and shapes.

    Stacked SSM parameters are reshaped per direction (``A_logs`` (K * d_inner, N) -> ``A_log`` (K, d_inner, N),
    ``Ds`` (K * d_inner) -> ``D`` (K, d_inner)); Linear2d weights saved as 1x1 convs are flattened. Keys that match
    nothing are kept, so a strict load reports them.
    """
    conv_pair_stem = any(k.startswith("patch_embed.5.") for k in state_dict)
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _LEGACY_RENAMES:
            key = re.sub(pattern, repl, key)
        stem_names = ("conv1", "norm1") if conv_pair_stem else ("conv", "norm")
        key = re.sub(r"^patch_embed\.0\.", f"stem.{stem_names[0]}.", key)
        key = re.sub(r"^patch_embed\.2\.", f"stem.{stem_names[1]}.", key)
        for pattern, repl in _RENAMES:
            key = re.sub(pattern, repl, key)
        if key.endswith(_LINEAR_WEIGHTS) and value.dim() == 4:
            value = value.flatten(1)
        out[key] = value
    for key in [k for k in out if k.endswith(".mixer.A_log") or k.endswith(".mixer.D")]:
        num_directions, d_inner = out[key[:key.rindex(".")] + ".dt_proj_bias"].shape
        out[key] = out[key].reshape(num_directions, d_inner, *out[key].shape[1:])
    return out


@register_checkpoint_filter
def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: nn.Module) -> Dict[str, Tensor]:
    """Official checkpoint (as distributed: {'model': ...}, optional 'module.' prefixes) -> this model's keys."""
    state_dict = unwrap_checkpoint(state_dict)
    if any(k.startswith("stages.") for k in state_dict):
        return state_dict
    return convert_official_vssm(state_dict)


_OFFICIAL_V2_FORWARD_TYPES = ("v01", "v02", "v03", "v04", "v05", "v2", "v3")
_OFFICIAL_FIXED = dict(patch_size=4, ssm_act_layer="silu", mlp_act_layer="gelu", ssm_conv=3, ssm_drop_rate=0.0,
                       mlp_drop_rate=0.0, gmlp=False, patch_norm=True, posembed=False)
_OFFICIAL_IGNORED = ("ssm_init", "use_checkpoint", "imgsize")  # initialisation / memory / posembed-only settings


def official_vssm_args(kwargs: dict) -> dict:
    """Official ``VSSM(**kwargs)`` (classification/models/vmamba.py) -> ``VMamba`` arguments.

    Raises:
        ValueError: a setting outside the released models' code paths (forward types other than 'v0' and the
            'v01'...'v05'/'v2'/'v3' bases with optional '_noz', other norms, stems, downsamples, activations, gMLP,
            position embeddings, dropout inside the blocks).
    """
    kwargs = dict(kwargs)
    for name, supported in _OFFICIAL_FIXED.items():
        value = kwargs.pop(name, supported)
        if value != supported:
            raise ValueError(f"official VMamba setting {name}={value!r} is not supported (only {supported!r})")
    for name in _OFFICIAL_IGNORED:
        kwargs.pop(name, None)
    forward_type = kwargs.pop("forward_type", "v2")
    gated = not forward_type.endswith("_noz")
    base = forward_type[:-len("_noz")] if not gated else forward_type
    if forward_type == "v0":
        conv_bias = True  # the official v0 SS2D hard-codes its conv bias
        kwargs.pop("ssm_conv_bias", None)
    elif base in _OFFICIAL_V2_FORWARD_TYPES:
        conv_bias = kwargs.pop("ssm_conv_bias", True)
    else:
        raise ValueError(f"official forward_type {forward_type!r} is not supported: use 'v0' or one of "
                         f"{_OFFICIAL_V2_FORWARD_TYPES}, optionally with '_noz'")
    norm_layer = kwargs.pop("norm_layer", "LN").lower()
    if norm_layer not in ("ln", "ln2d"):
        raise ValueError(f"official norm_layer {norm_layer!r} is not supported (only 'ln' and 'ln2d')")
    stems = dict(v1="patchify", v2="conv_pair")
    downsamples = dict(v1="patch_merging", v3="conv3x3")
    stem_version = kwargs.pop("patchembed_version", "v1")
    downsample_version = kwargs.pop("downsample_version", "v2")
    if stem_version not in stems or downsample_version not in downsamples:
        raise ValueError(f"official patchembed_version {stem_version!r} / downsample_version {downsample_version!r} "
                         f"not supported (patch embed {sorted(stems)}, downsample {sorted(downsamples)})")
    depths = tuple(kwargs.pop("depths", (2, 2, 9, 2)))
    dims = kwargs.pop("dims", (96, 192, 384, 768))
    dims = tuple(dims * 2 ** i for i in range(len(depths))) if isinstance(dims, int) else tuple(dims)
    args = dict(
        depths=depths, dims=dims, in_chans=kwargs.pop("in_chans", 3), num_classes=kwargs.pop("num_classes", 1000),
        d_state=kwargs.pop("ssm_d_state", 16), ssm_ratio=kwargs.pop("ssm_ratio", 2.0),
        dt_rank=kwargs.pop("ssm_dt_rank", "auto"), conv_bias=conv_bias, gated=gated,
        mlp_ratio=kwargs.pop("mlp_ratio", 4.0), stem=stems[stem_version], downsample=downsamples[downsample_version],
        channel_first=norm_layer == "ln2d", drop_path_rate=kwargs.pop("drop_path_rate", 0.1),
    )
    if kwargs:
        raise ValueError(f"unknown official VMamba arguments: {sorted(kwargs)}")
    return args


@register_official("vmamba")
def _build_official(kwargs: dict, entry: Optional[str] = None):
    """``load_official('vmamba', ...)``: the official ``VSSM`` classifier (the only entry)."""
    if entry is not None and not entry.endswith("VSSM"):
        raise ValueError(f"vmamba: unknown official entry {entry!r} (only classification/models/vmamba.py:VSSM)")
    return VMamba(**official_vssm_args(kwargs)), convert_official_vssm


def _create_vmamba(variant: str, pretrained: bool = False, **kwargs) -> VMamba:
    return build_model_with_cfg(
        VMamba, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **dict(MODEL_VARIANTS[variant], **kwargs),
    )


# The two released generations (see the module docstring): what their blocks are made of. Each variant adds depths,
# widths and the SSM expansion; the official "sXlY" tags read ssm_ratio X, Y blocks in the third stage.
_V2_RELEASE = dict(d_state=1, gated=False, conv_bias=False, mlp_ratio=4.0, stem="conv_pair", downsample="conv3x3")
_V0_VANILLA = dict(d_state=16, ssm_ratio=2.0, gated=True, conv_bias=True, mlp_ratio=0.0, stem="patchify",
                   downsample="patch_merging")
_DIMS_96 = (96, 192, 384, 768)
_DIMS_128 = (128, 256, 512, 1024)
MODEL_VARIANTS: Dict[str, dict] = dict(
    vmamba_tiny=dict(_V2_RELEASE, depths=(2, 2, 8, 2), dims=_DIMS_96, ssm_ratio=1.0),  # T [s1l8]
    vmamba_small=dict(_V2_RELEASE, depths=(2, 2, 15, 2), dims=_DIMS_96, ssm_ratio=2.0),  # S [s2l15]
    vmamba_base=dict(_V2_RELEASE, depths=(2, 2, 15, 2), dims=_DIMS_128, ssm_ratio=2.0),  # B [s2l15]
    vmamba_tiny_s2l5=dict(_V2_RELEASE, depths=(2, 2, 5, 2), dims=_DIMS_96, ssm_ratio=2.0),
    vmamba_small_s1l20=dict(_V2_RELEASE, depths=(2, 2, 20, 2), dims=_DIMS_96, ssm_ratio=1.0),
    vmamba_base_s1l20=dict(_V2_RELEASE, depths=(2, 2, 20, 2), dims=_DIMS_128, ssm_ratio=1.0),
    vmamba_tiny_v0=dict(_V0_VANILLA, depths=(2, 2, 9, 2), dims=_DIMS_96),
    vmamba_small_v0=dict(_V0_VANILLA, depths=(2, 2, 27, 2), dims=_DIMS_96),
    vmamba_base_v0=dict(_V0_VANILLA, depths=(2, 2, 27, 2), dims=_DIMS_128),
    test_vmamba=dict(_V2_RELEASE, depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), ssm_ratio=1.0),
)

_RELEASES = "https://github.com/MzeroMiko/VMamba/releases/download/"


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url,
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1", "classifier": "head.fc",
        "license": "mit", "paper_ids": "arXiv:2401.10166", "paper_name": "VMamba: Visual State Space Model",
        "origin_url": "https://github.com/MzeroMiko/VMamba",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    # VMamba v2 (2024-02/03 release; README main table and extras)
    "vmamba_tiny.in1k": _cfg(_RELEASES + "%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth"),
    "vmamba_small.in1k": _cfg(_RELEASES + "%23v2cls/vssm_small_0229_ckpt_epoch_222.pth"),
    "vmamba_base.in1k": _cfg(_RELEASES + "%23v2cls/vssm_base_0229_ckpt_epoch_237.pth"),
    "vmamba_tiny_s2l5.in1k": _cfg(_RELEASES + "%23v2cls/vssm_tiny_0230_ckpt_epoch_262.pth"),
    "vmamba_small_s1l20.in1k": _cfg(_RELEASES + "%23v2cls/vssm1_small_0229s_ckpt_epoch_240.pth"),
    "vmamba_base_s1l20.in1k": _cfg(_RELEASES + "%23v2cls/vssm1_base_0229s_ckpt_epoch_225.pth"),
    # Vanilla VMamba (v0, January 2024; the tiny checkpoint was trained without EMA)
    "vmamba_tiny_v0.in1k": _cfg(_RELEASES + "%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth", first_conv="stem.conv"),
    "vmamba_small_v0.in1k": _cfg(_RELEASES + "%23v0cls/vssmsmall_dp03_ckpt_epoch_238.pth", first_conv="stem.conv"),
    "vmamba_base_v0.in1k": _cfg(_RELEASES + "%23v0cls/vssmbase_dp06_ckpt_epoch_241.pth", first_conv="stem.conv"),
    # tiny random-weight variant for tests
    "test_vmamba": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), license="apache-2.0"),
})


@register_model
def vmamba_tiny(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-T [s1l8]: 30.2M params, 4.9 GFLOPs, 82.6 top-1."""
    return _create_vmamba("vmamba_tiny", pretrained, **kwargs)


@register_model
def vmamba_small(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-S [s2l15]: 50.1M params, 8.7 GFLOPs, 83.6 top-1."""
    return _create_vmamba("vmamba_small", pretrained, **kwargs)


@register_model
def vmamba_base(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-B [s2l15]: 88.6M params, 15.4 GFLOPs, 83.9 top-1."""
    return _create_vmamba("vmamba_base", pretrained, **kwargs)


@register_model
def vmamba_tiny_s2l5(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-T [s2l5]: 30.7M params, 4.9 GFLOPs, 82.5 top-1."""
    return _create_vmamba("vmamba_tiny_s2l5", pretrained, **kwargs)


@register_model
def vmamba_small_s1l20(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-S [s1l20]: 49.0M params, 8.6 GFLOPs, 83.3 top-1."""
    return _create_vmamba("vmamba_small_s1l20", pretrained, **kwargs)


@register_model
def vmamba_base_s1l20(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-B [s1l20]: 86.6M params, 15.2 GFLOPs, 83.8 top-1."""
    return _create_vmamba("vmamba_base_s1l20", pretrained, **kwargs)


@register_model
def vmamba_tiny_v0(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla VMamba-T: 22.9M params, 5.6 GFLOPs, 82.2 top-1."""
    return _create_vmamba("vmamba_tiny_v0", pretrained, **kwargs)


@register_model
def vmamba_small_v0(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla VMamba-S: 44.4M params, 11.2 GFLOPs, 83.5 top-1."""
    return _create_vmamba("vmamba_small_v0", pretrained, **kwargs)


@register_model
def vmamba_base_v0(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla VMamba-B: 76.3M params, 18.0 GFLOPs, 83.2 top-1 (paper v1; 83.7 in the repo table)."""
    return _create_vmamba("vmamba_base_v0", pretrained, **kwargs)


@register_model
def test_vmamba(pretrained: bool = False, **kwargs) -> VMamba:
    """Tiny v2-style VMamba for tests (random weights)."""
    return _create_vmamba("test_vmamba", pretrained, **kwargs)
