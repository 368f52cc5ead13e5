"""The vssm custom ops under ``torch.library.opcheck`` and ``torch.compile``.

* opcheck on every registered op (``torch.ops.vssm.scan_fwd`` / ``scan_bwd``, ``causal_conv1d_fwd`` / ``_bwd``,
  ``layer_norm_fwd`` / ``_bwd``): schema and aliasing, the fake (meta) implementation against the real outputs'
  shapes, strides and dtypes, the autograd registration, and AOTAutograd with static and dynamic shapes; the scan in
  the variants the models run (one direction with a gate, per-direction inputs along bidirectional paths, cross and
  windowed paths with padding steps, parameters read at the step), on the reference, the PyTorch and the Triton
  backends (Triton's interpreter on the CPU);
* every public op compiled with ``fullgraph=True`` (no graph break) gives the eager forward and gradients: the custom
  ops stay opaque nodes, paths built inside the compiled code are graph constants that the ops do not check again,
  dynamic shapes compile, and one ``inductor`` case runs the three kernels together.
"""
import functools

import pytest
import torch
from torch.library import opcheck

import vssm.ops.common as ops_common
from vssm.ops import causal_conv1d, mamba_inner, multi_scan, projected_multi_scan, scan_paths, selective_scan
from vssm.ops.layer_norm import layer_norm, rms_norm

from .scan_cases import backend

SCAN_BACKENDS = ("ref", "torch", "triton")
SCAN_VARIANTS = ("gated", "bidirectional", "cross", "local", "at_step")
TIGHT = dict(rtol=1e-5, atol=1e-6)
# the fused eager GEMM + kernel nodes of projected_multi_scan / mamba_inner against the composed ops that compile
# traces (other GEMM shapes and summation orders)
FUSED = dict(rtol=1e-4, atol=1e-5)


pytestmark = pytest.mark.usefixtures("fresh_dynamo")  # tests/conftest.py


def _randn(*shape, seed, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def scan_fwd_args(variant: str, backend_name: str, training: bool, a_nonpositive: bool = True) -> tuple:
    """Arguments of ``torch.ops.vssm.scan_fwd`` as the models pass them (batch 2, 3 channels, N = 4, odd lengths, the
    promise A <= 0 unless ``a_nonpositive`` is False):

    gated: one direction with D, delta bias and a gate (``selective_scan``: LocalVim, SiMBA);
    bidirectional: per-direction dim-major inputs along a path and its reverse, merged (the Mamba mixer);
    cross: a channels-last map shared by four cross paths of a 3 x 4 grid, per-direction delta, B, C (SS2D);
    local: window routes with padding steps on a 3 x 3 grid, outputs per direction (LocalVMamba);
    at_step: zigzag paths with delta, B, C read at the step and C shared by the directions (PlainMamba).
    """
    batch, dim, d_state = 2, 3, 4
    if variant == "gated":
        paths, length = None, 7
    elif variant == "bidirectional":
        length = 7
        paths = scan_paths.build("bidirectional", (length,))
    elif variant == "cross":
        length = 12
        paths = scan_paths.build("cross", (3, 4))
    elif variant == "local":
        length = 9
        paths = scan_paths.build("local", (3, 3), directions=("h", "w2", "w2_flip"))
    else:
        length = 6
        paths = scan_paths.build("zigzag", (2, 3))
    num_directions = 1 if paths is None else paths.shape[0]
    steps = length if paths is None else paths.shape[1]
    at_step = variant == "at_step"
    param_len = steps if at_step else length
    if variant == "bidirectional":  # (batch, K, dim, L) views of a dim-major (K, dim, batch, L) buffer
        u = _randn(num_directions, dim, batch, length, seed=1).permute(2, 0, 1, 3)
    elif variant == "cross":  # channels-last
        u = _randn(batch, 1, length, dim, seed=1).transpose(-1, -2)
    else:
        u = _randn(batch, 1, dim, length, seed=1)
    delta_k = 1 if at_step else num_directions
    delta = _randn(batch, delta_k, dim, param_len, seed=2, scale=0.5)
    A = -(torch.rand(num_directions, dim, d_state, generator=torch.Generator().manual_seed(3)) + 0.1)
    B = _randn(batch, num_directions, 1, d_state, param_len, seed=4)
    C = _randn(batch, num_directions, 1, d_state, param_len, seed=5)
    if at_step:  # C shared by the directions: a stride-0 view
        C = C[:, :1].expand_as(B)
    D = _randn(num_directions, dim, seed=6)
    z = _randn(batch, dim, length, seed=7) if variant in ("gated", "bidirectional", "at_step") else None
    delta_bias = _randn(num_directions, dim, seed=8, scale=0.5)
    tensors = [None if t is None else t.detach().requires_grad_(training)
               for t in (u, delta, A, B, C, D, z, delta_bias)]
    merge = variant in ("bidirectional", "cross", "at_step")
    save_states = training and backend_name == "triton"
    return (*tensors, paths, True, merge, at_step, save_states, backend_name, a_nonpositive)


def _marked(cases, default):
    """``cases`` as parameters, those not in ``default`` marked slow: the Triton interpreter takes seconds per case on
    the CPU, so the default run keeps the variants whose fakes differ most (one direction, dim-major, channels-last)."""
    return [pytest.param(*case, marks=() if case in default else pytest.mark.slow) for case in cases]


# every variant on the PyTorch path and in training (the op with its autograd formula); the inference forward
# (no saved states) differs on the Triton backend only
SCAN_FWD_CASES = [(v, b, True) for v in SCAN_VARIANTS for b in SCAN_BACKENDS] + [
    (v, "triton", False) for v in SCAN_VARIANTS]
SCAN_FWD_DEFAULT = [(v, b, True) for v in SCAN_VARIANTS for b in ("ref", "torch")] + [
    ("gated", "triton", True), ("bidirectional", "triton", True), ("cross", "triton", True), ("gated", "triton", False)]
SCAN_BWD_CASES = [(v, b) for v in SCAN_VARIANTS for b in ("torch", "triton")]
SCAN_BWD_DEFAULT = [(v, "torch") for v in SCAN_VARIANTS] + [("gated", "triton"), ("bidirectional", "triton")]


@pytest.mark.parametrize("variant, backend_name, training", _marked(SCAN_FWD_CASES, SCAN_FWD_DEFAULT))
def test_opcheck_scan_forward(variant, backend_name, training):
    args = scan_fwd_args(variant, backend_name, training)
    with backend(backend_name):
        result = opcheck(torch.ops.vssm.scan_fwd.default, args)
    assert set(result.values()) == {"SUCCESS"}, result


@pytest.mark.parametrize("variant, backend_name", _marked(SCAN_BWD_CASES, SCAN_BWD_DEFAULT))
def test_opcheck_scan_backward(variant, backend_name):
    _opcheck_backward(scan_fwd_args(variant, backend_name, training=False))


def _opcheck_backward(fwd_args):
    """opcheck of ``scan_bwd`` on the states a training forward with ``fwd_args`` (save_states aside) saves."""
    *fwd_args, _, backend_name, a_nonpositive = fwd_args
    fwd_args = (*fwd_args, backend_name == "triton", backend_name, a_nonpositive)
    with backend(backend_name):
        y, last, states = torch.ops.vssm.scan_fwd(*fwd_args)
        u, delta, A, B, C, D, z, delta_bias, paths, softplus, merge, at_step = fwd_args[:12]
        bwd_args = (_randn(*y.shape, seed=9), _randn(*last.shape, seed=10), u, delta, A, B, C, D, z, delta_bias,
                    paths, states, softplus, merge, at_step, backend_name, a_nonpositive)
        result = opcheck(torch.ops.vssm.scan_bwd.default, bwd_args)
    assert set(result.values()) == {"SUCCESS"}, result


def test_opcheck_scan_without_the_promise():
    """The Triton ops without the promise A <= 0 (N = 4 over 3 channels: chunks that span lanes, so the kernels run
    their recurrences step by step instead of associatively): the same fakes, autograd and schema, and the
    default of the flag (False) when a caller leaves it out."""
    args = scan_fwd_args("gated", "triton", training=True, a_nonpositive=False)
    with backend("triton"):
        result = opcheck(torch.ops.vssm.scan_fwd.default, args)
        assert set(result.values()) == {"SUCCESS"}, result
        omitted = torch.ops.vssm.scan_fwd(*args[:-1])  # through the autograd formula: the inputs require grad
        for given, default in zip(omitted, torch.ops.vssm.scan_fwd(*args)):
            assert torch.equal(given, default)
        omitted[0].sum().backward()
    assert all(t.grad is not None for t in args[:8] if t is not None)
    _opcheck_backward(scan_fwd_args("gated", "triton", training=False, a_nonpositive=False))


@pytest.mark.parametrize("width, reverse_mask, bias, silu", [(4, 0b10, True, True), (3, 0b01, False, False),
                                                            (2, 0b0, True, True)])
def test_opcheck_causal_conv(width, reverse_mask, bias, silu):
    num_directions = 2 if reverse_mask != 0b0 else 1
    x = _randn(2, 3, 9, seed=1).requires_grad_()
    weight = _randn(num_directions, 3, width, seed=2).requires_grad_()
    b = _randn(num_directions, 3, seed=3).requires_grad_() if bias else None
    result = opcheck(torch.ops.vssm.causal_conv1d_fwd.default, (x, weight, b, reverse_mask, silu))
    assert set(result.values()) == {"SUCCESS"}, result
    dout = _randn(2, num_directions, 3, 9, seed=4)
    args = (dout, x.detach(), weight.detach(), None if b is None else b.detach(), reverse_mask, silu)
    result = opcheck(torch.ops.vssm.causal_conv1d_bwd.default, args)
    assert set(result.values()) == {"SUCCESS"}, result


@pytest.mark.parametrize("rms, bias, out_dtype", [(False, True, torch.float32), (False, False, torch.bfloat16),
                                                 (True, False, torch.float32)])
def test_opcheck_layer_norm(rms, bias, out_dtype):
    x = _randn(2, 5, 6, seed=1).requires_grad_()
    weight = _randn(6, seed=2).requires_grad_()
    b = _randn(6, seed=3).requires_grad_() if bias else None
    result = opcheck(torch.ops.vssm.layer_norm_fwd.default, (x, weight, b, 1e-5, out_dtype, rms))
    assert set(result.values()) == {"SUCCESS"}, result
    _, mean, rstd = torch.ops.vssm.layer_norm_fwd(x.detach(), weight.detach(), None if b is None else b.detach(), 1e-5,
                                                  out_dtype, rms)
    args = (_randn(2, 5, 6, seed=4).to(out_dtype), x.detach(), weight.detach(), bias, mean, rstd, rms)
    result = opcheck(torch.ops.vssm.layer_norm_bwd.default, args)
    assert set(result.values()) == {"SUCCESS"}, result


# ----------------------------------------------------------------------------------------------------------------
# The public ops compiled (fullgraph) against eager.


def _grads_of(fn, inputs: dict, seed: int = 11):
    """Outputs of fn(**inputs) and the gradients of every floating input of a fixed random loss."""
    leaves = {k: v if v is None or not v.is_floating_point() else v.detach().clone().requires_grad_()
              for k, v in inputs.items()}
    outs = fn(**leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum((o.float() * _randn(*o.shape, seed=seed + i)).sum() for i, o in enumerate(outs))
    wrt = {k: v for k, v in leaves.items() if v is not None and v.requires_grad}
    grads = torch.autograd.grad(loss, list(wrt.values()))
    return [o.detach() for o in outs], dict(zip(wrt, grads))


def assert_compiled_matches_eager(fn, inputs: dict, tol: dict = TIGHT, **compile_kwargs):
    """fn compiled with fullgraph=True (aot_eager unless told) gives the eager outputs and input gradients."""
    compile_kwargs.setdefault("backend", "aot_eager")
    outs, grads = _grads_of(fn, inputs)
    outs_c, grads_c = _grads_of(torch.compile(fn, fullgraph=True, **compile_kwargs), inputs)
    for o_c, o in zip(outs_c, outs, strict=True):
        torch.testing.assert_close(o_c, o, **tol)
    assert grads_c.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(grads_c[name], grads[name], **tol, msg=lambda m: f"grad of {name}: {m}")


def _scan_inputs(num_directions=1, length=7, dim=3, d_state=4, batch=2):
    return dict(u=_randn(batch, dim, length, seed=1), delta=_randn(batch, num_directions, dim, length, seed=2) * 0.5,
                A=-(torch.rand(num_directions, dim, d_state, generator=torch.Generator().manual_seed(3)) + 0.1),
                B=_randn(batch, num_directions, d_state, length, seed=4),
                C=_randn(batch, num_directions, d_state, length, seed=5), D=_randn(num_directions, dim, seed=6),
                z=_randn(batch, dim, length, seed=7), delta_bias=_randn(num_directions, dim, seed=8) * 0.5)


@pytest.mark.parametrize("backend_name", SCAN_BACKENDS)
def test_selective_scan_compiles(backend_name):
    inputs = {k: v.squeeze(1) if k in ("delta", "B", "C") else v.squeeze(0) if k in ("A", "D", "delta_bias") else v
              for k, v in _scan_inputs().items()}

    def fn(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, return_last_state=True,
                              a_nonpositive=True)

    with backend(backend_name):
        assert_compiled_matches_eager(fn, inputs)


def test_selective_scan_with_recomputed_states_compiles():
    """recompute_states under torch.compile: the custom forward keeps no chunk states and the custom backward runs
    the states-only forward; the eager gradients (Triton interpreter)."""
    inputs = {k: v.squeeze(1) if k in ("delta", "B", "C") else v.squeeze(0) if k in ("A", "D", "delta_bias") else v
              for k, v in _scan_inputs(length=19).items()}

    def fn(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, a_nonpositive=True,
                              recompute_states=True)

    with backend("triton"):
        assert_compiled_matches_eager(fn, inputs)


@pytest.mark.parametrize("backend_name, merge", _marked([(b, m) for b in SCAN_BACKENDS for m in ("sum", "none")],
                                                        [("ref", "sum"), ("ref", "none"), ("torch", "sum"),
                                                         ("torch", "none"), ("triton", "sum")]))
def test_multi_scan_with_built_paths_compiles(backend_name, merge):
    """Paths built inside the compiled code (different kinds in one graph) are graph constants."""
    inputs = _scan_inputs(num_directions=4, length=6, dim=2)

    def fn(u, delta, A, B, C, D, z, delta_bias):
        cross = scan_paths.build("cross", (2, 3))
        local = scan_paths.build("local", (2, 3), directions=("h", "v_flip", "w2", "w2_flip"))
        y1 = multi_scan(u, delta, A, B, C, cross, D, z, delta_bias, True, merge)
        y2 = multi_scan(u, delta, A, B, C, local, D, None, delta_bias, True, merge)
        return y1, y2

    with backend(backend_name):
        assert_compiled_matches_eager(fn, inputs)


@pytest.mark.parametrize("backend_name", ["torch", "triton"])
def test_projected_multi_scan_compiles(backend_name):
    """Compiled: the projections as graph GEMMs around the scan op; eager on Triton: the fused node."""
    g = torch.Generator().manual_seed(0)
    num_directions, dim, rank, d_state = 4, 4, 2, 3
    inputs = dict(x=torch.randn(2, 6, dim, generator=g).transpose(1, 2),  # channels-last, as SS2D passes it
                  x_proj_weight=torch.randn(num_directions, rank + 2 * d_state, dim, generator=g) * 0.3,
                  dt_proj_weight=torch.randn(num_directions, dim, rank, generator=g) * 0.3,
                  dt_proj_bias=torch.randn(num_directions, dim, generator=g) * 0.3,
                  A_log=torch.randn(num_directions, dim, d_state, generator=g) * 0.3,
                  D=torch.randn(num_directions, dim, generator=g))

    def fn(x, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D):
        paths = scan_paths.build("cross", (2, 3))
        return projected_multi_scan(x, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, paths, "sum")

    with backend(backend_name):
        assert_compiled_matches_eager(fn, inputs, FUSED if backend_name == "triton" else TIGHT)


@pytest.mark.parametrize("merge", ["mean", "sum"])
@pytest.mark.parametrize("backend_name", ["torch", "triton"])
def test_mamba_inner_compiles(backend_name, merge):
    """Compiled: the composed GEMMs, causal conv and scan ops; eager on Triton: the fused node."""
    g = torch.Generator().manual_seed(0)
    num_directions, dim, inner, rank, d_state, width = 2, 4, 6, 2, 3, 4
    inputs = dict(x=torch.randn(2, 7, dim, generator=g),
                  in_proj_weight=torch.randn(2 * inner, dim, generator=g) * 0.4,
                  conv_weight=torch.randn(num_directions, inner, width, generator=g) * 0.4,
                  conv_bias=torch.randn(num_directions, inner, generator=g) * 0.4,
                  x_proj_weight=torch.randn(num_directions, rank + 2 * d_state, inner, generator=g) * 0.4,
                  dt_proj_weight=torch.randn(num_directions, inner, rank, generator=g) * 0.4,
                  dt_proj_bias=torch.randn(num_directions, inner, generator=g) * 0.4,
                  A_log=torch.randn(num_directions, inner, d_state, generator=g) * 0.4,
                  D=torch.randn(num_directions, inner, generator=g),
                  out_proj_weight=torch.randn(dim, inner, generator=g) * 0.4)
    fn = functools.partial(mamba_inner, reverse=[False, True], merge=merge)
    with backend(backend_name):
        assert_compiled_matches_eager(fn, inputs, FUSED if backend_name == "triton" else TIGHT)


@pytest.mark.parametrize("reverse", [[False], [False, True]])
def test_causal_conv_compiles(reverse):
    inputs = dict(x=_randn(2, 3, 9, seed=1), weight=_randn(len(reverse), 3, 4, seed=2),
                  bias=_randn(len(reverse), 3, seed=3))
    fn = functools.partial(causal_conv1d, reverse=reverse, activation="silu", backend="triton")
    assert_compiled_matches_eager(fn, inputs)


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_norms_compile(kind):
    inputs = dict(x=_randn(2, 5, 6, seed=1), weight=_randn(6, seed=2))
    if kind == "layer_norm":
        inputs["bias"] = _randn(6, seed=3)
    op = layer_norm if kind == "layer_norm" else rms_norm
    assert_compiled_matches_eager(functools.partial(op, backend="triton"), inputs)


def _graph_targets(fn, *args) -> set:
    """call_function targets of the graph dynamo traces from fn(*args) (fullgraph: one graph)."""
    targets = set()

    def record(gm, example_inputs):
        targets.update(node.target for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch.compile(fn, fullgraph=True, backend=record)(*args)
    return targets


def test_custom_ops_are_opaque_nodes():
    """Dynamo records each op as one node of the ``vssm`` namespace (it does not trace into the kernels)."""
    conv_weight, norm_weight = _randn(2, 3, 4, seed=9), _randn(3, seed=10)

    def fn(u, delta, A, B, C, D, z, delta_bias):
        xs = causal_conv1d(u, conv_weight, None, [False, True], "silu", "triton")
        y = multi_scan(xs, delta, A, B, C, scan_paths.build("bidirectional", (7,)), D, z, delta_bias, True)
        return layer_norm(y.transpose(1, 2), norm_weight, None, backend="triton")

    with backend("triton"):
        targets = _graph_targets(fn, *_scan_inputs(num_directions=2, length=7).values())
    ops = {str(t).split(".")[1] for t in targets if str(t).startswith("vssm.")}
    assert ops == {"scan_fwd", "causal_conv1d_fwd", "layer_norm_fwd"}, targets


def test_compiled_paths_are_checked_once(monkeypatch):
    """A path set built inside the compiled code is the same tensor at every call (a lifted graph input), so the op
    reads no path values at run time; the eager check of user-built paths is unchanged."""
    calls = []
    check_values = ops_common._check_path_values
    monkeypatch.setattr(ops_common, "_check_path_values", lambda *a: (calls.append(a), check_values(*a))[1])
    inputs = _scan_inputs(num_directions=4, length=12)

    def fn(u, delta, A, B, C, D, z, delta_bias):
        return multi_scan(u, delta, A, B, C, scan_paths.build("cross", (3, 4)), D, z, delta_bias, True)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for _ in range(3):
        torch.testing.assert_close(compiled(**inputs), fn(**inputs), **TIGHT)
    assert calls == []
    u, delta, A, B, C, D, z, delta_bias = _scan_inputs(num_directions=2, length=3).values()
    user = torch.tensor([[0, 1, 2], [2, 1, 0]])
    for _ in range(2):
        multi_scan(u, delta, A, B, C, user, D, z, delta_bias, True)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="route 0"):
        multi_scan(u, delta, A, B, C, torch.tensor([[0, 1, 1], [2, 1, 0]]), D, z, delta_bias, True)


def test_graph_constants_of_one_builder_differ_per_argument():
    """Several results of one cached builder live in one graph (dynamo's assume_constant_result on a tensor-valued
    function registers all of them under the function's name), and a later call sees the same tensors."""
    built = []

    @ops_common.graph_constant(maxsize=None)
    def ramp(length: int) -> torch.Tensor:
        built.append(length)
        return torch.arange(length, dtype=torch.float32)

    def fn(x):
        for length in (4, 2, 1, 2):
            x = x + ramp(length).sum() * ramp(length)[-1]
        return x

    x = torch.zeros(3)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), fn(x))
    torch.testing.assert_close(compiled(x + 1), fn(x + 1))
    assert sorted(built) == [1, 2, 4]


def test_paths_first_built_under_inference_mode_serve_training():
    """The cache builds its tensors outside inference mode: an inference pass that builds a path set first (a
    benchmark's or an evaluation's) leaves one that a later training step can save for backward."""
    inputs = _scan_inputs(num_directions=2, length=11)
    scan_paths._build_cached.cache.cache_clear()  # the path set is built here, under inference mode
    with torch.inference_mode():
        paths = scan_paths.build("bidirectional", (11,))
    assert not paths.is_inference()
    u, delta, A, B, C, D, z, delta_bias = (t.requires_grad_() for t in inputs.values())
    multi_scan(u, delta, A, B, C, paths, D, z, delta_bias, True).sum().backward()
    assert u.grad is not None and torch.isfinite(u.grad).all()


def test_graph_constants_keep_static_shapes_under_dynamic():
    """A path set whose size equals the batch is not tied to it by dynamo's duck sizing under ``dynamic=True``: one
    graph serves batches 2 and 3."""
    from torch._dynamo.testing import CompileCounterWithBackend

    def fn(x):
        paths = scan_paths.build("bidirectional", (5,))  # (2, 5)
        return x[..., paths[1]] * paths.shape[0]

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fn, fullgraph=True, backend=counter, dynamic=True)
    for batch in (2, 3):
        x = _randn(batch, 5, seed=batch)
        torch.testing.assert_close(compiled(x), fn(x))
    assert counter.frame_count == 1


@pytest.mark.parametrize("backend_name", ["torch", "triton"])
def test_dynamic_shapes_compile(backend_name):
    """``dynamic=True`` (what torch.compile falls back to after a batch of another size): the fakes and the autograd
    formula run on symbolic sizes; two batch sizes through one graph match eager."""
    from torch._dynamo.testing import CompileCounterWithBackend

    def fn(u, delta, A, B, C, D, z, delta_bias):
        paths = scan_paths.build("bidirectional", (5,))
        return multi_scan(u, delta, A, B, C, paths, D, z, delta_bias, True, "sum")

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fn, fullgraph=True, backend=counter, dynamic=True)
    with backend(backend_name):
        for batch in (3, 6):  # sizes no other axis has (dynamo's duck sizing would tie them to the batch)
            inputs = _scan_inputs(num_directions=2, length=5, dim=2, batch=batch)
            outs, grads = _grads_of(fn, inputs)
            outs_c, grads_c = _grads_of(compiled, inputs)
            torch.testing.assert_close(outs_c, outs, **TIGHT)
            torch.testing.assert_close(grads_c, grads, **TIGHT)
    assert counter.frame_count == 1


def test_inductor_runs_the_three_kernels():
    """One inductor graph around the conv, the scan along built paths and the norm (Triton backend, interpreter on
    the CPU): inductor checks the fakes' strides against the real outputs."""
    inputs = dict(_scan_inputs(num_directions=2, length=7), conv_weight=_randn(2, 3, 4, seed=9),
                  norm_weight=_randn(3, seed=10))

    def fn(u, delta, A, B, C, D, z, delta_bias, conv_weight, norm_weight):
        xs = causal_conv1d(u, conv_weight, None, [False, True], "silu", "triton")
        y = multi_scan(xs, delta, A, B, C, scan_paths.build("bidirectional", (7,)), D, z, delta_bias, True)
        return layer_norm(y.transpose(1, 2), norm_weight, None, backend="triton") * 2

    with backend("triton"):
        assert_compiled_matches_eager(fn, inputs, dict(rtol=1e-5, atol=1e-5), backend="inductor")

