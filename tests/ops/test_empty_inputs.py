"""Empty and degenerate inputs (issue 29) on every op and backend: a batch of 0 gives empty outputs of the right
shapes and zero parameter gradients; L = 0 raises one named ValueError ("L must be >= 1"); positive A (decays that
overflow float32) gives the reference's inf / NaN placement and its finite gradients on every backend (Triton under
the interpreter on CPU) unless the caller promises A <= 0 (``a_nonpositive``), a promise that keeps the models' launch
plans and that every layer building A = -exp(A_log) gives."""
import pytest
import torch

from vssm.ops import causal_conv1d, mamba_inner, multi_scan, projected_multi_scan, scan_paths, selective_scan
from vssm.ops import multi_scan_ref, selective_scan_chunked, selective_scan_ref
from vssm.ops.layer_norm import layer_norm, rms_norm

from .scan_cases import KERNEL_DEVICE, backend, kernel_device, rel_err

BACKENDS = ("ref", "torch", "triton")


def _leaves(*shapes, device):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(*s, generator=g) * 0.5).to(device).requires_grad_(True) for s in shapes]


def _selective_scan(batch, length, device):
    u, delta, B, C = _leaves((batch, 4, length), (batch, 4, length), (batch, 3, length), (batch, 3, length),
                             device=device)
    A = (-torch.rand(4, 3) - 0.1).to(device).requires_grad_(True)
    return selective_scan(u, delta, A, B, C, delta_softplus=True), [u, delta, A, B, C]


def _multi_scan(batch, length, device):
    paths = scan_paths.build("bidirectional", (max(length, 1),), device=device)
    x, delta, B, C = _leaves((batch, 4, length), (batch, 2, 4, length), (batch, 2, 3, length), (batch, 2, 3, length),
                             device=device)
    A = (-torch.rand(2, 4, 3) - 0.1).to(device).requires_grad_(True)
    return multi_scan(x, delta, A, B, C, paths, delta_softplus=True), [x, delta, A, B, C]


def _projected_multi_scan(batch, length, device):
    paths = scan_paths.build("cross", (1, max(length, 1)), device=device)
    x, w_x, w_dt, bias, a_log, d = _leaves((batch, 4, length), (4, 5, 4), (4, 4, 1), (4, 4), (4, 4, 2), (4, 4),
                                           device=device)
    return projected_multi_scan(x, w_x, w_dt, bias, a_log, d, paths), [x, w_x, w_dt, bias, a_log, d]


def _causal_conv1d(batch, length, device):
    x, w, b = _leaves((batch, 4, length), (2, 4, 3), (2, 4), device=device)
    return causal_conv1d(x, w, b, [False, True]), [x, w, b]


def _mamba_inner(batch, length, device):
    params = _leaves((batch, length, 4), (12, 4), (2, 6, 3), (2, 6), (2, 1 + 4, 6), (2, 6, 1), (2, 6), (2, 6, 2),
                     (2, 6), (4, 6), device=device)
    x, w_in, conv_w, conv_b, w_x, w_dt, dt_b, a_log, d, w_out = params
    return mamba_inner(x, w_in, conv_w, conv_b, [False, True], w_x, w_dt, dt_b, a_log, d, w_out, "mean"), params


def _layer_norm(batch, length, device):
    x, w, b = _leaves((batch, length, 6), (6,), (6,), device=device)
    return layer_norm(x, w, b, backend="triton" if device != "cpu" or _triton() else "torch"), [x, w, b]


def _rms_norm(batch, length, device):
    x, w = _leaves((batch, length, 6), (6,), device=device)
    return rms_norm(x, w, backend="triton" if device != "cpu" or _triton() else "torch"), [x, w]


def _triton() -> bool:
    import os

    return os.environ.get("VSSM_SCAN_BACKEND") == "triton"


OPS = {  # op -> (call, output shape for batch 0 and L = 7)
    "selective_scan": (_selective_scan, (0, 4, 7)),
    "multi_scan": (_multi_scan, (0, 4, 7)),
    "projected_multi_scan": (_projected_multi_scan, (0, 4, 7)),
    "causal_conv1d": (_causal_conv1d, (0, 2, 4, 7)),
    "mamba_inner": (_mamba_inner, (0, 7, 4)),
    "layer_norm": (_layer_norm, (0, 7, 6)),
    "rms_norm": (_rms_norm, (0, 7, 6)),
}


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
def test_batch_zero_gives_empty_outputs_and_zero_gradients(op, name):
    call, shape = OPS[op]
    with backend(name):
        y, leaves = call(0, 7, kernel_device())
        assert y.shape == shape
        grads = torch.autograd.grad(y.sum(), leaves, allow_unused=True)
    for leaf, grad in zip(leaves, grads):
        assert grad is None or (grad.shape == leaf.shape and not grad.count_nonzero())


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("op", [op for op in OPS if "norm" not in op])
def test_zero_length_raises_one_named_error(op, name):
    with backend(name), pytest.raises(ValueError, match=r"L must be >= 1, got shape"):
        OPS[op][0](2, 0, kernel_device())


@pytest.mark.parametrize("fn", [selective_scan_ref, selective_scan_chunked])
def test_pytorch_definitions_take_an_empty_batch(fn):
    y, last = fn(torch.randn(0, 4, 5), torch.randn(0, 4, 5), -torch.rand(4, 3), torch.randn(0, 3, 5),
                 torch.randn(0, 3, 5), return_last_state=True)
    assert y.shape == (0, 4, 5) and last.shape == (0, 4, 3)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("rms", [False, True])
def test_norms_take_empty_rows_and_refuse_zero_channels(rms, name):
    device = KERNEL_DEVICE if name == "triton" else "cpu"  # outside backend(): kernel_device() would say the CPU
    impl = "triton" if name == "triton" else "torch"

    def norm(x, weight):
        return rms_norm(x, weight, backend=impl) if rms else layer_norm(x, weight, None, backend=impl)

    y = norm(torch.randn(2, 0, 6, device=device), torch.ones(6, device=device))
    assert y.shape == (2, 0, 6)
    with pytest.raises(ValueError, match=r"C must be >= 1, got shape \(2, 3, 0\)"):
        norm(torch.randn(2, 3, 0, device=device), torch.ones(0, device=device))


# ------------------------------------------------------------------------------------------ positive A, overflow


def _overflow_inputs(d_state, a_value, zero_input, dim=4, length=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(1, dim, length, generator=g)
    if zero_input:  # the state stays 0: the reference is finite while each decay is (products of decays are not)
        u.zero_()
    return dict(u=u, delta=torch.rand(1, dim, length, generator=g) + 0.5, A=torch.full((dim, d_state), a_value),
                B=torch.randn(1, d_state, length, generator=g), C=torch.randn(1, d_state, length, generator=g))


def _same_ieee(actual, expected):
    assert torch.equal(actual.isnan(), expected.isnan())
    assert torch.equal(actual.isposinf(), expected.isposinf()) and torch.equal(actual.isneginf(), expected.isneginf())
    finite = expected.isfinite()
    torch.testing.assert_close(actual[finite], expected[finite], rtol=1e-4, atol=1e-5)


OVERFLOW_CASES = [(30.0, False), (30.0, True), (60.0, True), (100.0, False)]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy (the interpreter) reports the overflows
@pytest.mark.parametrize("name,d_state", [
    ("torch", 1), ("torch", 16),
    ("triton-seq", 1), ("triton-seq", 16),  # the step-by-step forward
    ("triton", 1), ("triton", 16),  # the chunk kernels (for N = 1 chunks that span lanes, associative if promised)
    ("triton-gpu-plan", 1),  # the GPU's small-N tiles and 32-step chunks
])
@pytest.mark.parametrize("a_value,zero_input", OVERFLOW_CASES)
def test_positive_a_overflow_matches_the_reference(name, d_state, a_value, zero_input):
    """Decays exp(delta A) > 1 overflow float32 over a few steps (A = 30, 60) or at once (A = 100): without the
    promise A <= 0 the backend gives the reference's inf where it has inf and NaN where it has NaN, and its finite
    values elsewhere."""
    inputs = _overflow_inputs(d_state, a_value, zero_input)
    y_ref, last_ref = selective_scan_ref(**inputs, return_last_state=True)
    with backend(name):
        device = kernel_device()
        y, last = selective_scan(**{k: v.to(device) for k, v in inputs.items()}, return_last_state=True)
    _same_ieee(y.cpu(), y_ref)
    _same_ieee(last.cpu(), last_ref)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", ["triton", "triton-gpu-plan"])
def test_positive_a_overflow_in_multi_scan_matches_the_reference(name):
    """multi_scan without the promise, along a path and its reverse, merged and per direction (N = 1: the small-N
    chunk kernels)."""
    inputs = _overflow_inputs(1, 30.0, True, length=19)
    inputs["x"] = inputs.pop("u")
    paths = scan_paths.build("bidirectional", (19,))
    for merge in ("sum", "none"):
        y_ref, last_ref = multi_scan_ref(**inputs, paths=paths, merge=merge, return_last_state=True)
        with backend(name):
            device = kernel_device()
            y, last = multi_scan(**{k: v.to(device) for k, v in inputs.items()}, paths=paths.to(device), merge=merge,
                                 return_last_state=True)
        _same_ieee(y.cpu(), y_ref)
        _same_ieee(last.cpu(), last_ref)


def _finite_but_overflowing_products(d_state, dim=4, length=21, seed=0):
    """Inputs and loss weights whose float64 reference is finite everywhere, outputs and gradients, while products of
    a few decays overflow float32: A = 30 with step sizes in [0.5, 1.5] (each decay finite, e^15 to e^45), inputs
    only at the last two steps (the states before them are exactly 0) and the loss only on the first two outputs (the
    adjoints after them are exactly 0). A chunk's composed decay product times such a zero is NaN."""
    g = torch.Generator().manual_seed(seed)
    u = torch.zeros(1, dim, length)
    u[..., -2:] = torch.randn(1, dim, 2, generator=g)
    weights = torch.zeros(1, dim, length, dtype=torch.float64)
    weights[..., :2] = torch.randn(1, dim, 2, generator=g, dtype=torch.float64)
    inputs = dict(u=u, delta=torch.rand(1, dim, length, generator=g) + 0.5, A=torch.full((dim, d_state), 30.0),
                  B=torch.randn(1, d_state, length, generator=g), C=torch.randn(1, d_state, length, generator=g),
                  D=torch.randn(dim, generator=g))
    return inputs, weights


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", ["triton", "triton-gpu-plan"])
@pytest.mark.parametrize("d_state", [1, 16])
def test_positive_a_gradients_match_the_reference_where_products_overflow(name, d_state):
    """Forward and backward without the promise run every chunk recurrence step by step (the backward's adjoint
    scan too): outputs and every gradient match the float64 reference, all finite, where the decay products of one
    chunk overflow float32."""
    inputs, weights = _finite_but_overflowing_products(d_state)
    assert torch.isinf(torch.exp(inputs["delta"][..., :8] * 30.0).prod(-1)).all()  # within any chunk (>= 8 steps)
    ref = {k: v.double().requires_grad_(True) for k, v in inputs.items()}
    y_ref = selective_scan_ref(**ref)
    g_ref = torch.autograd.grad((y_ref * weights).sum(), list(ref.values()))
    assert torch.isfinite(y_ref).all() and all(torch.isfinite(g).all() for g in g_ref)
    with backend(name):
        device = kernel_device()
        leaves = {k: v.to(device).requires_grad_(True) for k, v in inputs.items()}
        y = selective_scan(**leaves)
        grads = torch.autograd.grad((y.double() * weights.to(device)).sum(), list(leaves.values()))
    assert rel_err(y.detach().cpu(), y_ref.detach()) < 1e-5
    for key, g, expected in zip(leaves, grads, g_ref):
        assert torch.isfinite(g).all() and rel_err(g.cpu(), expected) < 1e-4, key


@pytest.mark.parametrize("d_state", [1, 16])
def test_positive_a_without_overflow_matches_float64_gradients(d_state):
    """Small positive A (decays > 1 that stay finite): the Triton forward and backward without the promise match the
    float64 reference, outputs and every gradient."""
    inputs = _overflow_inputs(d_state, 0.3, False, length=21)
    ref = {k: v.double().requires_grad_(True) for k, v in inputs.items()}
    y_ref = selective_scan_ref(**ref, delta_softplus=True)
    g_ref = torch.autograd.grad(y_ref.sum(), list(ref.values()))
    with backend("triton"):
        device = kernel_device()
        leaves = {k: v.to(device).requires_grad_(True) for k, v in inputs.items()}
        y = selective_scan(**leaves, delta_softplus=True)
        grads = torch.autograd.grad(y.sum(), list(leaves.values()))
    assert rel_err(y.detach().cpu(), y_ref.detach()) < 2e-5
    for key, g, expected in zip(leaves, grads, g_ref):
        assert rel_err(g.cpu(), expected) < 1e-4, key


# ------------------------------------------------------------------------------------------ the promise A <= 0


def _gpu_plans(d_state, dim, rows, steps, cl, a_nonpositive):
    """(ForwardPlan, BackwardPlan) as on a GPU (the measured tiles), for rows = batch x K x dim sequences."""
    from vssm.ops.triton.scan_plan import TILE_OVERRIDES, backward_plan, forward_plan, overrides_key

    TILE_OVERRIDES["gpu_plan"] = True
    try:
        key = (d_state, dim, rows, steps, cl, False, overrides_key(), a_nonpositive)
        return forward_plan(*key), backward_plan(*key)
    finally:
        TILE_OVERRIDES.pop("gpu_plan")


def _model_plans():
    """The GPU plans of the models' scans (d_state, dim, rows, steps, channels-last) as they were before the promise
    existed: VMamba v2 (N = 1, four cross routes, channels-last; batch 128 and 1), VMamba v0 (N = 16), Vim (N = 16,
    two directions, dim-major; batch 128 and 2)."""
    from vssm.ops.triton.scan_plan import BackwardPlan, ForwardPlan

    plain = {"STATES_MIDDLE": False, "STEPS_IN_THREAD": True}
    return [
        ((1, 192, 128 * 4 * 192, 3136, True),
         ForwardPlan(False, 32, 98, 4, 8, 1, 1, 24, {"STATES_MIDDLE": False, "STEPS_IN_THREAD": False,
                                                    "maxnreg": 128}),
         BackwardPlan(4, 784, 32, 1, 1, 6, False, True, True)),
        ((1, 192, 1 * 4 * 192, 3136, True),
         ForwardPlan(False, 32, 98, 16, 8, 1, 1, 24, {"STATES_MIDDLE": False, "STEPS_IN_THREAD": False}),
         BackwardPlan(16, 196, 8, 1, 1, 24, False, False, True)),
        ((16, 192, 128 * 4 * 192, 3136, True),
         ForwardPlan(False, 16, 196, 8, 8, 1, 16, 24, plain), BackwardPlan(8, 392, 8, 1, 16, 24, False, True, False)),
        ((16, 384, 128 * 2 * 384, 197, False),
         ForwardPlan(False, 8, 25, 8, 16, 1, 16, 24, {"STATES_MIDDLE": True, "STEPS_IN_THREAD": True}),
         BackwardPlan(8, 25, 8, 1, 16, 48, True, True, True)),
        ((16, 384, 2 * 2 * 384, 197, False),
         ForwardPlan(False, 32, 7, 16, 4, 2, 16, 96, plain), BackwardPlan(16, 13, 2, 1, 16, 192, True, True, True)),
    ]


@pytest.mark.parametrize("case", range(5))
def test_promise_keeps_the_model_plans(case):
    """With the promise the models' GPU plans are the ones measured before it existed; without it only the N = 1
    plans change, and only in running their chunk recurrences step by step."""
    shape, forward, backward = _model_plans()[case]
    assert _gpu_plans(*shape, a_nonpositive=True) == (forward, backward)
    unpromised = _gpu_plans(*shape, a_nonpositive=False)
    assert unpromised == (forward._replace(options={**forward.options, "STEPS_IN_THREAD": True}),
                          backward._replace(steps_in_thread=True))
    assert (unpromised != (forward, backward)) == (shape[0] == 1)


def test_promise_changes_only_the_associative_chunk_recurrences():
    """Over sizes, layouts and both planners (GPU and interpreter): the plans with and without the promise differ
    only where the promised plan composes a chunk's steps associatively (the chunk kernels whose chunks span lanes),
    and there only in running the recurrence step by step; the step-by-step forward and the tiles never change."""
    from vssm.ops.triton.scan_plan import backward_plan, forward_plan

    changed = set()
    for gpu in (True, False):
        for d_state in (1, 2, 4, 8, 16, 64):
            for dim in (3, 8, 192):
                for per_dim_rows, steps, cl in [(2, 49, True), (512, 196, True), (512, 3136, False), (4, 197, False)]:
                    shape = (d_state, dim, per_dim_rows * dim, steps, cl)
                    if gpu:
                        (fwd, bwd), (fwd0, bwd0) = (_gpu_plans(*shape, a_nonpositive=p) for p in (True, False))
                    else:
                        fwd, fwd0 = (forward_plan(*shape, True, (), p) for p in (True, False))
                        bwd, bwd0 = (backward_plan(*shape, True, (), p) for p in (True, False))
                    assert fwd0.options["STEPS_IN_THREAD"] and bwd0.steps_in_thread, shape
                    assert fwd0 == fwd._replace(options={**fwd.options, "STEPS_IN_THREAD": True}), shape
                    assert bwd0 == bwd._replace(steps_in_thread=True), shape
                    if fwd0 != fwd:
                        assert not fwd.step_by_step and not fwd.options["STEPS_IN_THREAD"]
                        changed.add(("fwd", gpu, d_state))
                    if bwd0 != bwd:
                        changed.add(("bwd", gpu, d_state))
    # the small-N kernels of the GPU plans (and, with fewer channels than lanes, a few more) change; N = 64 never
    assert {("fwd", True, 1), ("bwd", True, 1), ("fwd", True, 4), ("fwd", False, 1)} <= changed
    assert not {c for c in changed if c[2] == 64}


def _layer_and_call(name):
    """A small layer that builds A = -exp(A_log) and a call of it on a random input where the kernels run."""
    from vssm.layers.local_mixer import LocalMambaMixer
    from vssm.layers.mamba_mixer import MambaMixer
    from vssm.layers.simba_mixer import CausalMambaMixer
    from vssm.layers.ss2d import SS2D
    from vssm.layers.zigzag_mixer import ZigzagMamba2D

    torch.manual_seed(0)
    if name == "MambaMixer":  # mamba_inner's fused node
        return MambaMixer(8, d_state=4), lambda m: m(torch.randn(1, 9, 8, device=KERNEL_DEVICE))
    if name == "SS2D":  # projected_multi_scan's fused node
        return SS2D(8, d_state=1, gated=False), lambda m: m(torch.randn(1, 3, 4, 8, device=KERNEL_DEVICE))
    if name == "CausalMambaMixer":  # selective_scan
        return CausalMambaMixer(8, d_state=4), lambda m: m(torch.randn(1, 7, 8, device=KERNEL_DEVICE))
    if name == "LocalMambaMixer":  # selective_scan over the routes side by side
        local = LocalMambaMixer(8, ["h", "v_flip"], d_state=4)
        local.reset_parameters(depth=1)  # the model initialises it
        return local, lambda m: m(torch.randn(1, 12, 8, device=KERNEL_DEVICE), [3, 4])
    return ZigzagMamba2D(8, d_state=4), lambda m: m(torch.randn(1, 3, 4, 8, device=KERNEL_DEVICE))  # multi_scan


@pytest.mark.parametrize("name", ["MambaMixer", "SS2D", "CausalMambaMixer", "LocalMambaMixer", "ZigzagMamba2D"])
def test_layers_promise_a_nonpositive(monkeypatch, name):
    """Every layer that builds A = -exp(A_log) passes the promise down to the Triton launchers, forward and backward,
    so the models keep their associative kernels."""
    from vssm.ops.triton import scan as triton_scan

    promises = []
    for launcher in ("scan_fwd_triton", "scan_bwd_triton"):
        def spy(*args, _real=getattr(triton_scan, launcher), _name=launcher, **kwargs):
            promises.append((_name, kwargs["a_nonpositive"]))
            return _real(*args, **kwargs)

        monkeypatch.setattr(triton_scan, launcher, spy)
    layer, call = _layer_and_call(name)
    layer.to(KERNEL_DEVICE)
    with backend("triton"):
        y = call(layer)
        y.square().sum().backward()
    assert torch.isfinite(y).all()
    assert promises == [("scan_fwd_triton", True), ("scan_bwd_triton", True)]
