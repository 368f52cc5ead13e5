"""Training checkpoints: atomic writes, safe reads, random-generator states, and official weights for evaluation.

A training checkpoint is a dict that ``torch.load(..., weights_only=True)`` reads (no pickled classes): ``format``,
``epoch`` (epochs completed), ``num_updates``, ``model`` (full state dict, also under FSDP), ``model_ema``,
``optimizer`` (keyed by parameter name, so a run can resume on another number of processes), ``scheduler``,
``scaler``, ``best``, ``rng`` (one entry per rank) and ``config`` (the resolved config). timm's ``load_checkpoint`` and
``pretrained_cfg_overlay=dict(file=...)`` read its ``model`` / ``model_ema`` entries directly.
"""
import contextlib
import errno
import os
import pickle
import random
import shutil
import tempfile
import zipfile
from typing import Callable, Optional

import numpy as np
import torch

from vssm.convert import checkpoint_filter_for, unwrap_checkpoint

from .errors import UserError

FORMAT = "vssm-train-1"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: str, write: Callable, mode: str = "wb", **open_kwargs) -> None:
    """Call ``write(file)`` on a new temporary file in ``path``'s folder, flush it to disk, rename it over ``path`` and
    sync the folder, so that ``path`` holds either its old or its complete new content.

    The temporary file has a unique name (concurrent writers of one path never share one) and is created exclusively
    (a planted file or symlink is never followed); a symlink at ``path`` itself is replaced, not written through. On any
    failure the temporary file is removed; a full disk is a ``UserError`` naming the path and the bytes written so far.
    """
    folder = os.path.dirname(os.path.abspath(path))
    descriptor, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates owner-only files; give the file the usual permissions
        with os.fdopen(descriptor, mode, **open_kwargs) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        full = _disk_full(error, folder)
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if full:
            raise UserError(f"cannot write {path}: no space left on the device of {folder} ({written / 2 ** 20:.1f} "
                            "MiB written before it filled up; free space and resume)") from None
        raise
    _sync_folder(folder)


def _disk_full(error: BaseException, folder: str) -> bool:
    """Whether a write into ``folder`` failed for want of space: ENOSPC/EDQUOT, or torch's serializer failing (it
    reports a full disk as a RuntimeError of its zip writer) while the folder's device has less than 1 MiB free."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(error, RuntimeError) and ("inline_container" in str(error) or "write" in str(error)):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(folder).free < 2 ** 20
    return False


def _sync_folder(folder: str) -> None:
    """fsync a folder, so that a rename in it survives a power loss (a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def save_atomic(state: dict, path: str) -> None:
    """``torch.save`` of ``state`` to ``path``, written atomically."""
    write_atomic(path, lambda file: torch.save(state, file))


def read_checkpoint(path: str, trust: bool = False, trust_option: Optional[str] = "--trust-checkpoint") -> dict:
    """Load a checkpoint file (torch or safetensors) onto the CPU.

    Args:
        path: The file.
        trust: Also unpickle arbitrary Python objects (some official checkpoints store their config objects); only
            for files from a trusted source.
        trust_option: The option that sets ``trust``, named in the message about pickled objects; None where there is
            none (resuming reads only the trainer's own checkpoints, which hold no pickled objects).
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
            if trust_option is None:
                raise UserError(f"checkpoint {path} holds pickled Python objects besides tensors, so tools/train.py did "
                                "not write it; resume from a last.pth of a vssm run") from None
            raise UserError(f"checkpoint {path} holds pickled Python objects besides tensors; pass {trust_option} "
                            "to load it anyway (only for files from a trusted source)") from None
        raise UserError(f"cannot read checkpoint {path}: {_describe_read_error(path, error)}") from None


def _describe_read_error(path: str, error: Exception) -> str:
    """What a failed read says about the file, with the error's type where its text alone says little."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if not any(name.endswith("data.pkl") for name in names):
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            return (f"a zip archive of {len(names)} file(s) ({shown}) but not a PyTorch checkpoint (which holds a "
                    "data.pkl); is it another framework's format?")
    text = " ".join(str(error).split())
    if isinstance(error, EOFError):
        return "the file is empty or ends early (EOFError)"
    if "PytorchStreamReader" in text:  # a PyTorch zip checkpoint, damaged
        return f"a damaged PyTorch checkpoint ({text.split('. ')[0]})"
    if isinstance(error, (pickle.UnpicklingError, KeyError, IndexError, ValueError, UnicodeDecodeError)):
        return f"not a PyTorch or safetensors checkpoint ({type(error).__name__}: {text})"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def checkpoint_epoch(path: str) -> Optional[int]:
    """The ``epoch`` of a training checkpoint file, read without loading its tensors; None if it is missing or
    unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("epoch")
    except Exception:  # missing, truncated or foreign: the caller rewrites it
        return None


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
    """Load a training checkpoint's weights, or an official checkpoint converted by the ``checkpoint_filter_fn`` of the
    family that registered the model's name (the conversion timm applies for ``pretrained=True``), strictly.

    Args:
        model: The freshly created model (built by ``timm.create_model``).
        checkpoint: What ``read_checkpoint(path)`` returned.
        path: For messages.
        use_ema: Take the EMA weights of a training checkpoint.
    """
    state_dict = state_dict_of(checkpoint, path, use_ema)
    name = model.pretrained_cfg.get("architecture", type(model).__name__)
    if not is_training_checkpoint(checkpoint):
        convert = checkpoint_filter_for(model)
        if convert is not None:
            try:
                state_dict = convert(state_dict, model)
            except (KeyError, RuntimeError, ValueError) as error:  # the families' converters name what is wrong
                detail = " ".join(str(error).split())
                raise UserError(f"checkpoint {path} cannot be converted for model {name}: "
                                f"{type(error).__name__}: {detail}") from None
    mismatch = describe_mismatch(model, state_dict)
    if mismatch:
        trained_as = trained_model_name(checkpoint)
        origin = f" (it was trained as {trained_as})" if trained_as and trained_as != name else ""
        raise UserError(f"checkpoint {path} does not fit model {name}{origin}: {mismatch}")
    model.load_state_dict(state_dict, strict=True)


def trained_model_name(checkpoint) -> Optional[str]:
    """The model name a training checkpoint records in its config, else None."""
    if not is_training_checkpoint(checkpoint):
        return None
    return ((checkpoint.get("config") or {}).get("model") or {}).get("name")


def describe_mismatch(model: torch.nn.Module, state_dict: dict, shown: int = 3) -> str:
    """'' when ``state_dict`` loads strictly into ``model``; else counts of the missing, unexpected and differently
    shaped keys, with the first ``shown`` of each."""
    own = model.state_dict()
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    reshaped = [f"{key} {tuple(state_dict[key].shape)} vs {tuple(own[key].shape)}" for key in own
                if key in state_dict and hasattr(state_dict[key], "shape") and state_dict[key].shape != own[key].shape]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape (checkpoint vs model)",
                                                                          reshaped)):
        if keys:
            more = f", ... {len(keys) - shown} more" if len(keys) > shown else ""
            parts.append(f"{len(keys)} key(s) {label}: {', '.join(keys[:shown])}{more}")
    return "; ".join(parts)


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
