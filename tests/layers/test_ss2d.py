"""SS2D (cross paths as VMamba, local routes as LocalVMamba, other kinds through ``path_kind``) against the official
formulations (explicit scans with flips, transposes and window reshapes, the reference selective scan, the official
un-scans), layouts, the channels-last hand-over to multi_scan, the Triton
path, gradients, TorchScript and FX."""
import math

import pytest
import torch
import torch.nn.functional as F

import vssm.layers.ss2d as ss2d_module
import vssm.ops.projected_scan as projected_scan
from vssm.layers.ss2d import SS2D, RouteChannelAttention, official_v_unscan
from vssm.ops import multi_scan, selective_scan_ref
from vssm.ops.projected_scan import scan_projections

from ..ops.scan_cases import KERNEL_DEVICE


def local_ss2d(dim, directions, **kwargs):
    """LocalVMamba's mixer: SS2D along local routes, merged by route channel attention."""
    return SS2D(dim, path_kind="local", directions=directions, **kwargs)


def randomise(module, seed=0):
    """Overwrite every parameter with values that make every path matter (A, D, dt bias in sensible ranges)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.empty(p.shape).uniform_(0.5, 8.0, generator=g).log())
            elif name.endswith("dt_proj_bias"):
                dt = torch.empty(p.shape).uniform_(math.log(0.01), math.log(0.5), generator=g).exp()
                p.copy_(dt + torch.log(-torch.expm1(-dt)))
            elif name.endswith(".D") or name == "D":
                p.copy_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=g))
            elif p.dim() == 1 and name.endswith("weight"):
                p.copy_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.1) / max(p.shape[-1], 1) ** 0.5)
    return module


# ---------------------------------------------------------------------------------------------------------------
# Official formulations, written out step by step (no scan_paths, no multi_scan).


def official_cross_scan(x):
    """VMamba's CrossScan of (B, d, H, W): row-major, column-major (W, H transpose), and both flipped."""
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def official_cross_merge(ys, height, width):
    """VMamba's CrossMerge of (B, 4, d, L): undo the flips and the transpose with (W, H) geometry, plain sum."""
    batch, _, d, length = ys.shape
    inv = ys[:, 2:4].flip(-1)
    col = ys[:, 1].view(batch, d, width, height).transpose(2, 3).reshape(batch, d, length)
    inv_col = inv[:, 1].view(batch, d, width, height).transpose(2, 3).reshape(batch, d, length)
    return ys[:, 0] + inv[:, 0] + col + inv_col


def official_local_scan(x, name):
    """LocalMamba's MultiScan.scan on (B, d, H, W) -> (B, d, Lk)."""
    batch, d, height, width = x.shape
    flip = name.endswith("_flip")
    route = name.split("_")[0]
    if route == "h":
        seq = x.flatten(2)
    elif route == "v":
        seq = x.transpose(2, 3).flatten(2)
    else:
        w = int(route[1:])
        hg, wg = -(-height // w), -(-width // w)
        x = F.pad(x, (0, wg * w - width, 0, hg * w - height))
        seq = x.view(batch, d, hg, w, wg, w).permute(0, 1, 2, 4, 3, 5).reshape(batch, d, -1)
    return seq.flip(-1) if flip else seq


def official_local_reverse(y, name, height, width, correct_v=False):
    """LocalMamba's MultiScan.reverse (B, d, Lk) -> (B, d, H*W), including its (H, W) reshape of the 'v' routes
    (``correct_v``: the true inverse, a (W, H) reshape)."""
    batch, d, _ = y.shape
    route = name.split("_")[0]
    if name.endswith("_flip"):
        y = y.flip(-1)
    if route == "h":
        return y
    if route == "v" and correct_v:
        return y.view(batch, d, width, height).transpose(2, 3).reshape(batch, d, -1)
    if route == "v":  # rearrange 'b d (h w) -> b d (w h)': correct only when H == W
        return y.view(batch, d, height, width).transpose(2, 3).reshape(batch, d, -1)
    w = int(route[1:])
    hg, wg = -(-height // w), -(-width // w)
    y = y.view(batch, d, hg, wg, w, w).permute(0, 1, 2, 4, 3, 5).reshape(batch, d, hg * w, wg * w)
    return y[:, :, :height, :width].reshape(batch, d, -1)


def official_routes_scan(mixer, x, sequences):
    """Scan each (B, d, Lk) sequence with its direction's parameters: x_proj -> (dt, B, C) -> dt_proj -> S6."""
    outs = []
    for k, seq in enumerate(sequences):
        x_dbl = torch.einsum("bdl,cd->bcl", seq, mixer.x_proj_weight[k])
        dt, B, C = torch.split(x_dbl, [mixer.dt_rank, mixer.d_state, mixer.d_state], dim=1)
        delta = torch.einsum("brl,dr->bdl", dt, mixer.dt_proj_weight[k])
        outs.append(selective_scan_ref(seq, delta, -torch.exp(mixer.A_log[k]), B, C, mixer.D[k], None,
                                       mixer.dt_proj_bias[k], True))
    return outs


def official_ss2d(mixer, x, local_merge=None):
    """The official SS2D forward (channel-first input) from our parameters."""
    d = mixer.d_inner
    xz = F.conv2d(x, mixer.in_proj.weight[:, :, None, None])
    xs, z = (xz[:, :d], F.silu(xz[:, d:])) if mixer.gated else (xz, None)
    xs = F.silu(mixer.conv2d(xs))
    height, width = xs.shape[-2:]
    y = local_merge(xs) if local_merge is not None else official_cross_merge(
        torch.stack(official_routes_scan(mixer, xs, official_cross_scan(xs).unbind(1)), 1), height, width)
    y = F.layer_norm(y.transpose(1, 2), (d,), mixer.out_norm.weight, mixer.out_norm.bias, 1e-5)
    y = y.transpose(1, 2).unflatten(-1, (height, width))
    if z is not None:
        y = y * z
    return F.conv2d(y, mixer.out_proj.weight[:, :, None, None])


def official_bi_attn(attn, x):
    """LocalMamba's BiAttn on one route (B, L, d)."""
    g = F.layer_norm(x, x.shape[-1:], attn.norm.weight, attn.norm.bias, 1e-5).mean(1, keepdim=True)
    g = torch.sigmoid(attn.channel_select(F.gelu(attn.global_reduce(g))))
    return x * g


def official_local_merge(mixer, correct_v=False):
    def merge(xs):
        height, width = xs.shape[-2:]
        seqs = [official_local_scan(xs, name) for name in mixer.directions]
        outs = official_routes_scan(mixer, xs, seqs)
        outs = [official_local_reverse(y, name, height, width, correct_v) for y, name in zip(outs, mixer.directions)]
        return sum(official_bi_attn(mixer.attn, y.transpose(1, 2)) for y in outs).transpose(1, 2)
    return merge


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gated,d_state,ratio", [(True, 4, 2.0), (False, 1, 1.0)])
@pytest.mark.parametrize("shape", [(6, 5), (4, 4)])
def test_ss2d_matches_official_cross_scan(gated, d_state, ratio, shape):
    """v0 (z-gated, conv bias) and v2 (no z) on non-square and square maps."""
    mixer = randomise(SS2D(12, d_state=d_state, ssm_ratio=ratio, gated=gated, conv_bias=gated, channel_first=True))
    x = torch.randn(2, 12, *shape)
    with torch.no_grad():
        torch.testing.assert_close(mixer.eval()(x), official_ss2d(mixer, x), atol=1e-5, rtol=1e-5)


def test_ss2d_direction_order_matters():
    """Each parameter set belongs to its path: swapping the row-major and column-major sets changes the output (the
    D skip, a sum over directions that ignores their order, is zeroed to expose the scans)."""
    torch.manual_seed(0)
    mixer = randomise(SS2D(12, d_state=4)).eval()
    x = torch.randn(1, 5, 7, 12)
    with torch.no_grad():
        mixer.D.zero_()
        ref = mixer(x)
        mixer.x_proj_weight.copy_(mixer.x_proj_weight[[1, 0, 2, 3]])
        assert (mixer(x) - ref).abs().max() > 0.05 * ref.abs().max()


@pytest.mark.parametrize("make", [
    lambda cf: SS2D(12, d_state=2, gated=True, channel_first=cf),
    lambda cf: SS2D(12, d_state=1, gated=False, channel_first=cf),
    lambda cf: local_ss2d(12, ["v", "h_flip", "w2", "w7_flip"], d_state=2, channel_first=cf),
])
def test_channel_first_and_last_agree(make):
    first, last = randomise(make(True)).eval(), make(False).eval()
    last.load_state_dict(first.state_dict())
    x = torch.randn(2, 12, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), first(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channel_first", [False, True])
def test_mixers_hand_channels_last_views_to_multi_scan(monkeypatch, channel_first):
    """One fused multi_scan call per mixer (the composed path of projected_multi_scan, which the CPU runs); x, delta,
    B and C arrive as views whose fastest axis is the channel (or state) axis, so the GPU kernel reads whole channel
    rows per token along any path."""
    calls = []
    real = projected_scan.multi_scan

    def spy(u, delta, A, B, C, paths, *rest):
        calls.append((tuple(paths.shape), rest[4], u.stride(1), delta.stride(2), B.stride(2), C.stride(2),
                      u._base is not None, delta._base is not None))
        return real(u, delta, A, B, C, paths, *rest)

    monkeypatch.setattr(projected_scan, "multi_scan", spy)
    shape = (1, 8, 3, 5) if channel_first else (1, 3, 5, 8)
    SS2D(8, d_state=1, gated=False, channel_first=channel_first)(torch.randn(shape))
    local_ss2d(8, ["h", "v_flip", "w2", "w7_flip"], channel_first=channel_first)(torch.randn(shape))
    assert calls == [((4, 15), "sum", 1, 1, 1, 1, True, True), ((4, 49), "none", 1, 1, 1, 1, True, True)]


DIRECTION_SETS = [["h", "h_flip", "w7", "w7_flip"], ["h_flip", "v_flip", "w2", "w2_flip"], ["h", "v", "v_flip", "w2"]]


@pytest.mark.parametrize("directions", DIRECTION_SETS)
@pytest.mark.parametrize("shape", [(7, 7), (4, 4), (5, 5)])
def test_local_ss2d_matches_official_routes(directions, shape):
    """Square maps; window padding (w7 on 4x4 and 5x5, w2 on 7x7 and 5x5) is scanned as zero steps, as upstream."""
    mixer = randomise(local_ss2d(8, directions, d_state=4, channel_first=True)).eval()
    x = torch.randn(2, 8, *shape)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), official_ss2d(mixer, x, official_local_merge(mixer)),
                                   atol=1e-5, rtol=1e-5)


def test_window_padding_steps_are_scanned():
    """w2 on a 5x5 map is a 6x6 route with 11 zero steps, scanned like tokens (the state decays across them, as
    upstream); skipping them would give other numbers."""
    directions = ["w2", "w2_flip"]
    paths = ss2d_module.grid_paths("local", 5, 5, directions, torch.device("cpu"))
    assert paths.shape == (2, 36) and (paths == -1).sum(1).tolist() == [11, 11]
    compact = torch.stack([row[row >= 0] for row in paths])
    mixer = randomise(local_ss2d(8, directions, d_state=4)).eval()
    x = torch.randn(1, 16, 5, 5).contiguous(memory_format=torch.channels_last)  # conv features, d_inner = 16
    with torch.no_grad():
        u = x.flatten(2)
        delta, B, C = scan_projections(u.transpose(1, 2), mixer.x_proj_weight, mixer.dt_proj_weight)

        def scan(route_paths):
            return multi_scan(u, delta, -torch.exp(mixer.A_log), B, C, route_paths, mixer.D, None, mixer.dt_proj_bias,
                              True, "none", False, False)

        padded = scan(paths)
        torch.testing.assert_close(mixer.scan(x), mixer.attn(padded.transpose(2, 3)))
        assert (padded - scan(compact)).abs().max() > 1e-3


@pytest.mark.parametrize("directions", [["v", "h", "w2", "v_flip"], ["v_flip", "h_flip", "w7", "w2_flip"]])
def test_local_ss2d_v_unscan_faithful_and_corrected(directions):
    """Non-square: the default reproduces the official scrambled 'v' un-scan; the option gives the true inverse."""
    faithful = randomise(local_ss2d(8, directions, d_state=4, channel_first=True)).eval()
    corrected = local_ss2d(8, directions, d_state=4, reproduce_v_unscan_bug=False, channel_first=True).eval()
    corrected.load_state_dict(faithful.state_dict())
    x = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(faithful(x), official_ss2d(faithful, x, official_local_merge(faithful)),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(corrected(x), official_ss2d(corrected, x, official_local_merge(corrected, True)),
                                   atol=1e-5, rtol=1e-5)
        assert (faithful(x) - corrected(x)).abs().max() > 1e-3
        square = torch.randn(2, 8, 6, 6)
        torch.testing.assert_close(faithful(square), corrected(square))


def test_official_v_unscan_matches_official_reshape():
    height, width = 3, 5
    values = torch.randn(2, 3, height * width, 4)  # (B, K, L, C) correctly un-scanned routes
    names = ["v", "h", "v_flip"]
    out = official_v_unscan(values, names, height, width)
    for k, name in enumerate(names):
        grid = values[:, k].transpose(1, 2).unflatten(-1, (height, width))
        seq = official_local_scan(grid, name)  # the route's sequence
        torch.testing.assert_close(out[:, k].transpose(1, 2), official_local_reverse(seq, name, height, width))
    torch.testing.assert_close(official_v_unscan(values[:, :, :9], names, 3, 3), values[:, :, :9])


def test_route_channel_attention_is_per_route_then_sum():
    attn = randomise(RouteChannelAttention(16))
    routes = torch.randn(2, 3, 10, 16)
    expected = sum(official_bi_attn(attn, routes[:, k]) for k in range(3))
    torch.testing.assert_close(attn(routes), expected)


@pytest.mark.parametrize("make", [lambda: SS2D(8, d_state=2), lambda: local_ss2d(8, ["h", "v", "w2", "w7_flip"])])
def test_gradients_reach_every_parameter(make):
    mixer = make()
    x = torch.randn(2, 5, 6, 8, requires_grad=True)
    mixer(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    missing = [n for n, p in mixer.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_bf16_autocast_keeps_dtype_and_agrees():
    mixer = randomise(SS2D(8, d_state=2)).eval()
    x = torch.randn(1, 4, 6, 8)
    with torch.no_grad():
        ref = mixer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = mixer(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.1)


@pytest.mark.parametrize("make", [lambda: SS2D(8, d_state=2, gated=False),
                                  lambda: local_ss2d(8, ["h", "v_flip", "w2", "w7"], d_state=2)])
def test_triton_path_matches_torch_path(monkeypatch, make):
    """The Triton kernels (the CPU interpreter when there is no GPU) on the mixers' strided channels-last views,
    behind the fused projections + scan node: outputs and all grads."""
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    mixer = randomise(make()).to(KERNEL_DEVICE)
    x = torch.randn(1, 3, 4, 8, device=KERNEL_DEVICE, requires_grad=True)
    fused = []
    real = projected_scan._FusedProjectedScan.apply
    monkeypatch.setattr(projected_scan._FusedProjectedScan, "apply", lambda *a: fused.append(1) or real(*a))
    results = []
    for backend in ("torch", "triton"):
        monkeypatch.setenv("VSSM_SCAN_BACKEND", backend)
        y = mixer(x)
        results.append((y, torch.autograd.grad(y.square().sum(), [x, *mixer.parameters()])))
    assert len(fused) == 1  # the triton run
    (y_torch, g_torch), (y_triton, g_triton) = results
    torch.testing.assert_close(y_triton, y_torch, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_triton, g_torch):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("make", [lambda: SS2D(8, d_state=2), lambda: local_ss2d(8, ["h", "v_flip", "w2", "w7"])])
def test_torchscript_and_fx(make):
    from timm.models._features_fx import create_feature_extractor

    mixer = randomise(make()).eval()
    x = torch.randn(1, 5, 3, 8)
    with torch.no_grad():
        ref = mixer(x)
        torch.testing.assert_close(torch.jit.script(mixer)(x), ref)
        traced = create_feature_extractor(mixer, ["out_proj"])
        assert torch.equal(traced(x)["out_proj"], ref)


def test_path_kind_is_an_argument():
    """The scan order is data: local routes (h, v, h_flip, v_flip) merged by a sum are the cross scan, with the same
    parameters, on a non-square map."""
    cross = randomise(SS2D(8, d_state=2)).eval()
    local = SS2D(8, d_state=2, path_kind="local", directions=["h", "v", "h_flip", "v_flip"], merge="sum").eval()
    local.load_state_dict(cross.state_dict())
    x = torch.randn(2, 3, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(local(x), cross(x))
    for kind, k in (("raster", 1), ("bidirectional", 2), ("zigzag", 4)):
        mixer = SS2D(8, d_state=2, path_kind=kind)
        assert mixer.num_directions == k and mixer.A_log.shape == (k, 16, 2)
        assert mixer(x).shape == x.shape


def test_path_kind_errors():
    with pytest.raises(ValueError, match="path_kind"):
        SS2D(8, path_kind="spiral")
    with pytest.raises(ValueError, match="directions"):
        SS2D(8, directions=["h", "v"])
    with pytest.raises(ValueError, match="directions"):
        SS2D(8, path_kind="local")
    with pytest.raises(ValueError, match="merge"):
        SS2D(8, merge="mean")


def test_a_log_and_d_are_float32_under_dtype():
    mixer = local_ss2d(8, ["h", "w2"], dtype=torch.bfloat16)
    assert mixer.A_log.dtype == mixer.D.dtype == torch.float32
    assert mixer.in_proj.weight.dtype == mixer.dt_proj_bias.dtype == torch.bfloat16
