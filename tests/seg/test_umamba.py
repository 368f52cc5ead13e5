"""U-Mamba nets: the official fixtures (every deep-supervision output and encoder feature, through the de-duplicating
state-dict conversion), the Mamba layer against a plain sequential Mamba v1 in both token modes, the official rules
(block counts, Mamba placement, channel-token stages) worked by hand, float32 Mamba layers inside bfloat16 autocast,
deep supervision, He initialisation, gradient checkpointing, and the net registry."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vssm.convert import load_official
from vssm.ops import scan_paths
from vssm.seg import nets
from vssm.seg.nets import build_seg_net, register_seg_net, seg_net_names
from vssm.seg.plans import NetworkPlan
from vssm.seg.umamba import (
    MambaLayer, UMambaBot, UMambaEnc, channel_token_stages, convert_official_state_dict, feature_map_sizes,
    mamba_stages, umamba_block_counts, umamba_from_official_kwargs,
)

from ..models.contract import load_case

FIXTURE_CASES = ["umamba_bot_2d", "umamba_bot_3d", "umamba_enc_2d", "umamba_enc_3d"]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared CPU they cost a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_bot(dim: int = 2, **kwargs) -> UMambaBot:
    torch.manual_seed(0)
    return UMambaBot(1, 3, (4, 8, 16), [[3] * dim] * 3, [[1] * dim, [2] * dim, [2] * dim], **kwargs)


def tiny_enc_with_channel_tokens() -> UMambaEnc:
    """2-D, patch 16x16, maps 16x16 (256 > 4 ch), 8x8 (64 > 8), 4x4 (16 <= 16), 2x2 (4 <= 32); Mamba after stages 1
    and 3, stage 3 in channel-token mode."""
    torch.manual_seed(0)
    return UMambaEnc(2, 3, (16, 16), (4, 8, 16, 32), [[3, 3]] * 4, [[1, 1], [2, 2], [2, 2], [2, 2]])


def perturb_(module: nn.Module, seed: int = 1) -> nn.Module:
    """Every parameter moved off its initial value (norm weights 1, biases 0, D 1, equal A_log rows), so every path
    matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


# --- the official fixtures -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_official_fixture(case):
    meta, official, io = load_case("umamba", case)
    atol, rtol = meta["suggested_atol"], meta["suggested_rtol"]
    net = load_official("umamba", official, meta["kwargs"], meta["official_entry"])  # strict: every key used
    assert sum(p.numel() for p in net.parameters()) == meta["params"]
    x = io["input"]
    with torch.no_grad():
        outputs = net(x)
        skips = net.encoder(x)
        net.decoder.deep_supervision = False
        full_resolution = net(x)
    expected = [io["output"]] + [io[f"output.ds{k}"] for k in range(1, len(outputs))]
    assert len(outputs) == len(expected) == len(meta["kwargs"]["features_per_stage"]) - 1
    for out, ref in zip(outputs, expected):
        torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(full_resolution, io["output"], atol=atol, rtol=rtol)
    for i, skip in enumerate(skips):
        torch.testing.assert_close(skip, io[f"feature.{i}"], atol=atol, rtol=rtol)
    if "feature.bottleneck_mamba" in io:
        with torch.no_grad():
            bottleneck = net.mamba_layer(io[f"feature.{len(skips) - 1}"])
        torch.testing.assert_close(bottleneck, io["feature.bottleneck_mamba"], atol=atol, rtol=rtol)
    for layer in meta["mamba_layers"]:
        module = net.get_submodule(layer["module"])
        assert (module.dim, module.channel_token) == (layer["d_model"], layer["channel_token"])


def test_official_state_dict_deduplicated():
    meta, official, _ = load_case("umamba", "umamba_bot_2d")
    converted = convert_official_state_dict(official)
    copies = [k for k in official if k.startswith("decoder.encoder.") or ".all_modules." in k]
    assert len(copies) > 0 and len(converted) == len(official) - len(copies)
    net = UMambaBot(1, 3, (8, 16, 32), [[3, 3]] * 3, [[1, 1], [2, 2], [2, 2]])
    assert converted.keys() == net.state_dict().keys()
    # a whole nnU-Net checkpoint, saved from a DDP-wrapped net
    checkpoint = {"network_weights": {f"module.{k}": v for k, v in official.items()}, "current_epoch": 999,
                  "trainer_name": "nnUNetTrainerUMambaBot"}
    from_checkpoint = convert_official_state_dict(checkpoint)
    assert from_checkpoint.keys() == converted.keys()
    assert all(torch.equal(from_checkpoint[k], converted[k]) for k in converted)


@pytest.mark.parametrize("copy_key", [
    "decoder.encoder.stem.0.conv1.weight",  # the decoder's reference to the encoder
    "encoder.stem.1.conv1.all_modules.0.weight",  # BasicBlockD's Sequential view of its conv
])
def test_official_state_dict_copies_must_agree(copy_key):
    _, official, _ = load_case("umamba", "umamba_bot_2d")
    corrupt = dict(official)
    corrupt[copy_key] = corrupt[copy_key] + 1
    with pytest.raises(ValueError, match=copy_key.replace(".", r"\.")):
        convert_official_state_dict(corrupt)


def test_official_kwargs_outside_the_factories_are_refused():
    meta, _, _ = load_case("umamba", "umamba_bot_2d")
    for key, value, message in [("dropout_op", "torch.nn.Dropout2d", "dropout_op"),
                                ("norm_op", "torch.nn.BatchNorm2d", "norm_op"),
                                ("conv_bias", False, "conv_bias")]:
        with pytest.raises(ValueError, match=f"{message} = .* is not supported"):
            umamba_from_official_kwargs({**meta["kwargs"], key: value}, meta["official_entry"])
    with pytest.raises(ValueError, match="entry 'UMambaBot_3d' is 3-D but conv_op is Conv2d"):
        umamba_from_official_kwargs(meta["kwargs"], "UMambaBot_3d")


# --- the Mamba layer -----------------------------------------------------------------------------------------------

def reference_mamba(tokens: torch.Tensor, mixer) -> torch.Tensor:
    """Mamba v1 (mamba_ssm's slow path with ``selective_scan_ref``), step by step: (B, L, D) -> (B, L, D)."""
    inner, d_conv, length = mixer.d_inner, mixer.d_conv, tokens.shape[1]
    rank, d_state = mixer.dt_rank, mixer.d_state
    x, z = (tokens @ mixer.in_proj.weight.t()).split(inner, dim=-1)  # (B, L, E) each
    x = F.conv1d(x.transpose(1, 2), mixer.conv_weight[0].unsqueeze(1), mixer.conv_bias[0], padding=d_conv - 1,
                 groups=inner)[..., :length]
    x = F.silu(x)  # (B, E, L)
    dt, B, C = (x.transpose(1, 2) @ mixer.x_proj_weight[0].t()).split([rank, d_state, d_state], dim=-1)
    delta = F.softplus(dt @ mixer.dt_proj_weight[0].t() + mixer.dt_proj_bias[0])  # (B, L, E)
    A = -torch.exp(mixer.A_log[0])  # (E, N)
    state = x.new_zeros(x.shape[0], inner, d_state)
    ys = []
    for t in range(length):
        step = delta[:, t, :, None]  # (B, E, 1)
        state = torch.exp(step * A) * state + step * B[:, t, None, :] * x[:, :, t, None]
        ys.append((state * C[:, t, None, :]).sum(-1) + mixer.D[0] * x[:, :, t])
    y = torch.stack(ys, dim=1) * F.silu(z)  # (B, L, E)
    return y @ mixer.out_proj.weight.t()


def reference_layer(x: torch.Tensor, layer: MambaLayer) -> torch.Tensor:
    """The official MambaLayer: tokens -> LayerNorm -> Mamba -> back to the map, in either token mode."""
    batch, channels, *spatial = x.shape
    if layer.channel_token:
        tokens = x.flatten(2)  # (B, C, P)
        return reference_mamba(F.layer_norm(tokens, (layer.dim,), layer.norm.weight, layer.norm.bias),
                               layer.mixer).view(x.shape)
    tokens = x.flatten(2).transpose(1, 2)  # (B, L, C), row-major
    out = reference_mamba(F.layer_norm(tokens, (channels,), layer.norm.weight, layer.norm.bias), layer.mixer)
    return out.transpose(1, 2).reshape(batch, channels, *spatial)


@pytest.mark.parametrize("shape, channel_token", [
    ((1, 6, 3, 5), False),  # 2-D, odd sizes, batch 1
    ((2, 4, 2, 3, 5), False),  # 3-D
    ((2, 7, 2, 3), True),  # channel tokens: 7 tokens of dim 6
    ((1, 5, 2, 2, 3), True),
])
def test_mamba_layer_matches_sequential_reference(shape, channel_token):
    torch.manual_seed(0)
    dim = math.prod(shape[2:]) if channel_token else shape[1]
    layer = perturb_(MambaLayer(dim, channel_token))
    x = torch.randn(shape, requires_grad=True)
    out = layer(x)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *layer.parameters()], grad_out)

    reference = copy.deepcopy(layer).double()
    x64 = x.detach().double().requires_grad_()
    out64 = reference_layer(x64, reference)
    grads64 = torch.autograd.grad(out64, [x64, *reference.parameters()], grad_out.double())
    torch.testing.assert_close(out, out64.float(), atol=2e-5, rtol=1e-4)
    names = ["x"] + [n for n, _ in layer.named_parameters()]
    for name, grad, grad64 in zip(names, grads, grads64):
        torch.testing.assert_close(grad, grad64.float(), atol=1e-4, rtol=1e-3, msg=name)


def test_token_order_is_the_raster_scan_path():
    """Voxel tokens are read in row-major order, the ``raster`` kind of vssm.ops.scan_paths on (D, H, W)."""
    shape = (2, 3, 5)
    assert torch.equal(scan_paths.build("raster", shape)[0], torch.arange(math.prod(shape)))
    grid = torch.arange(math.prod(shape)).view(1, 1, *shape)
    assert torch.equal(grid.flatten(2)[0, 0], scan_paths.build("raster", shape)[0])


def test_mamba_layer_input_errors():
    with pytest.raises(ValueError, match="expects 8 channels"):
        MambaLayer(8)(torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match="channel-token mode"):
        MambaLayer(16, channel_token=True)(torch.randn(1, 4, 3, 3))


# --- the official rules --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_stages, encoder, decoder", [
    (3, (2, 2, 1), (2, 2)),  # encoder s >= ceil(3/2) = 2; decoder s >= ceil(1.5) = 2: none
    (4, (2, 2, 1, 1), (2, 2, 1)),  # s >= 2; decoder s >= ceil(2.0) = 2
    (6, (2, 2, 2, 1, 1, 1), (2, 2, 2, 1, 1)),  # s >= 3; decoder s >= ceil(3.0) = 3
    (7, (2, 2, 2, 2, 1, 1, 1), (2, 2, 2, 2, 1, 1)),  # s >= 4; decoder s >= ceil(3.5) = 4
])
def test_block_counts(n_stages, encoder, decoder):
    assert umamba_block_counts([2] * n_stages, [2] * (n_stages - 1)) == (encoder, decoder)
    net = UMambaBot(1, 2, [4] * n_stages, [[3, 3]] * n_stages, [[1, 1]] * n_stages)
    assert tuple(len(stage) for stage in net.encoder.stages) == encoder
    assert len(net.encoder.stem) == encoder[0]
    assert tuple(len(stage) for stage in net.decoder.stages) == decoder


def test_mamba_placement():
    assert mamba_stages(3, 2) == [True, False, True]  # the fixture umamba_enc_2d: stages 0 and 2
    assert mamba_stages(4, 2) == [False, True, False, True]
    assert mamba_stages(8, 2) == [False, True] * 4
    assert mamba_stages(5, 3) == [True] * 5


def test_channel_token_rule_by_hand():
    # 2-D 512x512, 8 stages of min(32 * 2^s, 512): maps 512^2 .. 4^2; 16^2 = 256, 8^2, 4^2 <= 512
    strides = [[1, 1]] + [[2, 2]] * 7
    features = [min(32 * 2 ** s, 512) for s in range(8)]
    assert feature_map_sizes((512, 512), strides)[-1] == (4, 4)
    assert channel_token_stages((512, 512), strides, features) == [False] * 5 + [True] * 3
    # 3-D anisotropic, sizes floor-divided: (40, 20, 20) -> (40,20,20), (20,10,10), (10,5,5), (5,2,2)
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert feature_map_sizes((40, 20, 20), strides)[-1] == (5, 2, 2)
    assert channel_token_stages((40, 20, 20), strides, [32, 64, 128, 320]) == [False, False, False, True]
    assert channel_token_stages((40, 20, 20), strides, [32, 64, 250, 320]) == [False, False, True, True]  # 250 = P


def test_channel_token_net_2d():
    net = tiny_enc_with_channel_tokens()
    assert net.channel_token == [False, False, True, True]
    layers = net.encoder.mamba_layers
    assert isinstance(layers[0], nn.Identity) and isinstance(layers[2], nn.Identity)
    assert (layers[1].channel_token, layers[1].dim) == (False, 8)
    assert (layers[3].channel_token, layers[3].dim) == (True, 4)  # 32 channel tokens of 2x2 = 4 voxels
    x = torch.randn(2, 2, 16, 16)
    outputs = net(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 16, 16), (2, 3, 8, 8), (2, 3, 4, 4)]
    sum(o.square().mean() for o in outputs).backward()
    for name, p in layers[3].named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="channel-token mode"):
        net(torch.randn(1, 2, 32, 32))  # another patch size: the channel-token stage's dim no longer fits


def test_channel_token_net_3d():
    torch.manual_seed(0)
    net = UMambaEnc(1, 2, (8, 8, 8), (4, 8, 16), [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]])
    assert net.channel_token == [False, False, True]  # 512 > 4, 64 > 8, 8 <= 16
    assert [(m.channel_token, m.dim) for m in net.encoder.mamba_layers] == [(False, 4), (False, 8), (True, 8)]
    x = torch.randn(1, 1, 8, 8, 8, requires_grad=True)
    net.decoder.deep_supervision = False
    out = net(x)
    assert out.shape == (1, 2, 8, 8, 8)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# --- numerics, deep supervision, init, checkpointing ---------------------------------------------------------------

def test_skip_structure_2d_and_3d():
    """The 2-D nets' last decoder stage concatenates no skip; the 3-D nets' does."""
    assert tiny_bot(2).decoder.stages[-1][0].conv1.in_channels == 4
    assert tiny_bot(3).decoder.stages[-1][0].conv1.in_channels == 8


@pytest.mark.parametrize("dim", [2, 3])
def test_deep_supervision(dim):
    net = tiny_bot(dim)
    size = (8, 16, 12)[:dim] if dim == 3 else (16, 12)
    x = torch.randn(1, 1, *size)
    assert net.deep_supervision_scales(size) == [(1,) * dim, (2,) * dim]
    outputs = net(x)
    assert [tuple(o.shape[2:]) for o in outputs] == [
        tuple(s // f for s, f in zip(size, factor)) for factor in net.deep_supervision_scales(size)]
    net.decoder.deep_supervision = False
    torch.testing.assert_close(net(x), outputs[0])


def test_anisotropic_scales():
    net = UMambaBot(1, 2, (4, 8, 16, 32), [[1, 3, 3]] + [[3, 3, 3]] * 3,
                    [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]])
    assert net.deep_supervision_scales() == [(1, 1, 1), (1, 2, 2), (2, 4, 4)]
    assert net.size_divisor == (4, 8, 8)


@pytest.mark.parametrize("make", [lambda: tiny_bot(2), lambda: tiny_bot(3), tiny_enc_with_channel_tokens])
def test_mamba_layers_float32_under_bfloat16_autocast(make):
    """Inside bfloat16 autocast every Mamba layer computes exactly what it computes in float32 on the same input, so
    the net's output differs from the float32 run only by the bfloat16 convolutions' rounding (amplified by the tiny
    maps' norms: the channel-token stage normalises over 4 voxels)."""
    net = perturb_(make()).eval()
    size = (16, 16) if net.dim == 2 else (8, 8, 8)
    x = torch.randn(2, net.in_channels, *size)
    calls = []
    hooks = [m.register_forward_hook(lambda mod, args, out: calls.append((mod, args[0], out)))
             for m in net.modules() if isinstance(m, MambaLayer)]
    with torch.no_grad():
        reference = net(x)
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = net(x)
        for hook in hooks:
            hook.remove()
        assert calls
        for layer, layer_input, layer_output in calls:
            assert layer_output.dtype == torch.float32
            assert torch.equal(layer_output, layer(layer_input.float()))  # autocast off inside the layer
    for out, ref in zip(mixed, reference):
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
        assert (out.float() - ref).norm() <= 0.15 * ref.norm()


def test_mamba_layer_is_exact_float32_under_autocast():
    layer = perturb_(MambaLayer(8))
    x = torch.randn(2, 8, 5, 3).bfloat16()
    with torch.no_grad():
        expected = layer(x.float())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
    assert out.dtype == torch.float32 and torch.equal(out, expected)


def test_he_initialisation():
    torch.manual_seed(0)
    net = UMambaBot(1, 2, (16, 32), [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]])
    gain = math.sqrt(2.0 / (1 + 0.01 ** 2))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    assert convs and all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in convs)
    for conv in convs:
        if conv.weight.numel() >= 5000:
            fan_in = conv.weight[0].numel()
            assert abs(conv.weight.std().item() / (gain / math.sqrt(fan_in)) - 1) < 0.05
    mixer = net.mamba_layer.mixer  # Mamba's own init, untouched by He
    torch.testing.assert_close(mixer.A_log[0], torch.arange(1, 17.).log().expand(mixer.d_inner, 16))
    assert torch.equal(mixer.D, torch.ones_like(mixer.D))
    norms = [m for m in net.modules() if isinstance(m, (nn.InstanceNorm3d, nn.LayerNorm))]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
               for m in norms)


@pytest.mark.parametrize("make", [lambda: tiny_bot(3), tiny_enc_with_channel_tokens])
def test_grad_checkpointing_same_outputs_and_grads(make):
    net = perturb_(make())
    size = (16, 16) if net.dim == 2 else (8, 8, 8)
    x = torch.randn(2, net.in_channels, *size)

    def run():
        net.zero_grad()
        loss = sum(o.square().mean() for o in net(x))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}

    loss, grads = run()
    net.set_grad_checkpointing(True)
    loss_ckpt, grads_ckpt = run()
    torch.testing.assert_close(loss_ckpt, loss)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], msg=name)


def test_input_errors():
    net = tiny_bot(2)
    with pytest.raises(ValueError, match=r"expects \(B, 1, \*, \*\) input"):
        net(torch.randn(1, 2, 16, 16))
    with pytest.raises(ValueError, match="multiple of the product of the strides"):
        net(torch.randn(1, 1, 16, 10))
    with pytest.raises(ValueError, match="kernel_sizes needs one entry per stage"):
        UMambaBot(1, 2, (4, 8), [[3, 3]], [[1, 1], [2, 2]])


# --- the net registry ----------------------------------------------------------------------------------------------

PLAN_2D = NetworkPlan(n_stages=3, features_per_stage=(4, 8, 16), kernel_sizes=((3, 3),) * 3,
                      strides=((1, 1), (2, 2), (2, 2)), n_conv_per_stage_encoder=(2, 2, 2),
                      n_conv_per_stage_decoder=(2, 2), dim=2)


def test_build_registered_nets():
    assert {"umamba_bot", "umamba_enc"} <= set(seg_net_names())
    bot = build_seg_net("umamba_bot", PLAN_2D, in_channels=2, num_classes=4, patch_size=(16, 16))
    enc = build_seg_net("umamba_enc", PLAN_2D, 2, 4, (16, 16), deep_supervision=False, d_state=8)
    assert isinstance(bot, UMambaBot) and bot.decoder.deep_supervision
    assert isinstance(enc, UMambaEnc) and not enc.decoder.deep_supervision and enc.input_size == (16, 16)
    assert enc.encoder.mamba_layers[2].mixer.d_state == 8
    assert bot.n_blocks_per_stage == (2, 2, 1)  # the plan's counts through the official rule
    assert bot(torch.randn(1, 2, 16, 16))[0].shape == (1, 4, 16, 16)


def test_registry_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown segmentation net 'unet'; registered: .*umamba_bot, umamba_enc"):
        build_seg_net("unet", PLAN_2D, 1, 2, (16, 16))
    with pytest.raises(ValueError, match="patch_size .* has 3 axes; the plan is 2-D"):
        build_seg_net("umamba_bot", PLAN_2D, 1, 2, (16, 16, 16))
    with pytest.raises(ValueError, match="multiple of the product of the plan's strides"):
        build_seg_net("umamba_bot", PLAN_2D, 1, 2, (16, 18))
    with pytest.raises(TypeError, match="NetworkPlan"):
        build_seg_net("umamba_bot", {"n_stages": 3}, 1, 2, (16, 16))
    monkeypatch.setattr(nets, "_SEG_NETS", dict(nets._SEG_NETS))
    register_seg_net("plain_conv")(lambda network, *args, **kwargs: nn.Conv2d(1, 2, 1))
    with pytest.raises(TypeError, match="decoder.deep_supervision"):
        build_seg_net("plain_conv", PLAN_2D, 1, 2, (16, 16))
    with pytest.raises(ValueError, match="already registered"):
        register_seg_net("umamba_bot")(lambda *args, **kwargs: None)
