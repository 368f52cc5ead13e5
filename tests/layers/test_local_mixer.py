"""LocalVim's routing (gather-based route / un-route autograd nodes) and mixer."""
import pytest
import torch

from vssm.layers.local_mixer import LocalMambaMixer, route_tables, route_tokens, unroute_tokens


@pytest.mark.parametrize("grid,directions", [((4, 4), ("h", "v_flip")), ((5, 3), ("w2", "h_flip", "w3_flip"))])
def test_routing_gradients_match_indexing(grid, directions):
    """Route / un-route against autograd through plain indexing, with window padding on the 5 x 3 grid."""
    height, width = grid
    gather, unscan = route_tables(directions, height, width, torch.device("cpu"))
    assert gather.shape[1] >= height * width
    tokens = torch.randn(2, 3, height * width, dtype=torch.float64, requires_grad=True)
    routes_in = torch.randn(2, len(directions), 3, gather.shape[1], dtype=torch.float64, requires_grad=True)
    routes = route_tokens(tokens, list(directions), height, width)
    unrouted = unroute_tokens(routes_in, list(directions), height, width)
    ref_routes = torch.nn.functional.pad(tokens, (0, 1))[:, :, gather].transpose(1, 2)
    ref_unrouted = routes_in.gather(-1, unscan[None, :, None].expand(2, len(directions), 3, -1))
    assert torch.equal(routes, ref_routes) and torch.equal(unrouted, ref_unrouted)
    w_routes, w_unrouted = torch.randn_like(routes), torch.randn_like(unrouted)
    grads = torch.autograd.grad((routes * w_routes).sum() + (unrouted * w_unrouted).sum(), [tokens, routes_in])
    expected = torch.autograd.grad((ref_routes * w_routes).sum() + (ref_unrouted * w_unrouted).sum(),
                                   [tokens, routes_in])
    for actual, reference in zip(grads, expected):
        torch.testing.assert_close(actual, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grid", [(4, 4), (5, 3)])
def test_route_then_unroute_is_identity(grid):
    height, width = grid
    directions = ["h", "h_flip", "v", "v_flip", "w2", "w2_flip", "w7", "w7_flip"]
    tokens = torch.randn(2, 3, height * width)
    routes = route_tokens(tokens, directions, height, width)  # (B, K, C, Lp)
    assert routes.shape[:3] == (2, len(directions), 3)
    back = unroute_tokens(routes, directions, height, width)  # (B, K, C, L)
    assert torch.equal(back, tokens[:, None].expand_as(back))


@pytest.mark.parametrize("middle_cls_token", [False, True])
def test_mixer_shapes_gradients_and_tied_a(middle_cls_token):
    torch.manual_seed(0)
    mixer = LocalMambaMixer(16, ["h", "v_flip", "w2"], d_state=4, middle_cls_token=middle_cls_token)
    mixer.reset_parameters(depth=2)
    assert mixer.num_directions == 3 and mixer.A_log.shape == (3, 32, 4)
    tokens = 4 * 5 + int(middle_cls_token)
    x = torch.randn(2, tokens, 16, requires_grad=True)
    y = mixer(x, [4, 5])
    assert y.shape == x.shape
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mixer.parameters())
    with torch.no_grad():  # tie_route_A: the routes run with the mean of the copies
        mixer.A_log.add_(0.1 * torch.randn_like(mixer.A_log))
        before = mixer(x, [4, 5])
        mixer.A_log.copy_(mixer.A_log.mean(0, keepdim=True).expand_as(mixer.A_log).clone())
        torch.testing.assert_close(mixer(x, [4, 5]), before)
