"""projected_multi_scan: the fused autograd node (Triton kernels, interpreter on CPU) against the composed PyTorch ops
in float64, forward and every gradient, for cross and padded local paths, both merges and both layouts; bf16 autocast;
no-grad calls; the composed form against explicit per-direction projections; bad shapes, dtypes and devices."""
import pytest
import torch
import torch.nn.functional as F

import vssm.ops.projected_scan as projected_scan
from vssm.ops import multi_scan_ref, projected_multi_scan, projected_multi_scan_composed, scan_paths

from .scan_cases import KERNEL_DEVICE, backend, rel_err

PARAMS = ("x", "x_proj_weight", "dt_proj_weight", "dt_proj_bias", "A_log", "D")

CASES = [  # kind, grid, options, merge, N, R, batch, channels-last x
    ("cross", (3, 5), {}, "sum", 1, 2, 1, True),
    ("cross", (4, 4), {}, "sum", 4, 3, 2, False),
    ("local", (5, 3), dict(directions=("h", "v_flip", "w2", "w3_flip")), "none", 2, 2, 2, True),
    ("local", (7, 7), dict(directions=("h_flip", "v", "w7")), "sum", 16, 1, 1, True),
]


def _inputs(paths, grid, d_state, rank, batch, channels_last, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = paths.shape[0]
    length = grid[0] * grid[1]
    x = torch.randn(batch, length, dim, generator=g).transpose(1, 2) if channels_last else torch.randn(
        batch, dim, length, generator=g)
    return dict(x=x, x_proj_weight=torch.randn(k, rank + 2 * d_state, dim, generator=g) / dim ** 0.5,
                dt_proj_weight=torch.randn(k, dim, rank, generator=g) / rank ** 0.5,
                dt_proj_bias=torch.empty(k, dim).uniform_(-4.0, -1.0, generator=g),
                A_log=torch.empty(k, dim, d_state).uniform_(-1.0, 1.5, generator=g),
                D=torch.randn(k, dim, generator=g))


def _on_device(inputs: dict) -> dict:
    return {k: v.to(KERNEL_DEVICE) for k, v in inputs.items()}  # keeps x's layout


def _run(fn, inputs, paths, merge, weights, to64=False):
    leaves = {k: (v.double() if to64 else v.detach().clone()).requires_grad_(True) for k, v in inputs.items()}
    if not to64:  # keep x's layout
        leaves["x"] = inputs["x"].detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    y = fn(*leaves.values(), paths, merge)
    grads = torch.autograd.grad((y.double() * weights).sum(), list(leaves.values()))
    return y.detach(), dict(zip(leaves, grads)), y.grad_fn


@pytest.mark.parametrize("kind,grid,opts,merge,d_state,rank,batch,channels_last", CASES,
                         ids=[f"{c[0]}-{c[3]}-N{c[4]}" for c in CASES])
def test_fused_matches_composed_float64(kind, grid, opts, merge, d_state, rank, batch, channels_last):
    pytest.importorskip("triton")
    paths = scan_paths.build(kind, grid, **opts, device=KERNEL_DEVICE)
    inputs = _on_device(_inputs(paths, grid, d_state, rank, batch, channels_last))
    length = grid[0] * grid[1]
    out_shape = (batch, 6, length) if merge == "sum" else (batch, paths.shape[0], 6, length)
    weights = torch.randn(out_shape, dtype=torch.float64, device=KERNEL_DEVICE)
    with backend("torch"):
        y_ref, g_ref, _ = _run(projected_multi_scan_composed, inputs, paths, merge, weights, to64=True)
    with backend("triton"):
        y, grads, grad_fn = _run(projected_multi_scan, inputs, paths, merge, weights)
    assert type(grad_fn).__name__ == "_FusedProjectedScanBackward"
    assert y.shape == out_shape and y.dtype == torch.float32
    assert rel_err(y, y_ref) < 2e-5
    for name in PARAMS:
        assert grads[name].shape == inputs[name].shape and grads[name].dtype == torch.float32, name
        assert rel_err(grads[name], g_ref[name]) < 1e-4, name


@pytest.mark.parametrize("grad", [True, False], ids=["block-diagonal", "no-grad-per-direction"])
def test_composed_matches_explicit_per_direction_projections(grad):
    """The composed form's dt projections (one block-diagonal GEMM with gradients, K GEMMs without) are the K
    projections, each direction on its own weights."""
    paths = scan_paths.build("cross", (3, 4))
    inputs = {k: v.double() for k, v in _inputs(paths, (3, 4), 2, 3, 2, False).items()}
    x, x_proj, dt_proj = inputs["x"], inputs["x_proj_weight"], inputs["dt_proj_weight"]
    deltas, Bs, Cs = [], [], []
    for k in range(4):
        dt_low, B, C = torch.split(torch.einsum("rd,bdl->brl", x_proj[k], x), [3, 2, 2], dim=1)
        deltas.append(torch.einsum("dr,brl->bdl", dt_proj[k], dt_low))
        Bs.append(B)
        Cs.append(C)
    expected = multi_scan_ref(x, torch.stack(deltas, 1), -inputs["A_log"].exp(), torch.stack(Bs, 1),
                              torch.stack(Cs, 1), paths, inputs["D"], None, inputs["dt_proj_bias"], True, "sum")
    with backend("torch"), torch.set_grad_enabled(grad):
        actual = projected_multi_scan_composed(*inputs.values(), paths, "sum")
    assert rel_err(actual, expected) < 1e-8  # the chunked float64 scan against the sequential one


def test_fused_under_bf16_autocast_matches_composed():
    """Under autocast both run the GEMMs in bf16 and return x's dtype; the gradients reach the float32 parameters."""
    pytest.importorskip("triton")
    paths = scan_paths.build("cross", (3, 5), device=KERNEL_DEVICE)
    inputs = _on_device(_inputs(paths, (3, 5), 1, 2, 2, True))
    inputs["x"] = inputs["x"].bfloat16()
    weights = torch.randn(2, 6, 15, dtype=torch.float64, device=KERNEL_DEVICE)
    results = []
    for fn in (projected_multi_scan_composed, projected_multi_scan):
        with backend("triton"), torch.autocast(KERNEL_DEVICE, dtype=torch.bfloat16):
            results.append(_run(fn, inputs, paths, "sum", weights))
    (y_ref, g_ref, _), (y, grads, grad_fn) = results
    assert type(grad_fn).__name__ == "_FusedProjectedScanBackward" and y.dtype == torch.bfloat16
    assert rel_err(y, y_ref) < 1e-2
    for name in PARAMS:
        assert grads[name].dtype == inputs[name].dtype, name
        assert rel_err(grads[name], g_ref[name]) < 3e-2, name


def test_no_grad_call_builds_no_graph_and_saves_nothing(monkeypatch):
    pytest.importorskip("triton")
    paths = scan_paths.build("cross", (3, 5), device=KERNEL_DEVICE)
    inputs = {k: v.requires_grad_(True) for k, v in _on_device(_inputs(paths, (3, 5), 2, 2, 1, True)).items()}
    saved = []
    monkeypatch.setattr(torch.autograd.function.FunctionCtx, "save_for_backward", lambda ctx, *t: saved.append(t))
    with backend("triton"), torch.no_grad():
        y = projected_multi_scan(*inputs.values(), paths, "sum")
        assert y.grad_fn is None and not saved
        expected = projected_multi_scan_composed(*inputs.values(), paths, "sum")
    assert rel_err(y, expected) < 2e-5


def test_torch_backend_takes_the_composed_path():
    paths = scan_paths.build("cross", (2, 3))
    inputs = {k: v.requires_grad_(True) for k, v in _inputs(paths, (2, 3), 1, 1, 1, True).items()}
    with backend("torch"):
        y = projected_multi_scan(*inputs.values(), paths, "sum")
    assert type(y.grad_fn).__name__ == "_EagerScanBackward"  # multi_scan's node: the composed form's last op


@pytest.mark.parametrize("change,match", [
    (dict(merge="mean"), "merge must be one of"),
    (dict(x=torch.randn(1, 6, 3, 5)), "x must be a \\(batch, dim, L\\)"),
    (dict(x_proj_weight=torch.randn(4, 4, 5)), "x_proj_weight must be \\(K, R \\+ 2N, dim=6\\)"),
    (dict(dt_proj_weight=torch.randn(4, 6, 3)), "dt_proj_weight must be \\(K=4, dim=6, R\\) with R \\+ 2N = 4"),
    (dict(A_log=torch.randn(4, 6, 2)), "A_log must be \\(K, dim, N\\) = \\(4, 6, 1\\)"),
    (dict(D=torch.randn(6)), "D must be \\(K, dim\\) = \\(4, 6\\)"),
    (dict(paths=torch.zeros(2, 15, dtype=torch.long)), "paths must be a \\(K=4, Lp\\) index tensor"),
])
def test_bad_input_names_the_argument(change, match):
    paths = scan_paths.build("cross", (3, 5))
    args = dict(_inputs(paths, (3, 5), 1, 2, 1, True), paths=paths, merge="sum")
    args.update(change)
    with pytest.raises(ValueError, match=match):
        projected_multi_scan(**args)


@pytest.mark.parametrize("change,error,match", [
    (dict(x=torch.randint(0, 5, (1, 6, 15))), TypeError, "projected_multi_scan: x must be float32"),
    (dict(A_log=torch.randn(4, 6, 1, dtype=torch.complex64)), TypeError, "A_log must be real"),
    (dict(D=torch.ones(4, 6, dtype=torch.long)), TypeError, "D must be float32"),
    (dict(x_proj_weight="weights"), TypeError, "x_proj_weight must be a torch.Tensor"),
    (dict(D=torch.ones(4, 6, device="meta")), ValueError, "all tensors must be on one device"),
])
def test_bad_dtypes_and_devices_name_the_argument(change, error, match):
    paths = scan_paths.build("cross", (3, 5))
    args = dict(_inputs(paths, (3, 5), 1, 2, 1, True), paths=paths, merge="sum")
    args.update(change)
    with pytest.raises(error, match=match):
        projected_multi_scan(**args)


def test_block_diagonal_applies_each_direction_to_its_own_slice():
    weight = torch.randn(3, 5, 2)
    dt_low = torch.randn(7, 3, 2)
    out = F.linear(dt_low.flatten(1), projected_scan.block_diagonal(weight)).view(7, 3, 5)
    torch.testing.assert_close(out, torch.einsum("kdr,tkr->tkd", weight, dt_low))
