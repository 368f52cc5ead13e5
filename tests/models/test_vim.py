"""Vim: the official fixtures, parameter counts and checkpoint conversion (full models on the meta device), the
pretrained cfgs and the family's options; timm's contract runs over every variant in tests/models/test_models.py."""
import json

import pytest
import timm
import timm.optim
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vssm.convert import load_official
from vssm.layers.pos_embed import rope_tables
from vssm.models import vim

from .contract import KERNEL_DEVICE, check_param_count, fixture_dir, load_case, load_manifest

VARIANTS = ["vim_tiny_patch16_224", "vim_tiny_patch16_stride8_224", "vim_small_patch16_224",
            "vim_small_patch16_stride8_224", "vim_base_patch16_224"]
CASES = ["vim_midcls_v2_div2", "vim_nocls_meanpool_ln_stride", "vim_rope_headcls_unfused", "vim_doublecls_unidir"]
SIZE = 32


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


def test_registered():
    assert set(VARIANTS) | {"test_vim"} <= set(timm.list_models("*vim*"))
    assert set(timm.list_pretrained("vim_*")) == {f"{name}.in1k" for name in VARIANTS}


def test_pretrained_cfgs():
    for name in VARIANTS + ["test_vim"]:
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        assert cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.875
        assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD


@pytest.mark.parametrize("name", VARIANTS)
def test_param_count(name):
    check_param_count(name, "vim")


@pytest.mark.parametrize("name", VARIANTS)
def test_manifest_converts_every_key(name):
    """A state dict of the official shapes converts to exactly our parameters (full-size model, meta device)."""
    manifest = load_manifest("vim", name)
    with torch.device("meta"):
        model = timm.create_model(name)
        official = {key: torch.empty(shape) for key, shape in manifest["state_dict"].items()}
    converted = vim.checkpoint_filter_fn({"model": official}, model)
    model.load_state_dict(converted, strict=True, assign=True)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in
                                                                 model.state_dict().items()}


@pytest.mark.parametrize("case", CASES)
def test_official_fixture(case):
    meta, weights, io = load_case("vim", case, KERNEL_DEVICE)
    model = load_official("vim", weights, meta["kwargs"], meta["official_entry"].split("::")[-1]).to(KERNEL_DEVICE)
    acts = official_activations(model, io["input"])
    for key, expected in io.items():
        if key != "input":
            torch.testing.assert_close(acts[key], expected, atol=meta["suggested_atol"], rtol=meta["suggested_rtol"],
                                       msg=lambda m, key=key: f"{case} {key}: {m}")


def test_rope_tables_equal_official_buffers():
    meta, weights, _ = load_case("vim", "vim_rope_headcls_unfused")
    kwargs = meta["kwargs"]
    side = kwargs["img_size"] // kwargs["patch_size"]
    cos, sin = rope_tables(kwargs["embed_dim"], [side, side], 14)
    torch.testing.assert_close(cos, weights["rope.freqs_cos"])
    torch.testing.assert_close(sin, weights["rope.freqs_sin"])


def test_pretrained_loading_through_timm(tmp_path):
    """create_model(pretrained=True) with a local official-format checkpoint ({'model': ...}, 'module.' prefixes)."""
    meta, weights, io = load_case("vim", "vim_midcls_v2_div2")
    path = tmp_path / "vim_official.pth"
    torch.save({"model": {"module." + k: v for k, v in weights.items()}, "epoch": 299}, path)
    kw = meta["kwargs"]
    model = timm.create_model(
        "test_vim", pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=kw["num_classes"]),
        img_size=kw["img_size"], patch_size=kw["patch_size"], embed_dim=kw["embed_dim"], depth=kw["depth"],
        d_state=kw["d_state"], num_classes=kw["num_classes"],
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["output"], atol=1e-4, rtol=1e-4)


def test_official_position_resize_keeps_patch_zero():
    """Converting a 224 / stride-16 checkpoint for the stride-8 model resizes pos_embed as the official fine-tune
    script: index 0 (a patch, not the middle class token) is kept, the rest is resampled as a 14 x 14 grid."""
    official = torch.randn(1, 197, 8)
    with torch.device("meta"):
        model = timm.create_model("vim_tiny_patch16_stride8_224", embed_dim=8, depth=1)
    resized = vim.convert_official({"pos_embed": official}, model)["pos_embed"]
    assert resized.shape == (1, 730, 8)
    assert torch.equal(resized[:, 0], official[:, 0])
    grid = official[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(27, 27), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(resized[:, 1:], expected.reshape(1, 729, 8))


def test_dynamic_img_size_keeps_the_class_slot():
    """The corrected resize (dynamic_img_size): at the default size nothing changes; at another size the middle class
    token keeps its own embedding and sits at the new middle index."""
    torch.manual_seed(0)
    static = timm.create_model("test_vim").eval()
    dynamic = timm.create_model("test_vim", dynamic_img_size=True).eval()
    dynamic.load_state_dict(static.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dynamic(x), static(x))
        pos = dynamic._resampled_pos_embed([6, 5])
        assert dynamic(torch.randn(2, 3, 96, 80)).shape == (2, 1000)
    assert pos.shape == (1, 31, 32)
    assert torch.equal(pos[:, 30 // 2], static.pos_embed[:, 16 // 2])
    with pytest.raises(AssertionError, match="input size"):
        static(torch.randn(1, 3, 96, 96))


def test_drop_path_schedule():
    """Official layer i adds drop_path([0] + linspace(0, r, depth))[i] of layer i - 1's mixer output and the full
    rate before norm_f; re-associated as pre-norm blocks that is linspace(0, r, depth)[j] on block j's mixer."""
    model = timm.create_model("test_vim", depth=4, drop_path_rate=0.3)
    rates = [block.drop_path.drop_prob if hasattr(block.drop_path, "drop_prob") else 0. for block in model.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.3, 4))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype):
    model = timm.create_model("test_vim", img_size=SIZE).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=dtype):
            autocast_out = model(x)
        model_out = model.to(dtype)(x.to(dtype))
    assert model_out.dtype == dtype
    torch.testing.assert_close(autocast_out.float(), reference, atol=0.1, rtol=0.1)
    torch.testing.assert_close(model_out.float(), reference, atol=0.1, rtol=0.1)


def test_weight_decay_groups():
    """The SSM parameters and the stacked per-direction vectors are excluded from weight decay."""
    model = timm.create_model("test_vim")
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    decayed = {id(p) for group in optimizer.param_groups if group["weight_decay"] > 0 for p in group["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert not any(n.endswith(("A_log", ".D", "conv_bias", "dt_proj_bias", "pos_embed", "cls_token")) for n in names)
    assert "blocks.0.mixer.in_proj.weight" in names


def test_converter_rejects_what_it_does_not_reproduce():
    with pytest.raises(NotImplementedError, match="v1"):
        load_official("vim", {}, dict(bimamba_type="v1"))
    with pytest.raises(NotImplementedError, match="RoPE"):
        load_official("vim", {}, dict(if_rope=True, if_rope_residual=True, use_middle_cls_token=True))
    with pytest.raises(TypeError, match="unknown"):
        load_official("vim", {}, dict(not_an_option=1))


def test_fixture_manifests_present():
    """Guards against a silently empty parametrisation: every variant has its manifest and every case its files."""
    path = fixture_dir("vim")
    for name in VARIANTS:
        assert json.loads((path / f"{name}.keys.json").read_text())["params"] > 0
    for case in CASES:
        assert load_file(str(path / f"{case}.io.safetensors"))["output"].numel() > 0
