"""VM-UNet-style net: a zoo encoder, a decoder of VSS blocks mirroring it, patch-expanding upsampling.

Paper: "VM-UNet: Vision Mamba UNet for Medical Image Segmentation", Jiacheng Ruan, Suncheng Xiang, arXiv 2402.02491
(https://arxiv.org/abs/2402.02491). Official code: https://github.com/JCruan519/VM-UNet (Apache-2.0),
``models/vmunet/vmunet.py`` and ``vmamba.py``. Written here from the official network's behaviour on vssm's blocks.

```
@article{ruan2024vm,
  title={VM-UNet: Vision Mamba UNet for Medical Image Segmentation},
  author={Ruan, Jiacheng and Xiang, Suncheng},
  journal={arXiv preprint arXiv:2402.02491},
  year={2024}
}
```

Network, for encoder maps f_0..f_3 (channels C_0..C_3, strides 4..32; ``vssm.seg.zoo_encoder.ZooEncoder``), all
decoder tensors channels-last (B, H, W, C):

* decoder stage j = 0..3 mirrors encoder stage k = 3 - j and works at its stride and width C_k. Stage 0 reads the
  deepest encoder output f_3. Stage j > 0 reads the previous stage's output (stride 2^(6 - j), width C_{k+1}) plus
  the skip s_j of the same stride and width, then a patch expand (Linear C_{k+1} -> 4 C_k without bias, 2x2 pixel
  shuffle, LayerNorm); every stage ends with ``depths[j]`` VSS blocks of width C_k (``vssm.models.vmamba.VSSBlock``).
* skips, as the official ``VSSM.forward_features`` / ``forward_features_up`` wire them: s_j is the map entering
  encoder stage 4 - j, i.e. after its patch merging and before its blocks (strides 32, 16, 8 for j = 1, 2, 3; the
  official ``skip_list[-j]``); the stem output (stride 4) is never read. Encoders other than ``VMamba`` give no
  stage entries: there s_j is the level map f_{4-j} of the same stride (an isotropic encoder's stride-4 pyramid
  level is then dropped, as nothing reads it).
* final patch expand x4 (Linear C_0 -> 16 (C_0 / 4), 4x4 pixel shuffle, LayerNorm) -> 1x1 conv to the class logits.
* decoder blocks: the same configuration as the encoder's blocks of that stage when the encoder is a ``VMamba``
  (VMamba v0/v2, LocalVMamba: SS2D settings, scan routes, MLP), else Vanilla VMamba blocks (d_state 16, ssm_ratio 2,
  z gate, no MLP), as the official decoder; stochastic depth linear 0..``drop_path_rate`` over the decoder blocks,
  deepest first.
* ``init_decoder_from_encoder()`` is the official ``load_from`` mirror: block b of decoder stage j takes the weights
  of block b of encoder stage 3 - j (the official ``layers.{0,1,2,3}`` -> ``layers_up.{3,2,1,0}``), from the encoder
  or from a checkpoint; upsampling layers, the final expand and head keep their init. The segmentation trainer calls
  it when its config says ``init_decoder_from_encoder = True``.

The official recipe (ISIC 2017/2018 at 256, Synapse at 224; ``configs/medical/vm_unet_*.py``):
``VMUNet('vmamba_small_v0', depths=(2, 2, 2, 1), drop_path_rate=0.2, pretrained=True, encoder_kwargs=dict(depths=(2,
2, 2, 2), pretrained_strict=False))`` then ``init_decoder_from_encoder()`` (the encoder keeps the first 2 blocks of
each stage of VMamba-S, which are all the decoder mirrors; with deeper decoder stages pass the ImageNet checkpoint so
the decoder copies from the full one).

What differs from the official code: one-channel inputs adapt the stem weights (``in_chans=1``, timm's rule: the same
as the official repeat of the channel to RGB). ``forward`` returns logits for every class count (the official applies
a sigmoid when there is one class).
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.models._manipulate import checkpoint_seq
from torch import Tensor, nn

from ..convert import checkpoint_filter_for, unwrap_checkpoint
from ..layers.norm import LayerNorm
from ..layers.ss2d import SS2D
from ..models.vmamba import VMamba, VSSBlock
from .zoo_encoder import ZooEncoder

__all__ = ["VMUNet", "PatchExpand", "VSSDecoder", "vss_block_config", "VANILLA_VSS_BLOCK"]

# the official VM-UNet decoder block (Vanilla VMamba): SS2D v0, no MLP
VANILLA_VSS_BLOCK = dict(d_state=16, ssm_ratio=2.0, dt_rank="auto", d_conv=3, conv_bias=True, gated=True,
                         path_kind="cross", directions=None, merge=None, mlp_ratio=0.0)


def vss_block_config(block: VSSBlock) -> dict:
    """The constructor settings of a ``VSSBlock`` (its SS2D and MLP), as ``VANILLA_VSS_BLOCK`` lists them."""
    mixer = block.mixer
    if not isinstance(mixer, SS2D):
        raise TypeError(f"vss_block_config: the block's mixer is a {type(mixer).__name__}, not an SS2D")
    dim = mixer.out_proj.out_features
    if int(mixer.d_inner / dim * dim) != mixer.d_inner:
        raise ValueError(f"vss_block_config: inner width {mixer.d_inner} of a width-{dim} block is not "
                         "int(ratio * dim)")
    config = dict(
        d_state=mixer.d_state, ssm_ratio=mixer.d_inner / dim, dt_rank=mixer.dt_rank, d_conv=mixer.conv2d.kernel_size[0],
        conv_bias=mixer.conv2d.bias is not None, gated=mixer.gated, path_kind=mixer.path_kind,
        directions=list(mixer.directions) or None, merge=mixer.merge,
        mlp_ratio=block.mlp.fc1.out_features / dim if block.mlp is not None else 0.0,
    )
    if mixer.path_kind == "local":
        config["reproduce_v_unscan_bug"] = mixer.reproduce_v_unscan_bug
    return config


def _vss_block(dim: int, config: dict, drop_path: float, **dd) -> VSSBlock:
    """A channels-last ``VSSBlock`` of width ``dim`` with the settings ``config``."""
    config = dict(config)
    mlp_ratio = config.pop("mlp_ratio")
    mixer = SS2D(dim, channel_first=False, **config, **dd)
    return VSSBlock(dim, mixer, mlp_ratio, channel_first=False, drop_path=drop_path, **dd)


class PatchExpand(nn.Module):
    """Linear(C_in -> s * s * C_out, no bias) -> s x s pixel shuffle -> LayerNorm(C_out), channels-last (VM-UNet's
    ``PatchExpand2D`` / ``Final_PatchExpand2D``: the Linear's output channels are read as (s_h, s_w, C_out))."""

    def __init__(self, dim: int, dim_out: int, scale: int = 2, device=None, dtype=None):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * dim_out, bias=False, **dd)
        self.norm = LayerNorm(dim_out, eps=1e-5, **dd)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C_in) -> (B, s H, s W, C_out)."""
        batch, height, width, _ = x.shape
        s = self.scale
        x = self.expand(x).unflatten(-1, (s, s, -1))  # (B, H, W, s, s, C_out)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height * s, width * s, -1)  # (B, sH, sW, C_out)
        return self.norm(x)


class VSSDecoderStage(nn.Module):
    """(input + optional skip) -> optional patch expand -> VSS blocks (the official ``VSSLayer_up`` on ``x +
    skip``)."""

    def __init__(self, upsample: nn.Module, blocks: Sequence[VSSBlock]):
        super().__init__()
        self.grad_checkpointing = False
        self.upsample = upsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor, skip: Optional[Tensor] = None) -> Tensor:
        if skip is not None:
            x = x + skip
        x = self.upsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class VSSDecoder(nn.Module):
    """VM-UNet's decoder (see the module docstring); ``deep_supervision`` is nnU-Net's switch: on, ``forward``
    returns a one-element list (the net has one output)."""

    def __init__(
            self,
            channels: Sequence[int],
            num_classes: int,
            block_configs: Sequence[Sequence[dict]],
            drop_path_rate: float = 0.0,
            deep_supervision: bool = False,
            device=None,
            dtype=None,
    ):
        """
        Args:
            channels: Encoder channels C_0..C_3 (stride 4 first).
            num_classes: Output channels.
            block_configs: Per decoder stage (deepest first), the ``VANILLA_VSS_BLOCK``-style settings of each of its
                blocks (their number is the stage depth).
            drop_path_rate: Stochastic depth, linear 0..rate over the decoder blocks, highest for the deepest.
            deep_supervision: Return [logits] instead of logits.
        """
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        n = len(channels)
        if len(block_configs) != n:
            raise ValueError(f"VSSDecoder: {n} encoder levels need {n} decoder stages, got {len(block_configs)}")
        depths = [len(configs) for configs in block_configs]
        self.deep_supervision = deep_supervision
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()[::-1]
        self.stages = nn.ModuleList()
        first = 0
        for j, depth in enumerate(depths):
            width = channels[n - 1 - j]
            upsample = PatchExpand(channels[n - j], width, 2, **dd) if j > 0 else nn.Identity()
            blocks = [_vss_block(width, block_configs[j][b], rates[first + b], **dd) for b in range(depth)]
            self.stages.append(VSSDecoderStage(upsample, blocks))
            first += depth
        self.final_expand = PatchExpand(channels[0], max(channels[0] // 4, 1), 4, **dd)
        self.head = nn.Conv2d(max(channels[0] // 4, 1), num_classes, kernel_size=1, **dd)
        self.apply(VMamba._init_weights)

    def forward(self, deepest: Tensor, skips: Sequence[Tensor]) -> Union[Tensor, List[Tensor]]:
        """
        Args:
            deepest: The deepest encoder map (B, H / 32, W / 32, C_3), channels-last.
            skips: Per decoder stage j = 1..3 the skip added to its input: (B, H / 2^(6 - j), W / 2^(6 - j),
                C_{4-j}), channels-last.

        Returns:
            Logits (B, K, H, W) ([logits] with deep supervision).
        """
        if len(skips) != len(self.stages) - 1:
            raise ValueError(f"VSSDecoder: {len(self.stages)} stages need {len(self.stages) - 1} skips, got "
                             f"{len(skips)}")
        x = self.stages[0](deepest)
        for stage, skip in zip(self.stages[1:], skips):
            x = stage(x, skip)
        x = self.final_expand(x).permute(0, 3, 1, 2)  # (B, C_0 / 4, H, W)
        logits = self.head(x)
        return [logits] if self.deep_supervision else logits


class VMUNet(nn.Module):
    """VM-UNet-style net on any zoo encoder (see the module docstring); 2-D, input sides multiples of 32."""

    def __init__(
            self,
            encoder_name: str = "vmamba_small_v0",
            in_chans: int = 3,
            num_classes: int = 1,
            depths: Sequence[int] = (2, 2, 2, 1),
            decoder_block: Optional[dict] = None,
            drop_path_rate: float = 0.0,
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
            depths: VSS blocks per decoder stage, deepest first (official: (2, 2, 2, 1)).
            decoder_block: ``VANILLA_VSS_BLOCK``-style settings for every decoder block; None: mirror the encoder's
                blocks when it is a ``VMamba``, else ``VANILLA_VSS_BLOCK``.
            drop_path_rate: Stochastic depth of the encoder and the decoder (official recipe: 0.2).
            pretrained: Load the encoder's pretrained weights through timm.
            deep_supervision: nnU-Net's switch (``decoder.deep_supervision``): return [logits].
            encoder_kwargs: More ``ZooEncoder`` / ``timm.create_model`` arguments (``depths``,
                ``pretrained_cfg_overlay``, ``pretrained_strict``, ...).
        """
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.encoder = ZooEncoder(encoder_name, in_chans=in_chans, pretrained=pretrained,
                                  drop_path_rate=drop_path_rate, **(encoder_kwargs or {}), **dd)
        if self.encoder.out_norms is not None:
            raise ValueError("VMUNet reads the encoder's maps without norms, as the official net; encoder_kwargs "
                             "out_norms=True is not supported")
        if self.encoder.adapter is not None:  # the stride-4 pyramid level: nothing reads it (no dead parameters)
            self.encoder.adapter.levels[0] = nn.Identity()
        channels = self.encoder.channels
        n = len(channels)

        def block_config(j: int, b: int) -> dict:
            if decoder_block is not None:
                return dict(VANILLA_VSS_BLOCK, **decoder_block)
            if self.mirrors_encoder:  # the mirrored encoder stage's block b (its last block past its depth)
                encoder_blocks = self.encoder.model.stages[n - 1 - j].blocks
                return vss_block_config(encoder_blocks[min(b, len(encoder_blocks) - 1)])
            return VANILLA_VSS_BLOCK

        configs = [[block_config(j, b) for b in range(depth)] for j, depth in enumerate(depths)]
        self.decoder = VSSDecoder(channels, num_classes, configs, drop_path_rate, deep_supervision, **dd)

    @property
    def mirrors_encoder(self) -> bool:
        """The encoder is a ``VMamba`` (v0/v2, LocalVMamba) whose stage blocks the decoder mirrors."""
        return isinstance(self.encoder.model, VMamba)

    @torch.no_grad()
    def init_decoder_from_encoder(self, checkpoint: Optional[Dict[str, Tensor]] = None) -> List[Tuple[str, str]]:
        """The official ``load_from`` mirror: copy block b of encoder stage 3 - j into block b of decoder stage j.

        Args:
            checkpoint: Source state dict: an official VMamba checkpoint or one in our key layout (converted by the
                encoder family's ``checkpoint_filter_fn``); None: the encoder's current weights.

        Returns:
            The (source key, decoder key) pairs copied (keys of equal shape only; decoder blocks without a source
            block keep their init).
        """
        if not self.mirrors_encoder:
            raise TypeError(f"init_decoder_from_encoder: the encoder {self.encoder.name} is not a VMamba; only "
                            "VMamba-family encoders have blocks the decoder mirrors")
        if checkpoint is None:
            source = self.encoder.model.state_dict()
        else:
            source = unwrap_checkpoint(checkpoint)
            filter_fn = checkpoint_filter_for(self.encoder.name)
            source = filter_fn(source, self.encoder.model) if filter_fn is not None else source
        n = len(self.decoder.stages)
        target = self.decoder.state_dict()
        copied = []
        for key, value in target.items():
            parts = key.split(".")
            if parts[0] != "stages" or parts[2] != "blocks":
                continue
            source_key = ".".join(["stages", str(n - 1 - int(parts[1]))] + parts[2:])
            if source_key in source and source[source_key].shape == value.shape:
                value.copy_(source[source_key])
                copied.append((source_key, f"decoder.{key}"))
        return copied

    def deep_supervision_scales(self, patch_size: Optional[Sequence[int]] = None) -> List[Tuple[int, int]]:
        """One output at full resolution: [(1, 1)] (``patch_size`` is accepted for the ``build_seg_net``
        interface)."""
        return [(1, 1)]

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | {"*.A_log", "*.D", "*.dt_proj_bias"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)
        for stage in self.decoder.stages:
            stage.grad_checkpointing = enable

    def encode(self, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """(B, in_chans, H, W) -> (the deepest map (B, H / 32, W / 32, C_3), the skips of decoder stages 1..3 (strides
        32, 16, 8)), channels-last; see the module docstring for which maps the skips are."""
        if not self.mirrors_encoder:
            maps = [m.permute(0, 2, 3, 1) for m in self.encoder(x)]
            return maps[-1], maps[:0:-1]
        model = self.encoder.model
        x = model.stem(x)
        entries = []  # the map entering each stage, after its downsample
        for stage in model.stages:
            x = stage.downsample(x)
            entries.append(x)
            if stage.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage.blocks, x)
            else:
                x = stage.blocks(x)
        maps = [x] + entries[:0:-1]  # the last stage's output, then the entries of stages 3, 2, 1
        if model.channel_first:
            maps = [m.permute(0, 2, 3, 1) for m in maps]
        return maps[0], maps[1:]

    def forward(self, x: Tensor) -> Union[Tensor, List[Tensor]]:
        """(B, in_chans, H, W), H and W multiples of 32 -> logits (B, num_classes, H, W) ([logits] with deep
        supervision)."""
        if x.dim() != 4 or x.shape[1] != self.in_chans or x.shape[2] % 32 or x.shape[3] % 32:
            raise ValueError(f"VMUNet expects (B, {self.in_chans}, H, W) input with H and W multiples of 32, got "
                             f"{tuple(x.shape)}")
        deepest, skips = self.encode(x)
        return self.decoder(deepest, skips)
