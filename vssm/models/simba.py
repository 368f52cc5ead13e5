"""SiMBA: Simplified Mamba-based Architecture for Vision and Multivariate Time series.

Paper: Badri N. Patro, Vijay S. Agneeswaran, arXiv 2403.15360 (https://arxiv.org/abs/2403.15360).
Official code: https://github.com/badripatro/Simba (classification/simba.py, commit 44865e4); no licence file and
no released checkpoints (official issues #7, #9), so no variant has pretrained weights.

```
@article{patro2024simba,
  title={SiMBA: Simplified Mamba-Based Architecture for Vision and Multivariate Time series},
  author={Patro, Badri N. and Agneeswaran, Vijay S.},
  journal={arXiv preprint arXiv:2403.15360},
  year={2024}
}
```

Naming: the official repository registers ``simba_s/b/l`` with the MLP channel mixer hard-coded, while the paper's
tables (15.3M / 22.8M / 36.6M, 81.7 / 83.5 / 84.4 top-1) describe the EinFFT model; so the plain names build what the
official code builds and the paper's model carries an ``_einfft`` suffix. Three channel mixers, one architecture:

- ``simba_s`` / ``simba_b`` / ``simba_l``: what ``timm.create_model('simba_s')`` builds in the official repository,
  the **MLP channel mixer** (PVT-v2 FFN: fc1 -> 3x3 depthwise conv -> GELU -> fc2; fc1 -> GELU -> fc2 in the class
  block) with the token-labeling auxiliary head (26.6M / 40.2M / 66.8M parameters).
- ``simba_s_einfft`` / ``simba_b_einfft`` / ``simba_l_einfft``: the paper's **EinFFT** channel mixer
  (``vssm.layers.einfft``), the model of the paper's tables (15.3M / 22.8M / 36.6M); the official code builds it
  when its hard-coded ``cm_type`` string is edited.
- ``simba_s_monarch`` / ``simba_b_monarch`` / ``simba_l_monarch``: the paper's Monarch rows (18.5M / 26.9M / 42M),
  for which no code exists. Built from the Monarch Mixer construction (dense MLP matrices replaced by Monarch
  matrices): the released MLP mixer with fc1 and fc2 each a Monarch matrix P2 R P1 L (two block-diagonal factors of
  4 blocks joined by stride permutations, ``vssm.layers.monarch``), the depthwise conv, GELU and biases kept;
  17.9M / 26.8M / 43.5M (-3.2% / -0.4% / +3.7% against the paper).

Network (``SiMBA``): conv stem (stride 4) -> 4 stages of [stride-2 conv + LayerNorm, blocks of
(x + Mamba(LN(x)), x + ChannelMixer(LN(x))), stage LayerNorm (stages 1-3)] -> class-token block -> LayerNorm -> head.
The token mixer is the stock causal Mamba (d_state 64) over raster-order tokens. The class token is the mean of the
stage-4 tokens refined by a Mamba over a length-1 sequence and a channel mixer; with ``token_label=True`` (official
default) an auxiliary head scores every stage-4 token and the output is head(cls) + 0.5 * max over tokens of
aux_head(tokens), in training and evaluation alike (the official training forward returns the two heads separately
for the token-labeling loss: ``forward_token_label``). ``aux_weight=0`` keeps the class-token logits alone.

Modifications: vssm layout (``stem``, ``stages.i.{downsample,blocks,norm}``, ``cls_block``, ``norm``, ``head``,
``aux_head``; ``checkpoint_filter_fn`` converts official state dicts); the scan runs on ``vssm.ops``; MixToken (a
training augmentation inside the official forward) is left to the training loop; ``drop_rate`` adds head dropout.
"""
import re
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, calculate_drop_path_rates, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import Tensor

from ..convert import register_checkpoint_filter, register_official, unwrap_checkpoint
from ..layers.checks import check_batched_input
from ..layers.einfft import EinFFT
from ..layers.monarch import MonarchMlp
from ..layers.norm import LayerNorm
from ..layers.simba_mixer import CausalMambaMixer
from ..layers.ssm_init import init_dt_projection_

__all__ = ["SiMBA"]

CHANNEL_MIXERS = ("mlp", "einfft", "monarch")


class Stem(nn.Module):
    """Conv 7x7/2, BN-ReLU, 2 x (conv 3x3, BN-ReLU), conv 3x3/2, LayerNorm: (B, 3, H, W) -> (B, H/4, W/4, C)."""

    def __init__(self, in_chans: int, hidden: int, dim: int, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, hidden, 7, stride=2, padding=3, bias=False, **dd), nn.BatchNorm2d(hidden, **dd),
            nn.ReLU(True),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False, **dd), nn.BatchNorm2d(hidden, **dd), nn.ReLU(True),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False, **dd), nn.BatchNorm2d(hidden, **dd), nn.ReLU(True),
        )
        self.proj = nn.Conv2d(hidden, dim, 3, stride=2, padding=1, **dd)
        self.norm = nn.LayerNorm(dim, **dd)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(self.conv(x)).permute(0, 2, 3, 1))


class Downsample(nn.Module):
    """Conv 3x3/2 -> LayerNorm: (B, H, W, C_in) -> (B, H/2, W/2, C_out)."""

    def __init__(self, in_dim: int, dim: int, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, dim, 3, stride=2, padding=1, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class ConvMlp(nn.Module):
    """PVT-v2 FFN on a (B, H, W, C) map: fc1 -> 3x3 depthwise conv (bias) -> GELU -> fc2."""

    def __init__(self, dim: int, hidden_dim: int, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(dim, hidden_dim, **dd)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim, **dd)
        self.fc2 = nn.Linear(hidden_dim, dim, **dd)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dwconv(self.fc1(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.fc2(F.gelu(x))


def channel_mixer(kind: str, dim: int, mlp_ratio: float, spatial: bool, device=None, dtype=None) -> nn.Module:
    """The channel mixer ``kind`` on (B, H, W, C) maps; ``spatial`` False = the class block's (no depthwise conv)."""
    dd = {"device": device, "dtype": dtype}
    hidden = int(dim * mlp_ratio)
    if kind == "mlp":
        return ConvMlp(dim, hidden, **dd) if spatial else Mlp(dim, hidden, **dd)
    if kind == "einfft":
        return EinFFT(dim, **dd)
    if kind == "monarch":
        return MonarchMlp(dim, hidden, dwconv=spatial, **dd)
    raise ValueError(f"unknown SiMBA channel mixer {kind!r}; expected one of {CHANNEL_MIXERS}")


class SimbaBlock(nn.Module):
    """x + DropPath(Mamba(LN(x))), then x + DropPath(ChannelMixer(LN(x))) on a (B, H, W, C) map."""

    def __init__(
            self,
            dim: int,
            mlp_ratio: float,
            mixer: str,
            d_state: int,
            norm_eps: float,
            drop_path: float,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        # the Mamba layer's own norm: eps 1e-5 (official MambaLayer); both norms feed Linears (bf16 under autocast)
        self.norm1 = LayerNorm(dim, autocast_output=True, **dd)
        self.token_mixer = CausalMambaMixer(dim, d_state=d_state, **dd)
        self.norm2 = LayerNorm(dim, eps=norm_eps, autocast_output=True, **dd)
        self.mlp = channel_mixer(mixer, dim, mlp_ratio, True, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, dim = x.shape
        tokens = self.norm1(x).reshape(batch, height * width, dim)  # raster order
        x = x + self.drop_path(self.token_mixer(tokens).reshape(batch, height, width, dim))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ClassTokenBlock(nn.Module):
    """The class-token ("post") block: c + Mamba(LN(c)) over the length-1 sequence c, then c + Mixer(LN(c)).

    c (B, 1, C) is the mean of the stage-4 tokens; the Mamba sees only c, so this is a token-wise update.
    """

    def __init__(self, dim: int, mlp_ratio: float, mixer: str, d_state: int, norm_eps: float, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm1 = LayerNorm(dim, autocast_output=True, **dd)
        self.token_mixer = CausalMambaMixer(dim, d_state=d_state, **dd)
        self.norm2 = LayerNorm(dim, eps=norm_eps, autocast_output=True, **dd)
        self.mlp = channel_mixer(mixer, dim, mlp_ratio, False, **dd)

    def forward(self, cls_token: Tensor) -> Tensor:
        """cls_token: (B, 1, C) -> (B, 1, C)."""
        cls_token = cls_token + self.token_mixer(self.norm1(cls_token))
        return cls_token + self.mlp(self.norm2(cls_token))


class SimbaStage(nn.Module):
    """[Downsample] -> blocks -> [stage LayerNorm] on (B, H, W, C) maps."""

    def __init__(
            self,
            in_dim: int,
            dim: int,
            depth: int,
            mlp_ratio: float,
            mixer: str,
            d_state: int,
            norm_eps: float,
            drop_path: List[float],
            downsample: bool,
            out_norm: bool,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.grad_checkpointing = False
        self.downsample = Downsample(in_dim, dim, **dd) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            SimbaBlock(dim, mlp_ratio, mixer, d_state, norm_eps, drop_path[j], **dd) for j in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=norm_eps, **dd) if out_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)


class SiMBA(nn.Module):
    """SiMBA image classifier (see the module docstring)."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "token",
            stem_width: int = 32,
            dims: Tuple[int, ...] = (64, 128, 320, 448),
            depths: Tuple[int, ...] = (3, 4, 6, 3),
            mlp_ratios: Tuple[float, ...] = (8, 8, 4, 4),
            channel_mixer: str = "mlp",
            d_state: int = 64,
            token_label: bool = True,
            aux_weight: float = 0.5,
            norm_eps: float = 1e-6,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            mamba_dt_init: bool = False,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            dynamic_img_size: bool = True,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_chans: Input channels.
            num_classes: Classes (0: no classifier).
            global_pool: 'token' (official: the mean-pooled class token refined by the class-token block) or ''
                (no pooling: forward_head returns the final-normed (B, H, W, C) map).
            stem_width: Hidden width of the conv stem.
            dims: Channels per stage.
            depths: Blocks per stage.
            mlp_ratios: Hidden ratio of the MLP / Monarch mixers per stage (unused by EinFFT).
            channel_mixer: 'mlp' (released code), 'einfft' (paper) or 'monarch' (Monarch MLP).
            d_state: Mamba state size N.
            token_label: Build the token-labeling auxiliary head (official default True; it is in the official and
                the paper's parameter counts: num_classes * (C + 1), 0.45M for SiMBA-S, 0.51M for B and L).
            aux_weight: Weight of the auxiliary head's max-over-tokens logits in the output (official 0.5; 0 leaves
                the class-token logits alone).
            norm_eps: Eps of the block, stage and final LayerNorms (the factories' 1e-6; stem, downsampling and Mamba
                LayerNorms keep 1e-5 as in the official code).
            drop_rate: Dropout before the heads (the official code ignores it).
            drop_path_rate: Stochastic depth, linear 0..drop_path_rate over all stage blocks, as the official code
                (default 0; official training 0.1 for S and B, 0.3 for L).
            mamba_dt_init: Keep Mamba's step-size initialisation; the official init (False) re-initialises every
                Linear, dt_proj included, to trunc-normal(0.02) with zero bias.
            img_size, dynamic_img_size: Accepted as timm's hierarchical models accept them; SiMBA takes any input size
                (multiples of 32 keep every feature map whole), so neither changes the model.
        """
        super().__init__()
        if channel_mixer not in CHANNEL_MIXERS:
            raise ValueError(f"unknown SiMBA channel mixer {channel_mixer!r}; expected one of {CHANNEL_MIXERS}")
        dd = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.global_pool = self._check_pool(global_pool)
        self.num_features = self.head_hidden_size = dims[-1]
        self.aux_weight = aux_weight
        self.output_fmt = "NHWC"

        self.in_chans = in_chans
        self.stem = Stem(in_chans, stem_width, dims[0], **dd)
        rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)  # linear over all blocks
        self.stages = nn.Sequential(*[
            SimbaStage(dims[max(i - 1, 0)], dims[i], depths[i], mlp_ratios[i], channel_mixer, d_state, norm_eps,
                       rates[i], downsample=i > 0, out_norm=i < len(dims) - 1, **dd)
            for i in range(len(dims))])
        self.feature_info = [dict(num_chs=d, reduction=4 * 2 ** i, module=f"stages.{i}") for i, d in enumerate(dims)]
        self.cls_block = ClassTokenBlock(dims[-1], mlp_ratios[-1], channel_mixer, d_state, norm_eps, **dd)
        self.norm = nn.LayerNorm(dims[-1], eps=norm_eps, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.aux_head = None  # the token-labeling head: one more Linear(C, num_classes)
        if token_label:
            self.aux_head = nn.Linear(dims[-1], num_classes, **dd) if num_classes > 0 else nn.Identity()

        self.apply(self._init_weights)
        if mamba_dt_init:
            for module in self.modules():
                if isinstance(module, CausalMambaMixer):
                    init_dt_projection_(module.dt_proj.weight, module.dt_proj.bias)

    @staticmethod
    def _check_pool(global_pool: str) -> str:
        if global_pool not in ("token", ""):
            raise ValueError(f"SiMBA global_pool must be 'token' or '', got {global_pool!r}")
        return global_pool

    @staticmethod
    def _init_weights(module: nn.Module):
        """Official init: Linear trunc-normal(0.02) + zero bias, Conv2d normal(0, sqrt(2 / fan_out)), LN 1 / 0."""
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            nn.init.normal_(module.weight, 0, (2.0 / fan_out) ** 0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"*.A_log", "*.D"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^stages\.(\d+)\.norm", (99998,)),
                (r"^cls_block|^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = self._check_pool(global_pool)
        dd = {"device": self.stem.proj.weight.device, "dtype": self.stem.proj.weight.dtype}
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        if self.aux_head is not None:
            self.aux_head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def forward_intermediates(self, x: Tensor, indices: Optional[Union[int, List[int]]] = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Stage outputs (stages 1-3 after their stage norm, stage 4 raw or, with ``norm``, after the final norm).

        Args:
            x: (B, C, H, W) images.
            indices: last n stages if int, all if None, else the stage indices to take.
            norm: apply the final norm to the last stage's map.
            stop_early: stop after the last stage taken.
            output_fmt: 'NCHW' or 'NHWC' for the intermediates.
            intermediates_only: return only the intermediates.

        Returns:
            (final (B, H/32, W/32, C) map as forward_features, intermediates) or the intermediates.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_index = len(self.stages) - 1
        check_batched_input(x, 2, self.in_chans)
        x = self.stem(x)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                feature = self.norm(x) if norm and i == last_index else x
                intermediates.append(feature.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else feature)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last one ``indices`` needs (and the class block and heads with ``prune_head``)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.cls_block = nn.Identity()
            self.aux_head = None
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> stage-4 map (B, H/32, W/32, C), before the class block and the final norm."""
        check_batched_input(x, 2, self.in_chans)
        return self.stages(self.stem(x))

    def _head_tokens(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Stage-4 map (B, H, W, C) -> (normed class token (B, C), normed patch tokens (B, H*W, C))."""
        tokens = x.flatten(1, 2)
        cls_token = self.cls_block(tokens.mean(1, keepdim=True))
        return self.norm(cls_token[:, 0]), self.norm(tokens)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Stage-4 map (B, H, W, C) -> logits (B, num_classes), or the normed class token with ``pre_logits``."""
        if self.global_pool == "":
            x = self.head_drop(self.norm(x))
            return x if pre_logits else self.head(x)
        cls_token, tokens = self._head_tokens(x)
        cls_token = self.head_drop(cls_token)
        if pre_logits:
            return cls_token
        logits = self.head(cls_token)
        if self.aux_head is not None and self.aux_weight != 0 and self.num_classes > 0:
            logits = logits + self.aux_weight * self.aux_head(self.head_drop(tokens)).amax(1)
        return logits

    def forward_token_label(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """The two heads apart, for the token-labeling loss: (class logits (B, K), token logits (B, H*W, K))."""
        if self.aux_head is None:
            raise RuntimeError("forward_token_label needs the auxiliary head: build the model with token_label=True")
        cls_token, tokens = self._head_tokens(self.forward_features(x))
        return self.head(self.head_drop(cls_token)), self.aux_head(self.head_drop(tokens))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------------------------------
# Official checkpoints

_OFFICIAL_RULES = (
    (r"^patch_embed1\.", "stem."),
    (r"^patch_embed(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.downsample."),
    (r"^block(\d+)\.(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}."),
    (r"^post_network\.0\.", "cls_block."),
    (r"\.attn\.norm\.", ".norm1."),
    (r"\.attn\.mamba\.", ".token_mixer."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
)


def convert_official(state_dict: Dict[str, Tensor], num_stages: int = 4) -> Dict[str, Tensor]:
    """Official SiMBA key names -> vssm key names (``norm{num_stages}`` is the final norm)."""
    out = {}
    for key, value in state_dict.items():
        norm = re.match(r"^norm(\d+)\.(.*)$", key)
        if norm:
            stage = int(norm[1])
            key = f"norm.{norm[2]}" if stage == num_stages else f"stages.{stage - 1}.norm.{norm[2]}"
        for pattern, repl in _OFFICIAL_RULES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


@register_checkpoint_filter
def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: SiMBA) -> Dict[str, Tensor]:
    """Official checkpoint -> vssm keys: the trainer's {'state_dict': ...}, the {'model': {'state_dict': ...}} that
    its --finetune / --resume also accept, or a flat state dict ('module.' prefixes dropped)."""
    if isinstance(state_dict.get("model"), dict) and "state_dict" in state_dict["model"]:
        state_dict = state_dict["model"]
    state_dict = unwrap_checkpoint(state_dict)
    if "stem.proj.weight" in state_dict:
        return state_dict
    return convert_official(state_dict, len(model.stages))


@register_official("simba")
def _official_builder(kwargs: dict, entry: Optional[str]):
    """``classification/simba.py:SiMBA(**kwargs)``; ``_cm_type`` / ``cm_type`` (or 'EinFFT' in ``entry``) picks the
    channel mixer the official code hard-codes ('mlp' as released)."""
    mixer = str(kwargs.pop("_cm_type", kwargs.pop("cm_type", "EinFFT" if entry and "EinFFT" in entry else "mlp")))
    norm_layer = str(kwargs.pop("norm_layer", ""))
    eps = re.search(r"eps=([0-9.e-]+)", norm_layer)
    kwargs.pop("sr_ratios", None)  # accepted and ignored by the official code
    num_stages = kwargs.pop("num_stages", len(kwargs.get("embed_dims", (0,) * 4)))
    if num_stages != len(kwargs.get("embed_dims", (0,) * 4)):
        raise ValueError(f"simba: num_stages={num_stages} must equal len(embed_dims)")
    model = SiMBA(
        in_chans=kwargs.pop("in_chans", 3), num_classes=kwargs.pop("num_classes", 1000),
        stem_width=kwargs.pop("stem_hidden_dim", 32), dims=tuple(kwargs.pop("embed_dims", (64, 128, 320, 448))),
        depths=tuple(kwargs.pop("depths", (3, 4, 6, 3))), mlp_ratios=tuple(kwargs.pop("mlp_ratios", (8, 8, 4, 4))),
        channel_mixer="einfft" if mixer.lower() == "einfft" else "mlp", token_label=kwargs.pop("token_label", True),
        norm_eps=float(eps[1]) if eps else 1e-5, drop_path_rate=kwargs.pop("drop_path_rate", 0.))
    if kwargs:
        raise TypeError(f"simba: unsupported official kwargs {sorted(kwargs)}")
    return model, lambda sd: convert_official(sd, len(model.stages))


# ---------------------------------------------------------------------------------------------------------------------
# Variants

_SIZES = {
    "s": dict(stem_width=32, dims=(64, 128, 320, 448), depths=(3, 4, 6, 3)),
    "b": dict(stem_width=64, dims=(64, 128, 320, 512), depths=(3, 4, 12, 3)),
    "l": dict(stem_width=64, dims=(96, 192, 384, 512), depths=(3, 6, 18, 3)),
}
MODEL_VARIANTS: Dict[str, dict] = {
    **{f"simba_{size}": dict(args, channel_mixer="mlp") for size, args in _SIZES.items()},
    **{f"simba_{size}_einfft": dict(args, channel_mixer="einfft") for size, args in _SIZES.items()},
    **{f"simba_{size}_monarch": dict(args, channel_mixer="monarch") for size, args in _SIZES.items()},
    "test_simba": dict(stem_width=8, dims=(16, 16, 24, 32), depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2),
                       channel_mixer="einfft", d_state=8),
}


def _create_simba(variant: str, pretrained: bool = False, **kwargs) -> SiMBA:
    return build_model_with_cfg(
        SiMBA, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter", flatten_sequential=True),
        **dict(MODEL_VARIANTS[variant], **kwargs),
    )


def _cfg(**kwargs) -> Dict:
    """ImageNet evaluation as the official trainer ran it (224, bicubic, crop 0.96, ImageNet mean/std), not the
    ViT ``_cfg()`` the official factories attach (mean/std 0.5, crop 0.9)."""
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.96,
        "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv.0", "classifier": ("head", "aux_head"),
        "license": "unknown", "paper_ids": "arXiv:2403.15360", "paper_name": "SiMBA: Simplified Mamba-Based "
        "Architecture for Vision and Multivariate Time series", "origin_url": "https://github.com/badripatro/Simba",
        "notes": ("no official weights released",),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    # no official weights exist for any SiMBA variant (architecture only)
    "simba_s": _cfg(), "simba_b": _cfg(), "simba_l": _cfg(),
    "simba_s_einfft": _cfg(), "simba_b_einfft": _cfg(), "simba_l_einfft": _cfg(),
    "simba_s_monarch": _cfg(), "simba_b_monarch": _cfg(), "simba_l_monarch": _cfg(),
    "test_simba": _cfg(input_size=(3, 64, 64), pool_size=(2, 2)),
})


@register_model
def simba_s(pretrained: bool = False, **kwargs) -> SiMBA:
    """SiMBA-S as the official repository registers it (26.6M, token-labeling head): channel mixer = MLP (PVT-v2
    FFN), NOT the paper's EinFFT. The paper's EinFFT model (15.3M) is ``simba_s_einfft``."""
    return _create_simba("simba_s", pretrained, **kwargs)


@register_model
def simba_b(pretrained: bool = False, **kwargs) -> SiMBA:
    """SiMBA-B as the official repository registers it (40.2M, token-labeling head): channel mixer = MLP (PVT-v2
    FFN), NOT the paper's EinFFT. The paper's EinFFT model (22.8M) is ``simba_b_einfft``."""
    return _create_simba("simba_b", pretrained, **kwargs)


@register_model
def simba_l(pretrained: bool = False, **kwargs) -> SiMBA:
    """SiMBA-L as the official repository registers it (66.8M, token-labeling head): channel mixer = MLP (PVT-v2
    FFN), NOT the paper's EinFFT. The paper's EinFFT model (36.6M) is ``simba_l_einfft``."""
    return _create_simba("simba_l", pretrained, **kwargs)


@register_model
def simba_s_einfft(pretrained: bool = False, **kwargs) -> SiMBA:
    """SiMBA-S with the paper's EinFFT channel mixer and the token-labeling head (15.3M, paper: 81.7 top-1)."""
    return _create_simba("simba_s_einfft", pretrained, **kwargs)


@register_model
def simba_b_einfft(pretrained: bool = False, **kwargs) -> SiMBA:
    """SiMBA-B with the paper's EinFFT channel mixer and the token-labeling head (22.8M, paper: 83.5 top-1)."""
    return _create_simba("simba_b_einfft", pretrained, **kwargs)


@register_model
def simba_l_einfft(pretrained: bool = False, **kwargs) -> SiMBA:
    """SiMBA-L with the paper's EinFFT channel mixer and the token-labeling head (36.6M, paper: 84.4 top-1)."""
    return _create_simba("simba_l_einfft", pretrained, **kwargs)


@register_model
def simba_s_monarch(pretrained: bool = False, **kwargs) -> SiMBA:
    """SiMBA-S with a Monarch MLP channel mixer (no official code; 17.9M vs the paper's 18.5M, see the module doc)."""
    return _create_simba("simba_s_monarch", pretrained, **kwargs)


@register_model
def simba_b_monarch(pretrained: bool = False, **kwargs) -> SiMBA:
    """SiMBA-B with a Monarch MLP channel mixer (no official code; 26.8M vs the paper's 26.9M, see the module doc)."""
    return _create_simba("simba_b_monarch", pretrained, **kwargs)


@register_model
def simba_l_monarch(pretrained: bool = False, **kwargs) -> SiMBA:
    """SiMBA-L with a Monarch MLP channel mixer (no official code; 43.5M vs the paper's 42M, see the module doc)."""
    return _create_simba("simba_l_monarch", pretrained, **kwargs)


@register_model
def test_simba(pretrained: bool = False, **kwargs) -> SiMBA:
    """Tiny SiMBA (EinFFT, d_state 8) for fast tests."""
    return _create_simba("test_simba", pretrained, **kwargs)
