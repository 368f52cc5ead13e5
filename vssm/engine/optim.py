"""Parameter groups for timm's optimizer factory, honouring per-parameter hyper-parameters and the official layer-decay
rule of VideoMamba.

Some layers give their parameters their own learning rate or weight decay as an ``_optim`` dict on the parameter (the
convention of the official S4/S4ND code: the SSM kernel parameters train with lr 1e-3 and no weight decay, whatever the
global values). timm's ``create_optimizer_v2`` ignores it; ``param_groups`` builds timm's weight-decay (and layer-decay)
groups, then moves such parameters into groups of their own with the overrides applied. timm's schedulers scale each
group from its own initial learning rate (times its ``lr_scale``), so the overrides follow the schedule.

Layer decay, ``layer_decay_rule``:

- ``'timm'``: ``model.group_matcher()`` (the stem, then each block, the final norm joining the last block; the head
  is the last layer), scale ``layer_decay ** (last - layer)``.
- ``'videomamba_official'``: VideoMamba's ``get_num_layer_for_vit`` (``video_sm/optim_factory.py``) applied to the
  official parameter names: ``cls_token``, ``pos_embed`` and ``patch_embed.*`` are layer 0, and since the rule for the
  official blocks (``layers.*``) is commented out, every other parameter (blocks, ``temporal_pos_embedding``, final
  norm, head) is layer ``depth + 1``; scales ``layer_decay ** (depth + 1 - layer)``: ``0.75 ** 25`` for the
  embeddings of a 24-block model, 1 for the rest. The released VideoMamba video models were fine-tuned so.
"""
from typing import Iterable, Optional

from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

LAYER_DECAY_RULES = ("timm", "videomamba_official")


def has_overrides(model: nn.Module) -> bool:
    """Whether any trainable parameter carries its own hyper-parameters (``param._optim``)."""
    return any(getattr(p, "_optim", None) for p in model.parameters() if p.requires_grad)


def videomamba_official_layer_id(name: str, depth: int) -> int:
    """The layer id VideoMamba's fine-tuning code gives parameter ``name`` of a ``depth``-block model: 0 for the class
    token, the spatial position embedding and the patch embedding, ``depth + 1`` for everything else."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
        return 0
    return depth + 1


def _official_layer_groups(model: nn.Module, weight_decay: float, layer_decay: float,
                           no_weight_decay: Iterable[str]) -> list[dict]:
    """timm's weight-decay groups, each split by the official VideoMamba layer id, with ``lr_scale``."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        raise ValueError(f"layer_decay_rule 'videomamba_official' needs a model with a 'blocks' list "
                         f"({type(model).__name__} has none)")
    depth = len(blocks)
    names = {id(param): name for name, param in model.named_parameters()}
    groups = []
    for group in param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=no_weight_decay):
        by_layer: dict[int, list] = {}
        for param in group["params"]:
            by_layer.setdefault(videomamba_official_layer_id(names[id(param)], depth), []).append(param)
        for layer, params in sorted(by_layer.items()):
            groups.append({**group, "params": params, "lr_scale": layer_decay ** (depth + 1 - layer)})
    return groups


def param_groups(
        model: nn.Module,
        weight_decay: float,
        layer_decay: Optional[float] = None,
        no_weight_decay: Optional[Iterable[str]] = None,
        layer_decay_rule: str = "timm",
) -> list[dict]:
    """timm's groups (1-D parameters, biases and ``no_weight_decay`` names without weight decay; layer-wise lr scales
    with ``layer_decay`` by ``layer_decay_rule``), then each group split by the ``_optim`` overrides of its parameters.

    Args:
        model: The model.
        weight_decay: The global weight decay.
        layer_decay: Layer-wise lr decay; None: off.
        no_weight_decay: Parameter-name patterns without weight decay; None: ``model.no_weight_decay()``.
        layer_decay_rule: 'timm' (``model.group_matcher()``) or 'videomamba_official' (see the module docstring).
    """
    if layer_decay_rule not in LAYER_DECAY_RULES:
        raise ValueError(f"unknown layer_decay_rule {layer_decay_rule!r} (known: {', '.join(LAYER_DECAY_RULES)})")
    if no_weight_decay is None:
        no_weight_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    if layer_decay is None:
        groups = param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=no_weight_decay)
    elif layer_decay_rule == "videomamba_official":
        groups = _official_layer_groups(model, weight_decay, layer_decay, no_weight_decay)
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
