"""Conversion of official checkpoints: one entry point over every family.

The model families register themselves here; this module imports none of them (``import vssm`` imports the families,
so the registries are full once the package is imported):

- ``register_official(family)``: a builder that takes the official constructor kwargs and an optional ``entry`` (the
  official class or factory name where a family has several) and returns ``(module, convert)``: the equivalent vssm
  module and a function mapping an official state dict to its keys (``load_official``).
- ``register_checkpoint_filter``: the family's ``checkpoint_filter_fn(state_dict, model) -> state_dict`` (timm's
  signature), the conversion of official release checkpoints for every model that the family's module registers.
  ``checkpoint_filter_for(name)`` finds it by the registered timm name, through the module of the name's timm
  entrypoint, so a model built on another family's class (``videomamba_*_image`` is a ``Vim``, ``local_vmamba_*`` a
  ``VMamba``) gets the converter of the family that registered it.
"""
from typing import Callable, NamedTuple, Optional

import timm
import torch
from timm.models import model_entrypoint, split_model_name_tag

_BUILDERS: dict[str, Callable] = {}
_CHECKPOINT_FILTERS: dict[str, Callable] = {}  # family module name -> its checkpoint_filter_fn


def register_official(family: str) -> Callable:
    """Decorator: register ``builder(kwargs: dict, entry: Optional[str]) -> (module, convert_fn)`` for ``family``."""
    def wrap(builder: Callable) -> Callable:
        _BUILDERS[family] = builder
        return builder
    return wrap


def register_checkpoint_filter(filter_fn: Callable) -> Callable:
    """Decorator on a family module's ``checkpoint_filter_fn(state_dict, model) -> state_dict``: the converter of the
    official checkpoints of every model that module registers with timm."""
    _CHECKPOINT_FILTERS[filter_fn.__module__] = filter_fn
    return filter_fn


class RegisteredModel(NamedTuple):
    """What the engine and tools need to load official weights into a registered model."""
    name: str  # the timm architecture name, without a pretrained tag
    checkpoint_filter: Optional[Callable]  # the family's checkpoint_filter_fn, None for a family without one
    pretrained_cfg: dict  # timm's default pretrained cfg of the name (or of the tag given)


def registered_model(model_or_name) -> RegisteredModel:
    """The converter and pretrained cfg of a registered model, by its timm name (``name`` or ``name.tag``) or by a model
    built with ``timm.create_model`` (its ``pretrained_cfg['architecture']``). Raises ValueError for a name timm does
    not know and for a module that timm did not build."""
    if isinstance(model_or_name, str):
        name = model_or_name
    else:
        name = (getattr(model_or_name, "pretrained_cfg", None) or {}).get("architecture")
        if name is None:
            raise ValueError(f"{type(model_or_name).__name__} was not built by timm.create_model (no "
                             "pretrained_cfg['architecture']); give its registered name instead")
    arch = split_model_name_tag(name)[0]
    if not timm.is_model(arch):
        raise ValueError(f"unknown model {name!r}: not registered with timm (import vssm registers the zoo)")
    module = model_entrypoint(arch).__module__
    try:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    except RuntimeError as error:  # a tag the architecture has no weights for
        raise ValueError(f"model {name!r}: {error}") from None
    return RegisteredModel(arch, _CHECKPOINT_FILTERS.get(module), {} if cfg is None else cfg.to_dict())


def checkpoint_filter_for(model_or_name) -> Optional[Callable]:
    """The ``checkpoint_filter_fn`` that converts official checkpoints for a registered model (see
    ``registered_model``); None when its family converts nothing."""
    return registered_model(model_or_name).checkpoint_filter


def unwrap_checkpoint(checkpoint) -> dict:
    """Official checkpoints nest the weights ({'model': ...}, {'state_dict': ...}, {'module': ...}) and prefix keys
    with 'module.' (DataParallel/DDP); return the flat state dict."""
    sd = checkpoint
    for key in ("model", "state_dict", "module", "model_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError("checkpoint holds no state dict of tensors (looked at the top level and under 'model', "
                         "'state_dict', 'module', 'model_ema')")
    while sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_official(family: str, state_dict: dict, kwargs: dict, entry: Optional[str] = None) -> torch.nn.Module:
    """Build the vssm module equivalent to the official ``entry(**kwargs)`` and load the official weights strictly.

    Raises KeyError for an unknown family and RuntimeError listing unmatched keys. The families register their
    builders when ``vssm`` is imported (``import vssm.convert`` does that first).
    """
    if family not in _BUILDERS:
        raise KeyError(f"unknown model family {family!r}; known: {sorted(_BUILDERS)}")
    module, convert = _BUILDERS[family](dict(kwargs), entry)
    converted = convert(unwrap_checkpoint(state_dict))
    missing, unexpected = module.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{family}: converted checkpoint does not match the model; missing keys {missing}, "
                           f"unexpected keys {unexpected}")
    return module.eval()
