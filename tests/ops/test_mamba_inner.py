"""mamba_inner: the fused autograd node (GEMMs and Triton kernels, interpreter on CPU) against the composed PyTorch
ops in float64, forward and every gradient, for one and two directions, both merges, padded and unpadded dt
projections; bf16 autocast; no-grad calls; the module path; bad shapes, dtypes and devices."""
import pytest
import torch

from vssm.layers.mamba_mixer import MambaMixer
from vssm.ops import mamba_inner, mamba_inner_composed

from .scan_cases import KERNEL_DEVICE, backend, record_saved_bytes, rel_err

PARAMS = ("x", "in_proj_weight", "conv_weight", "conv_bias", "x_proj_weight", "dt_proj_weight", "dt_proj_bias",
          "A_log", "D", "out_proj_weight")

CASES = [  # directions, merge, N, R (R = 3 with N = 4 pads the dt projection to 8 columns), conv width, batch, L
    (2, "mean", 4, 3, 4, 2, 13),
    (2, "sum", 1, 5, 3, 1, 17),
    (1, "mean", 16, 2, 4, 1, 9),
    (1, "sum", 2, 12, 2, 2, 1),
]


def _inputs(k, d_state, rank, width, batch, length, dim=5, inner=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(batch, length, dim, generator=g),
                in_proj_weight=torch.randn(2 * inner, dim, generator=g) / dim ** 0.5,
                conv_weight=torch.randn(k, inner, width, generator=g) / width ** 0.5,
                conv_bias=torch.randn(k, inner, generator=g) * 0.1,
                x_proj_weight=torch.randn(k, rank + 2 * d_state, inner, generator=g) / inner ** 0.5,
                dt_proj_weight=torch.randn(k, inner, rank, generator=g) / rank ** 0.5,
                dt_proj_bias=torch.empty(k, inner).uniform_(-4.0, -1.0, generator=g),
                A_log=torch.empty(k, inner, d_state).uniform_(-1.0, 1.5, generator=g),
                D=torch.randn(k, inner, generator=g),
                out_proj_weight=torch.randn(dim, inner, generator=g) / inner ** 0.5)


def _run(fn, inputs, reverse, merge, weights, to64=False):
    leaves = {k: (v.double() if to64 else v).detach().clone().to(KERNEL_DEVICE).requires_grad_(True)
              for k, v in inputs.items()}
    args = [leaves[name] for name in PARAMS]
    y = fn(*args[:4], reverse, *args[4:], merge)
    grads = torch.autograd.grad((y.double() * weights).sum(), args)
    return y.detach(), dict(zip(PARAMS, grads)), y.grad_fn


@pytest.mark.parametrize("k,merge,d_state,rank,width,batch,length", CASES,
                         ids=[f"K{c[0]}-{c[1]}-N{c[2]}-R{c[3]}-L{c[6]}" for c in CASES])
def test_fused_matches_composed_float64(k, merge, d_state, rank, width, batch, length):
    pytest.importorskip("triton")
    inputs = _inputs(k, d_state, rank, width, batch, length, seed=length)
    reverse = [False, True][:k]
    weights = torch.randn(batch, length, 5, dtype=torch.float64, device=KERNEL_DEVICE)
    with backend("torch"):
        y_ref, g_ref, _ = _run(mamba_inner_composed, inputs, reverse, merge, weights, to64=True)
    with backend("triton"):
        y, grads, grad_fn = _run(mamba_inner, inputs, reverse, merge, weights)
    assert type(grad_fn).__name__ == "_FusedMambaInnerBackward"
    assert y.shape == (batch, length, 5) and y.dtype == torch.float32
    assert rel_err(y, y_ref) < 2e-5
    for name in PARAMS:
        assert grads[name].shape == inputs[name].shape and grads[name].dtype == torch.float32, name
        assert rel_err(grads[name], g_ref[name]) < 1e-4, name


def test_fused_under_bf16_autocast_matches_composed():
    """Under autocast both run the GEMMs, conv and scan in bf16 and return bf16; the gradients reach the float32
    input and parameters in their dtypes."""
    pytest.importorskip("triton")
    inputs = _inputs(2, 4, 3, 4, 2, 11, seed=3)
    weights = torch.randn(2, 11, 5, dtype=torch.float64, device=KERNEL_DEVICE)
    results = []
    for fn in (mamba_inner_composed, mamba_inner):
        with backend("triton"), torch.autocast(KERNEL_DEVICE, dtype=torch.bfloat16):
            results.append(_run(fn, inputs, [False, True], "mean", weights))
    (y_ref, g_ref, _), (y, grads, grad_fn) = results
    assert type(grad_fn).__name__ == "_FusedMambaInnerBackward" and y.dtype == torch.bfloat16
    assert rel_err(y, y_ref) < 1e-2
    for name in PARAMS:
        assert grads[name].dtype == torch.float32, name
        assert rel_err(grads[name], g_ref[name]) < 3e-2, name


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16"])
def test_recompute_levels_save_less_and_give_the_same_gradients(monkeypatch, autocast):
    """Level 0 saves the conv output, delta and the scan's chunk states; level 1 neither the conv output nor delta;
    level 2 nor the states; level 3 nor the scan output: the backward recomputes them bitwise, so outputs and every
    gradient are identical."""
    pytest.importorskip("triton")
    inputs = _inputs(2, 4, 3, 4, 2, 21, seed=7)
    weights = torch.randn(2, 21, 5, dtype=torch.float64, device=KERNEL_DEVICE)
    saved = record_saved_bytes(monkeypatch)
    results = []
    for level in (0, 1, 2, 3):
        with backend("triton"), torch.autocast(KERNEL_DEVICE, dtype=torch.bfloat16, enabled=autocast):
            results.append(_run(lambda *a: mamba_inner(*a, recompute=level), inputs, [False, True], "mean", weights))
    assert len(saved) == 4 and saved[0] > saved[1] > saved[2] > saved[3]
    (y0, g0, _), *others = results
    for y, grads, grad_fn in others:
        assert type(grad_fn).__name__ == "_FusedMambaInnerBackward" and torch.equal(y, y0)
        for name in PARAMS:
            assert torch.equal(grads[name], g0[name]), name


@pytest.mark.parametrize("variant", ["triton", "triton-seq", "triton-gpu-plan"])
def test_states_only_forward_gives_the_training_forwards_states(variant):
    """scan_fwd_triton(write_y=False), level 2's recompute: the chunk states and last state of the training forward,
    bitwise, from the chunk kernels and the step-by-step one, without an output."""
    pytest.importorskip("triton")
    from vssm.ops.mamba_inner import sequence_paths
    from vssm.ops.triton.scan import scan_fwd_triton

    g = torch.Generator().manual_seed(11)
    batch, k, dim, d_state, length = 2, 2, 6, 4, 37
    args = [torch.randn(batch, k, dim, length, generator=g), torch.randn(batch, k, dim, length, generator=g) - 1,
            -torch.rand(k, dim, d_state, generator=g), torch.randn(batch, k, 1, d_state, length, generator=g),
            torch.randn(batch, k, 1, d_state, length, generator=g), torch.randn(k, dim, generator=g),
            torch.randn(batch, dim, length, generator=g), torch.randn(k, dim, generator=g)]
    args = [t.to(KERNEL_DEVICE) for t in args] + [sequence_paths(k, length, torch.device(KERNEL_DEVICE))]
    options = dict(delta_softplus=True, merge=True, params_at_step=False, save_states=True, a_nonpositive=True)
    with backend(variant):
        y, last, states = scan_fwd_triton(*args, **options)
        none, last_only, states_only = scan_fwd_triton(*args, **options, write_y=False)
    assert y.shape == (batch, dim, length) and none is None
    assert states.numel() > 0 and torch.equal(states_only, states) and torch.equal(last_only, last)


def test_activation_recompute_reaches_every_mixer():
    from vssm.layers.mamba_mixer import set_activation_recompute

    model = torch.nn.Sequential(MambaMixer(8, d_state=4), torch.nn.Linear(8, 8), MambaMixer(8, bidirectional=False))
    assert [m.recompute for m in model if isinstance(m, MambaMixer)] == [1, 1]  # the default
    assert set_activation_recompute(model, 2) == 2
    assert [m.recompute for m in model if isinstance(m, MambaMixer)] == [2, 2]
    assert set_activation_recompute(torch.nn.Linear(2, 2), 0) == 0
    with pytest.raises(ValueError, match="activation recompute level must be one of"):
        set_activation_recompute(model, 4)


def test_no_grad_call_builds_no_graph_and_saves_nothing(monkeypatch):
    pytest.importorskip("triton")
    inputs = {k: v.to(KERNEL_DEVICE).requires_grad_(True) for k, v in _inputs(2, 4, 3, 4, 1, 7).items()}
    args = [inputs[name] for name in PARAMS]
    saved = []
    monkeypatch.setattr(torch.autograd.function.FunctionCtx, "save_for_backward", lambda ctx, *t: saved.append(t))
    with backend("triton"), torch.no_grad():
        y = mamba_inner(*args[:4], [False, True], *args[4:], "mean")
        assert y.grad_fn is None and not saved
        expected = mamba_inner_composed(*args[:4], [False, True], *args[4:], "mean")
    assert rel_err(y, expected) < 2e-5


def test_mixer_runs_the_fused_node_and_the_torch_backend_the_composed_ops():
    mixer = MambaMixer(8, d_state=4, bidirectional=True).to(KERNEL_DEVICE)
    x = torch.randn(2, 7, 8, device=KERNEL_DEVICE)
    with backend("triton"):
        fused = mixer(x)
    with backend("torch"):
        composed = mixer(x)
    assert type(fused.grad_fn).__name__ == "_FusedMambaInnerBackward"
    assert type(composed.grad_fn).__name__ != "_FusedMambaInnerBackward"
    assert rel_err(fused.detach(), composed.detach()) < 2e-5


@pytest.mark.parametrize("change,error,match", [
    (dict(merge="max"), ValueError, "merge must be one of"),
    (dict(x=torch.randn(2, 5)), ValueError, "x must be a \\(batch, L, dim\\) tensor"),
    (dict(in_proj_weight=torch.randn(12, 4)), ValueError, "in_proj_weight must be \\(12, 5\\)"),
    (dict(x_proj_weight=torch.randn(2, 9, 6)), ValueError, "x_proj_weight must be \\(2, 11, 6\\)"),
    (dict(A_log=torch.randn(2, 6)), ValueError, "A_log must be \\(K, E, N\\) = \\(2, 6, N\\)"),
    (dict(out_proj_weight=torch.randn(6, 5)), ValueError, "out_proj_weight must be \\(5, 6\\)"),
    (dict(reverse=[False]), ValueError, "reverse must hold one flag per direction \\(K = 2\\)"),
    (dict(recompute=4), ValueError, "recompute must be one of \\(0, 1, 2, 3\\), got 4"),
    (dict(D=torch.ones(2, 6, dtype=torch.long)), TypeError, "mamba_inner: D must be float32"),
    (dict(conv_bias=torch.ones(2, 6, device="meta")), ValueError, "all tensors must be on one device"),
])
def test_bad_input_names_the_argument(change, error, match):
    args = dict(_inputs(2, 4, 3, 4, 1, 7), reverse=[False, True], merge="mean")
    args.update(change)
    with pytest.raises(error, match=match):
        mamba_inner(**args)
