"""ZigzagMamba2D against a per-direction loop over the reference scan, in the official form (only u reordered,
dt bias twice) and the corrected form; routes and per-direction scans against the official fixtures."""
import pytest
import torch
import torch.nn.functional as F

from tests.models.contract import load_case
from vssm.layers.zigzag_mixer import ZigzagMamba2D, zigzag_routes
from vssm.ops import selective_scan_ref


def snake_routes(height, width):
    """Row snake, its reverse, column snake, its reverse, with the move code (0 start, 1 right, 2 left, 3 up,
    4 down) of each step: plain Python, as the paper describes them."""
    rows = [r * width + (c if r % 2 == 0 else width - 1 - c) for r in range(height) for c in range(width)]
    cols = [(r if c % 2 == 0 else height - 1 - r) * width + c for c in range(width) for r in range(height)]
    routes = [rows, rows[::-1], cols, cols[::-1]]

    def move(a, b):
        (ra, ca), (rb, cb) = divmod(a, width), divmod(b, width)
        return {(0, 1): 1, (0, -1): 2, (-1, 0): 3, (1, 0): 4}[(rb - ra, cb - ca)]

    moves = [[0] + [move(a, b) for a, b in zip(route, route[1:])] for route in routes]
    return torch.tensor(routes), torch.tensor(moves)


def reference(mixer, x, reorder_params, dt_bias_twice):
    """Four explicit scans with selective_scan_ref, summed, gated, projected: (B, H, W, C) -> (B, H, W, C)."""
    batch, height, width, dim = x.shape
    xz = mixer.in_proj(x).permute(0, 3, 1, 2)
    u, z = xz.chunk(2, dim=1)
    u = F.silu(mixer.conv2d(u)).flatten(2)  # (B, E, L)
    dt, B, C = torch.split(mixer.x_proj(u.transpose(1, 2)), [mixer.dt_rank, mixer.d_state, mixer.d_state], -1)
    dt = (dt @ mixer.dt_proj.weight.t() + (mixer.dt_proj.bias if dt_bias_twice else 0)).transpose(1, 2)
    B, C = B.transpose(1, 2), C.transpose(1, 2)
    A = -torch.exp(mixer.A_log)
    routes, moves = snake_routes(height, width)
    y = 0
    for route, move in zip(routes, moves):
        token = mixer.direction_tokens[move].t()  # (N, L) by step
        if reorder_params:
            yk = selective_scan_ref(u[..., route], dt[..., route], A, B[..., route] + token, C[..., route], mixer.D,
                                    None, mixer.dt_proj.bias, True)
        else:
            yk = selective_scan_ref(u[..., route], dt, A, B + token, C, mixer.D, None, mixer.dt_proj.bias, True)
        y = y + torch.empty_like(yk).index_copy_(-1, route, yk)  # back to raster order
    y = y * F.silu(z.flatten(2))
    return mixer.out_proj(y.transpose(1, 2)).reshape(batch, height, width, dim)


def random_mixer(dim=16, d_state=8, seed=0, **kwargs):
    torch.manual_seed(seed)
    mixer = ZigzagMamba2D(dim, d_state=d_state, **kwargs)
    with torch.no_grad():
        mixer.direction_tokens.normal_()
        mixer.dt_proj.bias.uniform_(-3, 0)
        mixer.A_log.uniform_(-1, 2)
    return mixer


@pytest.mark.parametrize("reorder_params, dt_bias_twice", [(False, True), (True, False), (True, True), (False, False)])
@pytest.mark.parametrize("height, width", [(3, 4), (4, 3), (5, 5)])
def test_matches_loop_reference(reorder_params, dt_bias_twice, height, width):
    mixer = random_mixer(reorder_params=reorder_params, dt_bias_twice=dt_bias_twice)
    x = torch.randn(2, height, width, 16)
    torch.testing.assert_close(mixer(x), reference(mixer, x, reorder_params, dt_bias_twice), atol=2e-5, rtol=2e-5)


def test_each_correction_changes_the_output():
    x = torch.randn(1, 4, 5, 16)
    outputs = {}
    for options in [(False, True), (True, True), (False, False), (True, False)]:
        mixer = random_mixer(reorder_params=options[0], dt_bias_twice=options[1])
        outputs[options] = mixer(x)
    faithful = outputs[(False, True)]
    for options, out in outputs.items():
        if options != (False, True):
            assert (out - faithful).abs().max() > 1e-3, options


def test_direction_tokens_matter_and_get_gradients():
    mixer = random_mixer()
    x = torch.randn(2, 3, 5, 16)
    out = mixer(x)
    out.square().sum().backward()
    assert mixer.direction_tokens.grad.abs().sum() > 0
    with torch.no_grad():
        mixer.direction_tokens.zero_()
    assert (mixer(x) - out).abs().max() > 1e-3


@pytest.mark.parametrize("height, width", [(1, 1), (1, 6), (6, 1), (3, 4), (4, 3), (5, 6), (7, 5)])
def test_routes_are_the_official_snakes(height, width):
    routes, moves = zigzag_routes(height, width, torch.device("cpu"))
    expected_routes, expected_moves = snake_routes(height, width)
    assert torch.equal(routes, expected_routes) and torch.equal(moves, expected_moves)


@pytest.mark.parametrize("case", ["pm_l1style_c48_d3", "pm_l2style_c64_d2"])
def test_routes_and_direction_scans_match_fixture(case):
    """Layer 0 of the official model: scan orders, direction codes and every direction's scan output."""
    from vssm.models.plainmamba import convert_official

    meta, weights, io = load_case("plainmamba", case)
    height, width = io["feature.0"].shape[2:]
    routes, moves = zigzag_routes(height, width, torch.device("cpu"))
    for k in range(4):
        assert torch.equal(routes[k], io[f"scan_order.{k}"].long())
        assert torch.equal(moves[k], io[f"scan_direction.{k}"].long())
    sd = convert_official(weights)
    mixer = ZigzagMamba2D(io["patch_embed"].shape[-1])
    mixer.load_state_dict({k[len("blocks.0.token_mixer."):]: v for k, v in sd.items()
                           if k.startswith("blocks.0.token_mixer.")})
    norm = torch.nn.LayerNorm(mixer.out_proj.out_features)
    norm.load_state_dict({"weight": sd["blocks.0.norm.weight"], "bias": sd["blocks.0.norm.bias"]})
    tokens = io["patch_embed"] + sd["pos_embed"]  # layer-0 input (the fixtures use their own pos-embed grid)
    with torch.no_grad():
        scans = mixer.scan_directions(norm(tokens).reshape(-1, height, width, tokens.shape[-1]))  # raster order
    for k in range(4):
        expected = io[f"layer0.scan_out.{k}"]  # scan order
        torch.testing.assert_close(scans[:, k][..., routes[k]], expected, atol=1e-4, rtol=1e-4)


def test_torchscript_and_fx():
    mixer = random_mixer().eval()
    x = torch.randn(1, 3, 4, 16)
    torch.testing.assert_close(torch.jit.script(mixer)(x), mixer(x))
    from timm.layers import create_feature_extractor

    traced = create_feature_extractor(mixer, ["out_proj"])
    torch.testing.assert_close(traced(x)["out_proj"].reshape(x.shape), mixer(x))


def test_scan_inputs_are_channels_last_views(monkeypatch):
    """u, delta, z and B, C reach the scan channels-last (channels / states contiguous per token), as the Triton path
    reads them along any route."""
    import vssm.layers.zigzag_mixer as zigzag

    seen, scan = {}, zigzag.multi_scan

    def spy(u, delta, A, B, C, *args):
        seen.update(u=u, delta=delta, B=B, C=C, z=args[2])  # args: paths, D, z, ...
        return scan(u, delta, A, B, C, *args)

    mixer = random_mixer()
    x = torch.randn(2, 3, 5, 16)
    expected = mixer(x)
    monkeypatch.setattr(zigzag, "multi_scan", spy)
    torch.testing.assert_close(mixer(x), expected)
    assert all(seen[name].stride(-2) == 1 for name in ("u", "delta", "B", "C", "z"))
