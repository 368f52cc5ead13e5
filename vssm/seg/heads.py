"""UPerNet and Semantic FPN heads on any zoo encoder, for 2-D segmentation at any input size.

Both follow MMSegmentation 1.x (``mmseg/models/decode_heads/uper_head.py``, ``psp_head.py``, ``fpn_head.py``,
``mmseg/models/necks/fpn.py``), which VMamba's ADE20K results use for UPerNet
(``segmentation/configs/vssm1/upernet_vssm_4xb4-160k_ade20k-512x512_*.py``: the encoder's four stage outputs, each
through its own LayerNorm, channels 512, pool scales 1, 2, 3, 6, dropout 0.1). ``ConvNormAct`` is mmseg's
``ConvModule``: conv without bias -> norm (BatchNorm, mmseg's SyncBN on one device; or GroupNorm) -> ReLU.

* UPerNet (``UPerHead``): a pyramid pooling module on the stride-32 map (adaptive average pools 1, 2, 3, 6 ->
  1x1 ConvNormAct -> bilinear resize, concatenated with the map -> 3x3 ConvNormAct); 1x1 lateral ConvNormActs on the
  other maps; top-down sums (bilinear resize to the finer map); 3x3 ConvNormAct on each; all resized to stride 4,
  concatenated, 3x3 ConvNormAct; dropout; 1x1 conv to the classes.
* Semantic FPN (``FPN`` neck + ``FPNHead``, Panoptic FPN's semantic branch): 1x1 lateral convs (with bias, no norm)
  to 256 channels, top-down sums (nearest resize), 3x3 convs; per level, log2(stride / 4) times (at least once) a
  3x3 ConvNormAct to 128 channels followed (below stride 4) by a bilinear 2x upsampling; the levels summed at stride
  4; dropout; 1x1 conv to the classes.

The logits are resized bilinearly to the input size, so any input size the encoder accepts works.
"""
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .zoo_encoder import ZooEncoder

__all__ = ["UPerNet", "SemanticFPN", "UPerHead", "FPNHead", "ConvNormAct"]

NORMS = ("batch", "group")


def _resize(x: Tensor, size: Sequence[int], mode: str = "bilinear") -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False if mode == "bilinear" else None)


def _num_groups(channels: int) -> int:
    """GroupNorm groups: 32 or fewer, with at least 2 channels each (so a 1x1 map has 2 values per group)."""
    groups = max(1, min(32, channels // 2))
    while channels % groups:
        groups -= 1
    return groups


class ConvNormAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm2d or GroupNorm (32 groups, fewer for narrow heads) -> ReLU (mmseg's
    ``ConvModule``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: str = "batch", device=None,
                 dtype=None):
        dd = {"device": device, "dtype": dtype}
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        norm_layer = (nn.BatchNorm2d(out_channels, **dd) if norm == "batch"
                      else nn.GroupNorm(_num_groups(out_channels), out_channels, **dd))
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False, **dd),
            norm_layer,
            nn.ReLU(inplace=True),
        )


class UPerHead(nn.Module):
    """mmseg's ``UPerHead`` (see the module docstring): four maps (stride 4 first) -> logits at stride 4."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1, norm: str = "batch",
                 deep_supervision: bool = False, device=None, dtype=None):
        dd = {"device": device, "dtype": dtype, "norm": norm}
        super().__init__()
        self.deep_supervision = deep_supervision
        self.pool_scales = tuple(pool_scales)
        self.ppm = nn.ModuleList([ConvNormAct(in_channels[-1], channels, 1, **dd) for _ in self.pool_scales])
        self.bottleneck = ConvNormAct(in_channels[-1] + len(self.pool_scales) * channels, channels, 3, **dd)
        self.lateral_convs = nn.ModuleList([ConvNormAct(c, channels, 1, **dd) for c in in_channels[:-1]])
        self.fpn_convs = nn.ModuleList([ConvNormAct(channels, channels, 3, **dd) for _ in in_channels[:-1]])
        self.fpn_bottleneck = ConvNormAct(len(in_channels) * channels, channels, 3, **dd)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1, device=device, dtype=dtype)

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        top = maps[-1]
        pooled = [_resize(conv(F.adaptive_avg_pool2d(top, scale)), top.shape[-2:])
                  for conv, scale in zip(self.ppm, self.pool_scales)]
        laterals = [conv(m) for conv, m in zip(self.lateral_convs, maps[:-1])]
        laterals.append(self.bottleneck(torch.cat([top, *pooled], 1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([_resize(o, size) for o in outs], 1))
        return self.conv_seg(self.dropout(fused))


class FPNHead(nn.Module):
    """mmseg's ``FPN`` neck (no extra levels) + ``FPNHead`` (see the module docstring): four maps (strides 4..32) ->
    logits at stride 4."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, reductions: Sequence[int] = (4, 8, 16, 32),
                 fpn_channels: int = 256, channels: int = 128, dropout: float = 0.1, norm: str = "batch",
                 deep_supervision: bool = False, device=None, dtype=None):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self.deep_supervision = deep_supervision
        self.lateral_convs = nn.ModuleList([nn.Conv2d(c, fpn_channels, 1, **dd) for c in in_channels])
        self.fpn_convs = nn.ModuleList([nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1, **dd)
                                        for _ in in_channels])
        self.scale_heads = nn.ModuleList()
        for reduction in reductions:
            layers: List[nn.Module] = []
            steps = max(1, int(math.log2(reduction / reductions[0])))
            for k in range(steps):
                layers.append(ConvNormAct(fpn_channels if k == 0 else channels, channels, 3, norm, **dd))
                if reduction != reductions[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1, **dd)

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        laterals = [conv(m) for conv, m in zip(self.lateral_convs, maps)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:], "nearest")
        pyramid = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals)]
        out = self.scale_heads[0](pyramid[0])
        for head, level in zip(self.scale_heads[1:], pyramid[1:]):
            out = out + _resize(head(level), out.shape[-2:])
        return self.conv_seg(self.dropout(out))


class _EncoderHeadNet(nn.Module):
    """A ``ZooEncoder`` and a head whose stride-4 logits are resized to the input; ``decoder`` is the head (its
    ``deep_supervision``, nnU-Net's switch, makes ``forward`` return [logits])."""

    decoder: nn.Module

    def _build_encoder(self, encoder_name: str, in_chans: int, num_classes: int, pretrained: bool,
                       drop_path_rate: Optional[float], out_norms: bool, encoder_kwargs: Optional[dict], dd: dict):
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.encoder = ZooEncoder(encoder_name, in_chans=in_chans, pretrained=pretrained,
                                  drop_path_rate=drop_path_rate, out_norms=out_norms, **(encoder_kwargs or {}), **dd)

    def deep_supervision_scales(self, patch_size: Optional[Sequence[int]] = None) -> List[Tuple[int, int]]:
        """One output at full resolution: [(1, 1)] (``patch_size`` is accepted for the ``build_seg_net``
        interface)."""
        return [(1, 1)]

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def forward(self, x: Tensor) -> Union[Tensor, List[Tensor]]:
        """(B, in_chans, H, W) -> logits (B, num_classes, H, W) ([logits] with deep supervision)."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{type(self).__name__} expects (B, {self.in_chans}, H, W) input, got {tuple(x.shape)}")
        logits = _resize(self.decoder(self.encoder(x)), x.shape[-2:])
        return [logits] if self.decoder.deep_supervision else logits


class UPerNet(_EncoderHeadNet):
    """UPerNet on a zoo encoder (see the module docstring)."""

    def __init__(
            self,
            encoder_name: str,
            in_chans: int = 3,
            num_classes: int = 150,
            channels: int = 512,
            pool_scales: Sequence[int] = (1, 2, 3, 6),
            dropout: float = 0.1,
            norm: str = "batch",
            out_norms: bool = True,
            drop_path_rate: Optional[float] = None,
            pretrained: bool = False,
            deep_supervision: bool = False,
            encoder_kwargs: Optional[dict] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            encoder_name: A timm model name (``vssm.seg.zoo_encoder.ZooEncoder``).
            in_chans: Input channels.
            num_classes: Output channels (logits).
            channels: Width of the head (mmseg 512).
            pool_scales: Pyramid pooling output sizes.
            dropout: Dropout2d before the classifier.
            norm: 'batch' (mmseg; needs batches > 1 in training: the 1x1 pooled branch) or 'group'.
            out_norms: A LayerNorm2d on each encoder map (VMamba's mmseg backbone).
            drop_path_rate: The encoder's stochastic depth (None: its default; VMamba-T ADE20K: 0.2).
            pretrained: Load the encoder's pretrained weights through timm.
            deep_supervision: nnU-Net's switch (``decoder.deep_supervision``): return [logits].
            encoder_kwargs: More ``ZooEncoder`` / ``timm.create_model`` arguments.
        """
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self._build_encoder(encoder_name, in_chans, num_classes, pretrained, drop_path_rate, out_norms,
                            encoder_kwargs, dd)
        self.decoder = UPerHead(self.encoder.channels, num_classes, channels, pool_scales, dropout, norm,
                                deep_supervision, **dd)


class SemanticFPN(_EncoderHeadNet):
    """Semantic FPN on a zoo encoder (see the module docstring)."""

    def __init__(
            self,
            encoder_name: str,
            in_chans: int = 3,
            num_classes: int = 150,
            fpn_channels: int = 256,
            channels: int = 128,
            dropout: float = 0.1,
            norm: str = "batch",
            out_norms: bool = True,
            drop_path_rate: Optional[float] = None,
            pretrained: bool = False,
            deep_supervision: bool = False,
            encoder_kwargs: Optional[dict] = None,
            device=None,
            dtype=None,
    ):
        """
        Args:
            encoder_name: A timm model name (``vssm.seg.zoo_encoder.ZooEncoder``).
            in_chans: Input channels.
            num_classes: Output channels (logits).
            fpn_channels: Width of the FPN neck (mmseg 256).
            channels: Width of the head (mmseg 128).
            dropout: Dropout2d before the classifier.
            norm: 'batch' (mmseg) or 'group'.
            out_norms: A LayerNorm2d on each encoder map.
            drop_path_rate: The encoder's stochastic depth (None: its default).
            pretrained: Load the encoder's pretrained weights through timm.
            deep_supervision: nnU-Net's switch (``decoder.deep_supervision``): return [logits].
            encoder_kwargs: More ``ZooEncoder`` / ``timm.create_model`` arguments.
        """
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self._build_encoder(encoder_name, in_chans, num_classes, pretrained, drop_path_rate, out_norms,
                            encoder_kwargs, dd)
        self.decoder = FPNHead(self.encoder.channels, num_classes, self.encoder.reductions, fpn_channels, channels,
                               dropout, norm, deep_supervision, **dd)
