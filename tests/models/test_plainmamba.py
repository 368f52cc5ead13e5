"""PlainMamba: parameter counts and key conversion of the full-size official manifests, the official fixtures and
configs, position-embedding resizing, corner padding, the corrected-mixer options, device / dtype construction and bf16
autocast; timm's contract runs over every variant in tests/models/test_models.py."""
import pytest
import timm
import torch

from tests.models import contract
from vssm.convert import load_official
from vssm.models.plainmamba import checkpoint_filter_fn

VARIANTS = ["plainmamba_l1", "plainmamba_l2", "plainmamba_l3"]
CASES = ["pm_l1style_c48_d3", "pm_l2style_c64_d2"]
NAME = "test_plainmamba"


def test_registered():
    assert set(timm.list_models("plainmamba*")) == set(VARIANTS)
    assert timm.list_pretrained("plainmamba_l1*") == ["plainmamba_l1.in1k"]


@pytest.mark.parametrize("name", VARIANTS)
def test_param_count(name):
    contract.check_param_count(name, "plainmamba")


@pytest.mark.parametrize("name", VARIANTS)
def test_manifest_keys_convert(name):
    """The official mmcls keys and shapes (nested as mmcv saves them, with EMA-hook buffers) load strictly."""
    manifest = contract.load_manifest("plainmamba", name)
    official = {k: torch.empty(shape, device="meta") for k, shape in manifest["state_dict"].items()}
    official["ema_backbone_ln1_weight"] = torch.empty(1, device="meta")
    with torch.device("meta"):
        model = timm.create_model(name)
    converted = checkpoint_filter_fn({"meta": {}, "state_dict": official}, model)
    model.load_state_dict(converted, strict=True, assign=True)
    assert len(converted) == len(manifest["state_dict"])


@pytest.mark.parametrize("case", CASES)
def test_fixture(case):
    meta, weights, io = contract.load_case("plainmamba", case, contract.KERNEL_DEVICE)
    model = load_official("plainmamba", weights, meta["kwargs"]).to(contract.KERNEL_DEVICE)
    patch_embed = {}
    hook = model.patch_embed.register_forward_hook(lambda m, i, o: patch_embed.__setitem__("out", o.flatten(1, 2)))
    with torch.no_grad():
        final, layers = model.forward_intermediates(io["input"], output_fmt="NLC")
        pre_logits = model.forward_head(final, pre_logits=True)
        out = model.forward_head(final)
        (feature,) = model.forward_intermediates(io["input"], indices=[-1], norm=True, intermediates_only=True)
    hook.remove()
    tol = dict(atol=meta["suggested_atol"], rtol=meta["suggested_rtol"])
    torch.testing.assert_close(out, io["output"], **tol)
    torch.testing.assert_close(pre_logits, io["pre_logits"], **tol)
    torch.testing.assert_close(feature, io["feature.0"], **tol)
    torch.testing.assert_close(patch_embed["out"], io["patch_embed"], **tol)
    for i, layer in enumerate(layers):
        torch.testing.assert_close(layer, io[f"layer.{i}"], **tol)


def test_pretrained_file_through_timm(tmp_path):
    """pretrained=True with a local official mmcls checkpoint ({'meta', 'state_dict'} with backbone./head.fc. keys)."""
    meta, weights, io = contract.load_case("plainmamba", "pm_l2style_c64_d2")
    torch.save({"meta": {"epoch": 300}, "state_dict": weights}, tmp_path / "l2.pth")
    backbone = meta["kwargs"]["backbone"]
    num_classes = meta["kwargs"]["head"]["num_classes"]
    model = timm.create_model(
        "plainmamba_l2", pretrained=True, num_classes=num_classes, img_size=backbone["img_size"],
        embed_dim=backbone["embed_dims"], depth=backbone["num_layers"],
        pretrained_cfg_overlay=dict(file=str(tmp_path / "l2.pth"), num_classes=num_classes)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["output"], atol=1e-4, rtol=1e-4)


def test_position_embedding_resize_matches_converted_checkpoint():
    """An input of another size resizes the position embedding on the fly exactly as the converter does for a
    model built at that size; odd token grids and inputs that need corner padding work."""
    torch.manual_seed(0)
    source = timm.create_model(NAME).eval()  # 64 px -> 4 x 4 grid
    with torch.no_grad():
        source.pos_embed.normal_()
    x = torch.randn(1, 3, 112, 80)  # 7 x 5 grid
    target = timm.create_model(NAME, img_size=(112, 80)).eval()
    target.load_state_dict(checkpoint_filter_fn(source.state_dict(), target))
    assert target.pos_embed.shape == (1, 35, source.embed_dim)
    with torch.no_grad():
        torch.testing.assert_close(source(x), target(x))
        assert source.forward_features(torch.randn(1, 3, 72, 88)).shape == (1, 5 * 6, source.embed_dim)


def test_corrected_mixer_options():
    """Each corrected-mixer option changes the function computed with the same weights."""
    torch.manual_seed(0)
    faithful = timm.create_model(NAME).eval()
    with torch.no_grad():
        for param in faithful.parameters():  # move dt bias and direction tokens off their init values
            param.add_(0.1 * torch.randn_like(param))
    x = torch.randn(1, 3, 64, 64)
    for options in (dict(reorder_params=True), dict(dt_bias_twice=False)):
        corrected = timm.create_model(NAME, **options).eval()
        corrected.load_state_dict(faithful.state_dict())
        with torch.no_grad():
            assert (corrected(x) - faithful(x)).abs().max() > 1e-4, options


@pytest.mark.parametrize("arch, name", [("L1", "plainmamba_l1"), ("L2", "plainmamba_l2"), ("L3", "plainmamba_l3")])
def test_official_arch_config(arch, name):
    """The official ``arch='L1'`` style configs (as the released configs write them) build the registered variant."""
    from vssm.models.plainmamba import _official_builder

    config = dict(type="ImageClassifier", backbone=dict(type="PlainMamba", arch=arch, drop_path_rate=0.2),
                  neck=dict(type="CustomAveragePooling"), head=dict(type="LinearClsHead", num_classes=1000))
    with torch.device("meta"):
        model, _ = _official_builder(config, None)
    assert sum(p.numel() for p in model.parameters()) == contract.load_manifest("plainmamba", name)["params"]


def test_official_options_without_equivalent_raise():
    from vssm.models.plainmamba import _official_builder

    for backbone in (dict(arch="L1", out_indices=[3, 7]), dict(arch="L1", with_pos_embed=False),
                     dict(embed_dims=32, layer_cfgs=dict(mamba_cfg=dict(init_layer_scale=1e-2))),
                     dict(embed_dims=32, frobnicate=True)):
        with pytest.raises(ValueError, match="without a vssm equivalent"):
            _official_builder(dict(backbone=backbone), None)


def test_device_dtype_and_bf16_autocast():
    """create_model(device=, dtype=) reaches every parameter; a bf16 autocast forward stays close to float32."""
    assert {p.device.type for p in timm.create_model("plainmamba_l1", device="meta").parameters()} == {"meta"}
    model = timm.create_model(NAME, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16, torch.float32}  # A_log, D stay float32
    model = timm.create_model(NAME).eval()
    x = torch.randn(1, 3, 64, 64)
    # oneDNN's bf16 convolution returns wrong values for some strided convs on AVX512-bf16/AMX CPUs (with torch 2.15.0
    # here: the 8x8 stride-8 patch projection, relative error 1.2; pytorch/pytorch#169688 and its fix #188426 for the
    # conv3d case), so the bf16 forward runs on PyTorch's own CPU kernels: the check is of the model's autocast policy
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
        torch.testing.assert_close(low.float(), model(x), atol=0.05, rtol=0.05)


def test_mamba_dt_init():
    assert timm.create_model(NAME).blocks[0].token_mixer.dt_proj.bias.abs().sum() == 0  # official: wiped
    bias = timm.create_model(NAME, mamba_dt_init=True).blocks[0].token_mixer.dt_proj.bias
    assert (bias != 0).all()


def test_no_weight_decay_patterns():
    model = timm.create_model(NAME)
    from fnmatch import fnmatch

    names = [n for n, _ in model.named_parameters() if any(fnmatch(n, p) for p in model.no_weight_decay())]
    assert "pos_embed" in names and "blocks.0.token_mixer.A_log" in names
    assert "blocks.0.token_mixer.direction_tokens" in names and "blocks.0.token_mixer.D" in names
