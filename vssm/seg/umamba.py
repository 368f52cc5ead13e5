"""U-Mamba: nnU-Net's residual U-Net with Mamba layers at the bottleneck (U-Mamba_Bot) or after every (3-D) or every
other (2-D) encoder stage (U-Mamba_Enc), in 2-D and 3-D.

Paper: "U-Mamba: Enhancing Long-range Dependency for Biomedical Image Segmentation", Jun Ma, Feifei Li, Bo Wang,
arXiv 2401.04722 (https://arxiv.org/abs/2401.04722). Official code: https://github.com/bowang-lab/U-Mamba (commit
28459e3, Apache-2.0), networks in ``umamba/nnunetv2/nets/UMamba{Bot,Enc}_{2d,3d}.py`` on top of
``dynamic_network_architectures`` (``BasicBlockD``) and ``mamba_ssm`` (``Mamba`` v1). Written here from the official
networks' behaviour; the Mamba layers run on vssm's scan engine (``vssm.layers.MambaMixer``, one forward direction).

```
@article{ma2024u,
  title={U-Mamba: Enhancing Long-range Dependency for Biomedical Image Segmentation},
  author={Ma, Jun and Li, Feifei and Wang, Bo},
  journal={arXiv preprint arXiv:2401.04722},
  year={2024}
}
```

Network, for ``n`` stages with features ``f_s``, kernels ``k_s`` and strides ``stride_s`` (an nnU-Net plan):

* encoder: ``stem`` = residual block (in -> f_0, k_0, stride 1) + (blocks_0 - 1) basic blocks; then stage s =
  residual block (f_{s-1} -> f_s, k_s, stride_s) + (blocks_s - 1) basic blocks, stage 0 again at full resolution
  (stride_0 is all ones in nnU-Net plans). The stage outputs are the skips.
* residual block (official ``BasicResBlock``): conv(k, stride) -> InstanceNorm -> LeakyReLU -> conv(k) ->
  InstanceNorm, plus a 1x1 (strided) conv of the input, then LeakyReLU. Basic block (``BasicBlockD``): the same with
  an identity shortcut.
* decoder stage s = 1 .. n-1 (deepest first): nearest upsampling by stride_{n-s} -> 1x1 conv to f_{n-1-s} ->
  concatenated with skip n-1-s -> residual block (k_{n-1-s}) + basic blocks -> 1x1 conv to the class logits. In the
  2-D nets the last (full-resolution) stage concatenates no skip.
* block counts (the official constructors rewrite the plan's lists): encoder stages ``s >= ceil(n / 2)`` get one
  block, decoder stages ``s >= ceil((n - 1) / 2 + 0.5)`` (counted deepest first) one block (``umamba_block_counts``).
* Mamba layer (``MambaLayer``): tokens -> LayerNorm -> Mamba (d_state 16, d_conv 4, expand 2), one causal scan, no
  residual around it (its output replaces the feature map). Tokens are the voxels in row-major order (token
  ``(d * H + h) * W + w``, the ``raster`` kind of ``vssm.ops.scan_paths``) with the channels as model dim, or, in
  channel-token mode, the channels with the flattened voxels as model dim.
* U-Mamba_Bot: one Mamba layer on the deepest skip. U-Mamba_Enc: a Mamba layer after encoder stage s for every s in
  3-D and for ``bool(s % 2) != bool(n % 2)`` in 2-D (always including the deepest stage); a stage whose feature map at
  the plan's patch size has no more voxels than channels (``prod(map) <= f_s``) runs in channel-token mode
  (``channel_token_stages``), so U-Mamba_Enc is tied to its patch size.

Deep supervision (nnU-Net's switch ``net.decoder.deep_supervision``): on, ``forward`` returns the logits of every
decoder stage, highest resolution first; off, the full-resolution logits alone.

What differs from the official code: the decoder does not hold a second reference to the encoder and the basic blocks
register their convs and norms once, so the state dict has no duplicates (``convert_official_state_dict`` removes the
official ``decoder.encoder.*`` and ``all_modules.*`` copies); the Mamba layers run in the float32 of their parameters
with autocast off for every half-precision input (the official 2-D layers cast only float16, so bfloat16 autocast
fails there); Mamba parameters are stacked on a leading direction axis (``MambaMixer``).
"""
import math
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..convert import register_official
from ..layers.mamba_mixer import MambaMixer, stack_official_directions

__all__ = [
    "UMambaBot", "UMambaEnc", "MambaLayer", "convert_official_state_dict", "umamba_block_counts",
    "channel_token_stages", "mamba_stages", "feature_map_sizes", "umamba_from_official_kwargs",
]

Sizes = Tuple[int, ...]

_NEGATIVE_SLOPE = 1e-2  # nnU-Net's LeakyReLU, and the slope InitWeights_He assumes
_NORM_EPS = 1e-5


# --- the official rules --------------------------------------------------------------------------------------------

def umamba_block_counts(n_blocks_per_stage: Sequence[int], n_blocks_per_stage_decoder: Sequence[int]
                        ) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """The block counts the official constructors use: encoder stages ``s >= ceil(n / 2)`` and decoder stages
    ``s >= ceil((n - 1) / 2 + 0.5)`` (decoder list ordered deepest first) get one block; the others keep theirs."""
    n_stages = len(n_blocks_per_stage)
    encoder = [1 if s >= math.ceil(n_stages / 2) else b for s, b in enumerate(n_blocks_per_stage)]
    first_single = math.ceil((n_stages - 1) / 2 + 0.5)
    decoder = [1 if s >= first_single else b for s, b in enumerate(n_blocks_per_stage_decoder)]
    return tuple(encoder), tuple(decoder)


def feature_map_sizes(input_size: Sequence[int], strides: Sequence[Sequence[int]]) -> List[Sizes]:
    """Spatial size of every encoder stage's output for an input of ``input_size``: ``size // stride`` per stage,
    cumulatively (the official rule, also for sizes that the strides do not divide)."""
    sizes, size = [], tuple(input_size)
    for stride in strides:
        size = tuple(i // j for i, j in zip(size, stride))
        sizes.append(size)
    return sizes


def channel_token_stages(input_size: Sequence[int], strides: Sequence[Sequence[int]],
                         features_per_stage: Sequence[int]) -> List[bool]:
    """Per encoder stage, whether U-Mamba_Enc scans its channels instead of its voxels: the official rule
    ``prod(feature map size) <= features`` at the patch size ``input_size``."""
    return [math.prod(size) <= features
            for size, features in zip(feature_map_sizes(input_size, strides), features_per_stage)]


def mamba_stages(n_stages: int, dim: int) -> List[bool]:
    """Per encoder stage, whether U-Mamba_Enc puts a Mamba layer after it: every stage in 3-D; in 2-D the stages with
    ``bool(s % 2) != bool(n_stages % 2)`` (alternating, always including the deepest)."""
    if dim == 3:
        return [True] * n_stages
    return [bool(s % 2) != bool(n_stages % 2) for s in range(n_stages)]


# --- building blocks -----------------------------------------------------------------------------------------------

def _conv(dim: int, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, **dd) -> nn.Module:
    return (nn.Conv2d if dim == 2 else nn.Conv3d)(in_channels, out_channels, kernel_size, stride, padding, bias=True,
                                                  **dd)


def _norm(dim: int, channels: int, **dd) -> nn.Module:
    return (nn.InstanceNorm2d if dim == 2 else nn.InstanceNorm3d)(channels, eps=_NORM_EPS, affine=True, **dd)


def _act() -> nn.Module:
    return nn.LeakyReLU(_NEGATIVE_SLOPE, inplace=True)


class ResidualConvBlock(nn.Module):
    """conv(k, stride) -> norm -> LeakyReLU -> conv(k) -> norm, + 1x1 conv(stride) of the input, -> LeakyReLU
    (official ``BasicResBlock``, always with its 1x1 shortcut conv). (B, C_in, *S) -> (B, C_out, *S // stride)."""

    def __init__(self, dim: int, in_channels: int, out_channels: int, kernel_size: Sizes, stride: Sizes, **dd):
        super().__init__()
        padding = [k // 2 for k in kernel_size]
        self.conv1 = _conv(dim, in_channels, out_channels, kernel_size, stride, padding, **dd)
        self.norm1 = _norm(dim, out_channels, **dd)
        self.act1 = _act()
        self.conv2 = _conv(dim, out_channels, out_channels, kernel_size, 1, padding, **dd)
        self.norm2 = _norm(dim, out_channels, **dd)
        self.act2 = _act()
        self.conv3 = _conv(dim, in_channels, out_channels, 1, stride, **dd)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act1(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        y += self.conv3(x)
        return self.act2(y)


class ConvNorm(nn.Module):
    """conv(k, stride 1, 'same' padding) -> norm (``dynamic_network_architectures``' ConvDropoutNormReLU without
    dropout; its activation, where it has one, is applied by the caller)."""

    def __init__(self, dim: int, channels: int, kernel_size: Sizes, **dd):
        super().__init__()
        self.conv = _conv(dim, channels, channels, kernel_size, 1, [(k - 1) // 2 for k in kernel_size], **dd)
        self.norm = _norm(dim, channels, **dd)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class BasicBlock(nn.Module):
    """x + norm(conv(LeakyReLU(norm(conv(x))))) -> LeakyReLU, channels and size kept (``BasicBlockD`` with stride 1
    and equal channels: an identity shortcut)."""

    def __init__(self, dim: int, channels: int, kernel_size: Sizes, **dd):
        super().__init__()
        self.conv1 = ConvNorm(dim, channels, kernel_size, **dd)
        self.act1 = _act()
        self.conv2 = ConvNorm(dim, channels, kernel_size, **dd)
        self.act2 = _act()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.act1(self.conv1(x)))
        out += x
        return self.act2(out)


def _stage(dim: int, in_channels: int, out_channels: int, kernel_size: Sizes, stride: Sizes, num_blocks: int,
           **dd) -> nn.Sequential:
    """A residual block (with the stride) followed by ``num_blocks - 1`` basic blocks."""
    return nn.Sequential(
        ResidualConvBlock(dim, in_channels, out_channels, kernel_size, stride, **dd),
        *[BasicBlock(dim, out_channels, kernel_size, **dd) for _ in range(num_blocks - 1)],
    )


class MambaLayer(nn.Module):
    """LayerNorm -> Mamba over the tokens of a feature map, which its output replaces (no residual).

    Token mode: (B, C, *S) -> tokens (B, prod(S), C) in row-major voxel order (``scan_paths`` kind ``raster`` on S),
    model dim ``dim = C``. Channel-token mode: tokens (B, C, prod(S)), the C channels scanned in order, model dim
    ``dim = prod(S)``. Either way the output has the input's shape.

    Numerics: the layer runs with autocast off, in the dtype of its parameters (float32 unless the module was cast):
    a float16/bfloat16 input is cast up, and the output stays in that dtype.
    """

    def __init__(self, dim: int, channel_token: bool = False, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 device=None, dtype=None):
        """
        Args:
            dim: Model dim: channels (token mode) or voxels of the feature map (channel-token mode).
            channel_token: Scan the channels instead of the voxels.
            d_state, d_conv, expand: Mamba's state size, causal conv width and inner expansion.
        """
        super().__init__()
        self.dim = dim
        self.channel_token = channel_token
        self.norm = nn.LayerNorm(dim, eps=_NORM_EPS, device=device, dtype=dtype)
        self.mixer = MambaMixer(dim, d_state=d_state, d_conv=d_conv, expand=expand, bidirectional=False, device=device,
                                dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, *S) -> (B, C, *S) in the parameters' dtype."""
        batch, channels, *spatial = x.shape
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(self.norm.weight.dtype)
            if self.channel_token:
                if math.prod(spatial) != self.dim:
                    raise ValueError(
                        f"MambaLayer (channel-token mode) was built for feature maps of {self.dim} voxels (the plan's "
                        f"patch size), got {tuple(spatial)}: U-Mamba_Enc runs only at the input size it was built for")
                tokens = x.flatten(2)  # (B, C, P): C tokens of dim P
                return self.mixer(self.norm(tokens)).view(batch, channels, *spatial)
            if channels != self.dim:
                raise ValueError(f"MambaLayer expects {self.dim} channels, got input of shape {tuple(x.shape)}")
            tokens = x.flatten(2).transpose(1, 2)  # (B, L, C), L in row-major (raster) order
            out = self.mixer(self.norm(tokens))  # (B, L, C)
            return out.transpose(1, 2).reshape(batch, channels, *spatial)


class UpsampleLayer(nn.Module):
    """Nearest-neighbour upsampling by an integer factor per axis, then a 1x1 conv."""

    def __init__(self, dim: int, in_channels: int, out_channels: int, scale_factor: Sizes, **dd):
        super().__init__()
        self.scale_factor = tuple(float(s) for s in scale_factor)
        self.conv = _conv(dim, in_channels, out_channels, 1, **dd)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.scale_factor, mode="nearest"))


class UMambaEncoder(nn.Module):
    """Stem + residual stages, with optional Mamba layers after the stages; returns the list of stage outputs (the
    skips), highest resolution first."""

    def __init__(
            self,
            dim: int,
            in_channels: int,
            features_per_stage: Sequence[int],
            kernel_sizes: Sequence[Sizes],
            strides: Sequence[Sizes],
            n_blocks_per_stage: Sequence[int],
            mamba_layers: Optional[Sequence[Optional[MambaLayer]]] = None,
            **dd,
    ):
        """
        Args:
            mamba_layers: None (no Mamba layers, U-Mamba_Bot's encoder), or one entry per stage: a ``MambaLayer`` run
                after that stage, or None.
        """
        super().__init__()
        self.stem = _stage(dim, in_channels, features_per_stage[0], kernel_sizes[0], (1,) * dim,
                           n_blocks_per_stage[0], **dd)
        channels = [features_per_stage[0], *features_per_stage[:-1]]
        self.stages = nn.ModuleList([
            _stage(dim, c_in, c_out, k, stride, blocks, **dd)
            for c_in, c_out, k, stride, blocks in zip(channels, features_per_stage, kernel_sizes, strides,
                                                      n_blocks_per_stage)
        ])
        if mamba_layers is not None:
            self.mamba_layers = nn.ModuleList([nn.Identity() if m is None else m for m in mamba_layers])
        else:
            self.mamba_layers = None
        self.grad_checkpointing = False

    def _stage_forward(self, index: int, x: Tensor) -> Tensor:
        x = self.stages[index](x)
        return x if self.mamba_layers is None else self.mamba_layers[index](x)

    def forward(self, x: Tensor) -> List[Tensor]:
        """(B, C_in, *S) -> [(B, f_s, *S_s) for every stage s]."""
        x = self.stem(x)
        skips = []
        for index in range(len(self.stages)):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(self._stage_forward, index, x, use_reentrant=False)
            else:
                x = self._stage_forward(index, x)
            skips.append(x)
        return skips


class UMambaDecoder(nn.Module):
    """Upsample -> concatenate the skip -> residual stages -> 1x1 segmentation heads; ``deep_supervision`` is nnU-Net's
    switch (``net.decoder.deep_supervision``)."""

    def __init__(
            self,
            dim: int,
            num_classes: int,
            features_per_stage: Sequence[int],
            kernel_sizes: Sequence[Sizes],
            strides: Sequence[Sizes],
            n_blocks_per_stage_decoder: Sequence[int],
            deep_supervision: bool,
            skip_at_full_resolution: bool,
            **dd,
    ):
        """
        Args:
            n_blocks_per_stage_decoder: Blocks per decoder stage, deepest first (n_stages - 1 entries).
            skip_at_full_resolution: Whether the last decoder stage concatenates encoder stage 0's output (3-D nets) or
                not (2-D nets).
        """
        super().__init__()
        self.deep_supervision = deep_supervision
        self.num_classes = num_classes
        n_stages = len(features_per_stage)
        upsample_layers, stages, seg_layers = [], [], []
        for s in range(1, n_stages):
            below, skip = features_per_stage[-s], features_per_stage[-(s + 1)]
            has_skip = s < n_stages - 1 or skip_at_full_resolution
            upsample_layers.append(UpsampleLayer(dim, below, skip, strides[-s], **dd))
            stages.append(_stage(dim, 2 * skip if has_skip else skip, skip, kernel_sizes[-(s + 1)], (1,) * dim,
                                 n_blocks_per_stage_decoder[s - 1], **dd))
            seg_layers.append(_conv(dim, skip, num_classes, 1, **dd))
        self.upsample_layers = nn.ModuleList(upsample_layers)
        self.stages = nn.ModuleList(stages)
        self.seg_layers = nn.ModuleList(seg_layers)
        self.skip_at_full_resolution = skip_at_full_resolution
        self.grad_checkpointing = False

    def _stage_forward(self, index: int, x: Tensor, skip: Optional[Tensor]) -> Tensor:
        x = self.upsample_layers[index](x)
        if skip is not None:
            x = torch.cat((x, skip), dim=1)
        return self.stages[index](x)

    def forward(self, skips: Sequence[Tensor]) -> Union[Tensor, List[Tensor]]:
        """Encoder outputs (highest resolution first) -> logits: a list highest resolution first (deep supervision)
        or the full-resolution (B, num_classes, *S) tensor."""
        x = skips[-1]
        num_stages = len(self.stages)
        outputs = []
        for index in range(num_stages):
            last = index == num_stages - 1
            skip = skips[-(index + 2)] if not last or self.skip_at_full_resolution else None
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(self._stage_forward, index, x, skip, use_reentrant=False)
            else:
                x = self._stage_forward(index, x, skip)
            if self.deep_supervision or last:
                outputs.append(self.seg_layers[index](x))
        return outputs[::-1] if self.deep_supervision else outputs[0]


# --- the networks --------------------------------------------------------------------------------------------------

def _as_sizes(name: str, values: Sequence, n_stages: int, dim: Optional[int]) -> Tuple[Sizes, ...]:
    """Per-stage per-axis integer sizes, validated."""
    try:
        sizes = tuple(tuple(int(v) for v in value) for value in values)
    except TypeError:
        raise ValueError(f"{name} must hold one sequence of per-axis ints per stage, got {values!r}") from None
    if len(sizes) != n_stages:
        raise ValueError(f"{name} needs one entry per stage ({n_stages}), got {len(sizes)}: {values!r}")
    if dim is not None and any(len(size) != dim for size in sizes):
        raise ValueError(f"{name} entries must have {dim} axes, got {values!r}")
    if any(v < 1 for size in sizes for v in size):
        raise ValueError(f"{name} must be positive, got {values!r}")
    return sizes


def _as_counts(name: str, values: Union[int, Sequence[int]], length: int) -> Tuple[int, ...]:
    counts = (values,) * length if isinstance(values, int) else tuple(int(v) for v in values)
    if len(counts) != length or any(c < 1 for c in counts):
        raise ValueError(f"{name} needs {length} positive entries, got {values!r}")
    return counts


def _he_init_(module: nn.Module) -> None:
    """nnU-Net's ``InitWeights_He(1e-2)``: Kaiming-normal weights (LeakyReLU slope 1e-2) and zero biases, on the 2-D and
    3-D (transposed) convs only; the norms and the Mamba layers keep their own initialisation."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=_NEGATIVE_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class _UMamba(nn.Module):
    """What U-Mamba_Bot and U-Mamba_Enc share: the plan, the decoder, deep supervision, checkpointing, init."""

    encoder: UMambaEncoder
    decoder: UMambaDecoder

    def _setup(self, in_channels: int, num_classes: int, features_per_stage: Sequence[int],
               kernel_sizes: Sequence[Sequence[int]], strides: Sequence[Sequence[int]],
               n_blocks_per_stage: Union[int, Sequence[int]], n_blocks_per_stage_decoder: Union[int, Sequence[int]]
               ) -> None:
        features = tuple(int(f) for f in features_per_stage)
        n_stages = len(features)
        if n_stages < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 stages, got features_per_stage "
                             f"{features_per_stage}")
        dim = len(_as_sizes("kernel_sizes", kernel_sizes, n_stages, None)[0])
        if dim not in (2, 3):
            raise ValueError(f"{type(self).__name__} is 2-D or 3-D; kernel_sizes have {dim} axes: {kernel_sizes!r}")
        self.dim = dim
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.features_per_stage = features
        self.kernel_sizes = _as_sizes("kernel_sizes", kernel_sizes, n_stages, dim)
        self.strides = _as_sizes("strides", strides, n_stages, dim)
        self.n_blocks_per_stage, self.n_blocks_per_stage_decoder = umamba_block_counts(
            _as_counts("n_blocks_per_stage", n_blocks_per_stage, n_stages),
            _as_counts("n_blocks_per_stage_decoder", n_blocks_per_stage_decoder, n_stages - 1))

    def _build_decoder(self, deep_supervision: bool, **dd) -> UMambaDecoder:
        return UMambaDecoder(self.dim, self.num_classes, self.features_per_stage, self.kernel_sizes, self.strides,
                             self.n_blocks_per_stage_decoder, deep_supervision, skip_at_full_resolution=self.dim == 3,
                             **dd)

    @torch.no_grad()
    def init_weights(self) -> None:
        """nnU-Net's ``InitWeights_He(1e-2)`` on every conv (the official factories apply it after construction)."""
        self.apply(_he_init_)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each encoder and decoder stage (Mamba layer included) in backward instead of storing it."""
        self.encoder.grad_checkpointing = enable
        self.decoder.grad_checkpointing = enable

    @property
    def size_divisor(self) -> Sizes:
        """Per axis, the product of the strides: input sizes must be multiples of it."""
        return tuple(math.prod([stride[axis] for stride in self.strides]) for axis in range(self.dim))

    def deep_supervision_scales(self, patch_size: Optional[Sequence[int]] = None) -> List[Sizes]:
        """Per deep-supervision output (highest resolution first, n_stages - 1 of them), its integer downscale factor
        per axis relative to the input: output k of an input of size S has size ``S // factor_k``. The first is the
        full-resolution output, the only one when deep supervision is off. ``patch_size`` is accepted for the
        ``build_seg_net`` interface; the factors do not depend on it."""
        factors, factor = [], (1,) * self.dim
        for stride in self.strides[:-1]:
            factor = tuple(f * s for f, s in zip(factor, stride))
            factors.append(factor)
        return factors

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError for an input the net cannot segment (channels, rank, sizes not multiples of the strides)."""
        if x.dim() != self.dim + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} ({self.dim}-D, {self.in_channels} input channels) expects "
                             f"(B, {self.in_channels}, {', '.join('*' * self.dim)}) input, got {tuple(x.shape)}")
        divisor = self.size_divisor
        if any(size % d for size, d in zip(x.shape[2:], divisor)):
            raise ValueError(f"{type(self).__name__}: input size {tuple(x.shape[2:])} must be a multiple of the "
                             f"product of the strides {divisor} along every axis")

    def forward_features(self, x: Tensor) -> List[Tensor]:
        """(B, C_in, *S) -> the skips the decoder reads (after the Mamba layers), highest resolution first."""
        self.check_input(x)
        return self.encoder(x)

    def forward(self, x: Tensor) -> Union[Tensor, List[Tensor]]:
        """(B, C_in, *S) -> logits (B, num_classes, *S), or with deep supervision the list of every decoder stage's
        logits, highest resolution first (sizes ``S // deep_supervision_scales()[k]``)."""
        return self.decoder(self.forward_features(x))

    @classmethod
    def _patch_size_kwargs(cls, patch_size: Sequence[int]) -> dict:
        """Constructor arguments that depend on the patch size (none: the net runs at any multiple of the strides)."""
        return {}

    @classmethod
    def from_plan(cls, network, in_channels: int, num_classes: int, patch_size: Sequence[int],
                  deep_supervision: bool = True, **kwargs) -> "_UMamba":
        """The net of an nnU-Net plan (``vssm.seg.plans.NetworkPlan``) as the official ``get_umamba_*_from_plans``
        builds it: blocks from ``n_conv_per_stage_encoder`` / ``_decoder`` (then the official block-count rule),
        U-Mamba_Enc sized for ``patch_size``. ``kwargs``: Mamba options (d_state, d_conv, expand), device, dtype."""
        if len(patch_size) != network.dim:
            raise ValueError(f"patch_size {tuple(patch_size)} has {len(patch_size)} axes; the plan is {network.dim}-D")
        net = cls(in_channels=in_channels, num_classes=num_classes, features_per_stage=network.features_per_stage,
                  kernel_sizes=network.kernel_sizes, strides=network.strides,
                  n_blocks_per_stage=network.n_conv_per_stage_encoder,
                  n_blocks_per_stage_decoder=network.n_conv_per_stage_decoder, deep_supervision=deep_supervision,
                  **cls._patch_size_kwargs(patch_size), **kwargs)
        divisor = net.size_divisor
        if any(size % d for size, d in zip(patch_size, divisor)):
            raise ValueError(f"patch_size {tuple(patch_size)} must be a multiple of the product of the plan's strides "
                             f"{divisor} along every axis")
        return net


class UMambaBot(_UMamba):
    """U-Mamba_Bot: nnU-Net's residual U-Net with one Mamba layer on the deepest encoder output (2-D or 3-D by the
    number of axes of the kernel sizes)."""

    def __init__(
            self,
            in_channels: int,
            num_classes: int,
            features_per_stage: Sequence[int],
            kernel_sizes: Sequence[Sequence[int]],
            strides: Sequence[Sequence[int]],
            n_blocks_per_stage: Union[int, Sequence[int]] = 2,
            n_blocks_per_stage_decoder: Union[int, Sequence[int]] = 2,
            deep_supervision: bool = True,
            d_state: int = 16,
            d_conv: int = 4,
            expand: float = 2,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_channels: Image channels.
            num_classes: Segmentation heads (logit channels).
            features_per_stage: Channels f_s of each of the n stages.
            kernel_sizes, strides: Per stage, per axis (2 or 3 axes); strides[0] is all ones in nnU-Net plans.
            n_blocks_per_stage: Residual blocks per encoder stage (the plan's ``n_conv_per_stage_encoder``).
            n_blocks_per_stage_decoder: Per decoder stage, deepest first (n - 1 entries). Both lists then go through
                ``umamba_block_counts``, as in the official constructor.
            deep_supervision: Return every decoder stage's logits (``decoder.deep_supervision`` switches it).
            d_state, d_conv, expand: Mamba options.
        """
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self._setup(in_channels, num_classes, features_per_stage, kernel_sizes, strides, n_blocks_per_stage,
                    n_blocks_per_stage_decoder)
        self.encoder = UMambaEncoder(self.dim, in_channels, self.features_per_stage, self.kernel_sizes, self.strides,
                                     self.n_blocks_per_stage, **dd)
        self.mamba_layer = MambaLayer(self.features_per_stage[-1], d_state=d_state, d_conv=d_conv, expand=expand, **dd)
        self.decoder = self._build_decoder(deep_supervision, **dd)
        self.init_weights()

    def forward_features(self, x: Tensor) -> List[Tensor]:
        skips = super().forward_features(x)
        skips[-1] = self.mamba_layer(skips[-1])
        return skips


class UMambaEnc(_UMamba):
    """U-Mamba_Enc: nnU-Net's residual U-Net with Mamba layers after the encoder stages (every stage in 3-D, every other
    stage ending with the deepest in 2-D), built for the patch size ``input_size``."""

    def __init__(
            self,
            in_channels: int,
            num_classes: int,
            input_size: Sequence[int],
            features_per_stage: Sequence[int],
            kernel_sizes: Sequence[Sequence[int]],
            strides: Sequence[Sequence[int]],
            n_blocks_per_stage: Union[int, Sequence[int]] = 2,
            n_blocks_per_stage_decoder: Union[int, Sequence[int]] = 2,
            deep_supervision: bool = True,
            d_state: int = 16,
            d_conv: int = 4,
            expand: float = 2,
            device=None,
            dtype=None,
    ):
        """
        Args:
            input_size: The patch size the net is built for: it decides which stages run in channel-token mode
                (``channel_token_stages``), and those stages accept only feature maps of that size.
            Others: as ``UMambaBot``.
        """
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self._setup(in_channels, num_classes, features_per_stage, kernel_sizes, strides, n_blocks_per_stage,
                    n_blocks_per_stage_decoder)
        self.input_size = tuple(int(s) for s in input_size)
        if len(self.input_size) != self.dim:
            raise ValueError(f"input_size {tuple(input_size)} has {len(self.input_size)} axes; the net is {self.dim}-D")
        n_stages = len(self.features_per_stage)
        sizes = feature_map_sizes(self.input_size, self.strides)
        self.channel_token = channel_token_stages(self.input_size, self.strides, self.features_per_stage)
        layers = []
        for s, has_mamba in enumerate(mamba_stages(n_stages, self.dim)):
            if has_mamba:
                model_dim = math.prod(sizes[s]) if self.channel_token[s] else self.features_per_stage[s]
                layers.append(MambaLayer(model_dim, self.channel_token[s], d_state=d_state, d_conv=d_conv,
                                         expand=expand, **dd))
            else:
                layers.append(None)
        self.encoder = UMambaEncoder(self.dim, in_channels, self.features_per_stage, self.kernel_sizes, self.strides,
                                     self.n_blocks_per_stage, mamba_layers=layers, **dd)
        self.decoder = self._build_decoder(deep_supervision, **dd)
        self.init_weights()

    @classmethod
    def _patch_size_kwargs(cls, patch_size: Sequence[int]) -> dict:
        return {"input_size": tuple(patch_size)}


# --- official checkpoints ------------------------------------------------------------------------------------------

# ConvDropoutNormReLU's Sequential: index -> the attribute it aliases (U-Mamba builds no dropout)
_ALL_MODULES = re.compile(r"\.all_modules\.(\d+)\.")
_ALL_MODULES_ALIAS = {"0": ".conv.", "1": ".norm."}
_MAMBA_MODULE = re.compile(r"(^|\.)mamba\.")  # MambaLayer.mamba -> MambaLayer.mixer


def _drop_duplicate(out: Dict[str, Tensor], key: str, alias: str, value: Tensor) -> None:
    """Keep ``value`` under ``alias``; if the alias already holds a tensor, it must be the same values."""
    if alias in out:
        if out[alias].shape != value.shape or not torch.equal(out[alias], value):
            raise ValueError(f"official U-Mamba state dict: {key} must be a copy of {alias}, but the tensors differ "
                             "(corrupt or edited checkpoint)")
        return
    out[alias] = value


def convert_official_state_dict(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """An official U-Mamba state dict (also a whole nnU-Net checkpoint ``{'network_weights': ...}``, or with DDP
    ``module.`` / torch.compile ``_orig_mod.`` prefixes) -> the keys of ``UMambaBot`` / ``UMambaEnc``.

    The official nets hold every tensor of the encoder twice (``encoder.*`` and ``decoder.encoder.*``) and each
    ``BasicBlockD`` conv/norm twice more (``convX.conv.*`` and ``convX.all_modules.0.*``, ``convX.norm.*`` and
    ``convX.all_modules.1.*``): one copy of each is kept, after checking that the copies are equal. The Mamba layers'
    ``mamba.*`` parameters become the stacked ``mixer.*`` ones of ``MambaMixer``.

    Raises:
        ValueError: Copies that differ, or no tensors found.
    """
    if "network_weights" in state_dict and isinstance(state_dict["network_weights"], dict):
        state_dict = state_dict["network_weights"]
    if not state_dict or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise ValueError("official U-Mamba state dict: expected a dict of tensors (or an nnU-Net checkpoint with "
                         "'network_weights')")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    # canonical keys first, so that each copy is compared with the tensor it duplicates
    ordered = sorted(state_dict.items(), key=lambda kv: (kv[0].startswith("decoder.encoder.") or
                                                         ".all_modules." in kv[0]))
    out: Dict[str, Tensor] = {}
    for key, value in ordered:
        name = key[len("decoder."):] if key.startswith("decoder.encoder.") else key
        name = _ALL_MODULES.sub(lambda m: _ALL_MODULES_ALIAS.get(m.group(1), m.group(0)), name)
        if ".all_modules." in name:
            raise ValueError(f"official U-Mamba state dict: unexpected key {key} (U-Mamba's blocks have no dropout, so "
                             "all_modules holds only the conv (0) and the norm (1))")
        _drop_duplicate(out, key, name, value)
    out = {_MAMBA_MODULE.sub(lambda m: m.group(1) + "mixer.", k): v for k, v in out.items()}
    return stack_official_directions(out, num_directions=1)


# --- the official constructors (vssm.convert.load_official) --------------------------------------------------------

_OFFICIAL_ENTRY = re.compile(r"UMamba(Bot|Enc)(?:_([23])d)?")


def _class_name(value) -> Optional[str]:
    """'torch.nn.modules.conv.Conv3d' / 'torch.nn.Conv3d' / a class -> 'Conv3d'; None stays None."""
    if value is None:
        return None
    return (value if isinstance(value, str) else value.__name__).rsplit(".", 1)[-1]


def umamba_from_official_kwargs(kwargs: dict, entry: Optional[str] = None) -> _UMamba:
    """The net equivalent to the official ``UMambaBot`` / ``UMambaEnc`` (2-D or 3-D file) called with ``kwargs``
    (``conv_op`` etc. as classes or dotted names, as in nnU-Net plans). ``entry`` names the official class or file
    (``'UMambaBot_2d'``, ``'nnunetv2.nets.UMambaEnc_3d.UMambaEnc'``); without it, ``input_size`` in ``kwargs`` means
    U-Mamba_Enc.

    Raises:
        ValueError: Options the official factories never use (another norm, non-linearity, dropout, conv bias off, a
            stem width), or an entry that does not match ``conv_op``.
    """
    kwargs = dict(kwargs)
    conv_name = _class_name(kwargs.get("conv_op"))
    if conv_name not in ("Conv2d", "Conv3d"):
        raise ValueError(f"U-Mamba: conv_op must be Conv2d or Conv3d, got {kwargs.get('conv_op')!r}")
    dim = int(conv_name[-2])
    match = _OFFICIAL_ENTRY.search(entry or "")
    if entry and not match:
        raise ValueError(f"U-Mamba: official entry must name UMambaBot or UMambaEnc, got {entry!r}")
    kind = match.group(1) if match else ("Enc" if "input_size" in kwargs else "Bot")
    if match and match.group(2) and int(match.group(2)) != dim:
        raise ValueError(f"U-Mamba: entry {entry!r} is {match.group(2)}-D but conv_op is {conv_name}")
    norm_kwargs = kwargs.get("norm_op_kwargs") or {}
    nonlin_kwargs = kwargs.get("nonlin_kwargs") or {}
    expected = {
        "conv_bias": (kwargs.get("conv_bias", False), True),
        "norm_op": (_class_name(kwargs.get("norm_op")), f"InstanceNorm{dim}d"),
        "norm_op_kwargs": ((norm_kwargs.get("eps", 1e-5), norm_kwargs.get("affine", False)), (_NORM_EPS, True)),
        "dropout_op": (kwargs.get("dropout_op"), None),
        "nonlin": (_class_name(kwargs.get("nonlin")), "LeakyReLU"),
        "nonlin_kwargs.negative_slope": (nonlin_kwargs.get("negative_slope", _NEGATIVE_SLOPE), _NEGATIVE_SLOPE),
        "stem_channels": (kwargs.get("stem_channels"), None),
    }
    for name, (given, wanted) in expected.items():
        if given != wanted:
            raise ValueError(f"U-Mamba: {name} = {given!r} is not supported (the official factories use {wanted!r})")
    n_stages = int(kwargs["n_stages"])
    features = kwargs["features_per_stage"]
    features = [features] * n_stages if isinstance(features, int) else list(features)
    kernels, strides = kwargs["kernel_sizes"], kwargs["strides"]
    kernels = [kernels] * n_stages if isinstance(kernels, int) else kernels
    strides = [strides] * n_stages if isinstance(strides, int) else strides
    args = dict(
        in_channels=int(kwargs["input_channels"]),
        num_classes=int(kwargs["num_classes"]),
        features_per_stage=features,
        kernel_sizes=[[k] * dim if isinstance(k, int) else k for k in kernels],
        strides=[[s] * dim if isinstance(s, int) else s for s in strides],
        n_blocks_per_stage=kwargs["n_conv_per_stage"],
        n_blocks_per_stage_decoder=kwargs["n_conv_per_stage_decoder"],
        deep_supervision=bool(kwargs.get("deep_supervision", False)),
    )
    if len(features) != n_stages:
        raise ValueError(f"U-Mamba: n_stages = {n_stages} but features_per_stage has {len(features)} entries")
    if kind == "Enc":
        if "input_size" not in kwargs:
            raise ValueError("U-Mamba: UMambaEnc needs input_size (the patch size it is built for)")
        return UMambaEnc(input_size=kwargs["input_size"], **args)
    return UMambaBot(**args)


@register_official("umamba")
def _official_builder(kwargs: dict, entry: Optional[str]):
    """``entry``: the official class (``UMambaBot`` or ``UMambaEnc``, file ``_2d``/``_3d`` optional)."""
    return umamba_from_official_kwargs(kwargs, entry), convert_official_state_dict
