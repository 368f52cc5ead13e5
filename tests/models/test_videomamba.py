"""VideoMamba: the official fixtures (image, video, image-to-video inflation), parameter counts and checkpoint
conversion (full models on the meta device), the pretrained cfgs, the video token layout and the family's options.
timm's contract runs over the image and the video variants ((B, 3, T, H, W) clips) in tests/models/test_models.py."""
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vssm.convert import load_official
from vssm.models import videomamba
from vssm.models.videomamba import VideoMamba

from .contract import KERNEL_DEVICE, check_param_count, fixture_dir, load_case, load_manifest

VIDEO = ["videomamba_tiny", "videomamba_small", "videomamba_middle"]
IMAGE = ["videomamba_tiny_image", "videomamba_small_image", "videomamba_middle_image", "videomamba_base_image"]
CASES = ["videomamba_video_f4_64", "videomamba_image_32", "videomamba_inflate_t2"]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared CPU they cost a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def official_activations(model, x):
    """Run ``model`` on ``x`` and collect the tensors the fixtures store, under their io names."""
    acts = {}
    hooks = [model.blocks[0].register_forward_pre_hook(lambda m, a: acts.__setitem__("embed", a[0])),
             model.norm.register_forward_hook(lambda m, a, o: acts.__setitem__("final_norm", o))]
    for i, block in enumerate(model.blocks):
        hooks.append(block.register_forward_pre_hook(
            lambda m, a, i=i: acts.__setitem__(f"block.{i}.residual", a[0])))
        hooks.append(block.mixer.register_forward_hook(
            lambda m, a, o, i=i: acts.__setitem__(f"block.{i}.hidden_states", o)))
    with torch.no_grad():
        features = model.forward_features(x)
        acts["pre_logits"] = model.forward_head(features, pre_logits=True)
        acts["output"] = model(x)
    for hook in hooks:
        hook.remove()
    return acts


def assert_matches_fixture(acts, io, meta, skip=()):
    for key, expected in io.items():
        if key != "input" and key not in skip:
            torch.testing.assert_close(acts[key], expected, atol=meta["suggested_atol"], rtol=meta["suggested_rtol"],
                                       msg=lambda m, key=key: f"{key}: {m}")


def test_registered():
    assert set(VIDEO + IMAGE) | {"test_videomamba"} <= set(timm.list_models("*videomamba*"))
    assert set(timm.list_pretrained("videomamba*")) == (
        {f"{n}.k400_f16" for n in VIDEO} | {f"{n}.in1k" for n in IMAGE})


def test_pretrained_cfgs():
    """Kinetics-400 clips for the video variants, ImageNet for the image ones; ImageNet normalisation for both."""
    for name in VIDEO + IMAGE + ["test_videomamba"]:
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        assert cfg["num_classes"] == (1000 if name in IMAGE else 400)
        assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD


def test_video_intermediates_are_clip_maps():
    """(B, D, t, h, w) maps, one per block; features_only gives the last three."""
    model = timm.create_model("test_videomamba").eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 4, 64, 64)
        _, inters = model.forward_intermediates(x)
        features = timm.create_model("test_videomamba", features_only=True).eval()(x)
    grid = [4, 64 // 16, 64 // 16]
    assert [tuple(y.shape) for y in inters] == [(1, model.embed_dim, *grid)] * len(model.blocks)
    assert [tuple(y.shape) for y in features] == [(1, model.embed_dim, *grid)] * 3


@pytest.mark.parametrize("name", VIDEO + IMAGE)
def test_param_count(name):
    check_param_count(name, "videomamba")


@pytest.mark.parametrize("name", VIDEO + IMAGE)
def test_manifest_converts_every_key(name):
    """A state dict of the official shapes converts to exactly our parameters (full-size model, meta device)."""
    manifest = load_manifest("videomamba", name)
    with torch.device("meta"):
        model = timm.create_model(name)
        official = {key: torch.empty(shape) for key, shape in manifest["state_dict"].items()}
    converted = videomamba.checkpoint_filter_fn(official, model)
    model.load_state_dict(converted, strict=True, assign=True)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in
                                                                 model.state_dict().items()}


@pytest.mark.parametrize("case", CASES)
def test_official_fixture(case):
    meta, weights, io = load_case("videomamba", case, KERNEL_DEVICE)
    model = load_official("videomamba", weights, meta["kwargs"], meta["official_entry"]).to(KERNEL_DEVICE)
    assert isinstance(model, VideoMamba) == (len(meta["input_shape"]) == 5)
    assert_matches_fixture(official_activations(model, io["input"]), io, meta)


def test_inflation_from_image_checkpoint():
    """The official image -> video loader (tubelet 2, center=True), from the nested image checkpoint: every converted
    tensor equals the fixture's video state dict except the head, which both keep at their own init."""
    meta, video_weights, io = load_case("videomamba", "videomamba_inflate_t2")
    image_weights = load_file(str(fixture_dir("videomamba") / "videomamba_inflate_t2.source_image.weights.safetensors"))
    model = load_official("videomamba", {"model": image_weights}, meta["kwargs"], "video")
    expected = videomamba.convert_official(video_weights, model)
    state = model.state_dict()
    assert set(state) == set(expected)
    for key in state:
        if not key.startswith("head."):
            assert torch.equal(state[key], expected[key]), key
    weight = state["patch_embed.proj.weight"]
    assert torch.equal(weight[:, :, 1], image_weights["patch_embed.proj.weight"]) and not weight[:, :, 0].any()
    assert not state["temporal_pos_embedding"].any()
    assert_matches_fixture(official_activations(model, io["input"]), io, meta, skip=("output",))
    model.head.load_state_dict({"weight": video_weights["head.weight"], "bias": video_weights["head.bias"]})
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["output"], atol=1e-4, rtol=1e-4)


def test_nested_and_prefixed_checkpoints():
    """{'model': ...} image checkpoints, 'module.' / 'backbone.' prefixes and distill_head keys are accepted."""
    meta, weights, io = load_case("videomamba", "videomamba_image_32")
    wrapped = {"module.backbone." + k: v for k, v in weights.items()}
    wrapped["module.backbone.distill_head.weight"] = torch.zeros(3, 64)
    model = load_official("videomamba", {"model": wrapped, "epoch": 10}, meta["kwargs"], "image")
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["output"], atol=1e-4, rtol=1e-4)


def test_frame_count_change_resizes_temporal_embedding():
    """A 4-frame video checkpoint in an 8-frame model: temporal embedding resampled linearly (align_corners=False),
    as the official fine-tuning script does."""
    meta, weights, io = load_case("videomamba", "videomamba_video_f4_64")
    kwargs = dict(meta["kwargs"], num_frames=8)
    model = load_official("videomamba", weights, kwargs, "video")
    expected = F.interpolate(weights["temporal_pos_embedding"].transpose(1, 2), size=8, mode="linear",
                             align_corners=False).transpose(1, 2)
    torch.testing.assert_close(model.temporal_pos_embedding.detach(), expected)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 64, 64)).shape == (1, 10)


def test_token_order_and_dynamic_clip_size():
    """Frame-major tokens after a single class token; dynamic_img_size accepts other frame counts and sizes and is
    the identity at the default size."""
    torch.manual_seed(0)
    static = timm.create_model("test_videomamba", tubelet_size=2).eval()
    dynamic = timm.create_model("test_videomamba", tubelet_size=2, dynamic_img_size=True).eval()
    dynamic.load_state_dict(static.state_dict())
    assert static.patch_embed.grid_size == [2, 4, 4] and static.temporal_pos_embedding.shape == (1, 2, 32)
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        tokens, grid = static._embed(x)
        assert tokens.shape == (1, 1 + 2 * 16, 32) and grid == [2, 4, 4]
        patches = static.patch_embed(x).flatten(2).transpose(1, 2)
        frame1_token5 = patches[:, 16 + 5] + static.pos_embed[:, 1 + 5] + static.temporal_pos_embedding[:, 1]
        torch.testing.assert_close(tokens[:, 1 + 16 + 5], frame1_token5)
        torch.testing.assert_close(tokens[:, 0], (static.cls_token + static.pos_embed[:, 0])[:, 0])
        torch.testing.assert_close(dynamic(x), static(x))
        assert dynamic(torch.randn(2, 3, 6, 48, 80)).shape == (2, 400)


def test_videomamba_init_and_corrected_option():
    """Official init: dt_proj bias 0 (softplus 0.69 everywhere), zero class token and temporal embedding;
    weight_init='vim' gives Mamba's dt range instead."""
    official = timm.create_model("test_videomamba")
    assert not official.blocks[0].mixer.dt_proj_bias.any() and not official.cls_token.any()
    assert not official.temporal_pos_embedding.any()
    corrected = timm.create_model("test_videomamba", weight_init="vim")
    dt = F.softplus(corrected.blocks[0].mixer.dt_proj_bias)
    assert dt.max() <= 0.1 + 1e-6 and dt.min() >= 1e-4 - 1e-9


def test_sum_merge_differs_from_mean():
    """VideoMamba sums the directions (Vim halves them): the same weights give different outputs."""
    meta, weights, io = load_case("videomamba", "videomamba_image_32")
    model = load_official("videomamba", weights, meta["kwargs"], "image")
    for block in model.blocks:
        assert block.mixer.merge == "sum"
        block.mixer.merge = "mean"
    with torch.no_grad():
        assert not torch.allclose(model(io["input"]), io["output"], atol=1e-2)
