"""The length split of the Triton scan (``vssm.ops.triton.scan``, 'Length split'): sequences cut into S segments run
by different programs, with a carry pass between them, forward and backward. Forced with ``TILE_OVERRIDES["segments"]``
(the interpreter plans S = 1), the split run equals the unsplit Triton run and the float64 reference: output, last
state and every gradient, the last state's included; N = 1 (the associative chunk recurrences) and N = 16 (step by step
in registers), with and without D, z and delta_bias, a ragged last segment, batch 1, channels-last and dim-major
layouts, two merged directions along paths with padding steps, forward chunks longer than the saved-state spacing.
The GPU plan splits few long rows and never many rows."""
import pytest
import torch

from vssm.ops import multi_scan, multi_scan_ref, scan_paths, selective_scan, selective_scan_ref
from vssm.ops.triton import scan as triton_scan
from vssm.ops.triton.scan_plan import TILE_OVERRIDES

from .scan_cases import KERNEL_DEVICE, backend, kernel_device, make_inputs, rel_err, run_with_grads

TOL = 2e-5  # outputs and last state; gradients 10x (the tolerances of test_selective_scan.py)


@pytest.fixture
def carry_passes(monkeypatch):
    """The carry passes the launchers run: (direction, segments) per call, 'fwd' or 'bwd'."""
    seen = []
    real = triton_scan._segment_carries

    def spy(ends, dt_sums, A, first, reverse):
        seen.append(("bwd" if reverse else "fwd", ends.shape[0] + 1))
        return real(ends, dt_sums, A, first, reverse)

    monkeypatch.setattr(triton_scan, "_segment_carries", spy)
    return seen


def _triton_run(run, overrides: dict):
    """``run()`` on the Triton backend with TILE_OVERRIDES ``overrides`` for its duration, over the interpreter's
    8-step chunks on any device unless ``overrides`` says otherwise (the cases' segment counts assume them)."""
    overrides = {"chunk": 8, "fwd_chunk": 8, **overrides}
    TILE_OVERRIDES.update(overrides)
    try:
        with backend("triton"):
            return run()
    finally:
        for key in overrides:
            TILE_OVERRIDES.pop(key)


def _close(actual, expected, tol, what):
    y, last, grads = actual
    y_ref, last_ref, g_ref = expected
    assert y.shape == y_ref.shape and last.shape == last_ref.shape
    assert rel_err(y, y_ref) < tol, f"{what}: y {rel_err(y, y_ref)}"
    assert rel_err(last, last_ref) < tol, f"{what}: last state {rel_err(last, last_ref)}"
    assert grads.keys() == g_ref.keys()
    for key, ref in g_ref.items():
        assert rel_err(grads[key], ref) < 10 * tol, f"{what}: grad {key} {rel_err(grads[key], ref)}"


def _check_split(reference, triton, segments: int, overrides: dict, carry_passes: list):
    """The float64 reference, the unsplit and the split Triton runs agree; the split run did split, forward and
    backward, into ``segments``."""
    expected = reference()
    unsplit = _triton_run(triton, overrides)
    assert not carry_passes
    split = _triton_run(triton, {**overrides, "segments": segments})
    assert carry_passes == [("fwd", segments), ("bwd", segments)]
    _close(unsplit, expected, TOL, "unsplit against the reference")
    _close(split, expected, TOL, "split against the reference")
    _close(split, unsplit, TOL, "split against unsplit")


def _slow_decay(inputs: dict) -> dict:
    """Inputs whose decays over a segment stay near 1 (|A| / 20), so that the carries weigh in every segment."""
    return {**inputs, "A": inputs["A"] / 20}


@pytest.mark.parametrize("d_state,extras,segments,batch,length", [
    (1, True, 3, 2, 150), (1, False, 4, 1, 131), (16, True, 2, 1, 150), (16, False, 3, 2, 97)])
def test_split_selective_scan(carry_passes, d_state, extras, segments, batch, length):
    """selective_scan split into 2-4 segments of 8-step chunks, the last one short (150 steps = 19 chunks in 7 + 7 +
    5, 10 + 9; 131 = 17 in 5 + 5 + 5 + 2; 97 = 13 in 5 + 5 + 3), N = 1 (the associative chunk recurrences) and 16
    (step by step), with and without D, z and delta_bias, a gradient on the output and on the last state."""
    inputs = _slow_decay(make_inputs(batch, 3, length, d_state, has_d=extras, has_z=extras, has_bias=extras,
                                     seed=length + d_state))
    g = torch.Generator().manual_seed(segments)
    w = torch.randn(batch, 3, length, generator=g, dtype=torch.float64)
    ws = torch.randn(batch, 3, d_state, generator=g, dtype=torch.float64)
    kwargs = dict(delta_softplus=True, a_nonpositive=True)
    _check_split(lambda: run_with_grads(selective_scan_ref, inputs, w, ws, True, delta_softplus=True),
                 lambda: run_with_grads(selective_scan, inputs, w, ws, False, **kwargs), segments, {}, carry_passes)


def test_split_with_long_forward_chunks_saves_every_state(carry_passes):
    """Forward chunks of 32 steps (4 saved states each) and 8-step backward chunks, split independently (the
    forward's 5 chunks into 3 segments of 2 + 2 + 1, the backward's 17 into 4 of 5 + 5 + 5 + 2)."""
    inputs = _slow_decay(make_inputs(1, 4, 135, 16, seed=7))
    g = torch.Generator().manual_seed(0)
    w, ws = torch.randn(1, 4, 135, generator=g, dtype=torch.float64), torch.randn(1, 4, 16, dtype=torch.float64)
    kwargs = dict(delta_softplus=True, a_nonpositive=True)
    expected = run_with_grads(selective_scan_ref, inputs, w, ws, True, delta_softplus=True)
    split = _triton_run(lambda: run_with_grads(selective_scan, inputs, w, ws, False, **kwargs),
                        {"fwd_chunk": 32, "segments": 4})
    assert carry_passes == [("fwd", 3), ("bwd", 4)]
    _close(split, expected, TOL, "split against the reference")


@pytest.mark.parametrize("write_y", [True, False])
def test_split_forward_saves_the_unsplit_states(write_y):
    """The training forward's saved chunk states (at their global indices, the backward's layout) and last state
    from a split forward, with and without the output (a backward's recompute), equal the unsplit forward's."""
    from vssm.ops.triton.scan import scan_fwd_triton

    inputs = _slow_decay(make_inputs(2, 3, 93, 4, seed=3))
    u, delta, A, B, C, D, z, bias = (inputs[k].to(KERNEL_DEVICE) for k in
                                     ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"))
    args = (u.unsqueeze(1), delta.unsqueeze(1), A.unsqueeze(0), B.view(2, 1, 1, 4, 93), C.view(2, 1, 1, 4, 93),
            D.unsqueeze(0), z, bias.unsqueeze(0), None)
    flags = dict(delta_softplus=True, merge=True, params_at_step=False, save_states=True, a_nonpositive=True,
                 write_y=write_y)
    outs = [_triton_run(lambda: scan_fwd_triton(*args, **flags), overrides) for overrides in ({}, {"segments": 3})]
    (y, last, states), (y_split, last_split, states_split) = outs
    assert states.shape == states_split.shape == (2, 1, 3, 12, 4)
    torch.testing.assert_close(states_split, states, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(last_split, last, rtol=1e-5, atol=1e-6)
    if write_y:
        torch.testing.assert_close(y_split, y, rtol=1e-5, atol=1e-5)
    else:
        assert y is None and y_split is None


def _multi_inputs(paths, length, d_state, dim=3, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    num_directions = paths.shape[0]
    return dict(x=torch.randn(batch, dim, length, generator=g),
                delta=torch.randn(batch, num_directions, dim, length, generator=g) * 0.5,
                A=(-torch.rand(num_directions, dim, d_state, generator=g) - 0.2) / 20,
                B=torch.randn(batch, num_directions, d_state, length, generator=g),
                C=torch.randn(batch, num_directions, d_state, length, generator=g),
                D=torch.randn(num_directions, dim, generator=g),
                z=torch.randn(batch, dim, length, generator=g),
                delta_bias=torch.randn(num_directions, dim, generator=g))


def _multi_run(fn, inputs, paths, weights, state_weights, to64, **kwargs):
    """fn on ``kernel_device()`` (layouts kept), merged over the directions, with the last state; backprop
    sum(y * weights) + sum(last * state_weights). Outputs and gradients back on the CPU."""
    device = kernel_device()
    leaves = {k: (v.double() if to64 else v.clone()).to(device).requires_grad_(True) for k, v in inputs.items()}
    y, last = fn(**leaves, paths=paths.to(device), delta_softplus=True, return_last_state=True, **kwargs)
    ((y.double() * weights.to(device)).sum() + (last.double() * state_weights.to(device)).sum()).backward()
    return y.detach().cpu(), last.detach().cpu(), {k: v.grad.cpu() for k, v in leaves.items()}


@pytest.mark.parametrize("layout,d_state,segments", [("channels_last", 1, 4), ("dim_major", 4, 3),
                                                     ("contiguous", 2, 2)])
def test_split_multi_scan_merges_two_directions_along_paths(carry_passes, layout, d_state, segments):
    """Two directions along local window routes (80 steps in 10 chunks split 3 + 3 + 3 + 1, 4 + 4 + 2 or 5 + 5; 17
    padding steps each: zero tokens that still decay) merged by the forward's atomics, the directions' dz summed by
    the backward's: channels-last x and delta (the 2-D models' layout), dim-major ones (the Mamba mixer's (K, dim,
    batch, L) buffers), contiguous."""
    paths = scan_paths.build("local", (9, 7), directions=("h", "w2_flip"))
    inputs = _multi_inputs(paths, 63, d_state, seed=segments)
    if layout == "channels_last":
        inputs["x"] = inputs["x"].transpose(1, 2).contiguous().transpose(1, 2)
        inputs["delta"] = inputs["delta"].permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    elif layout == "dim_major":
        inputs["x"] = inputs["x"].transpose(0, 1).contiguous().transpose(0, 1)
        inputs["delta"] = inputs["delta"].permute(1, 2, 0, 3).contiguous().permute(2, 0, 1, 3)
        inputs["z"] = inputs["z"].transpose(0, 1).contiguous().transpose(0, 1)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(2, 3, 63, generator=g, dtype=torch.float64)
    ws = torch.randn(2, 2, 3, d_state, generator=g, dtype=torch.float64)
    _check_split(lambda: _multi_run(multi_scan_ref, inputs, paths, w, ws, True),
                 lambda: _multi_run(multi_scan, inputs, paths, w, ws, False, a_nonpositive=True), segments, {},
                 carry_passes)


def test_no_split_without_the_promise(carry_passes):
    """Without the promise A <= 0 the override splits nothing: the carry pass's decay of a whole segment could
    overflow float32 where the step-by-step recurrence stays finite."""
    inputs = make_inputs(1, 2, 40, 2, seed=2)
    w, ws = torch.randn(1, 2, 40, dtype=torch.float64), torch.randn(1, 2, 2, dtype=torch.float64)
    split = _triton_run(lambda: run_with_grads(selective_scan, inputs, w, ws, False, delta_softplus=True),
                        {"segments": 3})
    assert not carry_passes
    _close(split, run_with_grads(selective_scan_ref, inputs, w, ws, True, delta_softplus=True), TOL, "unpromised")


def _gpu_segments(d_state, dim, rows, steps, cl, a_nonpositive=True):
    """(forward, backward) segments per sequence as on a GPU, for rows = batch x K x dim sequences."""
    from vssm.ops.triton.scan_plan import backward_plan, forward_plan, overrides_key, sequence_segments

    TILE_OVERRIDES["gpu_plan"] = True
    try:
        key = (d_state, dim, rows, steps, cl, False, overrides_key(), a_nonpositive)
        fwd, bwd = forward_plan(*key), backward_plan(*key)
        batch_k = rows // dim
        return (sequence_segments(fwd.d_blocks * batch_k, steps, fwd.chunk, a_nonpositive),
                sequence_segments(bwd.d_blocks * batch_k, steps, bwd.chunk, a_nonpositive))
    finally:
        TILE_OVERRIDES.pop("gpu_plan")


def test_gpu_plan_splits_few_long_rows_only():
    """U-Mamba_Enc 3-D's first stage (2 volumes of 128^3 tokens, d_inner 64, N = 16, dim-major: 32 forward and 64
    backward programs) splits into 16 and 8 segments (512 programs each); many rows (VMamba-T), short sequences,
    sequences of segments below 1024 steps, the interpreter's plan and an unpromised A do not split."""
    from vssm.ops.triton.scan_plan import sequence_segments

    assert _gpu_segments(16, 64, 2 * 64, 128 ** 3, False) == (16, 8)
    assert _gpu_segments(16, 64, 2 * 64, 128 ** 3, False, a_nonpositive=False) == (1, 1)
    assert _gpu_segments(1, 192, 128 * 4 * 192, 3136, True) == (1, 1)  # VMamba-T: many programs
    assert _gpu_segments(16, 64, 2 * 64, 4096, False) == (1, 1)  # short sequences
    assert _gpu_segments(16, 768, 2 * 768, 128 ** 3, False) == (1, 1)  # 384 / 768 programs fill the GPU
    TILE_OVERRIDES["gpu_plan"] = True
    try:
        assert sequence_segments(1, 8192, 32, True) == 8  # 256 wanted, capped at 8192 / 1024
        assert sequence_segments(131, 8192, 32, True) == 4  # 2 x 131 < 264
        assert sequence_segments(132, 8192, 32, True) == 1
        assert sequence_segments(0, 8192, 32, True) == 1  # an empty batch
    finally:
        TILE_OVERRIDES.pop("gpu_plan")
    assert sequence_segments(1, 128 ** 3, 32, True) == 1  # the interpreter plans no split
    TILE_OVERRIDES["segments"] = 64
    try:
        assert sequence_segments(1, 100, 8, True) == 13  # at most one segment per chunk
    finally:
        TILE_OVERRIDES.pop("segments")
