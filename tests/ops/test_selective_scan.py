"""selective_scan: the reference against an independent float64 loop; the chunked PyTorch and Triton (interpreter on
CPU) backends against the reference for outputs, last state and every gradient, Triton with and without the promise
A <= 0 (``a_nonpositive``, which the models give: their launch plans); low precision; bad input."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vssm.ops import selective_scan, selective_scan_chunked, selective_scan_ref
from vssm.ops.scan_reference import expand_bc

from .scan_cases import (backend, kernel_device, make_inputs, naive_scan_np, record_saved_bytes, rel_err,
                         run_with_grads)

PRIMES = [2, 3, 5, 7, 31, 37, 67, 97]


@pytest.mark.parametrize("bc_layout,groups", [("const", 1), ("batch", 1), ("group", 2)])
@pytest.mark.parametrize("softplus", [False, True])
def test_reference_matches_independent_float64_loop(bc_layout, groups, softplus):
    inputs = make_inputs(2, 4, 13, 3, bc_layout, groups, dtype=torch.float64)
    inputs = {k: (None if v is None else v.double()) for k, v in inputs.items()}
    y, last = selective_scan_ref(**inputs, delta_softplus=softplus, return_last_state=True)
    B4 = expand_bc(inputs["B"], 2, 13).numpy()
    C4 = expand_bc(inputs["C"], 2, 13).numpy()
    y_np, last_np = naive_scan_np(inputs["u"], inputs["delta"], inputs["A"], B4, C4, inputs["D"], inputs["z"],
                                  inputs["delta_bias"], softplus)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, torch.from_numpy(y_np), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, torch.from_numpy(last_np), rtol=1e-12, atol=1e-12)


def test_chunked_is_exact_in_float64_over_long_sequences():
    inputs = {k: (None if v is None else v.double()) for k, v in make_inputs(1, 3, 301, 16, seed=3).items()}
    y_ref, last_ref = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    y, last = selective_scan_chunked(**inputs, delta_softplus=True, return_last_state=True)
    assert rel_err(y, y_ref) < 1e-12 and rel_err(last, last_ref) < 1e-12


shape_strategy = st.fixed_dictionaries(dict(
    batch=st.integers(1, 2), dim=st.sampled_from([1, 2, 3, 4, 6]), length=st.one_of(st.just(1), st.sampled_from(PRIMES),
                                                                                   st.integers(1, 80)),
    d_state=st.sampled_from([1, 2, 16]), bc_layout=st.sampled_from(["const", "batch", "group"]),
    has_d=st.booleans(), has_z=st.booleans(), has_bias=st.booleans(), softplus=st.booleans(),
    a_nonpositive=st.booleans(), seed=st.integers(0, 2 ** 16)))


def _check_backend_against_reference(name, case, tol=2e-5):
    groups = 2 if case["bc_layout"] == "group" and case["dim"] % 2 == 0 else 1
    inputs = make_inputs(case["batch"], case["dim"], case["length"], case["d_state"], case["bc_layout"], groups,
                         case["has_d"], case["has_z"], case["has_bias"], case["seed"],
                         positive_delta=not case["softplus"])
    g = torch.Generator().manual_seed(case["seed"] + 1)
    w = torch.randn(case["batch"], case["dim"], case["length"], generator=g, dtype=torch.float64)
    ws = torch.randn(case["batch"], case["dim"], case["d_state"], generator=g, dtype=torch.float64)
    y_ref, last_ref, g_ref = run_with_grads(selective_scan_ref, inputs, w, ws, True, delta_softplus=case["softplus"])
    with backend(name):
        y, last, grads = run_with_grads(selective_scan, inputs, w, ws, False, delta_softplus=case["softplus"],
                                        a_nonpositive=case["a_nonpositive"])
    assert y.dtype == torch.float32 and y.shape == y_ref.shape and last.shape == last_ref.shape
    assert rel_err(y, y_ref) < tol, "y"
    assert rel_err(last, last_ref) < tol, "last state"
    for key, ref in g_ref.items():
        assert grads[key].shape == ref.shape and grads[key].dtype == inputs[key].dtype, key
        assert rel_err(grads[key], ref) < 10 * tol, f"grad {key}: {rel_err(grads[key], ref)}"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=shape_strategy)
def test_torch_backend_matches_reference(case):
    _check_backend_against_reference("torch", case)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=shape_strategy)
def test_triton_backend_matches_reference(case):
    _check_backend_against_reference("triton", case)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=shape_strategy)
def test_triton_step_by_step_kernels_match_reference(case):
    _check_backend_against_reference("triton-seq", case)


def _check_grouped_against_reference(name, dim, groups, d_state, length, seeds):
    """Backend ``name`` against the float64 reference on B and C in ``groups`` groups (batch 2, softplus on, the
    promise A <= 0 as the models give it): output and last state to 2e-6, every gradient to 2e-5."""
    inputs = make_inputs(2, dim, length, d_state, "group", groups, seed=seeds[0])
    g = torch.Generator().manual_seed(seeds[1])
    w = torch.randn(2, dim, length, generator=g, dtype=torch.float64)
    ws = torch.randn(2, dim, d_state, generator=g, dtype=torch.float64)
    y_ref, last_ref, g_ref = run_with_grads(selective_scan_ref, inputs, w, ws, True, delta_softplus=True)
    with backend(name):
        y, last, grads = run_with_grads(selective_scan, inputs, w, ws, False, delta_softplus=True, a_nonpositive=True)
    assert rel_err(y, y_ref) < 2e-6 and rel_err(last, last_ref) < 2e-6
    for key, ref in g_ref.items():
        assert rel_err(grads[key], ref) < 2e-5, key


@pytest.mark.parametrize("dim,groups,d_state", [(32, 2, 16), (8, 4, 16), (6, 1, 2)])
def test_step_by_step_forward_on_one_group_and_group_spanning_tiles(dim, groups, d_state):
    """The step-by-step forward reads a step's B and C as one row when its channel tile lies in one group (32 channels
    in 2 groups: tiles of 16 = one group each, the second at a group offset), as a per-channel tile otherwise (8
    channels in 4 groups; 6 channels in a tile of 8)."""
    _check_grouped_against_reference("triton-seq", dim, groups, d_state, 23, seeds=(dim, 7))


@pytest.mark.parametrize("states_middle", [True, False])
@pytest.mark.parametrize("dim,groups,d_state", [(32, 2, 4), (12, 3, 4), (6, 1, 16)])
def test_chunk_tile_layouts_on_one_group_and_group_spanning_tiles(states_middle, dim, groups, d_state):
    """The two chunk-tile layouts of the chunk-parallel forward and the backward ([chunk, N, channels] for dim-major
    rows that fill a GPU, [chunk, channels, N] otherwise) on channel tiles inside one group (32 channels in 2 groups,
    tiles of 8, some at a group offset; 6 channels in the backward's tiles of 2) and spanning groups (12 channels in 3
    groups, tiles of 8; 6 channels in the forward's tiles of 4)."""
    from vssm.ops.triton.scan_plan import TILE_OVERRIDES

    layouts = {"states_middle": states_middle, "fwd_states_middle": states_middle}
    TILE_OVERRIDES.update(layouts)
    try:  # small problems take the chunk-parallel forward
        _check_grouped_against_reference("triton", dim, groups, d_state, 29, seeds=(dim + d_state, 11))
    finally:
        for key in layouts:
            TILE_OVERRIDES.pop(key)


@pytest.mark.parametrize("steps_in_thread", [True, False])
@pytest.mark.parametrize("dim,d_state,length", [(6, 16, 29), (12, 1, 37)])
def test_in_register_and_associative_chunk_recurrences(steps_in_thread, dim, d_state, length):
    """The chunk kernels' two forms of the state and adjoint recurrences, step by step in each thread's registers and
    by ``tl.associative_scan`` (taken under the promise A <= 0 where a chunk spans lanes), forced on tiles whose chunks
    lie in one thread (N = 16) and span lanes (N = 1), forward and backward, with chunk carries and a ragged last
    chunk."""
    from vssm.ops.triton.scan_plan import TILE_OVERRIDES

    TILE_OVERRIDES["steps_in_thread"] = steps_in_thread
    try:
        _check_grouped_against_reference("triton", dim, 1, d_state, length, seeds=(length, 3))
    finally:
        TILE_OVERRIDES.pop("steps_in_thread")


@pytest.mark.parametrize("name", ["torch", "triton", "triton-seq", "triton-long-chunk", "triton-gpu-plan"])
@pytest.mark.parametrize("length,d_state", [(1, 16), (97, 1), (67, 16), (33, 64)])
def test_backends_on_chunk_boundaries_and_extreme_sizes(name, length, d_state):
    case = dict(batch=1, dim=3, length=length, d_state=d_state, bc_layout="batch", has_d=True, has_z=True,
                has_bias=True, softplus=True, a_nonpositive=True, seed=length)
    _check_backend_against_reference(name, case)


def test_channels_last_wide_states_run_the_two_warp_backward():
    """Channels-last N = 64 (SiMBA's maps) plans 8-step backward chunks of 4 channels in two warps with
    [CHUNK, N, BLOCK_D] tiles, and that backward matches the reference: 6 channels (a ragged channel block), 37 steps
    (a ragged chunk), batch 1."""
    from vssm.ops.triton.scan_plan import backward_plan

    plan = backward_plan(64, 6, 6, 37, True, False, ())
    assert (plan.chunk, plan.block_d, plan.num_warps, plan.states_middle) == (8, 4, 2, True)
    inputs = make_inputs(1, 6, 37, 64, seed=11)
    for key in ("u", "delta", "z"):  # (batch, dim, L) views of (batch, L, dim) maps
        inputs[key] = inputs[key].transpose(1, 2).contiguous().transpose(1, 2)
    g = torch.Generator().manual_seed(12)
    w = torch.randn(1, 6, 37, generator=g, dtype=torch.float64)
    ws = torch.randn(1, 6, 64, generator=g, dtype=torch.float64)
    expected = run_with_grads(selective_scan_ref, inputs, w, ws, True, delta_softplus=True)
    with backend("triton"):
        y, last, grads = run_with_grads(selective_scan, inputs, w, ws, False, delta_softplus=True,
                                        a_nonpositive=True)
    assert rel_err(y, expected[0]) < 2e-5 and rel_err(last, expected[1]) < 2e-5
    for key, ref in expected[2].items():
        assert rel_err(grads[key], ref) < 2e-4, key


@pytest.mark.parametrize("name", ["torch", "triton", "triton-seq"])
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 4e-3)])
def test_low_precision_inputs(name, dtype, tol):
    """bf16/fp16 u, delta, B, C, z with fp32 A, D, bias: fp32 state, output in the input dtype."""
    inputs = make_inputs(2, 4, 37, 16, "group", 2, seed=5)
    low = {k: (v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v) for k, v in inputs.items()}
    rounded = {k: (None if v is None else v.double()) for k, v in low.items()}
    y_ref = selective_scan_ref(**rounded, delta_softplus=True)
    with backend(name):
        leaves = {k: v.clone().to(kernel_device()).requires_grad_(True) for k, v in low.items()}
        y = selective_scan(**leaves, delta_softplus=True, a_nonpositive=True)
    assert y.dtype == dtype
    assert rel_err(y.cpu(), y_ref) < tol
    y.float().square().sum().backward()
    ref_leaves = {k: v.clone().requires_grad_(True) for k, v in rounded.items()}
    selective_scan_ref(**ref_leaves, delta_softplus=True).square().sum().backward()
    for key in leaves:
        assert leaves[key].grad.dtype == low[key].dtype
        assert rel_err(leaves[key].grad.cpu(), ref_leaves[key].grad) < 5 * tol, key


def test_autocast_keeps_parameters_in_float32():
    inputs = make_inputs(1, 4, 9, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = selective_scan(**{k: (v.bfloat16() if k in ("u", "delta", "B", "C", "z") else v)
                              for k, v in inputs.items()}, delta_softplus=True)
    assert y.dtype == torch.bfloat16


def test_compile_export_script_and_fx():
    """The public op is one opaque node for torch.compile (fwd+bwd), torch.export, TorchScript and timm's FX."""
    from timm.models._features_fx import create_feature_extractor

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.A = torch.nn.Parameter(-torch.rand(4, 3) - 0.1)

        def forward(self, x):
            # every argument positional: TorchScript does not apply the defaults of the ignored op
            return selective_scan(x, x, self.A, x[:, :3], x[:, 1:], None, None, None, True, False, True, False) + 1

    net, x = Net(), torch.randn(2, 4, 11)
    expected = net(x)
    torch.testing.assert_close(torch.compile(net, fullgraph=True, backend="aot_eager")(x), expected)
    xg = x.clone().requires_grad_(True)
    torch.compile(net, fullgraph=True, backend="aot_eager")(xg).sum().backward()
    xe = x.clone().requires_grad_(True)
    net(xe).sum().backward()
    torch.testing.assert_close(xg.grad, xe.grad)
    torch.testing.assert_close(torch.export.export(net, (x,)).module()(x), expected)
    torch.testing.assert_close(torch.jit.script(net)(x), expected)
    fx = create_feature_extractor(net, return_nodes=["add"])
    assert torch.equal(fx(x)["add"], expected)


@pytest.mark.parametrize("change,exc,match", [
    (dict(u=torch.randn(2, 4)), ValueError, "u must have 3 dimensions"),
    (dict(delta=torch.randn(2, 4, 8)), ValueError, "delta must have u's shape"),
    (dict(A=torch.randn(5, 3)), ValueError, r"A must be \(dim=4, N\)"),
    (dict(A=torch.randn(4, 3, dtype=torch.complex64)), TypeError, "A must be real"),
    (dict(u=torch.ones(2, 4, 9, dtype=torch.int64)), TypeError, "u must be float32"),
    (dict(B=torch.randn(2, 3, 3, 9)), ValueError, "dim=4 is not divisible by the 3 groups of B"),
    (dict(C=torch.randn(2, 3, 8)), ValueError, r"C must be \(batch, N, L\)"),
    (dict(B=torch.randn(5, 3)), ValueError, r"time-invariant B must be \(dim, N\)"),
    (dict(D=torch.randn(3)), ValueError, r"D must be \(dim,\)"),
    (dict(z=torch.randn(2, 4, 8)), ValueError, "z must have u's shape"),
    (dict(delta_bias=torch.randn(4, 1)), ValueError, "delta_bias must have 1 dimensions"),
    (dict(u=[1.0]), TypeError, "u must be a torch.Tensor"),
])
@pytest.mark.parametrize("fn", [selective_scan, selective_scan_ref, selective_scan_chunked])
def test_bad_input_names_the_argument(fn, change, exc, match):
    args = dict(u=torch.randn(2, 4, 9), delta=torch.randn(2, 4, 9), A=-torch.rand(4, 3), B=torch.randn(2, 3, 9),
                C=torch.randn(2, 3, 9), D=None, z=None, delta_bias=None)
    args.update(change)
    with pytest.raises(exc, match=match):
        fn(**args)


def test_unknown_backend_is_rejected():
    with backend("cuda-magic"), pytest.raises(ValueError, match="VSSM_SCAN_BACKEND must be one of"):
        selective_scan(**make_inputs(1, 2, 3, 2))


@pytest.mark.parametrize("name", ["triton", "triton-gpu-plan"])
@pytest.mark.parametrize("op", ["selective_scan", "multi_scan"])
def test_recomputed_states_give_the_same_gradients_and_save_less(monkeypatch, name, op):
    """recompute_states: the forward keeps no chunk states and the backward computes them again; outputs and every
    gradient bitwise those of the forward that kept them (one direction with a gate, and two merged directions along
    a path and its reverse)."""
    from vssm.ops import multi_scan, scan_paths

    inputs = make_inputs(2, 5, 41, 16, seed=3)
    paths = scan_paths.build("bidirectional", (41,)).to(kernel_device())
    fn = selective_scan if op == "selective_scan" else lambda u, **kwargs: multi_scan(u, paths=paths, **kwargs)
    weights = torch.randn(2, 5, 41, dtype=torch.float64)
    state_weights = torch.randn(2, 5, 16, dtype=torch.float64) if op == "selective_scan" else \
        torch.randn(2, 2, 5, 16, dtype=torch.float64)
    saved = record_saved_bytes(monkeypatch)
    with backend(name):
        kept = run_with_grads(fn, inputs, weights, state_weights, False, delta_softplus=True, a_nonpositive=True)
        again = run_with_grads(fn, inputs, weights, state_weights, False, delta_softplus=True, a_nonpositive=True,
                               recompute_states=True)
    assert len(saved) == 2 and saved[1] < saved[0]
    assert torch.equal(again[0], kept[0]) and torch.equal(again[1], kept[1])
    for key, grad in kept[2].items():
        assert torch.equal(again[2][key], grad), key
