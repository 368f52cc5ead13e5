"""The zoo-encoder nets in the segmentation net registry (``vssm.seg.build_seg_net``): ``vm_unet``, ``swin_umamba``,
``upernet`` and ``fpn``, each with the encoder's timm name as the ``encoder_name`` keyword.

These nets are 2-D (use a plan's ``2d`` configuration) and take their architecture from the encoder, not from the
plan's stages: the plan only gives the dimension and the patch size, which must be a multiple of 32 for ``vm_unet``
and ``swin_umamba`` (any size for ``upernet`` and ``fpn``). Other keywords go to the net's class
(``vssm.seg.vm_unet.VMUNet``, ``vssm.seg.swin_umamba.SwinUMamba``, ``vssm.seg.heads.UPerNet`` / ``SemanticFPN``).
"""
from typing import Sequence

from .heads import SemanticFPN, UPerNet
from .nets import register_seg_net
from .plans import NetworkPlan
from .swin_umamba import SwinUMamba
from .vm_unet import VMUNet

__all__ = ["check_zoo_plan"]


def check_zoo_plan(name: str, network: NetworkPlan, patch_size: Sequence[int], divisor: int = 1) -> None:
    """Raise ValueError unless the plan is 2-D and the patch sides are multiples of ``divisor``."""
    if network.dim != 2 or len(patch_size) != 2:
        raise ValueError(f"segmentation net {name!r} is 2-D; the plan is {network.dim}-D (use its '2d' configuration)")
    if any(side % divisor for side in patch_size):
        raise ValueError(f"segmentation net {name!r}: patch_size {tuple(patch_size)} must be a multiple of {divisor} "
                         "along both axes")


@register_seg_net("vm_unet")
def _vm_unet(network: NetworkPlan, in_channels: int, num_classes: int, patch_size: Sequence[int],
             deep_supervision: bool = True, encoder_name: str = "vmamba_small_v0", **kwargs) -> VMUNet:
    """VM-UNet-style net (one output); kwargs: ``VMUNet`` options."""
    check_zoo_plan("vm_unet", network, patch_size, 32)
    return VMUNet(encoder_name, in_chans=in_channels, num_classes=num_classes, deep_supervision=deep_supervision,
                  **kwargs)


@register_seg_net("swin_umamba")
def _swin_umamba(network: NetworkPlan, in_channels: int, num_classes: int, patch_size: Sequence[int],
                 deep_supervision: bool = True, encoder_name: str = "vmamba_tiny_v0", **kwargs) -> SwinUMamba:
    """Swin-UMamba-style net (4 deep-supervision outputs); kwargs: ``SwinUMamba`` options."""
    check_zoo_plan("swin_umamba", network, patch_size, 32)
    return SwinUMamba(encoder_name, in_chans=in_channels, num_classes=num_classes, deep_supervision=deep_supervision,
                      **kwargs)


@register_seg_net("upernet")
def _upernet(network: NetworkPlan, in_channels: int, num_classes: int, patch_size: Sequence[int],
             deep_supervision: bool = True, encoder_name: str = "vmamba_tiny", **kwargs) -> UPerNet:
    """UPerNet (one output); kwargs: ``UPerNet`` options."""
    check_zoo_plan("upernet", network, patch_size)
    return UPerNet(encoder_name, in_chans=in_channels, num_classes=num_classes, deep_supervision=deep_supervision,
                   **kwargs)


@register_seg_net("fpn")
def _fpn(network: NetworkPlan, in_channels: int, num_classes: int, patch_size: Sequence[int],
         deep_supervision: bool = True, encoder_name: str = "vmamba_tiny", **kwargs) -> SemanticFPN:
    """Semantic FPN (one output); kwargs: ``SemanticFPN`` options."""
    check_zoo_plan("fpn", network, patch_size)
    return SemanticFPN(encoder_name, in_chans=in_channels, num_classes=num_classes,
                       deep_supervision=deep_supervision, **kwargs)
