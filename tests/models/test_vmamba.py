"""VMamba: official parameter counts and checkpoint conversion (full-size manifests, golden fixtures, v0 legacy key
names), layouts, input sizes and the scan engine; timm's contract runs over every variant in
tests/models/test_models.py."""
import re

import pytest
import timm
import torch

import vssm.layers.ss2d as ss2d_module
from vssm.convert import load_official
from vssm.models.vmamba import checkpoint_filter_fn

from .contract import KERNEL_DEVICE, check_fx, check_param_count, check_torchscript, load_case, load_manifest

VARIANTS = ["vmamba_tiny", "vmamba_small", "vmamba_base", "vmamba_tiny_s2l5", "vmamba_small_s1l20",
            "vmamba_base_s1l20", "vmamba_tiny_v0", "vmamba_small_v0", "vmamba_base_v0"]
CASES = ["vmamba_v2_s1_cf", "vmamba_v2_s2_cl", "vmamba_v0"]
SMALL = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))  # each variant's code path at tiny widths


def test_registered():
    assert set(VARIANTS) <= set(timm.list_models("vmamba*"))
    assert set(timm.list_models(module="vmamba")) == set(VARIANTS) | {"test_vmamba"}


@pytest.mark.parametrize("name", VARIANTS)
def test_param_count(name):
    check_param_count(name, "vmamba")


@pytest.mark.parametrize("name", VARIANTS)
def test_manifest_converts_strictly(name):
    """Every key of the official full-size state dict maps onto the model with its shape, and nothing is left."""
    manifest = load_manifest("vmamba", name)
    with torch.device("meta"):
        model = timm.create_model(name)
        official = {k: torch.empty(shape) for k, shape in manifest["state_dict"].items()}
    model.load_state_dict(checkpoint_filter_fn({"model": official}, model), strict=True, assign=True)


def test_v0_channel_first_traces_and_scripts():
    """The v0 path (patchify stem, patch merging, gated SS2D) in the channel-first layout it does not use by default:
    FX and TorchScript (test_models.py runs both layouts' defaults: test_vmamba v2, the v0 variants under slow)."""
    kwargs = dict(SMALL, channel_first=True)
    check_fx("vmamba_tiny_v0", size=32, **kwargs)
    check_torchscript("vmamba_tiny_v0", size=32, **kwargs)


@pytest.mark.parametrize("channel_first", [False, True])
@pytest.mark.parametrize("name", ["vmamba_small_v0", "vmamba_small"])
def test_features_strides_and_channels(name, channel_first):
    """features_only: NCHW maps at strides 4/8/16/32 (taken before the next stage's downsample) in both layouts."""
    model = timm.create_model(name, features_only=True, channel_first=channel_first, **SMALL).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 32, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 8, 8, 16), (1, 16, 4, 8), (1, 24, 2, 4), (1, 32, 1, 2)]


@pytest.mark.parametrize("name,size,grids", [
    ("vmamba_tiny_v0", (50, 38), [(12, 9), (6, 5), (3, 3), (2, 2)]),  # 4x4 patchify floors, patch merging pads
    ("vmamba_tiny", (50, 38), [(13, 10), (7, 5), (4, 3), (2, 2)]),  # strided convs round up
    ("vmamba_tiny", (20, 100), [(5, 25), (3, 13), (2, 7), (1, 4)]),
])
def test_any_input_size(name, size, grids):
    model = timm.create_model(name, num_classes=5, **SMALL).eval()
    with torch.no_grad():
        x = torch.randn(1, 3, *size)
        feats = model.forward_intermediates(x, intermediates_only=True)
        assert [tuple(f.shape[-2:]) for f in feats] == grids
        assert model(x).shape == (1, 5)


@pytest.mark.parametrize("case", CASES)
def test_official_fixture(case):
    meta, state_dict, io = load_case("vmamba", case, KERNEL_DEVICE)
    model = load_official("vmamba", state_dict, meta["kwargs"], meta["official_entry"]).to(KERNEL_DEVICE)
    tol = dict(atol=meta["suggested_atol"], rtol=meta["suggested_rtol"])
    with torch.no_grad():
        final, feats = model.forward_intermediates(io["input"])
        torch.testing.assert_close(model.forward_head(final), io["output"], **tol)
    for i, feat in enumerate(feats):
        torch.testing.assert_close(feat, io[f"feature.{i}"], **tol)


@pytest.mark.parametrize("name", ["test_vmamba", "vmamba_tiny_v0"])
def test_channel_layouts_give_the_same_numbers(name):
    """The official v2 models run channel-first, v0 channel-last; either layout loads the same weights."""
    kwargs = dict(SMALL, num_classes=10)
    first = timm.create_model(name, channel_first=True, **kwargs).eval()
    last = timm.create_model(name, channel_first=False, **kwargs).eval()
    last.load_state_dict(first.state_dict())
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        final_last, feats_last = last.forward_intermediates(x)
        final_first, feats_first = first.forward_intermediates(x)
        torch.testing.assert_close(last.forward_head(final_last), first.forward_head(final_first), atol=1e-5, rtol=1e-5)
        for a, b in zip(feats_last, feats_first):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert last.output_fmt == "NHWC" and first.output_fmt == "NCHW"
    assert final_last.shape == final_first.permute(0, 2, 3, 1).shape


def test_v0_legacy_checkpoint_names():
    """January 2024 (v0 release) names, nested under 'model' with a DDP 'module.' prefix, load through timm."""
    meta, state_dict, io = load_case("vmamba", "vmamba_v0")
    renames = [(r"^patch_embed\.0\.", "patch_embed.proj."), (r"^patch_embed\.2\.", "patch_embed.norm."),
               (r"^(layers\.\d+\.blocks\.\d+)\.norm\.", r"\1.ln_1."),
               (r"^(layers\.\d+\.blocks\.\d+)\.op\.", r"\1.self_attention."),
               (r"^classifier\.norm\.", "norm."), (r"^classifier\.head\.", "head.")]
    legacy = {}
    for key, value in state_dict.items():
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        legacy["module." + key] = value
    assert "module.layers.0.blocks.0.ln_1.weight" in legacy and "module.norm.weight" in legacy
    model = timm.create_model("vmamba_tiny_v0", depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), num_classes=10)
    converted = checkpoint_filter_fn({"model": legacy, "epoch": 1}, model)
    reference = checkpoint_filter_fn({"model": state_dict}, model)
    assert converted.keys() == reference.keys()
    assert all(torch.equal(converted[k], reference[k]) for k in reference)
    model.load_state_dict(converted)


def test_pretrained_through_timm(tmp_path):
    """create_model(pretrained=True) with a local official checkpoint goes through checkpoint_filter_fn."""
    meta, state_dict, io = load_case("vmamba", "vmamba_v2_s1_cf")  # test_vmamba has this exact architecture
    path = tmp_path / "official.pth"
    torch.save({"model": state_dict, "optimizer": {}}, path)
    model = timm.create_model("test_vmamba", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=10)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["output"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,d_state,merge", [("test_vmamba", 1, "sum"), ("vmamba_tiny_v0", 16, "sum")])
def test_scan_runs_on_projected_multi_scan(monkeypatch, name, d_state, merge):
    """One fused projections + multi_scan call per block (cross paths, merged in the kernel) with the variant's
    d_state."""
    calls = []
    real = ss2d_module.projected_multi_scan

    def spy(*args):
        calls.append((args[4].shape[-1], tuple(args[6].shape), args[7]))  # A_log (K, d, N), paths (K, L), merge
        return real(*args)

    monkeypatch.setattr(ss2d_module, "projected_multi_scan", spy)
    timm.create_model(name, depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))(torch.randn(1, 3, 32, 32))
    assert calls == [(d_state, (4, 64), merge), (d_state, (4, 16), merge)] + [(d_state, (4, 4), merge)] * 2 + [
        (d_state, (4, 1), merge)]


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = timm.create_model("test_vmamba", num_classes=4).train()
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        model(x).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_pretrained_cfgs():
    for name in VARIANTS:
        cfg = timm.create_model(name, pretrained=False, **SMALL).pretrained_cfg
        assert cfg["url"].startswith("https://github.com/MzeroMiko/VMamba/releases/download/%23v")
        assert cfg["license"] == "mit" and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
        assert cfg["input_size"] == (3, 224, 224) and cfg["mean"] == (0.485, 0.456, 0.406)
        first_conv = "stem.conv" if name.endswith("_v0") else "stem.conv1"
        assert cfg["first_conv"] == first_conv and cfg["classifier"] == "head.fc"


def test_unsupported_official_settings_are_refused():
    meta, _, _ = load_case("vmamba", "vmamba_v2_s1_cf")
    for bad in (dict(forward_type="v052d_noz"), dict(gmlp=True), dict(norm_layer="bn"), dict(downsample_version="v2")):
        with pytest.raises(ValueError):
            load_official("vmamba", {}, dict(meta["kwargs"], **bad))


def test_no_weight_decay_covers_ssm_parameters():
    from timm.optim import create_optimizer_v2

    model = timm.create_model("test_vmamba")
    optimizer = create_optimizer_v2(model, "adamw", weight_decay=0.05)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        if name.endswith(("A_log", ".D", "dt_proj_bias")):
            assert id(p) not in decayed, name
