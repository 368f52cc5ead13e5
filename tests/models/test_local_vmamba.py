"""LocalVMamba and LocalVim: official parameter counts and checkpoint conversion (full-size manifests, golden
fixtures), the searched routes, the tied-A and 'v' un-scan quirks with their options, input sizes; timm's contract runs
over every variant in tests/models/test_models.py."""
import pytest
import timm
import torch

from vssm.convert import load_official
from vssm.models.local_vmamba import MODEL_VARIANTS, LocalVim, checkpoint_filter_fn

from .contract import KERNEL_DEVICE, check_fx, check_param_count, check_torchscript, load_case, load_manifest

HIERARCHICAL = ["local_vmamba_tiny", "local_vmamba_small"]
PLAIN = ["local_vim_tiny", "local_vim_tiny_midcls", "local_vim_small"]
VARIANTS = HIERARCHICAL + PLAIN
CASES = ["local_vssm", "local_vim", "local_vim_midcls"]
# each variant's code path and its first searched routes at tiny depths, widths and inputs (LocalVim's input size is
# fixed by img_size)
SMALL = {name: dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), directions=MODEL_VARIANTS[name]["directions"][:4])
         for name in HIERARCHICAL}
SMALL.update({name: dict(img_size=32, embed_dim=32, directions=MODEL_VARIANTS[name]["directions"][:3]) for name in PLAIN})
TINY_HIERARCHY = dict(depths=(1, 1, 1, 1), directions=MODEL_VARIANTS["test_local_vmamba"]["directions"][:4])


def randomise(model, seed=0):
    """Weights of the scale the fixtures use, so that every path shows in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.empty(p.shape).uniform_(0.5, 8.0, generator=g).log())
            elif p.dim() == 1 and name.endswith("weight"):
                p.copy_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / max(p.shape[-1], 1) ** 0.5)
    return model.eval()


def test_registered():
    assert set(timm.list_models(module="local_vmamba")) == set(VARIANTS) | {"test_local_vmamba", "test_local_vim"}


@pytest.mark.parametrize("name", VARIANTS)
def test_param_count(name):
    check_param_count(name, "localvmamba")


@pytest.mark.parametrize("name", VARIANTS)
def test_manifest_converts_strictly(name):
    """Every official key maps onto the model with its shape (the RoPE tables are recomputed)."""
    manifest = load_manifest("localvmamba", name)
    with torch.device("meta"):
        model = timm.create_model(name)
        official = {"module." + k: torch.empty(shape) for k, shape in manifest["state_dict"].items()}
    model.load_state_dict(checkpoint_filter_fn({"state_dict": official}, model), strict=True, assign=True)


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_routes_are_the_official_ones(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    mixers = [m for m in model.modules() if hasattr(m, "directions")]
    assert [list(m.directions) for m in mixers] == load_manifest("localvmamba", name)["directions"]


def test_rope_path_traces_and_scripts():
    """LocalVim with RoPE (test_local_vim has none; the full-size variants trace under slow in test_models.py): FX and
    TorchScript."""
    kwargs = dict(SMALL["local_vim_tiny"], directions=[["h", "w2"]])
    check_fx("local_vim_tiny", size=32, **kwargs)
    check_torchscript("local_vim_tiny", size=32, **kwargs)


def test_hierarchical_features():
    model = timm.create_model("local_vmamba_small", features_only=True, **SMALL["local_vmamba_small"]).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 32, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 8, 8, 16), (1, 16, 4, 8), (1, 24, 2, 4), (1, 32, 1, 2)]


@pytest.mark.parametrize("case", CASES)
def test_official_fixture(case):
    """Logits and per-stage (LocalVMamba) / per-layer mixer (LocalVim) outputs; windows padded at some stages."""
    meta, state_dict, io = load_case("localvmamba", case, KERNEL_DEVICE)
    model = load_official("localvmamba", state_dict, meta["kwargs"], meta["official_entry"]).to(KERNEL_DEVICE)
    tol = dict(atol=meta["suggested_atol"], rtol=meta["suggested_rtol"])
    fmt = "NLC" if isinstance(model, LocalVim) else "NCHW"
    with torch.no_grad():
        final, feats = model.forward_intermediates(io["input"], output_fmt=fmt)
        torch.testing.assert_close(model.forward_head(final), io["output"], **tol)
    for i, feat in enumerate(feats):
        torch.testing.assert_close(feat, io[f"feature.{i}"], **tol)


def test_checkpoint_nesting_and_prefixes():
    """Both official layouts: {'state_dict': ...} with 'module.module.' (convert_ckpt.py) and {'model': ...}."""
    meta, state_dict, _ = load_case("localvmamba", "local_vim_midcls")
    reference = load_official("localvmamba", state_dict, meta["kwargs"], meta["official_entry"]).state_dict()
    model = LocalVim(img_size=112, patch_size=8, embed_dim=64, num_classes=10, use_rope=False, middle_cls_token=True,
                     global_pool="token", directions=meta["kwargs"]["directions"])
    for checkpoint in ({"state_dict": {"module.module." + k: v for k, v in state_dict.items()}},
                       {"model": state_dict, "optimizer": {}}):
        converted = checkpoint_filter_fn(checkpoint, model)
        model.load_state_dict(converted)
        assert all(torch.equal(converted[k], v) for k, v in reference.items())
    meta, state_dict, _ = load_case("localvmamba", "local_vssm")
    model = timm.create_model("test_local_vmamba", depths=(1, 1, 2, 1), num_classes=10,
                              directions=meta["kwargs"]["directions"])
    model.load_state_dict(checkpoint_filter_fn({"state_dict": {"module." + k: v for k, v in state_dict.items()}},
                                               model))


def test_route_A_tied_as_official():
    """The official A_log_0..3 share one tensor (last loaded wins): the converter keeps A_log_3 for every route, the
    model runs every route with that A; ``tie_route_A=False`` runs each route with its own A."""
    meta, state_dict, _ = load_case("localvmamba", "local_vim_midcls")
    untied = dict(state_dict)
    for key in [k for k in state_dict if k.endswith(("A_log_0", "A_log_1", "A_log_2"))]:
        untied[key] = state_dict[key] + torch.rand_like(state_dict[key])
    model = LocalVim(img_size=112, patch_size=8, embed_dim=64, num_classes=10, use_rope=False, middle_cls_token=True,
                     global_pool="token", directions=meta["kwargs"]["directions"])
    model.load_state_dict(checkpoint_filter_fn(untied, model))
    for i, block in enumerate(model.blocks):
        assert torch.equal(block.mixer.A_log, state_dict[f"layers.{i}.mixer.A_log_3"].expand(4, -1, -1))
    small = randomise(timm.create_model("test_local_vim"))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for block in small.blocks:
            block.mixer.A_log.copy_(block.mixer.A_log[:1].expand_as(block.mixer.A_log))
        tied = small(x)
        for block in small.blocks:
            block.mixer.A_log[1:].add_(1.0)
            block.mixer.A_log[0].sub_(1.0 * (block.mixer.A_log.shape[0] - 1))
        torch.testing.assert_close(small(x), tied)  # one A per layer: the mean of the copies
        for block in small.blocks:
            block.mixer.tie_route_A = False
        assert (small(x) - tied).abs().max() > 1e-3


def test_tied_A_copies_get_equal_gradients():
    model = timm.create_model("test_local_vim")
    model(torch.randn(2, 3, 32, 32)).mean().backward()
    grad = model.blocks[0].mixer.A_log.grad
    torch.testing.assert_close(grad, grad[:1].expand_as(grad))


@pytest.mark.parametrize("name,kwargs,size", [
    ("test_local_vmamba", TINY_HIERARCHY, (32, 48)),
    ("test_local_vim", dict(img_size=(32, 64), directions=[["v", "h", "w2", "v_flip"]] * 2), (32, 64)),
])
def test_v_unscan_faithful_by_default_corrected_on_request(name, kwargs, size):
    """Non-square maps: the official scrambled 'v' un-scan by default, the true inverse as an option; the same
    numbers on square maps."""
    faithful = randomise(timm.create_model(name, **kwargs))
    corrected = timm.create_model(name, reproduce_v_unscan_bug=False, **kwargs).eval()
    corrected.load_state_dict(faithful.state_dict())
    assert all(m.reproduce_v_unscan_bug for m in faithful.modules() if hasattr(m, "reproduce_v_unscan_bug"))
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert (faithful(x) - corrected(x)).abs().max() > 1e-3
        if name == "test_local_vmamba":
            square = torch.randn(1, 3, 32, 32)
            torch.testing.assert_close(faithful(square), corrected(square))


def test_local_vmamba_any_input_size():
    model = timm.create_model("test_local_vmamba", num_classes=3, **TINY_HIERARCHY).eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, 44, 36), intermediates_only=True)
        assert [tuple(f.shape[-2:]) for f in feats] == [(11, 9), (6, 5), (3, 3), (2, 2)]
        assert model(torch.randn(1, 3, 44, 36)).shape == (1, 3)


@pytest.mark.parametrize("name", ["test_local_vim", "local_vim_tiny"])
def test_local_vim_input_sizes(name):
    """A fixed size by default (clear error otherwise); ``dynamic_img_size`` pads to the patch grid, resamples the
    position embedding (class slot kept) and computes RoPE for the grid; at the default size it changes nothing."""
    kwargs = dict(embed_dim=32, directions=[["h", "v_flip", "w2", "w7"]] * 2)
    fixed = randomise(timm.create_model(name, img_size=32, **kwargs))
    dynamic = timm.create_model(name, img_size=32, dynamic_img_size=True, **kwargs).eval()
    dynamic.load_state_dict(fixed.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dynamic(x), fixed(x))
        with pytest.raises(AssertionError, match="doesn't match model"):
            fixed(torch.randn(1, 3, 40, 32))
        assert dynamic(torch.randn(1, 3, 40, 50)).shape == (1, 1000)
        feats = dynamic.forward_intermediates(torch.randn(1, 3, 40, 50), intermediates_only=True)
    patch = dynamic.patch_embed.patch_size[0]
    assert feats[0].shape == (1, 32, -(-40 // patch), -(-50 // patch))  # padded to the patch grid


def test_checkpoint_at_another_size_resamples_pos_embed():
    """Official weights (here the 14x14 midcls fixture) load into a model built for another grid."""
    meta, state_dict, _ = load_case("localvmamba", "local_vim_midcls")
    model = LocalVim(img_size=(64, 48), patch_size=8, embed_dim=64, num_classes=10, use_rope=False,
                     middle_cls_token=True, global_pool="token", directions=meta["kwargs"]["directions"])
    converted = checkpoint_filter_fn({"state_dict": state_dict}, model)
    model.load_state_dict(converted)
    assert model.pos_embed.shape == (1, 8 * 6 + 1, 64)
    torch.testing.assert_close(model.pos_embed[0, 24], state_dict["pos_embed"][0, 98])  # the class slot


def test_rope_on_non_square_grid():
    model = timm.create_model("local_vim_tiny", img_size=(32, 48), embed_dim=32, directions=[["h", "v"]]).eval()
    assert model.rope_cos.shape == (6, 32)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 48)).shape == (1, 1000)


def test_pretrained_cfgs():
    urls = {name: timm.create_model(name, **SMALL[name]).pretrained_cfg["url"] for name in VARIANTS}
    releases = "https://github.com/hunto/LocalMamba/releases/download/v1.0.0/"
    assert urls == {"local_vmamba_tiny": "", "local_vmamba_small": releases + "local_vssm_small.ckpt",
                    "local_vim_tiny": releases + "local_vim_tiny.ckpt",
                    "local_vim_tiny_midcls": releases + "local_vim_tiny_middle_cls_token.ckpt", "local_vim_small": ""}
    cfg = timm.create_model("local_vim_tiny", **SMALL["local_vim_tiny"]).pretrained_cfg
    assert cfg["fixed_input_size"] and cfg["first_conv"] == "patch_embed.proj" and cfg["classifier"] == "head"
    cfg = timm.create_model("local_vmamba_small", **SMALL["local_vmamba_small"]).pretrained_cfg
    assert cfg["first_conv"] == "stem.conv" and cfg["classifier"] == "head.fc" and cfg["crop_pct"] == 0.875
