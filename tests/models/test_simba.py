"""SiMBA: parameter counts and key conversion of the full-size official manifests, the official fixtures (output and
intermediates), the token-labeling head, the Monarch variants' sizes, feature wrappers, device / dtype construction and
bf16 autocast; timm's contract runs over every variant in tests/models/test_models.py."""
import pytest
import timm
import torch

from tests.models import contract
from vssm.convert import load_official
from vssm.models.simba import convert_official

OFFICIAL = ["simba_s", "simba_b", "simba_l", "simba_s_einfft", "simba_b_einfft", "simba_l_einfft"]
MONARCH = {"simba_s_monarch": 18.5e6, "simba_b_monarch": 26.9e6, "simba_l_monarch": 42e6}
CASES = ["simba_mlp_tiny", "simba_einfft_tiny"]


def test_registered():
    assert set(timm.list_models("simba*")) == set(OFFICIAL) | set(MONARCH)
    assert "test_simba" in timm.list_models("test_simba")


@pytest.mark.parametrize("name", OFFICIAL)
def test_param_count(name):
    contract.check_param_count(name, "simba")


@pytest.mark.parametrize("name, paper", MONARCH.items())
def test_monarch_param_count_within_5_percent_of_paper(name, paper):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert abs(sum(p.numel() for p in model.parameters()) / paper - 1) < 0.05


@pytest.mark.parametrize("name", OFFICIAL)
def test_manifest_keys_convert(name):
    """A state dict of the official keys and shapes converts and loads strictly (nested as the trainer saves)."""
    manifest = contract.load_manifest("simba", name)
    official = {k: torch.empty(shape, device="meta") for k, shape in manifest["state_dict"].items()}
    with torch.device("meta"):
        model = timm.create_model(name)
    from vssm.models.simba import checkpoint_filter_fn

    converted = checkpoint_filter_fn({"state_dict": {"module." + k: v for k, v in official.items()}}, model)
    model.load_state_dict(converted, strict=True, assign=True)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape)
                                                                 for k, v in model.state_dict().items()}


@pytest.mark.parametrize("case", CASES)
def test_fixture(case):
    """Output and every stored intermediate: stem / downsampling tokens, block outputs, stage features, class block,
    final-normed tokens, class and token logits."""
    meta, weights, io = contract.load_case("simba", case, contract.KERNEL_DEVICE)
    model = load_official("simba", weights, meta["kwargs"]).to(contract.KERNEL_DEVICE)
    captured = {}

    def keep(key):
        return lambda module, args, out: captured.__setitem__(key, out.flatten(1, 2))

    hooks = [model.stem.register_forward_hook(keep("patch_embed.0"))]
    for s, stage in enumerate(model.stages):
        if s:
            hooks.append(stage.downsample.register_forward_hook(keep(f"patch_embed.{s}")))
        hooks += [block.register_forward_hook(keep(f"block.{s}.{j}")) for j, block in enumerate(stage.blocks)]
    with torch.no_grad():
        final, features = model.forward_intermediates(io["input"])
        out = model.forward_head(final)
        post = model.cls_block(final.flatten(1, 2).mean(1, keepdim=True))
        cls_token, tokens = model._head_tokens(final)
    for hook in hooks:
        hook.remove()
    tol = dict(atol=meta["suggested_atol"], rtol=meta["suggested_rtol"])
    torch.testing.assert_close(out, io["output"], **tol)
    torch.testing.assert_close(post[:, 0], io["post.0"][:, 0], **tol)
    torch.testing.assert_close(torch.cat((cls_token[:, None], tokens), 1), io["final_norm"], **tol)
    for s, feature in enumerate(features):
        torch.testing.assert_close(feature, io[f"feature.{s}"], **tol)
    assert sorted(captured) == sorted(k for k in io if k.startswith(("block.", "patch_embed.")))
    for key, value in captured.items():
        torch.testing.assert_close(value, io[key], **tol)


def test_token_label_heads_and_aux_weight():
    """forward_token_label gives the two official heads; aux_weight=0 leaves the class-token logits alone."""
    meta, weights, io = contract.load_case("simba", "simba_einfft_tiny")
    model = load_official("simba", weights, meta["kwargs"])
    model.aux_weight = 0.0
    with torch.no_grad():
        cls_logits, aux_logits = model.forward_token_label(io["input"])
        torch.testing.assert_close(model.forward_head(model.forward_features(io["input"])), cls_logits)
    torch.testing.assert_close(cls_logits, io["logits_cls"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(aux_logits, io["logits_aux"], atol=1e-4, rtol=1e-4)


def test_pretrained_file_through_timm(tmp_path):
    """pretrained=True with a local official checkpoint ({'state_dict': ...} as the official trainer saves it)."""
    meta, weights, io = contract.load_case("simba", "simba_mlp_tiny")
    torch.save({"state_dict": weights, "epoch": 1}, tmp_path / "official.pth")
    kwargs = meta["kwargs"]
    overlay = dict(file=str(tmp_path / "official.pth"), num_classes=kwargs["num_classes"])
    model = timm.create_model("simba_s", pretrained=True, pretrained_cfg_overlay=overlay,
                              num_classes=kwargs["num_classes"], stem_width=kwargs["stem_hidden_dim"],
                              dims=kwargs["embed_dims"], depths=kwargs["depths"],
                              mlp_ratios=kwargs["mlp_ratios"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["output"], atol=1e-4, rtol=1e-4)


def test_token_label_off_and_dense_pool():
    model = timm.create_model("test_simba", token_label=False).eval()
    assert model.aux_head is None and "aux_head.weight" not in model.state_dict()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.head(model.forward_head(model.forward_features(x), True)))
        model.reset_classifier(0, "")
        assert model(x).shape == (1, 2, 2, model.num_features)
    with pytest.raises(RuntimeError, match="token_label"):
        model.forward_token_label(x)


def test_odd_input_size():
    """Odd grids (stride-2 convs round up): 80 x 112 -> 20 x 28 -> ... -> 3 x 4."""
    model = timm.create_model("test_simba").eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 80, 112)).shape == (1, 3, 4, model.num_features)


@pytest.mark.parametrize("size", "sbl")
def test_docstring_names_the_mixer(size):
    doc = " ".join(timm.models.model_entrypoint(f"simba_{size}").__doc__.split())
    assert "channel mixer = MLP" in doc and "NOT the paper's EinFFT" in doc and f"simba_{size}_einfft" in doc


def test_official_init_and_mamba_dt_init():
    official = timm.create_model("test_simba")
    assert all(block.token_mixer.dt_proj.bias.abs().sum() == 0 for block in official.stages[0].blocks)
    mamba = timm.create_model("test_simba", mamba_dt_init=True)
    bias = mamba.stages[0].blocks[0].token_mixer.dt_proj.bias
    assert torch.all((torch.nn.functional.softplus(bias) > 9e-4) & (torch.nn.functional.softplus(bias) < 0.11))


def test_convert_official_names():
    assert convert_official({"block2.1.attn.mamba.A_log": 0, "norm4.weight": 0, "norm3.bias": 0,
                             "patch_embed3.proj.weight": 0, "post_network.0.mlp.fc1.weight": 0,
                             "block1.0.mlp.dwconv.dwconv.bias": 0}) == {
        "stages.1.blocks.1.token_mixer.A_log": 0, "norm.weight": 0, "stages.2.norm.bias": 0,
        "stages.2.downsample.proj.weight": 0, "cls_block.mlp.fc1.weight": 0, "stages.0.blocks.0.mlp.dwconv.bias": 0}


def test_features_list_wrapper_matches_getter():
    """features_only with feature_cls='list' (NHWC, the model's layout) gives the getter's (NCHW) maps."""
    torch.manual_seed(0)
    getter = timm.create_model("test_simba", features_only=True).eval()
    listed = timm.create_model("test_simba", features_only=True, feature_cls="list").eval()
    listed.load_state_dict({k.removeprefix("model.").replace("stages.", "stages_", 1): v  # getter wraps `model`
                            for k, v in getter.state_dict().items()})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for nhwc, nchw in zip(listed(x), getter(x), strict=True):
            torch.testing.assert_close(nhwc.permute(0, 3, 1, 2), nchw)


def test_device_dtype_and_bf16_autocast():
    """create_model(device=, dtype=) reaches every parameter; a bf16 autocast forward stays close to float32."""
    assert {p.device.type for p in timm.create_model("simba_s_einfft", device="meta").parameters()} == {"meta"}
    model = timm.create_model("test_simba", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16, torch.float32}  # A_log, D stay float32
    model = timm.create_model("test_simba").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
        torch.testing.assert_close(low.float(), model(x), atol=0.05, rtol=0.05)


def test_mamba_mixer_matches_mamba_reference_path_with_channels_last_inputs(monkeypatch):
    """CausalMambaMixer = mamba_ssm.Mamba's non-fused path (nn.Conv1d + selective_scan_ref), and it hands the scan
    channels-last views (channels / states contiguous per token), as the Triton path reads them."""
    import torch.nn.functional as F

    import vssm.layers.simba_mixer as simba_mixer
    from vssm.ops import selective_scan_ref

    torch.manual_seed(0)
    mixer = simba_mixer.CausalMambaMixer(16, d_state=8)
    x = torch.randn(2, 7, 16)
    u, z = mixer.in_proj(x).transpose(1, 2).chunk(2, dim=1)
    u = F.silu(mixer.conv1d(u)[..., :7])
    dt, B, C = torch.split(mixer.x_proj(u.transpose(1, 2)), [mixer.dt_rank, 8, 8], dim=-1)
    y = selective_scan_ref(u, (dt @ mixer.dt_proj.weight.t()).transpose(1, 2), -torch.exp(mixer.A_log),
                           B.transpose(1, 2), C.transpose(1, 2), mixer.D, z, mixer.dt_proj.bias, True)
    seen, scan = {}, simba_mixer.selective_scan

    def spy(u, delta, A, B, C, D, z, *args):
        seen.update(u=u, delta=delta, B=B, C=C, z=z)
        return scan(u, delta, A, B, C, D, z, *args)

    monkeypatch.setattr(simba_mixer, "selective_scan", spy)
    torch.testing.assert_close(mixer(x), mixer.out_proj(y.transpose(1, 2)), atol=1e-5, rtol=1e-5)
    assert all(seen[name].stride(-2) == 1 for name in ("u", "delta", "B", "C", "z"))
