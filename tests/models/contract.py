"""timm's model checks (tests/test_models.py in timm), as functions that tests/models/test_models.py runs over every
model ``import vssm`` registers.

Each check takes a registered model name and small-size keyword arguments (``small_input`` derives them from the
model's pretrained cfg and attributes), so that the whole zoo fits the CI budget; the checks that can share one built
model (forward, default cfg, forward_intermediates) also take it as ``model=``. Video models (a 3-D first
convolution) get (B, C, T, H, W) clips. ``fixture_dir(family)`` finds the shared golden data (../shared/fixtures or
$VSSM_FIXTURES) or skips with the reason. The official-fixture checks run on ``KERNEL_DEVICE``: the GPU where there is
one, so that the converted weights reproduce the official outputs through the Triton kernels too, else the CPU.
"""
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.models import get_pretrained_cfg, model_entrypoint

import vssm  # noqa: F401  (registers the zoo)

from ..ops.scan_cases import KERNEL_DEVICE  # noqa: F401  (re-exported for the fixture checks)

REPO = Path(__file__).resolve().parents[2]


def fixture_dir(family: str) -> Path:
    """The shared fixture folder of ``family``; skips the test with a clear reason when absent."""
    root = Path(os.environ.get("VSSM_FIXTURES", REPO.parent / "shared" / "fixtures"))
    path = root / family
    if not path.is_dir():
        pytest.skip(f"golden fixtures not found at {path} (set VSSM_FIXTURES to the shared fixtures folder)")
    return path


def load_case(family: str, case: str, device: str = "cpu"):
    """(meta json, official state dict, io tensors on ``device``) of one fixture case."""
    path = fixture_dir(family)
    meta = json.loads((path / f"{case}.json").read_text())
    return meta, load_file(str(path / f"{case}.weights.safetensors")), load_file(
        str(path / f"{case}.io.safetensors"), device=device)


def load_manifest(family: str, variant: str) -> dict:
    return json.loads((fixture_dir(family) / f"{variant}.keys.json").read_text())


def vssm_model_names() -> List[str]:
    """Every timm name whose entrypoint lives in the vssm package (what ``import vssm`` registers), sorted."""
    return sorted(n for n in timm.list_models() if model_entrypoint(n).__module__.startswith("vssm."))


@dataclass(frozen=True)
class SmallInput:
    """How a check builds a model and the input it feeds: ``kwargs`` for ``create_model`` (``img_size``, and
    ``num_frames`` for a video model, where the model's input size is fixed), the image side ``size`` and ``frames``
    (None: as ``clip_frames`` finds on the built model)."""
    kwargs: Dict
    size: int
    frames: Optional[int] = None


def clip_frames(model) -> Optional[int]:
    """Frames of the clips ``model`` takes (None for an image model): a model whose first convolution (cfg
    ``first_conv``) is 3-D takes (B, C, T, H, W) clips of its ``num_frames`` (the first module attribute of that name),
    else of two temporal kernels."""
    first_conv = model.pretrained_cfg["first_conv"]
    weight = next(m.weight for n, m in model.named_modules() if n == first_conv or n.endswith("." + first_conv))
    if weight.dim() != 5:
        return None
    return next((m.num_frames for m in model.modules() if isinstance(getattr(m, "num_frames", None), int)),
                2 * weight.shape[2])


@functools.lru_cache(maxsize=None)
def small_input(name: str, target: int = 32) -> SmallInput:
    """The small input ``name`` runs the contract at, from its pretrained cfg and its attributes (as timm's
    ``_get_input_size``): side ``target`` (or the cfg's ``min_input_size`` if larger). A model with
    ``fixed_input_size`` is built for that side (timm's convention: it takes ``img_size``) and, if it takes clips,
    for two temporal kernels' worth of frames (kwarg ``num_frames``)."""
    cfg = get_pretrained_cfg(name).to_dict()
    size = max(target, *(cfg.get("min_input_size") or (0, 0, 0))[1:])
    if not cfg.get("fixed_input_size"):
        return SmallInput({}, size)
    with torch.device("meta"):  # attributes only: no weights are initialised
        probe = timm.create_model(name)
    if clip_frames(probe) is None:
        return SmallInput(dict(img_size=size), size)
    first_conv = probe.get_submodule(cfg["first_conv"]).weight
    frames = 2 * first_conv.shape[2]
    return SmallInput(dict(img_size=size, num_frames=frames), size, frames)


def input_for(model, size=None, batch=1, frames=None):
    """Random input of the cfg's channels at side ``size`` (default: the cfg's input size); clips of ``frames`` (by
    default ``clip_frames(model)``) for a video model."""
    c, h, w = model.pretrained_cfg["input_size"]
    if size is not None:
        h = w = size
    frames = frames or clip_frames(model)
    shape = (batch, c, frames, h, w) if frames else (batch, c, h, w)
    return torch.randn(shape)


def check_forward(name, size=64, frames=None, model=None, **kwargs):
    """Batch 1 eval forward: (1, num_classes) logits, finite; grad checkpointing gives the same output."""
    model = (timm.create_model(name, **kwargs) if model is None else model).eval()
    x = input_for(model, size, 1, frames)
    with torch.no_grad():
        out = model(x)
        assert out.shape[0] == 1 and torch.isfinite(out).all()
        if model.num_classes:
            assert out.shape == (1, model.num_classes)
        model.set_grad_checkpointing()
        out2 = model(x)
    torch.testing.assert_close(out2, out, rtol=1e-4, atol=1e-5)


def check_backward(name, size=64, frames=None, **kwargs):
    """Batch 2 train step with 42 classes: every parameter receives a gradient of its size."""
    model = timm.create_model(name, num_classes=42, **kwargs).train()
    x = input_for(model, size, 2, frames)
    out = model(x)
    out.mean().backward()
    assert out.shape[-1] == 42 and not torch.isnan(out).any()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    wrong = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.numel() != p.numel()]
    assert not wrong, f"gradients of another size: {wrong}"


def check_default_cfg(name, size=None, frames=None, model=None, **kwargs):
    """Counters, cfg keys, ``forward_head(pre_logits=True)`` width, ``reset_classifier(0)``, ``num_classes=0`` (unless
    a built ``model`` is given: then only ``reset_classifier``), classifier / first_conv keys in the state dict; at
    the cfg input size (``size=None``) a spatial ``forward_features`` map has the cfg's ``pool_size`` and
    ``num_features`` channels (in the model's ``output_fmt``)."""
    given = model is not None
    model = (timm.create_model(name, **kwargs) if model is None else model).eval()
    cfg = model.pretrained_cfg
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    for key in ("mean", "std", "crop_pct", "interpolation", "input_size", "first_conv", "classifier"):
        assert key in cfg, f"pretrained_cfg has no {key!r}"
    sd = model.state_dict()
    classifiers = cfg["classifier"] if isinstance(cfg["classifier"], (tuple, list)) else (cfg["classifier"],)
    for prefix in (*classifiers, cfg["first_conv"]):
        assert prefix + ".weight" in sd, f"{prefix}.weight missing from the state dict"
    x = input_for(model, size, 1, frames)
    with torch.no_grad():
        features = model.forward_features(x)
        if size is None and cfg.get("pool_size"):
            channel_last = getattr(model, "output_fmt", "NCHW") == "NHWC"
            spatial = features.shape[1:3] if channel_last else features.shape[2:]
            assert tuple(spatial) == tuple(cfg["pool_size"]), f"feature map {tuple(spatial)} != cfg pool_size"
            assert features.shape[-1 if channel_last else 1] == model.num_features
        pre = model.forward_head(features, pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0
        out = model(x)
        assert out.shape == pre.shape
    if not given:
        model = timm.create_model(name, num_classes=0, **kwargs).eval()
        with torch.no_grad():
            assert model(x).shape == pre.shape


def _assert_maps(maps, channels, reductions, size, batch=1):
    """Feature maps (B, C, [T,] H, W): channels as announced, spatial sides <= ceil(size / reduction) + 1."""
    for f, ch, red in zip(maps, channels, reductions, strict=True):
        assert f.shape[0] == batch and f.shape[1] == ch and not torch.isnan(f).any()
        for dim in f.shape[-2:]:
            assert dim <= -(-size // red) + 1, f"map {tuple(f.shape)} larger than stride {red} allows"


def check_features_only(name, size=96, frames=None, levels=3, **kwargs):
    """features_only (the model's default wrapper): at least ``levels`` maps, one per ``feature_info`` out index, with
    the announced channels and reductions."""
    model = timm.create_model(name, features_only=True, **kwargs).eval()
    x = input_for(model, size, 1, frames)
    with torch.no_grad():
        feats = model(x)
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()  # of the out_indices
    assert len(feats) == len(channels) >= levels
    _assert_maps(feats, channels, reductions, size)


def check_forward_intermediates(name, size=96, frames=None, model=None, **kwargs):
    """forward_intermediates: one NCHW map per feature_info entry (channels, reduction); the final output equals
    forward_features, also with grad checkpointing."""
    model = (timm.create_model(name, **kwargs) if model is None else model).eval()
    x = input_for(model, size, 1, frames)
    with torch.no_grad():
        final, inters = model.forward_intermediates(x, output_fmt="NCHW")
        assert len(inters) == len(model.feature_info) >= 3
        _assert_maps(inters, [i["num_chs"] for i in model.feature_info], [i["reduction"] for i in model.feature_info],
                     size)
        torch.testing.assert_close(final, model.forward_features(x))
        model.set_grad_checkpointing()
        final2, _ = model.forward_intermediates(x, output_fmt="NCHW")
    torch.testing.assert_close(final2, final, rtol=1e-4, atol=1e-5)


def check_fx(name, size=64, frames=None, **kwargs):
    """timm's FX feature extraction: the traced graph computes exactly the eager output, and the train-mode graph
    gives every parameter a gradient."""
    from timm.models._features_fx import create_feature_extractor, get_graph_node_names

    model = timm.create_model(name, **kwargs).eval()
    x = input_for(model, size, 1, frames)
    train_nodes, eval_nodes = get_graph_node_names(model)
    fx_model = create_feature_extractor(model, return_nodes=[eval_nodes[-1]])
    with torch.no_grad():
        assert torch.equal(next(iter(fx_model(x).values())), model(x))
    fx_model = create_feature_extractor(model.train(), return_nodes=[train_nodes[-1]])
    next(iter(fx_model(input_for(model, size, 2, frames)).values())).mean().backward()
    missing = [n for n, p in fx_model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient through FX: {missing}"


def check_torchscript(name, size=64, frames=None, **kwargs):
    """torch.jit.script under timm's set_scriptable(True) runs and matches eager."""
    with timm.layers.set_scriptable(True):
        model = timm.create_model(name, **kwargs).eval()
    scripted = torch.jit.script(model)
    x = input_for(model, size, 1, frames)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


def check_param_count(name, family, variant=None):
    """Parameter count equals the official manifest's."""
    manifest = load_manifest(family, variant or name)
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == manifest["params"]
