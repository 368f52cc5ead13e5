"""nnU-Net v2 trainers for vssm's segmentation nets: ``nnUNetTrainer`` subclasses that change the network and what
follows from it (the deep-supervision scales; the patch size for nets that need multiples of 32; Swin-UMamba's
optimizer and encoder freezing, as its official trainer), so nnU-Net's planning, data loading, augmentation, loss,
validation and inference stay nnU-Net's own.

nnU-Net (>= 2.8) finds them through ``nnUNet_extTrainer`` (``python -m vssm.seg.nnunet`` prints the line to export);
nothing is copied into nnunetv2. Every trainer builds its net with ``vssm.seg.build_seg_net`` from the configuration's
network (either plans layout), whichever of nnunetv2's three ``build_network_architecture`` call forms the installed
version uses. nnU-Net's environment variables (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``,
``nnUNet_compile``, ``nnUNet_n_proc_DA``, ``nnUNet_def_n_proc``, ...) are nnU-Net's to read; the trainers set none.
``torch.compile`` (nnU-Net's default on CUDA) stays as nnU-Net decides: the vssm ops are registered custom ops.

Trainers: ``nnUNetTrainerVssmUMambaBot``, ``nnUNetTrainerVssmUMambaEnc`` and the zoo-encoder nets (2-D
configurations) ``nnUNetTrainerVssmVMUNet``, ``nnUNetTrainerVssmSwinUMamba`` (the official Swin-UMamba recipe;
``...Scratch`` without ImageNet weights), ``nnUNetTrainerVssmUPerNet``, ``nnUNetTrainerVssmFPN``. Another
registered net, or other options, by subclassing (nnU-Net picks trainers by class name)::

    class nnUNetTrainerVssmUPerNetSiMBA(nnUNetTrainerVssm):
        seg_net_name = "upernet"
        seg_net_kwargs = {"encoder_name": "simba_s"}
"""
import math
from types import MappingProxyType
from typing import Any, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.lr_scheduler import LRScheduler

try:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
except ImportError as error:  # the optional extra
    raise ImportError("vssm.seg.nnunet.trainers needs nnunetv2: pip install 'vssm[nnunet]' (or create the extra's "
                      f"environment with tools/nnunet_env.sh); importing it failed: {error}") from error

from ..nets import seg_net_names
from .network import build_nnunet_network, record_patch_size, round_up_patch_size

__all__ = [
    "nnUNetTrainerVssm", "nnUNetTrainerVssmUMambaBot", "nnUNetTrainerVssmUMambaEnc", "nnUNetTrainerVssmVMUNet",
    "nnUNetTrainerVssmSwinUMamba", "nnUNetTrainerVssmSwinUMambaScratch", "nnUNetTrainerVssmUPerNet",
    "nnUNetTrainerVssmFPN",
]  # what the nnUNet_extTrainer module re-exports: trainers only (CosineLRScheduler is public too)


class nnUNetTrainerVssm(nnUNetTrainer):
    """nnU-Net's trainer with the registered vssm net ``seg_net_name`` (options ``seg_net_kwargs``) in place of
    nnU-Net's U-Net. Set both in a subclass; this class alone names no net."""

    seg_net_name: Optional[str] = None
    seg_net_kwargs: Mapping[str, Any] = MappingProxyType({})
    # the net's input sides must be multiples of this: the plan's patch size is rounded up (None: taken as planned)
    patch_multiple: Optional[int] = None

    @classmethod
    def build_network_architecture(cls, plans_manager=None, *args, **kwargs) -> nn.Module:
        """The vssm net for nnU-Net's call, in any of its three forms (``vssm.seg.nnunet.network``): <= 2.2
        ``(plans_manager, dataset_json, configuration_manager, num_input_channels, enable_deep_supervision)``,
        2.3 - 2.6 ``(architecture_class_name, arch_init_kwargs, arch_init_kwargs_req_import, num_input_channels,
        num_output_channels, enable_deep_supervision)``, >= 2.7 ``(plans_manager, configuration_manager,
        num_input_channels, num_output_channels, enable_deep_supervision)``. Called by the trainer and by nnU-Net's
        predictor."""
        if cls.seg_net_name is None:
            raise TypeError(f"{cls.__name__} names no segmentation net: subclass it with seg_net_name set to one of "
                            f"{', '.join(seg_net_names())} (and seg_net_kwargs for the net's options)")
        positional = args if plans_manager is None else (plans_manager,) + args
        return build_nnunet_network(cls.seg_net_name, cls.seg_net_kwargs, *positional, **kwargs)

    def initialize(self):
        if not self.was_initialized:
            plans, config = self.plans_manager.plans, self.configuration_manager.configuration
            if self.patch_multiple is not None:
                old, new = round_up_patch_size(plans, self.configuration_name, config, self.patch_multiple)
                if new != old:
                    self.print_to_log_file(f"patch size {old} -> {new}: {self.seg_net_name!r} takes input sides that "
                                           f"are multiples of {self.patch_multiple}")
            # nnunetv2 2.3-2.6 give build_network_architecture no patch size: keep it in the plans the model is saved
            # with (plans.json), so that its predictor builds the same net
            record_patch_size(plans, self.configuration_name, config)
        super().initialize()
        if self.seg_net_name is not None:
            net = self._plain_network()
            self.print_to_log_file(
                f"vssm net {self.seg_net_name!r} ({type(net).__name__}, "
                f"{sum(p.numel() for p in net.parameters()):,} parameters, {len(self._output_scales())} output(s) "
                f"with deep supervision) for patch size {tuple(self.configuration_manager.patch_size)}")

    def _plain_network(self) -> nn.Module:
        """The net without nnU-Net's DDP and torch.compile wrappers."""
        net = self.network.module if self.is_ddp else self.network
        return getattr(net, "_orig_mod", net)

    def _output_scales(self) -> List[Tuple[int, ...]]:
        """The net's integer downscale factor per deep-supervision output, highest resolution first."""
        return [tuple(f) for f in self._plain_network().deep_supervision_scales(
            tuple(self.configuration_manager.patch_size))]

    def _get_deep_supervision_scales(self):
        """nnU-Net's target scales (fractions per axis, one per output) from the net's own outputs rather than from
        the plan's pooling: the zoo-encoder nets' outputs do not follow the plan's strides."""
        if not getattr(self, "enable_deep_supervision", True):  # nnunetv2 <= 2.2 always supervises deeply
            return None
        return [[1.0 / f for f in factors] for factors in self._output_scales()]

    def _build_loss(self):
        if len(self._output_scales()) > 1:
            return super()._build_loss()
        # one output: nnU-Net's weights (1/2^i, the lowest-resolution one zeroed, normalised) come out 0/0
        with np.errstate(invalid="ignore"):
            loss = super()._build_loss()
        if hasattr(loss, "weight_factors"):
            loss.weight_factors = (1.0,)
        return loss


class nnUNetTrainerVssmUMambaBot(nnUNetTrainerVssm):
    """U-Mamba_Bot (``vssm.seg.UMambaBot``) from the plan, 2-D or 3-D."""
    seg_net_name = "umamba_bot"


class nnUNetTrainerVssmUMambaEnc(nnUNetTrainerVssm):
    """U-Mamba_Enc (``vssm.seg.UMambaEnc``) from the plan, built for the configuration's patch size."""
    seg_net_name = "umamba_enc"


class nnUNetTrainerVssmVMUNet(nnUNetTrainerVssm):
    """VM-UNet (``vssm.seg.VMUNet``, VMamba-S v0 encoder); 2-D, the patch rounded up to multiples of 32."""
    seg_net_name = "vm_unet"
    patch_multiple = 32


class CosineLRScheduler(LRScheduler):
    """Cosine annealing from ``initial_lr`` to ``min_lr`` over ``max_steps`` (epochs), set from the epoch nnU-Net passes
    to ``step(epoch)`` (torch's CosineAnnealingLR formula, without its deprecated epoch argument)."""

    def __init__(self, optimizer, initial_lr: float, max_steps: int, min_lr: float = 1e-6):
        self.initial_lr, self.max_steps, self.min_lr = initial_lr, max_steps, min_lr
        self.next_step = 0
        super().__init__(optimizer)

    def step(self, current_step: Optional[int] = None) -> None:
        if current_step is None or current_step == -1:
            current_step, self.next_step = self.next_step, self.next_step + 1
        lr = self.min_lr + (self.initial_lr - self.min_lr) * (1 + math.cos(math.pi * current_step / self.max_steps)) / 2
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr] * len(self.optimizer.param_groups)


class nnUNetTrainerVssmSwinUMamba(nnUNetTrainerVssm):
    """Swin-UMamba (``vssm.seg.SwinUMamba``: ImageNet VMamba-T v0 encoder, UNETR decoder, 4 deep-supervision outputs)
    with the official trainer's recipe: AdamW (lr 1e-4, weight decay 0.05, eps 1e-5), cosine to 1e-6 over the
    epochs, the encoder frozen except its patch embedding for the first ``freeze_encoder_epochs`` (10) epochs. 2-D;
    the patch rounded up to multiples of 32."""
    seg_net_name = "swin_umamba"
    seg_net_kwargs = MappingProxyType({"pretrained": True})
    patch_multiple = 32
    freeze_encoder_epochs = 10
    learning_rate, adamw_weight_decay, min_learning_rate = 1e-4, 5e-2, 1e-6

    def initialize(self):
        if not self.was_initialized:
            self.initial_lr, self.weight_decay = self.learning_rate, self.adamw_weight_decay
        super().initialize()
        if self.is_ddp and self.freeze_encoder_epochs > 0:  # frozen parameters get no gradient: DDP must allow that
            self.network = DDP(self.network.module, device_ids=[self.local_rank], find_unused_parameters=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay,
                                      eps=1e-5, betas=(0.9, 0.999))
        return optimizer, CosineLRScheduler(optimizer, self.initial_lr, self.num_epochs, self.min_learning_rate)

    def on_train_epoch_start(self):
        freeze = self.current_epoch < self.freeze_encoder_epochs
        self._plain_network().freeze_encoder(freeze)
        self.print_to_log_file(f"encoder {'frozen (except its patch embedding)' if freeze else 'trainable'}")
        super().on_train_epoch_start()


class nnUNetTrainerVssmSwinUMambaScratch(nnUNetTrainerVssmSwinUMamba):
    """Swin-UMamba from scratch (the official ``...Scratch`` trainer): no ImageNet weights, the encoder never frozen."""
    seg_net_kwargs = MappingProxyType({})
    freeze_encoder_epochs = 0


class nnUNetTrainerVssmUPerNet(nnUNetTrainerVssm):
    """UPerNet on VMamba-T (``vssm.seg.UPerNet``); 2-D."""
    seg_net_name = "upernet"


class nnUNetTrainerVssmFPN(nnUNetTrainerVssm):
    """Semantic FPN on VMamba-T (``vssm.seg.SemanticFPN``); 2-D."""
    seg_net_name = "fpn"
