"""Zoo models as segmentation encoders: the four-level pyramid (hierarchical and isotropic), pretrained weights and
1-channel stems through timm, VM-UNet (decoder mirroring the encoder, the official encoder -> decoder weight copy),
Swin-UMamba (stem into the encoder, 4 deep-supervision outputs, encoder freezing), UPerNet and Semantic FPN at any
input size, and the four nets in the segmentation registry."""
import pytest
import timm
import torch

import vssm  # noqa: F401  (registers the zoo)
from vssm.seg import SemanticFPN, SwinUMamba, UPerNet, VMUNet, ZooEncoder, build_seg_net
from vssm.seg.plans import NetworkPlan
from vssm.seg.vm_unet import VANILLA_VSS_BLOCK, vss_block_config
from vssm.seg.zoo_encoder import SimpleFeaturePyramid, spread_indices

# a Vanilla VMamba (v0: patchify stem, z-gated SS2D, no MLP) small enough for CPU tests
TINY_V0 = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))
SIZES = [(64, 64), (64, 96)]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared CPU they cost a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train_step(net: torch.nn.Module, size, in_chans: int = 1):
    """Forward a batch of 2 in train mode, backward the mean of every output; returns the outputs."""
    net.train()
    out = net(torch.randn(2, in_chans, *size))
    outputs = out if isinstance(out, list) else [out]
    sum(o.float().mean() for o in outputs).backward()
    return outputs


def _assert_all_grads(net: torch.nn.Module):
    missing = [n for n, p in net.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.isfinite().all())]
    assert not missing, f"parameters without a finite gradient: {missing}"


def _imagenet_checkpoint(name: str, path, **model_kwargs) -> dict:
    """Save a randomly initialised classifier ``name`` (head included) as a stand-in for its ImageNet weights."""
    torch.manual_seed(1)
    state = timm.create_model(name, **model_kwargs).state_dict()
    torch.save(state, path)
    return state


# --- the encoder ---------------------------------------------------------------------------------------------------

def test_spread_indices():
    assert spread_indices(12) == [2, 5, 8, 11]  # UNETR's z3, z6, z9, z12
    assert spread_indices(24) == [5, 11, 17, 23]
    assert spread_indices(3) == [0, 1, 1, 2]


@pytest.mark.parametrize("name, isotropic", [("test_s4nd_convnext", False), ("test_simba", False),
                                             ("test_plainmamba", True), ("test_s4nd_vit", True)])
def test_zoo_encoder_pyramid(name, isotropic):
    torch.manual_seed(0)
    encoder = ZooEncoder(name, in_chans=1)
    assert encoder.is_isotropic == isotropic and (encoder.adapter is not None) == isotropic
    maps = encoder(torch.randn(1, 1, 64, 96))
    assert encoder.reductions == [4, 8, 16, 32]
    for m, channels, reduction in zip(maps, encoder.channels, encoder.reductions):
        assert m.shape == (1, channels, 64 // reduction, 96 // reduction)


def test_zoo_encoder_isotropic_blocks():
    encoder = ZooEncoder("test_plainmamba", block_indices=(0, 1, 2, 2))
    assert encoder.take_indices == [0, 1, 2] and encoder.level_positions == [0, 1, 2, 2]
    with pytest.raises(ValueError, match="block_indices must be 4 block indices"):
        ZooEncoder("test_plainmamba", block_indices=(0, 1, 2))
    with pytest.raises(ValueError, match="block_indices is for isotropic models"):
        ZooEncoder("test_s4nd_convnext", block_indices=(0, 1, 2, 3))


def test_zoo_encoder_errors():
    with pytest.raises(ValueError, match="unknown model 'no_such_model'"):
        ZooEncoder("no_such_model")
    with pytest.raises(ValueError, match="power of two"):
        SimpleFeaturePyramid([8] * 4, 14)


def test_simple_feature_pyramid_stride_8():
    pyramid = SimpleFeaturePyramid([16] * 4, 8)
    assert pyramid.out_channels == [8, 16, 16, 16]
    maps = pyramid([torch.randn(1, 16, 8, 12)] * 4)
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_zoo_encoder_pretrained_file_and_one_channel_stem(tmp_path):
    """Weights from a file through timm's pretrained path (and ``checkpoint_path``); in_chans=1 sums the stem over
    RGB, so the 1-channel encoder on x equals the RGB encoder on x repeated 3 times."""
    path = tmp_path / "weights.pth"
    checkpoint = _imagenet_checkpoint("test_simba", path)
    overlay = dict(file=str(path))
    rgb = ZooEncoder("test_simba", pretrained=True, pretrained_cfg_overlay=overlay).eval()
    gray = ZooEncoder("test_simba", in_chans=1, pretrained=True, pretrained_cfg_overlay=overlay).eval()
    native = ZooEncoder("test_simba", checkpoint_path=str(path))  # timm's load after construction
    for key, value in rgb.model.state_dict().items():
        torch.testing.assert_close(value, checkpoint[key], rtol=0, atol=0)
        torch.testing.assert_close(native.model.state_dict()[key], checkpoint[key], rtol=0, atol=0)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        for a, b in zip(rgb(x.repeat(1, 3, 1, 1)), gray(x)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


# --- VM-UNet ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoder_name", ["test_vmamba", "test_plainmamba"])
def test_vm_unet_forward_backward(encoder_name):
    torch.manual_seed(0)
    net = VMUNet(encoder_name, in_chans=1, num_classes=3, drop_path_rate=0.1)
    for size in SIZES:
        net.zero_grad()
        (logits,) = _train_step(net, size)
        assert logits.shape == (2, 3, *size)
        _assert_all_grads(net)
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.randn(1, 1, 48, 64))


def test_vm_unet_grad_checkpointing_keeps_outputs():
    torch.manual_seed(0)
    net = VMUNet("test_vmamba", in_chans=1, num_classes=2, depths=(1, 1, 1, 1)).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        expected = net(x)
        net.set_grad_checkpointing()
        assert all(stage.grad_checkpointing for stage in net.decoder.stages)
        torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-5)


def _record(module: torch.nn.Module, store: dict, key, inputs: bool = False):
    """Keep what ``module`` reads (its positional inputs) or returns, under ``key``."""
    if inputs:
        return module.register_forward_pre_hook(lambda m, args: store.__setitem__(key, args))
    return module.register_forward_hook(lambda m, args, out: store.__setitem__(key, out))


def test_vm_unet_skips_are_the_official_stage_entries_added_before_each_expand():
    """The official forward_features / forward_features_up: decoder stage 0 reads the last encoder stage's output;
    stage j = 1..3 reads the previous decoder stage's output plus the map entering encoder stage 4 - j (after its
    patch merging), and that sum is what its patch expand gets; the stem output is never read."""
    torch.manual_seed(0)
    net = VMUNet("test_vmamba", in_chans=1, num_classes=2, depths=(1, 1, 1, 1)).eval()
    encoder, decoder = net.encoder.model, net.decoder
    seen, handles = {}, []
    for k in range(4):
        handles.append(_record(encoder.stages[k].downsample, seen, ("entry", k)))
    handles.append(_record(encoder.stages[3].blocks, seen, "deepest"))
    for j, stage in enumerate(decoder.stages):
        handles += [_record(stage, seen, ("reads", j), inputs=True), _record(stage, seen, ("out", j))]
        handles.append(_record(stage.upsample, seen, ("expand", j), inputs=True))
    x = torch.randn(1, 1, 64, 96)
    with torch.no_grad():
        net(x)
        for handle in handles:
            handle.remove()
        level_maps = net.encoder(x)
    (first,) = seen[("reads", 0)]
    assert first is seen["deepest"]
    torch.testing.assert_close(seen["deepest"], level_maps[3].permute(0, 2, 3, 1), rtol=0, atol=0)
    for j in (1, 2, 3):
        previous, skip = seen[("reads", j)]
        assert previous is seen[("out", j - 1)] and skip is seen[("entry", 4 - j)]
        assert skip.shape == (1, 64 // 2 ** (6 - j), 96 // 2 ** (6 - j), encoder.stages[4 - j].blocks[0].mixer.
                              out_proj.out_features)
        torch.testing.assert_close(seen[("expand", j)][0], previous + skip, rtol=0, atol=0)
    stem_output = seen[("entry", 0)]
    assert all(t is not stem_output for j in (1, 2, 3) for t in seen[("reads", j)])


@pytest.mark.parametrize("encoder_name", ["test_s4nd_convnext", "test_plainmamba"])
def test_vm_unet_skips_of_other_encoders_are_their_level_maps(encoder_name):
    """Encoders without VMamba stages: decoder stage j adds the level map of its stride (32, 16, 8); an isotropic
    encoder's unread stride-4 pyramid level is dropped."""
    torch.manual_seed(0)
    net = VMUNet(encoder_name, in_chans=1, num_classes=2, depths=(1, 1, 1, 1)).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        deepest, skips = net.encode(x)
        level_maps = [m.permute(0, 2, 3, 1) for m in net.encoder(x)]
    torch.testing.assert_close(deepest, level_maps[3], rtol=0, atol=0)
    for skip, expected in zip(skips, level_maps[:0:-1], strict=True):
        torch.testing.assert_close(skip, expected, rtol=0, atol=0)
    if net.encoder.adapter is not None:
        assert isinstance(net.encoder.adapter.levels[0], torch.nn.Identity)
    with pytest.raises(ValueError, match="out_norms=True is not supported"):
        VMUNet(encoder_name, depths=(1, 1, 1, 1), encoder_kwargs=dict(out_norms=True))


def test_vm_unet_decoder_mirrors_encoder_blocks():
    """VMamba encoders: decoder stage j's blocks have the settings of encoder stage 3 - j's (LocalVMamba: the routes
    block by block); other encoders get the official Vanilla VMamba blocks."""
    net = VMUNet("test_local_vmamba", depths=(1, 2, 1, 1))
    stages = net.encoder.model.stages
    for j, stage in enumerate(net.decoder.stages):
        source = stages[3 - j].blocks
        for b, block in enumerate(stage.blocks):
            assert vss_block_config(block) == vss_block_config(source[min(b, len(source) - 1)])
    assert net.decoder.stages[1].blocks[1].mixer.directions == stages[2].blocks[1].mixer.directions
    v2 = VMUNet("test_vmamba", depths=(1, 1, 1, 1)).decoder.stages[0].blocks[0]
    assert v2.mlp is not None and not v2.mixer.gated and v2.mixer.d_state == 1
    other = VMUNet("test_s4nd_convnext", depths=(1, 1, 1, 1)).decoder.stages[0].blocks[0]
    expected = dict(VANILLA_VSS_BLOCK, dt_rank=3, ssm_ratio=2.0, merge="sum")  # dt_rank: ceil(48 / 16)
    assert vss_block_config(other) == expected


def test_vm_unet_init_decoder_from_encoder():
    """The official load_from mirror: decoder stage j block b <- encoder stage 3 - j block b, nothing else."""
    torch.manual_seed(0)
    net = VMUNet("test_vmamba", depths=(2, 2, 2, 1))  # encoder depths (1, 1, 2, 1)
    before = {k: v.clone() for k, v in net.decoder.state_dict().items()}
    copied = net.init_decoder_from_encoder()
    encoder_state = net.encoder.model.state_dict()
    decoder_state = net.decoder.state_dict()
    copied_blocks = {(src.split(".")[1], src.split(".")[3], dst.split(".")[2], dst.split(".")[4])
                     for src, dst in copied}
    # (encoder stage, block, decoder stage, block): stage 3 has 1 block, 2 has 2, 1 has 1, 0 has 1
    assert copied_blocks == {("3", "0", "0", "0"), ("2", "0", "1", "0"), ("2", "1", "1", "1"), ("1", "0", "2", "0"),
                             ("0", "0", "3", "0")}
    for src, dst in copied:
        assert src.replace("stages.", "", 1).split(".", 1)[1] == dst.split(".", 3)[3]  # the same block-relative key
        torch.testing.assert_close(decoder_state[dst[len("decoder."):]], encoder_state[src], rtol=0, atol=0)
    copied_keys = {dst[len("decoder."):] for _, dst in copied}
    assert len(copied_keys) == len(copied)
    assert all(k.startswith("stages.") and ".blocks." in k for k in copied_keys)
    for key, value in decoder_state.items():
        if key not in copied_keys:  # upsampling, final expand, head, blocks without a source: untouched
            torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert any(k.startswith("stages.0.blocks.1.") for k in decoder_state if k not in copied_keys)


def test_vm_unet_recipe_truncated_encoder_from_checkpoint(tmp_path):
    """The official recipe: a shallower encoder loads the first blocks of each stage of a deeper checkpoint
    (pretrained_strict=False) and the decoder copies the mirrored blocks from the full checkpoint."""
    path = tmp_path / "imagenet.pth"
    checkpoint = _imagenet_checkpoint("test_vmamba", path)  # depths (1, 1, 2, 1)
    net = VMUNet("test_vmamba", depths=(1, 2, 1, 1), pretrained=True, encoder_kwargs=dict(
        depths=(1, 1, 1, 1), pretrained_strict=False, pretrained_cfg_overlay=dict(file=str(path))))
    for key, value in net.encoder.model.state_dict().items():
        torch.testing.assert_close(value, checkpoint[key], rtol=0, atol=0)
    assert len(net.encoder.model.stages[2].blocks) == 1
    copied = dict((dst, src) for src, dst in net.init_decoder_from_encoder(torch.load(path)))
    decoder_state = net.decoder.state_dict()
    # decoder stage 1 (mirror of encoder stage 2) has 2 blocks: both come from the checkpoint's 2 blocks
    for b in (0, 1):
        key = f"decoder.stages.1.blocks.{b}.mixer.x_proj_weight"
        assert copied[key] == f"stages.2.blocks.{b}.mixer.x_proj_weight"
        torch.testing.assert_close(decoder_state[key[len("decoder."):]], checkpoint[copied[key]], rtol=0, atol=0)


def test_vm_unet_init_needs_a_vmamba_encoder():
    with pytest.raises(TypeError, match="not a VMamba"):
        VMUNet("test_s4nd_convnext", depths=(1, 1, 1, 1)).init_decoder_from_encoder()


# --- Swin-UMamba -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoder_name, encoder_kwargs, stem_to_encoder", [
    ("vmamba_tiny_v0", TINY_V0, True), ("test_s4nd_convnext", {}, False)])
def test_swin_umamba_forward_backward(encoder_name, encoder_kwargs, stem_to_encoder):
    torch.manual_seed(0)
    net = SwinUMamba(encoder_name, in_chans=1, num_classes=3, encoder_kwargs=encoder_kwargs)
    assert net.stem_to_encoder == stem_to_encoder
    assert net.deep_supervision_scales() == [(1, 1), (2, 2), (4, 4), (8, 8)]
    for size in SIZES:
        net.zero_grad()
        outputs = _train_step(net, size)
        assert [tuple(o.shape) for o in outputs] == [(2, 3, size[0] // s, size[1] // s) for s in (1, 2, 4, 8)]
        _assert_all_grads(net)
    net.decoder.deep_supervision = False
    assert net.eval()(torch.randn(1, 1, 64, 64)).shape == (1, 3, 64, 64)


def test_swin_umamba_official_default_widths():
    """feature_size defaults to (C_0 / 2, C_0..C_3): (48, 96, 192, 384, 768) on VMamba-T v0, built on the meta
    device."""
    with torch.device("meta"):
        net = SwinUMamba("vmamba_tiny_v0")
    assert net.feature_size == (48, 96, 192, 384, 768)
    assert net.encoder.model.stem.conv.kernel_size == (2, 2) and net.encoder.model.stem.conv.in_channels == 48


def test_swin_umamba_pretrained_encoder_and_freezing(tmp_path):
    """ImageNet weights load into the encoder except the replaced patchify conv; the stem norm keeps its bias and
    gets a weight of one (the official loader); freeze_encoder freezes all but the patch embedding."""
    path = tmp_path / "vmamba_tiny_v0.pth"
    checkpoint = _imagenet_checkpoint("vmamba_tiny_v0", path, **TINY_V0)
    checkpoint["stem.norm.weight"].uniform_(0.5, 1.5)
    checkpoint["stem.norm.bias"].uniform_(-1, 1)
    torch.save(checkpoint, path)
    net = SwinUMamba("vmamba_tiny_v0", in_chans=1, num_classes=2, pretrained=True, encoder_kwargs=dict(
        TINY_V0, pretrained_cfg_overlay=dict(file=str(path))))
    state = net.encoder.model.state_dict()
    assert state["stem.conv.weight"].shape == (16, 8, 2, 2)
    torch.testing.assert_close(state["stem.norm.weight"], torch.ones(16))
    torch.testing.assert_close(state["stem.norm.bias"], checkpoint["stem.norm.bias"], rtol=0, atol=0)
    for key, value in state.items():
        if not key.startswith("stem."):
            torch.testing.assert_close(value, checkpoint[key], rtol=0, atol=0)
    net.freeze_encoder(True)
    assert net.encoder_frozen
    trainable = {n for n, p in net.encoder.model.named_parameters() if p.requires_grad}
    assert trainable == {"stem.conv.weight", "stem.conv.bias", "stem.norm.weight", "stem.norm.bias"}
    assert all(p.requires_grad for n, p in net.named_parameters() if not n.startswith("encoder."))
    before = {n: p.clone() for n, p in net.encoder.model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    _train_step(net, (64, 64))
    optimizer.step()
    changed = {n for n, p in net.encoder.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    net.freeze_encoder(False)
    assert not net.encoder_frozen and all(p.requires_grad for p in net.parameters())


def test_swin_umamba_stem_to_encoder_needs_patchify():
    with pytest.raises(ValueError, match="patchify first conv"):
        SwinUMamba("test_vmamba", stem_to_encoder=True)


# --- UPerNet and Semantic FPN ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("net_cls", [UPerNet, SemanticFPN])
@pytest.mark.parametrize("encoder_name", ["test_simba", "test_plainmamba"])
def test_heads_any_input_size(net_cls, encoder_name):
    torch.manual_seed(0)
    widths = dict(channels=32) if net_cls is UPerNet else dict(fpn_channels=32, channels=16)
    net = net_cls(encoder_name, in_chans=1, num_classes=4, **widths)
    for size in [(64, 64), (72, 100)]:  # 72 x 100: not multiples of 32
        net.zero_grad()
        (logits,) = _train_step(net, size)
        assert logits.shape == (2, 4, *size)
        _assert_all_grads(net)


def test_heads_group_norm_batch_one():
    """GroupNorm heads train on batches of one (BatchNorm's 1x1 pooled branch cannot)."""
    net = UPerNet("test_plainmamba", in_chans=1, num_classes=2, channels=32, norm="group").train()
    assert net(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)
    with pytest.raises(ValueError, match="norm must be one of"):
        UPerNet("test_plainmamba", norm="layer")


# --- the registry ----------------------------------------------------------------------------------------------------

PLAN_2D = NetworkPlan(n_stages=3, features_per_stage=(4, 8, 16), kernel_sizes=((3, 3),) * 3,
                      strides=((1, 1), (2, 2), (2, 2)), n_conv_per_stage_encoder=(2, 2, 2),
                      n_conv_per_stage_decoder=(2, 2), dim=2)
PLAN_3D = NetworkPlan(n_stages=3, features_per_stage=(4, 8, 16), kernel_sizes=((3, 3, 3),) * 3,
                      strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)), n_conv_per_stage_encoder=(2, 2, 2),
                      n_conv_per_stage_decoder=(2, 2), dim=3)


@pytest.mark.parametrize("name, kwargs, outputs", [
    ("vm_unet", dict(encoder_name="test_s4nd_convnext", depths=(1, 1, 1, 1)), 1),
    ("swin_umamba", dict(encoder_name="test_s4nd_convnext"), 4),
    ("upernet", dict(encoder_name="test_s4nd_convnext", channels=16), 1),
    ("fpn", dict(encoder_name="test_s4nd_convnext", fpn_channels=16, channels=16), 1),
])
def test_registry(name, kwargs, outputs):
    net = build_seg_net(name, PLAN_2D, 2, 3, (64, 64), deep_supervision=True, **kwargs).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 2, 64, 64))
    scales = net.deep_supervision_scales((64, 64))
    assert isinstance(out, list) and len(out) == len(scales) == outputs
    assert [tuple(o.shape) for o in out] == [(1, 3, 64 // s[0], 64 // s[1]) for s in scales]
    net.decoder.deep_supervision = False
    with torch.no_grad():
        assert net(torch.randn(1, 2, 64, 64)).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="is 2-D; the plan is 3-D"):
        build_seg_net(name, PLAN_3D, 2, 3, (64, 64, 64), **kwargs)


@pytest.mark.parametrize("name", ["vm_unet", "swin_umamba"])
def test_registry_patch_multiple_of_32(name):
    with pytest.raises(ValueError, match="must be a multiple of 32"):
        build_seg_net(name, PLAN_2D, 1, 2, (64, 80), encoder_name="test_s4nd_convnext")
