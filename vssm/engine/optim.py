"""Parameter groups for timm's optimizer factory, honouring per-parameter hyper-parameters.

Some layers give their parameters their own learning rate or weight decay as an ``_optim`` dict on the parameter (the
convention of the official S4/S4ND code: the SSM kernel parameters train with lr 1e-3 and no weight decay, whatever the
global values). timm's ``create_optimizer_v2`` ignores it; ``param_groups`` builds timm's weight-decay (and layer-decay)
groups, then moves such parameters into groups of their own with the overrides applied. timm's schedulers scale each
group from its own initial learning rate, so the overrides follow the schedule.
"""
from typing import Iterable, Optional

from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn


def has_overrides(model: nn.Module) -> bool:
    """Whether any trainable parameter carries its own hyper-parameters (``param._optim``)."""
    return any(getattr(p, "_optim", None) for p in model.parameters() if p.requires_grad)


def param_groups(
        model: nn.Module,
        weight_decay: float,
        layer_decay: Optional[float] = None,
        no_weight_decay: Optional[Iterable[str]] = None,
) -> list[dict]:
    """timm's groups (1-D parameters and ``no_weight_decay`` names without weight decay; layer-wise lr scales with
    ``layer_decay``), then each group split by the ``_optim`` overrides of its parameters.

    Args:
        model: The model.
        weight_decay: The global weight decay.
        layer_decay: Layer-wise lr decay through ``model.group_matcher()``; None: off.
        no_weight_decay: Parameter-name patterns without weight decay; None: ``model.no_weight_decay()``.
    """
    if no_weight_decay is None:
        no_weight_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    if layer_decay is None:
        groups = param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=no_weight_decay)
    else:
        groups = param_groups_layer_decay(model, weight_decay=weight_decay, no_weight_decay_list=no_weight_decay,
                                          layer_decay=layer_decay)
    split = []
    for group in groups:
        by_override: dict[tuple, list] = {}
        for param in group["params"]:
            by_override.setdefault(tuple(sorted((getattr(param, "_optim", None) or {}).items())), []).append(param)
        for override, params in by_override.items():
            split.append({**group, "params": params, **dict(override)})
    return split
