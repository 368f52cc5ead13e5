"""causal_conv1d: the reference against an explicit float64 loop; the Triton kernels (interpreter on CPU) against the
reference, forward and every gradient, on drawn shapes, directions, dtypes and strided layouts; the output layout;
compile; bad input."""
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vssm.ops import causal_conv1d, causal_conv1d_ref

from .scan_cases import KERNEL_DEVICE

triton_cpu = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="the Triton kernels need CUDA or TRITON_INTERPRET=1")


def loop_conv(x, weight, bias, reverse, silu):
    """out[b, k, d, t] by the definition, one tap at a time, in float64."""
    batch, dim, length = x.shape
    width = weight.shape[-1]
    out = torch.zeros(batch, len(reverse), dim, length, dtype=torch.float64)
    for k, rev in enumerate(reverse):
        for t in range(length):
            acc = bias[k].double().clone() if bias is not None else torch.zeros(dim, dtype=torch.float64)
            acc = acc.expand(batch, dim).clone()
            for j in range(width):
                src = t + (width - 1) - j if rev else t - (width - 1) + j
                if 0 <= src < length:
                    acc += weight[k, :, j].double() * x[:, :, src].double()
            out[:, k, :, t] = acc * torch.sigmoid(acc) if silu else acc
    return out


def _inputs(batch, dim, length, num_directions, width, bias, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, length, generator=g).to(KERNEL_DEVICE, dtype).requires_grad_()
    w = (torch.randn(num_directions, dim, width, generator=g) * 0.5).to(KERNEL_DEVICE).requires_grad_()
    b = (torch.randn(num_directions, dim, generator=g) * 0.1).to(KERNEL_DEVICE).requires_grad_() if bias else None
    return x, w, b


def _grads(out, inputs, dout):
    return torch.autograd.grad(out, [t for t in inputs if t is not None], dout)


@pytest.mark.parametrize("reverse", [[False], [True], [False, True]])
@pytest.mark.parametrize("silu", [True, False])
def test_reference_matches_the_definition(reverse, silu):
    x, w, b = (t.detach().double().cpu() for t in _inputs(2, 3, 7, len(reverse), 4, True, torch.float32))
    out = causal_conv1d_ref(x, w, b, reverse, "silu" if silu else None)
    torch.testing.assert_close(out, loop_conv(x, w, b, reverse, silu))


@triton_cpu
@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 3), dim=st.integers(1, 12), length=st.sampled_from([1, 2, 3, 7, 13, 31, 130]),
       reverse=st.sampled_from([[False], [True], [False, True], [False, True, True]]),
       width=st.integers(2, 4), bias=st.booleans(), silu=st.booleans())
def test_triton_matches_reference(batch, dim, length, reverse, width, bias, silu):
    x, w, b = _inputs(batch, dim, length, len(reverse), width, bias, torch.float32, seed=length + dim)
    act = "silu" if silu else None
    out = causal_conv1d(x, w, b, reverse, act, backend="triton")
    dout = torch.randn_like(out)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if bias else None
    ref = causal_conv1d_ref(x64, w64, b64, reverse, act)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(_grads(out, (x, w, b), dout), _grads(ref, (x64, w64, b64), dout.double())):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4)


@triton_cpu
def test_triton_backward_over_several_row_groups():
    """The backward sums its weight gradients over groups of batch rows per program: 19 rows make three groups, the
    last one short."""
    x, w, b = _inputs(19, 6, 23, 2, 4, True, torch.float32, seed=5)
    out = causal_conv1d(x, w, b, [False, True], backend="triton")
    dout = torch.randn_like(out)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = causal_conv1d_ref(x64, w64, b64, [False, True])
    for g, r in zip(_grads(out, (x, w, b), dout), _grads(ref, (x64, w64, b64), dout.double())):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4)


@triton_cpu
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float16, 4e-3)])
def test_triton_low_precision(dtype, tol):
    x, w, b = _inputs(2, 6, 37, 2, 4, True, dtype)
    out = causal_conv1d(x, w, b, [False, True], backend="triton")
    ref = causal_conv1d_ref(x, w, b, [False, True])
    assert out.dtype == dtype
    dout = torch.randn_like(out)
    grads, ref_grads = _grads(out, (x, w, b), dout), _grads(ref, (x, w, b), dout)
    assert [g.dtype for g in grads] == [dtype, torch.float32, torch.float32]
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.float(), r.float(), rtol=tol, atol=tol * 4)


@triton_cpu
@pytest.mark.parametrize("layout", ["dim_major", "channels_last"])
def test_triton_strided_input_and_output_layout(layout):
    """x as the Mamba mixer hands it over (a (B, E, L) view of a (E, B, L) buffer) or channels-last: the output keeps
    x's axis order with the directions outermost, and dx x's strides."""
    batch, dim, length = 3, 5, 11
    base = torch.randn(dim, batch, length) if layout == "dim_major" else torch.randn(batch, length, dim)
    base = base.to(KERNEL_DEVICE).requires_grad_()
    x = base.transpose(0, 1) if layout == "dim_major" else base.transpose(1, 2)
    _, w, b = _inputs(batch, dim, length, 2, 4, True, torch.float32)
    out = causal_conv1d(x, w, b, [False, True], backend="triton")
    ref = causal_conv1d_ref(x, w, b, [False, True])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    expected_order = [1, 2, 0, 3] if layout == "dim_major" else [1, 0, 3, 2]  # (K, x's axes outermost first)
    assert sorted(range(4), key=lambda a: -out.stride(a)) == expected_order
    dout = torch.randn_like(out)
    grads = _grads(out, (base, w, b), dout)
    assert grads[0].stride() == base.stride()
    for g, r in zip(grads, _grads(ref, (base, w, b), dout)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


@triton_cpu
def test_op_registration_compiles():
    """The custom op's fake and autograd formula: torch.compile (fullgraph) gives the eager numbers and grads."""
    x, w, b = _inputs(2, 4, 9, 2, 4, True, torch.float32)

    def fn(x, w, b):
        return (causal_conv1d(x, w, b, [False, True], backend="triton") ** 2).sum()

    eager = _grads(fn(x, w, b), (x, w, b), None)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for g, e in zip(_grads(compiled(x, w, b), (x, w, b), None), eager):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("change,exc,match", [
    (dict(x=torch.randn(2, 4)), ValueError, "x must be"),
    (dict(weight=torch.randn(1, 4, 4)), ValueError, "weight must be"),
    (dict(weight=torch.randn(2, 3, 4)), ValueError, "weight must be"),
    (dict(bias=torch.randn(2, 5)), ValueError, "bias must be"),
    (dict(x=torch.ones(2, 4, 6, dtype=torch.int64)), TypeError, "x must be a floating tensor"),
    (dict(activation="relu"), ValueError, "activation must be"),
])
def test_bad_input_names_the_argument(change, exc, match):
    args = dict(x=torch.randn(2, 4, 6), weight=torch.randn(2, 4, 4), bias=torch.zeros(2, 4), activation="silu")
    args.update(change)
    with pytest.raises(exc, match=match):
        causal_conv1d(args["x"], args["weight"], args["bias"], [False, True], args["activation"])


@triton_cpu
def test_wide_kernels_take_the_reference_by_default_and_are_refused_by_triton():
    x, w, b = _inputs(1, 3, 9, 1, 5, True, torch.float32)
    torch.testing.assert_close(causal_conv1d(x, w, b, [True]), causal_conv1d_ref(x, w, b, [True]))
    with pytest.raises(ValueError, match="widths up to 4"):
        causal_conv1d(x, w, b, [True], backend="triton")


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend must be"):
        causal_conv1d(torch.randn(2, 4, 6), torch.randn(1, 4, 4), None, [False], backend="cuda")
