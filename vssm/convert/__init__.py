"""Conversion of official checkpoints: one entry point over every family.

Each family module registers a builder with ``register_official(family)``; the builder takes the official constructor
kwargs and an optional ``entry`` (the official class or factory name where a family has several) and returns
``(module, convert)``: the equivalent vssm module and a function mapping an official state dict to its keys.
"""
from typing import Callable, Optional

import torch

_BUILDERS: dict[str, Callable] = {}


def register_official(family: str) -> Callable:
    """Decorator: register ``builder(kwargs: dict, entry: Optional[str]) -> (module, convert_fn)`` for ``family``."""
    def wrap(builder: Callable) -> Callable:
        _BUILDERS[family] = builder
        return builder
    return wrap


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

    Raises KeyError for an unknown family and RuntimeError listing unmatched keys.
    """
    from .. import models  # noqa: F401  (families register their builders on import)

    if family not in _BUILDERS:
        raise KeyError(f"unknown model family {family!r}; known: {sorted(_BUILDERS)}")
    module, convert = _BUILDERS[family](dict(kwargs), entry)
    converted = convert(unwrap_checkpoint(state_dict))
    missing, unexpected = module.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{family}: converted checkpoint does not match the model; missing keys {missing}, "
                           f"unexpected keys {unexpected}")
    return module.eval()
