"""S4ND backbones: the official whole-model fixtures (float32 within tolerance, float64 against the official float64
runs, intermediate features), the key / shape manifests of the full-size official models (conversion on the meta
device) and parameter counts, the timm registration and API of the tiny variants, the resolution rate; the image ->
video inflation by the official rule (every key filled, each inflated layer's response to a constant clip, timm's
pretrained path); torch.compile with fullgraph."""
import json
import os
from pathlib import Path

import pytest
import timm
import torch

from vssm.convert import load_official
from vssm.layers.s4nd import S4ND
from vssm.models.s4nd import (
    MODEL_VARIANTS, TIME_KERNEL_REINIT, S4NDConvNeXt, S4NDViT, _official_builder, checkpoint_filter_fn,
    convert_official, inflate_2d_to_3d,
)
from vssm.ops.fft_conv import fft_conv_nd

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


# --- image -> video inflation -------------------------------------------------------------------------------------

def image_and_video_models(**video_kwargs):
    """The tiny 2-D model with a patch stem and conv downsampling (as the README's HMDB-51 run inflates) and the tiny
    3-D model, float64."""
    torch.manual_seed(0)
    image = timm.create_model("test_s4nd_convnext", stem_type="patch", downsample_type="conv").double().eval()
    with torch.no_grad():
        image(torch.randn(1, 3, 32, 32, dtype=torch.float64))  # trained-checkpoint state: C~ set up, l_kernel = l_max
    torch.manual_seed(1)
    video = timm.create_model("test_s4nd_convnext_3d", **video_kwargs).double().eval()
    return image, video


def s4nd_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, S4ND)}


def test_inflation_fills_every_key_by_the_official_rule():
    image, video = image_and_video_models()
    image_sd, own = image.state_dict(), video.state_dict()
    inflated = inflate_2d_to_3d(image_sd, video)
    assert inflated.keys() == own.keys() and all(inflated[k].shape == own[k].shape for k in own)
    layers = s4nd_layers(video)
    assert len(layers) == 4 and all(len(layer.kernel) == 3 for layer in layers.values())
    for key, value in inflated.items():
        name, _, rest = key.partition(".kernel.")
        if name in layers:  # time kernel: the 3-D model's own; height, width: the 2-D kernels 0, 1
            axis, leaf = rest.split(".", 1)
            expected = own[key] if axis == "0" else image_sd[f"{name}.kernel.{int(axis) - 1}.{leaf}"]
        elif key.startswith("head."):
            expected = own[key]  # a new task's head
        elif value.dim() == 5:  # stem (2, 4, 4) and downsampling (1, 2, 2) convs: the 2-D weight at every time step
            expected = image_sd[key][:, :, None].expand(-1, -1, value.shape[2], -1, -1)
        else:
            expected = image_sd[key]
        assert torch.equal(value, expected), key
    assert inflated["stages.0.blocks.0.conv_dw.kernel.1.l_kernel"].item() == 8  # the 2-D C~ length, kept
    video.load_state_dict(inflated)


def test_inflated_layers_respond_to_constant_clips_as_the_rule_implies():
    """On a clip constant in time, u(t) = f, an inflated S4ND gives y(t) = s(t) (y_2d - D f) + D f: its spatial kernels
    are the 2-D ones, on the right axes, and its time kernel sums to s(t) over the taps that reach frame t (the time
    kernel alone on a constant sequence). The inflated stem conv gives T_k (conv_2d(f) - b) + b."""
    image, video = image_and_video_models()
    video.load_state_dict(inflate_2d_to_3d(image.state_dict(), video))
    image_layers, video_layers = s4nd_layers(image), s4nd_layers(video)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, layer in video_layers.items():
            frames, height, width = layer.l_max
            f = torch.randn(2, layer.d_model, height, width, dtype=torch.float64)
            y2 = image_layers[name](f)
            y3 = layer(f[:, :, None].expand(-1, -1, frames, -1, -1))
            skip = f * layer.D[0, :, None, None]
            time_kernel = s4nd_layer_kernels(layer, [frames, height, width])[0]  # (1, H, F_t), combined
            ones = torch.ones(1, layer.d_model, frames, dtype=torch.float64)
            s = fft_conv_nd(ones, [time_kernel], fft_sizes=[time_kernel.shape[-1]])[0, 0]  # (H, T)
            expected = s[None, :, :, None, None] * (y2 - skip)[:, :, None] + skip[:, :, None]
            torch.testing.assert_close(y3, expected, atol=1e-10, rtol=1e-9, msg=name)
        f = torch.randn(1, 3, 32, 32, dtype=torch.float64)
        conv2d, conv3d = image.stem.conv, video.stem.conv
        clip = f[:, :, None].expand(-1, -1, 4, -1, -1)
        expected = 2 * (conv2d(f) - conv2d.bias[:, None, None]) + conv2d.bias[:, None, None]
        torch.testing.assert_close(conv3d(clip), expected[:, :, None].expand(-1, -1, 2, -1, -1))


def s4nd_layer_kernels(layer, lengths):
    from vssm.layers.s4nd import _combined_kernels
    return _combined_kernels(layer, lengths, 1.0)[0]


@pytest.mark.parametrize("reinit", [False, True])
def test_inflation_through_timm_pretrained_file(tmp_path, reinit):
    """A 2-D PyTorch-Lightning checkpoint given to the 3-D model through timm's pretrained path (file overlay) is
    inflated; with ``time_kernel_reinit`` the time kernels are the official hook's (deterministic: the same in every
    build)."""
    image, _ = image_and_video_models()
    path = tmp_path / "image.ckpt"
    torch.save({"state_dict": {f"model.{k}": v.float() for k, v in image.state_dict().items()}}, path)
    kwargs = dict(time_kernel_reinit=True) if reinit else {}
    torch.manual_seed(1)
    video = timm.create_model("test_s4nd_convnext_3d", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              **kwargs)
    torch.manual_seed(1)
    scratch = timm.create_model("test_s4nd_convnext_3d", **kwargs)
    expected = inflate_2d_to_3d({k: v.float() for k, v in image.state_dict().items()}, scratch)
    got = video.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    time_kernel = video.stages[0].blocks[0].conv_dw.kernel[0]
    if reinit:  # n_ssm = H (legs | fourier), step e^2 stored as 2
        assert time_kernel.A_real.shape == (16, 4) and torch.all(time_kernel.inv_dt == 2.0)
    else:
        assert time_kernel.A_real.shape == (1, 4)
    with torch.no_grad():
        assert torch.isfinite(video.eval()(torch.randn(1, 3, 4, 32, 32))).all()
    assert TIME_KERNEL_REINIT["dt_min"] == TIME_KERNEL_REINIT["dt_max"] == 2.0


def test_inflation_needs_matching_stems():
    """The ImageNet layout (S4ND stem and downsampling) does not inflate into a patch-stem 3-D model (the official
    hook stops in a debugger); into a 3-D model with the same S4ND stem and downsampling it does."""
    torch.manual_seed(0)
    image = timm.create_model("test_s4nd_convnext")
    video = timm.create_model("test_s4nd_convnext_3d")
    with pytest.raises(ValueError, match=r"missing \(\d+\) \['stem.conv.weight'.*not taken \(\d+\) .*downsample.s4nd"):
        checkpoint_filter_fn(image.state_dict(), video)
    cfg = MODEL_VARIANTS["test_s4nd_convnext"]
    s4nd_video = S4NDConvNeXt(img_size=32, num_frames=4, patch_size=(2, 4, 4), depths=(1, 1, 1, 1),
                              dims=(16, 24, 32, 48), stem_type="s4nd", stem_channels=8, stem_l_max=(2, 8, 8),
                              downsample_type="s4nd", temporal_stage_strides=(None, 1, 1, 1),
                              s4nd_cfg=cfg["s4nd_cfg"], stem_s4nd_cfg=cfg["stem_s4nd_cfg"],
                              stage_s4nd_cfgs=cfg["stage_s4nd_cfgs"])
    inflated = checkpoint_filter_fn(image.state_dict(), s4nd_video)
    assert torch.equal(inflated["stem.s4nd.kernel.2.C"], image.state_dict()["stem.s4nd.kernel.1.C"])
    s4nd_video.load_state_dict(inflated)


# --- torch.compile -------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["test_s4nd_convnext", "test_s4nd_vit"])
def test_torch_compile_fullgraph(name):
    """A fresh model (C~ set up inside the compiled graph) compiles without graph breaks (no data_ptr kernel cache or
    device reads while tracing): training forward and gradients, then eval, equal to eager."""
    import copy
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5)
    reference = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32)
    out, expected = compiled(x), reference(x)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(out, expected)
    for (key, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=key)
    model.eval()
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), reference(x))
    assert all(m._kernel_cache is None for m in model.modules() if isinstance(m, S4ND))
