"""multi_scan against its gather + selective_scan_ref + scatter reference, forward and backward, for every path kind,
on the PyTorch and the Triton (interpreter on CPU) backends; bad input."""
import pytest
import torch

from vssm.ops import multi_scan, multi_scan_ref, scan_paths

from .scan_cases import KERNEL_DEVICE, backend, kernel_device, rel_err

CASES = [
    ("raster", (3, 5), {}),
    ("bidirectional", (13,), {}),
    ("cross", (3, 5), {}),
    ("zigzag", (4, 3), {}),
    ("local", (5, 3), dict(directions=("h", "v_flip", "w2", "w3_flip"))),
    ("spatiotemporal", (2, 2, 3), {}),
]


def _inputs(paths, length, per_direction_x, params_at_step, d_state=3, batch=2, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    num_directions, steps = paths.shape
    ld = steps if params_at_step else length
    x_shape = (batch, num_directions, dim, length) if per_direction_x else (batch, dim, length)
    return dict(x=torch.randn(*x_shape, generator=g),
                delta=torch.randn(batch, num_directions, dim, ld, generator=g) * 0.5,
                A=-torch.rand(num_directions, dim, d_state, generator=g) - 0.2,
                B=torch.randn(batch, num_directions, d_state, ld, generator=g),
                C=torch.randn(batch, num_directions, d_state, ld, generator=g),
                D=torch.randn(num_directions, dim, generator=g),
                z=torch.randn(batch, dim, length, generator=g),
                delta_bias=torch.randn(num_directions, dim, generator=g))


def _run(fn, inputs, paths, weights, to64, **kwargs):
    """fn on ``kernel_device()`` (layouts kept); outputs and gradients back on the CPU."""
    device = kernel_device()
    leaves = {k: (v.double() if to64 else v.clone()).to(device).requires_grad_(True) for k, v in inputs.items()}
    y, last = fn(**leaves, paths=paths.to(device), delta_softplus=True, return_last_state=True, **kwargs)
    ((y.double() * weights.to(device)).sum() + last.double().sum()).backward()
    return y.detach().cpu(), last.detach().cpu(), {k: v.grad.cpu() for k, v in leaves.items()}


@pytest.mark.parametrize("name", ["torch", "triton", "triton-seq"])
@pytest.mark.parametrize("kind,shape,opts", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("per_direction_x,params_at_step,merge", [
    (False, False, "sum"), (True, False, "none"), (False, True, "sum")])
def test_multi_scan_matches_reference(name, kind, shape, opts, per_direction_x, params_at_step, merge):
    paths = scan_paths.build(kind, shape, **opts)
    length = int(torch.tensor(shape).prod())
    inputs = _inputs(paths, length, per_direction_x, params_at_step)
    out_shape = (2, 4, length) if merge == "sum" else (2, paths.shape[0], 4, length)
    weights = torch.randn(out_shape, dtype=torch.float64)
    y_ref, last_ref, g_ref = _run(multi_scan_ref, inputs, paths, weights, True, merge=merge,
                                  params_at_step=params_at_step)
    with backend(name):
        y, last, grads = _run(multi_scan, inputs, paths, weights, False, merge=merge, params_at_step=params_at_step)
    assert y.shape == out_shape and y.dtype == torch.float32
    assert rel_err(y, y_ref) < 2e-5 and rel_err(last, last_ref) < 2e-5
    for key, ref in g_ref.items():
        assert grads[key].shape == ref.shape
        assert rel_err(grads[key], ref) < 1e-4, key


def test_reference_is_the_sum_of_single_direction_scans():
    """Direction k of the reference equals a plain selective scan of the gathered sequence, scattered back."""
    from vssm.ops import selective_scan_ref

    paths = scan_paths.build("cross", (3, 4))
    inputs = _inputs(paths, 12, False, False)
    per_dir = multi_scan_ref(**inputs, paths=paths, delta_softplus=True, merge="none")
    for k, path in enumerate(paths):
        y = selective_scan_ref(inputs["x"][..., path], inputs["delta"][:, k][..., path], inputs["A"][k],
                               inputs["B"][:, k][..., path], inputs["C"][:, k][..., path], inputs["D"][k],
                               inputs["z"][..., path], inputs["delta_bias"][k], True)
        torch.testing.assert_close(per_dir[:, k][..., path], y)
    torch.testing.assert_close(per_dir.sum(1), multi_scan_ref(**inputs, paths=paths, delta_softplus=True))


def test_padding_steps_are_zero_tokens():
    """-1 steps of a local path are zero inputs that still decay the state (LocalVMamba's padded windows)."""
    paths = scan_paths.build("local", (3, 3), directions=("w2",))  # 4x4 padded window grid, 7 padding steps
    assert (paths < 0).sum() == 7
    inputs = _inputs(paths, 9, False, False, seed=1)
    with backend("torch"):
        y = multi_scan(**inputs, paths=paths, delta_softplus=True)
    torch.testing.assert_close(y, multi_scan_ref(**inputs, paths=paths, delta_softplus=True))
    dense = scan_paths.build("raster", (9,))
    assert not torch.allclose(y, multi_scan_ref(**inputs, paths=dense, delta_softplus=True))


def _matches_reference(name, inputs, paths, weights):
    """multi_scan on backend ``name`` against the float64 reference (merged output, last state, every gradient);
    returns the output and the gradients."""
    y_ref, last_ref, g_ref = _run(multi_scan_ref, inputs, paths, weights, True)
    with backend(name):
        y, last, grads = _run(multi_scan, inputs, paths, weights, False)
    assert rel_err(y, y_ref) < 2e-5 and rel_err(last, last_ref) < 2e-5
    for key, ref in g_ref.items():
        assert rel_err(grads[key], ref) < 1e-4, key
    return y, grads


@pytest.mark.parametrize("states_middle", [True, False])
@pytest.mark.parametrize("chunk,block_d", [(2, 8), (4, 32), (8, 8), (16, 4)])
def test_backward_channel_sums_on_chunk_and_tile_shapes(chunk, block_d, states_middle):
    """The backward reduce-scatters dB and dC over a channel tile that lies in one group, each lane adding the sums
    of its own steps at their path positions: chunks shorter than the tile (several lanes hold a step's sums, one
    adds them), as long, and longer (a lane adds several steps), in both tile layouts, with a ragged last chunk and
    ragged states (N = 3 in tiles of 4); [4, 32 channels, 4 states] tiles have channels in registers and sum in
    full."""
    from vssm.ops.triton.scan_plan import TILE_OVERRIDES

    paths = scan_paths.build("bidirectional", (21,))
    inputs = _inputs(paths, 21, False, False, dim=2 * block_d, seed=chunk)
    overrides = {"chunk": chunk, "bwd": (block_d, 1), "states_middle": states_middle}
    TILE_OVERRIDES.update(overrides)
    try:
        _matches_reference("triton", inputs, paths, torch.randn(2, 2 * block_d, 21, dtype=torch.float64))
    finally:
        for key in overrides:
            TILE_OVERRIDES.pop(key)


@pytest.mark.parametrize("name", ["torch", "triton", "triton-seq", "triton-gpu-plan"])
@pytest.mark.parametrize("d_state", [1, 2, 16])
@pytest.mark.parametrize("kind,shape,opts", [CASES[2], CASES[4]], ids=["cross", "local"])
def test_channels_last_inputs(name, d_state, kind, shape, opts):
    """(batch, L, dim) views transposed to (batch, dim, L), as models hand them over: same numbers, and the Triton
    outputs and grads keep the channels-last layout ("triton-gpu-plan": the GPU's channels-last plans, 4-step
    backward chunks of 32 channels for N = 1 and 8-step chunks of 8 channels for N = 16)."""
    paths = scan_paths.build(kind, shape, **opts)
    length = int(torch.tensor(shape).prod())
    inputs = _inputs(paths, length, False, False, d_state=d_state, dim=6)
    inputs["x"] = inputs["x"].transpose(1, 2).contiguous().transpose(1, 2)
    inputs["delta"] = inputs["delta"].permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    y, grads = _matches_reference(name, inputs, paths, torch.randn(2, 6, length, dtype=torch.float64))
    if name.startswith("triton"):
        assert y.stride(1) == 1 and grads["x"].stride(1) == 1 and grads["delta"].stride(2) == 1


@pytest.mark.parametrize("name", ["torch", "triton", "triton-seq", "triton-gpu-plan"])
def test_dim_major_inputs_keep_their_layout(name):
    """The Mamba mixer's layout: per-direction x, delta as (batch, K, dim, L) views of (K, dim, batch, L) buffers and
    z as a (batch, dim, L) view of (dim, batch, L): same numbers, and the Triton output is dim-major too."""
    paths = scan_paths.build("bidirectional", (13,))
    inputs = _inputs(paths, 13, True, True, d_state=4, dim=6)
    for key in ("x", "delta"):
        x = inputs[key].expand(inputs[key].shape[0], 2, *inputs[key].shape[2:])
        inputs[key] = x.permute(1, 2, 0, 3).contiguous().permute(2, 0, 1, 3)
    inputs["z"] = inputs["z"].transpose(0, 1).contiguous().transpose(0, 1)
    y, grads = _matches_reference(name, inputs, paths, torch.randn(2, 6, 13, dtype=torch.float64))
    if name.startswith("triton"):
        assert sorted(range(3), key=lambda a: -y.stride(a)) == [1, 0, 2]  # (dim, batch, L) in memory


@pytest.mark.parametrize("change,exc,match", [
    (dict(paths=torch.zeros(4, 12)), TypeError, "paths must be an integer tensor"),
    (dict(x=torch.randn(2, 3, 4, 12)), ValueError, r"x must be \(batch, dim, L\) or \(batch, K=4"),
    (dict(delta=torch.randn(2, 4, 4, 11)), ValueError, "delta must be"),
    (dict(A=torch.randn(3, 4, 3)), ValueError, "A must be"),
    (dict(B=torch.randn(2, 4, 3, 3, 12)), ValueError, "dim divisible by G"),
    (dict(D=torch.randn(4, 5)), ValueError, "D must be"),
    (dict(z=torch.randn(2, 4, 11)), ValueError, "z must be"),
    (dict(merge="mean"), ValueError, "merge must be one of"),
    (dict(x=torch.randn(2, 4, 12, dtype=torch.complex64)), TypeError, "x must be real"),
])
def test_bad_input_names_the_argument(change, exc, match):
    paths = scan_paths.build("cross", (3, 4))
    args = dict(_inputs(paths, 12, False, False), paths=paths)
    args.update(change)
    with pytest.raises(exc, match=match):
        multi_scan(**args)


@pytest.mark.parametrize("plan", ["triton", "triton-gpu-plan"])
@pytest.mark.parametrize("d_state", [1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "dim_major"])
def test_triton_fakes_announce_the_layouts_the_kernels_return(layout, d_state, plan):
    """torch.compile's inductor asserts that the real outputs of the ops have the strides of their fakes: B/C sliced
    from one projection, channels-last views (VMamba) or dim-major (K, dim, batch, L) buffers (the Mamba mixer); the
    saved states follow the layout-dependent chunk length of the GPU plans."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    batch, num_directions, dim, length = 2, 2, 4, 9
    g = torch.Generator().manual_seed(0)
    if layout == "channels_last":
        u = torch.randn(batch, num_directions, length, dim, generator=g).transpose(-1, -2)
        x_dbl = torch.randn(batch, length, num_directions, 1, 1 + 2 * d_state, generator=g).permute(0, 2, 3, 4, 1)
    elif layout == "dim_major":
        u = torch.randn(num_directions, dim, batch, length, generator=g).permute(2, 0, 1, 3)
        x_dbl = torch.randn(num_directions, 1, 1 + 2 * d_state, batch, length, generator=g).permute(3, 0, 1, 2, 4)
    else:
        u = torch.randn(batch, num_directions, dim, length, generator=g)
        x_dbl = torch.randn(batch, num_directions, 1, 1 + 2 * d_state, length, generator=g)
    u, x_dbl = u.to(KERNEL_DEVICE), x_dbl.to(KERNEL_DEVICE)  # strides kept
    delta = torch.randn(u.shape, generator=g).to(KERNEL_DEVICE)
    B, C = x_dbl[:, :, :, 1:1 + d_state], x_dbl[:, :, :, 1 + d_state:]
    A = -torch.rand(num_directions, dim, d_state, generator=g).to(KERNEL_DEVICE)
    paths = scan_paths.build("bidirectional", (length,), device=KERNEL_DEVICE)
    fwd_args = (u, delta, A, B, C, None, None, None, paths, True, True, False, True, "triton")
    with backend(plan):
        y, last, states = torch.ops.vssm.scan_fwd(*fwd_args)
        bwd_args = (torch.randn_like(y), None, u, delta, A, B, C, None, None, None, paths, states, True, True, False,
                    "triton")
        real = [y, last, states, *torch.ops.vssm.scan_bwd(*bwd_args)]
        with FakeTensorMode(allow_non_fake_inputs=True):
            fake = [*torch.ops.vssm.scan_fwd(*fwd_args), *torch.ops.vssm.scan_bwd(*bwd_args)]
    for r, f in zip(real, fake):
        assert (r.shape, r.stride(), r.dtype) == (f.shape, f.stride(), f.dtype)
