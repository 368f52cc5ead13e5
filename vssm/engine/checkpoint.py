"""Training checkpoints: atomic writes, safe reads, random-generator states, and official weights for evaluation.

A training checkpoint is a dict that ``torch.load(..., weights_only=True)`` reads (no pickled classes): ``format``,
``epoch`` (epochs completed), ``num_updates``, ``model`` (full state dict, also under FSDP), ``model_ema``,
``optimizer`` (keyed by parameter name, so a run can resume on another number of processes), ``scheduler``,
``scaler``, ``best``, ``rng`` (one entry per rank) and ``config`` (the resolved config). timm's ``load_checkpoint`` and
``pretrained_cfg_overlay=dict(file=...)`` read its ``model`` / ``model_ema`` entries directly.
"""
import os
import pickle
import random
import sys
from typing import Callable, Optional

import numpy as np
import torch

from vssm.convert import unwrap_checkpoint

from .errors import UserError

FORMAT = "vssm-train-1"


def write_atomic(path: str, write: Callable, mode: str = "wb", **open_kwargs) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, flush it to disk, then rename it over ``path``."""
    tmp = f"{path}.tmp"
    with open(tmp, mode, **open_kwargs) as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def save_atomic(state: dict, path: str) -> None:
    """``torch.save`` of ``state`` to ``path``, written atomically."""
    write_atomic(path, lambda file: torch.save(state, file))


def read_checkpoint(path: str, trust: bool = False) -> dict:
    """Load a checkpoint file (torch or safetensors) onto the CPU.

    Args:
        path: The file.
        trust: Also unpickle arbitrary Python objects (some official checkpoints store their config objects); only
            for files from a trusted source.
    """
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as error:  # truncated files, foreign formats, pickled objects
        if not trust and "Unsupported global" in str(error):  # torch's weights-only unpickler met a Python object
            raise UserError(f"checkpoint {path} holds pickled Python objects besides tensors; pass --trust-checkpoint "
                            "to load it anyway (only for files from a trusted source)") from None
        if isinstance(error, pickle.UnpicklingError):
            message = "not a PyTorch or safetensors checkpoint"
        else:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot read checkpoint {path}: {message}") from None


def is_training_checkpoint(checkpoint) -> bool:
    """True for a checkpoint written by vssm's trainer."""
    return isinstance(checkpoint, dict) and checkpoint.get("format") == FORMAT


def state_dict_of(checkpoint, path: str, use_ema: bool = False) -> dict:
    """The weights in a checkpoint: a training checkpoint's ``model`` (or ``model_ema``) entry, else the flat state dict
    of an official one (unnested, 'module.' prefixes removed), still in the official layout.

    Args:
        checkpoint: What ``read_checkpoint(path)`` returned.
        path: For messages.
        use_ema: Take the EMA weights of a training checkpoint.
    """
    if is_training_checkpoint(checkpoint):
        key = "model_ema" if use_ema else "model"
        if checkpoint.get(key) is None:
            raise UserError(f"checkpoint {path} has no {key!r} weights")
        return checkpoint[key]
    try:
        return unwrap_checkpoint(checkpoint)
    except ValueError as error:
        raise UserError(f"checkpoint {path}: {error}") from None


def load_model_weights(model: torch.nn.Module, checkpoint: dict, path: str, use_ema: bool = False) -> None:
    """Load a training checkpoint's weights, or an official checkpoint converted by the model's own
    ``checkpoint_filter_fn`` (the conversion timm applies for ``pretrained=True``), strictly.

    Args:
        model: The freshly created model.
        checkpoint: What ``read_checkpoint(path)`` returned.
        path: For messages.
        use_ema: Take the EMA weights of a training checkpoint.
    """
    state_dict = state_dict_of(checkpoint, path, use_ema)
    if not is_training_checkpoint(checkpoint):
        convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
        if convert is not None:
            try:
                state_dict = convert(state_dict, model)
            except (KeyError, RuntimeError, ValueError) as error:  # the families' converters name what is wrong
                detail = " ".join(str(error).split())
                raise UserError(f"checkpoint {path} cannot be converted for model {type(model).__name__}: "
                                f"{detail[:300]}") from None
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        raise UserError(f"checkpoint {path} does not fit model {type(model).__name__}: {detail[:300]}") from None


def capture_rng() -> dict:
    """The state of Python's, NumPy's and torch's (CPU and current CUDA device) generators, as tensors and ints."""
    _, keys, position, has_gauss, cached_gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gauss": float(cached_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def restore_rng(state: dict) -> None:
    """Undo ``capture_rng``."""
    random.setstate(_as_tuples(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _as_tuples(value):
    """random.setstate needs tuples where a round trip through some serialisers gives lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def rank_rng(states: Optional[list], rank: int) -> Optional[dict]:
    """The saved generator state of ``rank``, or None when the checkpoint came from fewer ranks."""
    return states[rank] if states and rank < len(states) else None
