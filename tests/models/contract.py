"""timm's model checks (tests/test_models.py in timm), as functions each family's test file parametrises.

Each check takes a registered model name and small-size keyword arguments, so that the whole zoo fits the CI budget.
``fixture_dir(family)`` finds the shared golden data (../shared/fixtures or $VSSM_FIXTURES) or skips with the reason.
The official-fixture checks run on ``KERNEL_DEVICE``: the GPU where there is one, so that the converted weights
reproduce the official outputs through the Triton kernels too, else the CPU.
"""
import json
import os
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

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


def input_for(model, size=None, batch=1, frames=None):
    c, h, w = model.pretrained_cfg["input_size"]
    if size is not None:
        h = w = size
    shape = (batch, c, frames, h, w) if frames else (batch, c, h, w)
    return torch.randn(shape)


def check_forward(name, size=64, frames=None, **kwargs):
    """Batch 1 eval forward, no NaN; grad checkpointing gives the same output."""
    model = timm.create_model(name, **kwargs).eval()
    x = input_for(model, size, 1, frames)
    with torch.no_grad():
        out = model(x)
        assert out.shape[0] == 1 and not torch.isnan(out).any()
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


def check_default_cfg(name, size=None, **kwargs):
    """Counters, reset_classifier(0), num_classes=0, classifier/first_conv keys exist."""
    model = timm.create_model(name, **kwargs).eval()
    cfg = model.pretrained_cfg
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    x = input_for(model, size, 1)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape[1] == model.head_hidden_size
        model.reset_classifier(0)
        assert model.num_classes == 0
        out = model(x)
        assert out.shape == pre.shape
    model = timm.create_model(name, num_classes=0, **kwargs).eval()
    with torch.no_grad():
        assert model(x).shape == pre.shape
    sd = timm.create_model(name, **kwargs).state_dict()
    classifiers = cfg["classifier"] if isinstance(cfg["classifier"], (tuple, list)) else (cfg["classifier"],)
    for prefix in (*classifiers, cfg["first_conv"]):
        assert prefix + ".weight" in sd, f"{prefix}.weight missing from the state dict"
    for key in ("mean", "std", "crop_pct", "interpolation", "input_size"):
        assert key in cfg


def check_features_only(name, size=96, levels=3, **kwargs):
    """features_only: at least ``levels`` maps with the announced channels and reductions."""
    model = timm.create_model(name, features_only=True, **kwargs).eval()
    x = input_for(model, size, 1)
    with torch.no_grad():
        feats = model(x)
    assert len(feats) >= levels
    for f, ch, red in zip(feats, model.feature_info.channels(), model.feature_info.reduction()):
        assert f.shape[1] == ch and f.shape[0] == 1 and not torch.isnan(f).any()
        for dim in f.shape[2:]:
            assert dim <= -(-size // red) + 1


def check_forward_intermediates(name, size=96, **kwargs):
    """forward_intermediates: one NCHW map per feature_info entry; final output equals forward_features."""
    model = timm.create_model(name, **kwargs).eval()
    x = input_for(model, size, 1)
    with torch.no_grad():
        final, inters = model.forward_intermediates(x, output_fmt="NCHW")
        assert len(inters) == len(model.feature_info) >= 3
        for f, info in zip(inters, model.feature_info):
            assert f.shape[1] == info["num_chs"]
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
