"""S4ND backbones: the official whole-model fixtures (float32 within tolerance, float64 against the official float64
runs, intermediate features), the key / shape manifests of the full-size official models (conversion on the meta
device) and parameter counts, the timm registration and API of the tiny variants, the resolution rate."""
import json
import os
from pathlib import Path

import pytest
import timm
import torch

from vssm.convert import load_official
from vssm.layers.s4nd import S4ND
from vssm.models.s4nd import (
    MODEL_VARIANTS, S4NDConvNeXt, S4NDViT, _official_builder, checkpoint_filter_fn, convert_official,
)

try:
    from .contract import load_case, load_manifest
except Exception:  # the contract helpers import the whole zoo; fall back to a local reader
    from safetensors.torch import load_file

    def _fixture_dir(family):
        root = Path(os.environ.get("VSSM_FIXTURES", Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"))
        path = root / family
        if not path.is_dir():
            pytest.skip(f"golden fixtures not found at {path} (set VSSM_FIXTURES to the shared fixtures folder)")
        return path

    def load_case(family, case, device="cpu"):
        path = _fixture_dir(family)
        meta = json.loads((path / f"{case}.json").read_text())
        return meta, load_file(str(path / f"{case}.weights.safetensors")), load_file(
            str(path / f"{case}.io.safetensors"), device=device)

    def load_manifest(family, variant):
        return json.loads((_fixture_dir(family) / f"{variant}.keys.json").read_text())


CASES = ["s4nd_vit_tiny", "s4nd_convnext_tiny", "s4nd_convnext3d_tiny"]
# full-size official models: (manifest, timm name, official entry, parameters actually used)
MANIFESTS = [("S4ND-ViT-B", "s4nd_vit_base", "VisionTransformer", 88_786_408),
             ("S4ND-ConvNeXt-T", "s4nd_convnext_tiny", "ConvNeXt", 29_409_454),
             ("S4ND-ConvNeXt-3D-T", "s4nd_convnext_tiny_3d", "ConvNeXt3D", 30_113_235)]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared CPU they cost a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def official_model(case, dtype=torch.float32):
    meta, sd, io = load_case("s4nd", case)
    model = load_official("s4nd", sd, meta["kwargs"], meta["official_entry"])
    return meta, model.to(dtype).eval(), io


def features(model, x):
    """The fixtures' ``feature.i``: ConvNeXt stage outputs; ViT residual-block outputs (two per vssm block: after
    the S4ND residual and after the MLP residual)."""
    acts = []
    if isinstance(model, S4NDViT):
        for block in model.blocks:
            block.norm2.register_forward_pre_hook(lambda m, a: acts.append(a[0]))  # x after the S4ND residual
            block.register_forward_hook(lambda m, a, o: acts.append(o))
    else:
        for stage in model.stages:
            stage.register_forward_hook(lambda m, a, o: acts.append(o))
    return model(x), acts


@pytest.mark.parametrize("case", CASES)
def test_official_fixture_float32(case):
    meta, model, io = official_model(case)
    with torch.no_grad():
        out, acts = features(model, io["input"])
    atol, rtol = meta["suggested_atol"], meta["suggested_rtol"]
    torch.testing.assert_close(out, io["output"], atol=atol, rtol=rtol)
    stored = sorted(k for k in io if k.startswith("feature."))
    assert len(stored) == len(acts)
    for key, act in zip(stored, acts):
        torch.testing.assert_close(act, io[key], atol=atol, rtol=rtol, msg=key)


@pytest.mark.parametrize("case", CASES)
def test_official_fixture_float64(case):
    _, model, io = official_model(case, torch.float64)
    with torch.no_grad():
        out = model(io["input"].double())
    ref = io["output.fp64"]
    torch.testing.assert_close(out, ref, atol=1e-9 * ref.abs().max().item(), rtol=1e-8)


def test_lightning_checkpoint_and_vssm_keys_pass_through_the_filter():
    meta, sd, io = load_case("s4nd", "s4nd_convnext_tiny")
    model, convert = _official_builder(meta["kwargs"], meta["official_entry"])
    lightning = {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3}
    converted = checkpoint_filter_fn(lightning, model)
    assert converted.keys() == convert(sd).keys()
    model.load_state_dict(converted)
    assert checkpoint_filter_fn(model.state_dict(), model).keys() == model.state_dict().keys()  # vssm keys as is
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(io["input"]), io["output"], atol=meta["suggested_atol"], rtol=1e-3)


@pytest.mark.parametrize("manifest, name, entry, params", MANIFESTS)
def test_official_manifest_converts_to_the_registered_model(manifest, name, entry, params):
    """Every official key of the full-size model maps to a key of the same shape (the never-used ViT ``kernel.1`` and
    stem ``D`` are dropped), the official kwargs build the registered variant, and the parameter count is the
    official count of used parameters."""
    info = load_manifest("s4nd", manifest)
    with torch.device("meta"):
        model = timm.create_model(name)
        built, convert = _official_builder(info["kwargs"], entry)
    official = {k: torch.empty(shape, device="meta") for k, shape in info["state_dict"].items()}
    converted = convert(official)
    ours = model.state_dict()
    assert converted.keys() == ours.keys()
    assert all(converted[k].shape == ours[k].shape for k in ours)
    assert built.state_dict().keys() == ours.keys()
    assert sum(p.numel() for p in model.parameters()) == params
    dropped = set(official) - {k for k in official if convert({k: official[k]})}
    assert all(".kernel.1." in k or k == "stem.stem.D" for k in dropped)


# --- timm API ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, shape", [("test_s4nd_vit", (2, 3, 32, 32)), ("test_s4nd_convnext", (2, 3, 32, 32))])
def test_tiny_variants_forward_backward(name, shape):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7)
    x = torch.randn(shape)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    model.eval()
    with torch.no_grad():
        ref = model(x)
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), ref)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.num_features)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)


def test_feature_extraction():
    torch.manual_seed(0)
    convnext = timm.create_model("test_s4nd_convnext", features_only=True).eval()
    vit = timm.create_model("test_s4nd_vit", features_only=True, out_indices=(0, 1)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        maps = convnext(x)
        tokens = vit(x)
    assert [m.shape for m in maps] == [(1, 16, 8, 8), (1, 24, 4, 4), (1, 32, 2, 2), (1, 48, 1, 1)]
    assert convnext.feature_info.reduction() == [4, 8, 16, 32]
    assert [t.shape for t in tokens] == [(1, 32, 4, 4), (1, 32, 4, 4)]


def test_forward_intermediates_and_prune():
    torch.manual_seed(0)
    model = timm.create_model("test_s4nd_convnext").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(inter) == 4
        kept = model.prune_intermediate_layers(indices=(1,))
        assert kept == [1] and len(model.stages) == 2
        assert model.forward_intermediates(x, indices=(1,), intermediates_only=True)[0].shape == (1, 24, 4, 4)


def test_resolution_rate_reaches_every_s4nd():
    """``forward(x, rate=0.5)`` on a double-size image: every S4ND (stem, downsamples, blocks) gets the rate."""
    torch.manual_seed(0)
    model = timm.create_model("test_s4nd_convnext").eval()
    rates = []
    for module in model.modules():
        if isinstance(module, S4ND):
            module.register_forward_pre_hook(lambda m, a, kw: rates.append(a[1] if len(a) > 1 else kw.get("rate")),
                                             with_kwargs=True)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), rate=0.5)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert len(rates) == 1 + 3 + 4 and set(rates) == {0.5}


def test_kernel_optim_hints_on_model_parameters():
    model = timm.create_model("test_s4nd_convnext")
    kernel = model.stages[0].blocks[0].conv_dw.kernel[0]
    assert kernel.A_real._optim == {"lr": 0.001, "weight_decay": 0.0} and kernel.C._optim == {"lr": 0.001}
    assert model.stem.fc.bias._optim == {"weight_decay": 0.0}


def test_variants_and_cfgs():
    names = timm.list_models("s4nd_*") + timm.list_models("test_s4nd_*")
    assert set(names) == set(MODEL_VARIANTS)
    cfg = timm.get_pretrained_cfg("s4nd_convnext_tiny_3d").to_dict()
    assert cfg["input_size"] == (3, 224, 224) and cfg["num_classes"] == 51
    with torch.device("meta"):
        assert timm.create_model("s4nd_convnext_tiny_3d").num_frames == 30
    assert timm.get_pretrained_cfg("s4nd_convnext_tiny").crop_pct == 0.9


def test_convert_official_vit_key_names():
    model = S4NDViT(img_size=16, patch_size=8, embed_dim=8, depth=1, s4nd_cfg=dict(d_state=4, channels=2,
                                                                                    linear=False, final_act="glu"))
    official = {"blocks.0.layer.output_linear.0.weight": 1, "blocks.0.layer.kernel.1.C": 2,
                "blocks.0.norm.norm.bias": 3, "blocks.1.layer.ff.0.0.weight": 4, "blocks.1.layer.ff.2.bias": 5,
                "blocks.1.norm.norm.weight": 6, "norm.norm.weight": 7, "head.weight": 8}
    assert convert_official(official, model) == {
        "blocks.0.mixer.output_linear.weight": 1, "blocks.0.norm1.bias": 3, "blocks.0.mlp.fc1.weight": 4,
        "blocks.0.mlp.fc2.bias": 5, "blocks.0.norm2.weight": 6, "norm.weight": 7, "head.weight": 8}


def test_video_model_takes_clips():
    torch.manual_seed(0)
    model = S4NDConvNeXt(img_size=32, num_frames=4, patch_size=(2, 4, 4), depths=(1, 1, 1, 1), dims=(8, 8, 16, 16),
                         stem_type="patch", downsample_type="conv", temporal_stage_strides=(None, 1, 1, 1),
                         num_classes=5, s4nd_cfg=dict(d_state=4, init="fourier", lr=0.001)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 4, 32, 32)).shape == (1, 5)
    assert [len(b.conv_dw.kernel) for b in (model.stages[0].blocks[0], model.stages[3].blocks[0])] == [3, 3]
    assert model.stages[3].blocks[0].conv_dw.l_max == [2, 1, 1]


def test_fx_feature_extraction():
    """S4ND is an FX leaf (its kernel lengths depend on values), so timm's FX feature extraction traces the rest."""
    from timm.models import create_feature_extractor
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    for name, node in (("test_s4nd_convnext", "head.fc"), ("test_s4nd_vit", "head")):
        model = timm.create_model(name).eval()
        extractor = create_feature_extractor(model, return_nodes={node: "out"})
        with torch.no_grad():
            torch.testing.assert_close(extractor(x)["out"], model(x))


def test_torchscript():
    """The S4ND core runs as Python inside a scripted model (``torch.jit.ignore``); the rest is compiled."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    for name in ("test_s4nd_convnext", "test_s4nd_vit"):
        with timm.layers.set_scriptable(True):
            model = timm.create_model(name).eval()
        scripted = torch.jit.script(model)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), model(x))
