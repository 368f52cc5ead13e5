"""Segmentation nets by name: a registry of builders that turn an nnU-Net plan into a net.

A builder is called as ``builder(network, in_channels, num_classes, patch_size, deep_supervision, **kwargs)`` with a
``vssm.seg.plans.NetworkPlan`` and returns an ``nn.Module`` that keeps the segmentation-net convention:

* ``forward(x)`` on (B, in_channels, *patch_size) returns the logits (B, num_classes, *patch_size), or, while
  ``net.decoder.deep_supervision`` is True (nnU-Net's switch), a list of logits, highest resolution first;
* ``net.deep_supervision_scales(patch_size)`` gives each deep-supervision output's integer downscale factor per axis
  (output k has size ``patch_size // factor_k``; the first is all ones), used to downsample the targets.

Registered here: ``umamba_bot`` and ``umamba_enc`` (``vssm.seg.umamba``). Other modules add theirs with
``@register_seg_net(name)``.
"""
from typing import Callable, Dict, List, Sequence

from torch import nn

from .plans import NetworkPlan
from .umamba import UMambaBot, UMambaEnc

__all__ = ["register_seg_net", "build_seg_net", "seg_net_names"]

_SEG_NETS: Dict[str, Callable[..., nn.Module]] = {}


def register_seg_net(name: str) -> Callable:
    """Decorator: register ``builder(network, in_channels, num_classes, patch_size, deep_supervision, **kwargs)``
    under ``name``. Raises ValueError if the name is taken."""
    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _SEG_NETS and _SEG_NETS[name] is not builder:
            raise ValueError(f"segmentation net {name!r} is already registered (by {_SEG_NETS[name].__module__})")
        _SEG_NETS[name] = builder
        return builder
    return wrap


def seg_net_names() -> List[str]:
    """The registered net names, sorted."""
    return sorted(_SEG_NETS)


def build_seg_net(name: str, network: NetworkPlan, in_channels: int, num_classes: int, patch_size: Sequence[int],
                  deep_supervision: bool = True, **kwargs) -> nn.Module:
    """Build the registered net ``name`` for a plan.

    Args:
        name: A name from ``seg_net_names()``.
        network: The configuration's ``NetworkPlan`` (``vssm.seg.plans.configuration(plans, name).network``).
        in_channels: Image channels.
        num_classes: Output channels (segmentation heads: labels, or regions for region-based training).
        patch_size: The training patch size (its number of axes must be the plan's ``dim``).
        deep_supervision: Start with deep supervision on (``net.decoder.deep_supervision``).
        **kwargs: Options of the net's builder.

    Raises:
        ValueError: Unknown name (the message lists the registered ones), or a patch size that does not fit the plan.
        TypeError: ``network`` is not a ``NetworkPlan``, or the builder returned a net without the convention's
            ``decoder.deep_supervision`` switch and ``deep_supervision_scales``.
    """
    if name not in _SEG_NETS:
        raise ValueError(f"unknown segmentation net {name!r}; registered: {', '.join(seg_net_names())}")
    if not isinstance(network, NetworkPlan):
        raise TypeError(f"build_seg_net: network must be a NetworkPlan (vssm.seg.plans.configuration(...).network), "
                        f"got {type(network).__name__}")
    if len(patch_size) != network.dim:
        raise ValueError(f"build_seg_net: patch_size {tuple(patch_size)} has {len(patch_size)} axes; the plan is "
                         f"{network.dim}-D")
    net = _SEG_NETS[name](network, in_channels, num_classes, tuple(patch_size), deep_supervision, **kwargs)
    decoder = getattr(net, "decoder", None)
    if not isinstance(getattr(decoder, "deep_supervision", None), bool) or not callable(
            getattr(net, "deep_supervision_scales", None)):
        raise TypeError(f"segmentation net {name!r} ({type(net).__name__}) must have a bool decoder.deep_supervision "
                        "and a deep_supervision_scales(patch_size) method")
    return net


@register_seg_net("umamba_bot")
def _umamba_bot(network: NetworkPlan, in_channels: int, num_classes: int, patch_size: Sequence[int],
                deep_supervision: bool = True, **kwargs) -> UMambaBot:
    """U-Mamba_Bot of the plan; kwargs: Mamba options (d_state, d_conv, expand), device, dtype."""
    return UMambaBot.from_plan(network, in_channels, num_classes, patch_size, deep_supervision, **kwargs)


@register_seg_net("umamba_enc")
def _umamba_enc(network: NetworkPlan, in_channels: int, num_classes: int, patch_size: Sequence[int],
                deep_supervision: bool = True, **kwargs) -> UMambaEnc:
    """U-Mamba_Enc of the plan, built for ``patch_size``; kwargs as ``umamba_bot``."""
    return UMambaEnc.from_plan(network, in_channels, num_classes, patch_size, deep_supervision, **kwargs)
