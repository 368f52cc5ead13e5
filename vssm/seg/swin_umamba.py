"""Swin-UMamba-style net: an ImageNet-pretrained zoo encoder (VMamba-T v0 by default) under a UNETR-style decoder with
deep supervision at 4 scales.

Paper: "Swin-UMamba: Mamba-based UNet with ImageNet-based pretraining", Jiarun Liu et al., arXiv 2402.03302
(https://arxiv.org/abs/2402.03302). Official code: https://github.com/JiarunLiu/Swin-UMamba (Apache-2.0),
``swin_umamba/nnunetv2/nets/SwinUMamba.py`` and ``nnUNetTrainerSwinUMamba.py``. Written here from the official
network's behaviour; the decoder blocks are MONAI's (as the official ones), the encoder a ``ZooEncoder``.

```
@article{liu2024swin,
  title={Swin-UMamba: Mamba-based UNet with ImageNet-based pretraining},
  author={Liu, Jiarun and Yang, Hao and Zhou, Hong-Yu and Xi, Yan and Yu, Lequan and Yu, Yizhou and Liang, Yong and
          Shi, Guangming and Zhang, Shaoting and Zheng, Hairong and Wang, Shanshan},
  journal={arXiv preprint arXiv:2402.03302},
  year={2024}
}
```

Network (official names in brackets), for widths f_0..f_4 (official 48, 96, 192, 384, 768) and encoder maps e_0..e_3
(channels C_0..C_3, strides 4..32):

* stem [``stem``]: 7x7 stride-2 conv (in -> f_0) + InstanceNorm (affine).
* encoder [``vssm_encoder``]: with ``stem_to_encoder`` (official), the encoder reads the stem output: its 4x4 patchify
  conv is replaced by a 2x2 one on f_0 channels, so its stages still run at strides 4..32; otherwise it reads the
  image through its own stem.
* skip blocks [``encoder1..5``]: MONAI ``UnetrBasicBlock`` (3x3 residual conv block, InstanceNorm) on the image
  (in -> f_0, full resolution), the stem output (f_0 -> f_1, stride 2) and e_0, e_1, e_2 (-> f_2, f_3, f_4).
* decoder [``decoder6..2``]: MONAI ``UnetrUpBlock`` (2x2 stride-2 transposed conv, concatenation with the skip,
  residual conv block) from e_3 up through the skips: C_3 -> f_4 -> f_3 -> f_2 -> f_1 -> f_0; then
  [``decoder1``] a ``UnetrBasicBlock`` f_0 -> f_0.
* heads [``out_layers``]: MONAI ``UnetOutBlock`` (1x1 conv) on the decoder outputs at strides 1, 2, 4, 8; with deep
  supervision all four, highest resolution first, else the first.

Pretrained weights: ``pretrained=True`` loads the encoder's ImageNet weights through timm (official:
``vmamba_tiny_e292.pth`` = vssm ``vmamba_tiny_v0``); the replaced patchify conv starts from PyTorch's default init
and, as the official loader (which skips ``patch_embed.norm.weight`` but loads its bias), the stem norm's weight is
reset to one. ``freeze_encoder(True)`` freezes the encoder except its patch embedding, as the official trainer does
for its first 10 epochs (``freeze_encoder(False)`` afterwards).
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .zoo_encoder import ZooEncoder, first_conv, replace_first_conv

__all__ = ["SwinUMamba"]


def _monai_blocks():
    """MONAI's UNETR blocks (imported on use: MONAI is in the ``seg`` extra)."""
    try:
        from monai.networks.blocks.dynunet_block import UnetOutBlock
        from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrUpBlock
    except ImportError as error:
        raise ImportError("SwinUMamba needs MONAI: pip install 'vssm[seg]'") from error
    return UnetrBasicBlock, UnetrUpBlock, UnetOutBlock


class SwinUMambaDecoder(nn.Module):
    """UNETR up blocks from the deepest map through the skips, a last basic block, 4 heads; ``deep_supervision`` is
    nnU-Net's switch (``net.decoder.deep_supervision``)."""

    def __init__(self, bottleneck_channels: int, feature_size: Sequence[int], num_classes: int, norm_name: str,
                 deep_supervision: bool):
        super().__init__()
        basic_block, up_block, out_block = _monai_blocks()
        self.deep_supervision = deep_supervision
        widths = [bottleneck_channels] + list(feature_size[::-1])  # C_3, f_4, f_3, f_2, f_1, f_0
        self.up_blocks = nn.ModuleList([
            up_block(spatial_dims=2, in_channels=widths[i], out_channels=widths[i + 1], kernel_size=3,
                     upsample_kernel_size=2, norm_name=norm_name, res_block=True)
            for i in range(len(feature_size))
        ])
        self.final_block = basic_block(spatial_dims=2, in_channels=feature_size[0], out_channels=feature_size[0],
                                       kernel_size=3, stride=1, norm_name=norm_name, res_block=True)
        self.heads = nn.ModuleList([
            out_block(spatial_dims=2, in_channels=feature_size[i], out_channels=num_classes) for i in range(4)
        ])

    def forward(self, bottleneck: Tensor, skips: Sequence[Tensor]) -> Union[Tensor, List[Tensor]]:
        """Deepest map (B, C_3, H / 32, W / 32) and skips (stride 1 first, f_0..f_4 channels) -> logits (B, K, H, W),
        or with deep supervision the logits at strides 1, 2, 4, 8."""
        x = bottleneck
        decoded = []
        for block, skip in zip(self.up_blocks, skips[::-1]):
            x = block(x, skip)
            decoded.append(x)  # strides 16, 8, 4, 2, 1
        full = self.final_block(x)
        if not self.deep_supervision:
            return self.heads[0](full)
        features = [full] + decoded[-2::-1][:3]  # strides 1, 2, 4, 8
        return [head(f) for head, f in zip(self.heads, features)]


class SwinUMamba(nn.Module):
    """Swin-UMamba-style net on a zoo encoder (see the module docstring); 2-D, input sides multiples of 32."""

    def __init__(
            self,
            encoder_name: str = "vmamba_tiny_v0",
            in_chans: int = 1,
            num_classes: int = 2,
            feature_size: Optional[Sequence[int]] = None,
            stem_to_encoder: Optional[bool] = None,
            drop_path_rate: float = 0.2,
            pretrained: bool = False,
            deep_supervision: bool = True,
            norm_name: str = "instance",
            encoder_kwargs: Optional[dict] = None,
    ):
        """
        Args:
            encoder_name: A timm model name (``vssm.seg.zoo_encoder.ZooEncoder``); official: ``vmamba_tiny_v0``.
            in_chans: Input channels.
            num_classes: Output channels (logits).
            feature_size: Widths f_0..f_4 of the stem, skip and decoder blocks; default (C_0 / 2, C_0, C_1, C_2,
                C_3) of the encoder's channels (official: 48, 96, 192, 384, 768).
            stem_to_encoder: The encoder reads the conv stem's output through a 2x2 patchify conv (official); needs
                a 4x4 stride-4 patchify first conv (VMamba v0, LocalVMamba). None: when the encoder has one.
            drop_path_rate: The encoder's stochastic depth (official 0.2).
            pretrained: Load the encoder's ImageNet weights through timm.
            deep_supervision: nnU-Net's switch (``decoder.deep_supervision``): return the 4 outputs.
            norm_name: MONAI norm of the UNETR blocks.
            encoder_kwargs: More ``ZooEncoder`` / ``timm.create_model`` arguments.
        """
        super().__init__()
        self.in_chans = in_chans
        self.num_classes = num_classes
        encoder_kwargs = dict(encoder_kwargs or {}, pretrained=pretrained, drop_path_rate=drop_path_rate)
        # the encoder reads the 3-channel stem of its pretrained weights when the conv stem feeds it
        self.encoder = ZooEncoder(encoder_name, in_chans=in_chans if stem_to_encoder is False else 3, **encoder_kwargs)
        if stem_to_encoder is None:
            stem_to_encoder = _has_patchify_stem(self.encoder, 4)
            if not stem_to_encoder and in_chans != 3:
                self.encoder = ZooEncoder(encoder_name, in_chans=in_chans, **encoder_kwargs)
        self.stem_to_encoder = stem_to_encoder
        channels = self.encoder.channels
        feature_size = tuple(feature_size or (max(channels[0] // 2, 1), *channels))
        if len(feature_size) != 5:
            raise ValueError(f"SwinUMamba: feature_size needs 5 widths (stem, skips at strides 2..16), got "
                             f"{feature_size}")
        self.feature_size = feature_size
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, feature_size[0], kernel_size=7, stride=2, padding=3),
            nn.InstanceNorm2d(feature_size[0], eps=1e-5, affine=True),
        )
        if stem_to_encoder:
            if not _has_patchify_stem(self.encoder, 4):
                raise ValueError(f"SwinUMamba: stem_to_encoder needs a 4x4 stride-4 patchify first conv; "
                                 f"{encoder_name}'s is {self.encoder.pretrained_cfg.get('first_conv')!r}, not one "
                                 "(pass stem_to_encoder=False to run the encoder on the image)")
            replace_first_conv(self.encoder, feature_size[0], 2)
            stem_norm = _patch_embed_norm(self.encoder)
            if stem_norm is not None:
                nn.init.ones_(stem_norm.weight)
        basic_block, _, _ = _monai_blocks()
        skip_inputs = (in_chans, feature_size[0], *channels[:3])
        self.skip_blocks = nn.ModuleList([
            basic_block(spatial_dims=2, in_channels=c_in, out_channels=c_out, kernel_size=3, stride=1,
                        norm_name=norm_name, res_block=True)
            for c_in, c_out in zip(skip_inputs, feature_size)
        ])
        self.decoder = SwinUMambaDecoder(channels[3], feature_size, num_classes, norm_name, deep_supervision)
        self.encoder_frozen = False

    @torch.no_grad()
    def freeze_encoder(self, freeze: bool = True) -> None:
        """Freeze (``requires_grad=False``) the encoder's parameters except its patch embedding (its stem and the
        pyramid adapter of an isotropic encoder stay trainable), or unfreeze all of them."""
        trainable = set(self.encoder.stem_parameter_names()) if freeze else None
        for name, param in self.encoder.model.named_parameters():
            param.requires_grad = not freeze or name in trainable
        self.encoder_frozen = freeze

    def deep_supervision_scales(self, patch_size: Optional[Sequence[int]] = None) -> List[Tuple[int, int]]:
        """Downscale factor of each output, highest resolution first: [(1, 1), (2, 2), (4, 4), (8, 8)] (the first
        alone without deep supervision; ``patch_size`` is accepted for the ``build_seg_net`` interface)."""
        return [(2 ** k, 2 ** k) for k in range(4)]

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def forward(self, x: Tensor) -> Union[Tensor, List[Tensor]]:
        """(B, in_chans, H, W), H and W multiples of 32 -> logits (B, num_classes, H, W), or with deep supervision the
        logits at strides 1, 2, 4, 8."""
        if x.dim() != 4 or x.shape[1] != self.in_chans or x.shape[2] % 32 or x.shape[3] % 32:
            raise ValueError(f"SwinUMamba expects (B, {self.in_chans}, H, W) input with H and W multiples of 32, got "
                             f"{tuple(x.shape)}")
        stem = self.stem(x)  # (B, f_0, H / 2, W / 2)
        maps = self.encoder(stem if self.stem_to_encoder else x)  # strides 4, 8, 16, 32
        skips = [block(m) for block, m in zip(self.skip_blocks, [x, stem, *maps[:3]])]
        return self.decoder(maps[3], skips)


def _has_patchify_stem(encoder: ZooEncoder, patch: int) -> bool:
    try:
        conv = first_conv(encoder)
    except ValueError:
        return False
    return conv.kernel_size == (patch, patch) and conv.stride == (patch, patch) and conv.padding == (0, 0)


def _patch_embed_norm(encoder: ZooEncoder) -> Optional[nn.Module]:
    """The norm beside the first conv (VMamba's ``stem.norm``), if it has a weight."""
    parent = encoder.pretrained_cfg["first_conv"].rpartition(".")[0]
    norm = getattr(encoder.model.get_submodule(parent), "norm", None) if parent else None
    return norm if isinstance(getattr(norm, "weight", None), nn.Parameter) else None
