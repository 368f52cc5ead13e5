"""layer_norm and rms_norm: the Triton kernels (interpreter on CPU) against the float64 references, forward and every
gradient; output dtypes; compile; bad input."""
import os

import pytest
import torch

from vssm.ops.layer_norm import layer_norm, layer_norm_ref, rms_norm, rms_norm_ref

from .scan_cases import KERNEL_DEVICE

triton_cpu = pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                                reason="the Triton kernels need CUDA or TRITON_INTERPRET=1")


def _inputs(shape, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    channels = shape[-1]
    x = (torch.randn(shape, generator=g) * 3 + 1).to(KERNEL_DEVICE, dtype).requires_grad_()
    w = (torch.rand(channels, generator=g) + 0.5).to(KERNEL_DEVICE).requires_grad_()
    b = torch.randn(channels, generator=g).to(KERNEL_DEVICE).requires_grad_() if bias else None
    return x, w, b


def _rms(x, w, b, eps, out_dtype=None, backend=None):
    return rms_norm(x, w, eps, out_dtype, backend)


def _rms_ref(x, w, b, eps, out_dtype=None):
    return rms_norm_ref(x, w, eps, out_dtype)


# (op, reference, has a bias)
NORMS = {"layer": (layer_norm, layer_norm_ref, True), "rms": (_rms, _rms_ref, False)}


def _grads(out, inputs, dy):
    present = [t for t in inputs if t is not None]
    return torch.autograd.grad(out, present, dy)


@triton_cpu
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (37, 96), (2, 5, 130), (1, 3, 3, 192)])
@pytest.mark.parametrize("kind,bias", [("layer", True), ("layer", False), ("rms", False)])
def test_triton_matches_float64_reference(shape, kind, bias):
    norm, ref, _ = NORMS[kind]
    x, w, b = _inputs(shape, torch.float32, bias)
    dy = torch.randn(shape, device=KERNEL_DEVICE)
    y = norm(x, w, b, 1e-5, backend="triton")
    grads = _grads(y, (x, w, b), dy)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if bias else None
    y64 = ref(x64, w64, b64, 1e-5)
    grads64 = _grads(y64, (x64, w64, b64), dy.double())
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    for g, g64 in zip(grads, grads64):
        torch.testing.assert_close(g.double(), g64, rtol=1e-4, atol=1e-4)


@triton_cpu
@pytest.mark.parametrize("in_dtype,out_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16),
                                                (torch.bfloat16, torch.float32), (torch.float16, torch.float16)])
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_triton_low_precision_in_and_out(in_dtype, out_dtype, kind):
    norm, reference, has_bias = NORMS[kind]
    x, w, b = _inputs((29, 48), in_dtype, has_bias)
    dy = torch.randn(29, 48, device=KERNEL_DEVICE).to(out_dtype)
    y = norm(x, w, b, 1e-6, out_dtype, backend="triton")
    assert y.dtype == out_dtype
    grads = _grads(y, (x, w, b), dy)
    ref = reference(x, w, b, 1e-6, out_dtype)
    ref_grads = _grads(ref, (x, w, b), dy)
    assert grads[0].dtype == in_dtype and grads[1].dtype == torch.float32
    tol = 2e-2 if torch.bfloat16 in (in_dtype, out_dtype) else 4e-3
    torch.testing.assert_close(y.float(), ref.float(), rtol=tol, atol=tol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.float(), r.float(), rtol=tol, atol=tol * 4)


@triton_cpu
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_triton_reads_strided_rows_and_many_row_blocks(kind):
    """Rows of a sliced tensor (row stride != C) and more row blocks than backward programs."""
    norm, reference, has_bias = NORMS[kind]
    base, w, b = _inputs((300, 2, 24), torch.float32, has_bias)
    x = base[:, 1]  # (300, 24) with row stride 48
    dy = torch.randn(300, 24, device=KERNEL_DEVICE)
    y = norm(x, w, b, 1e-5, backend="triton")
    grads = _grads(y, (base, w, b), dy)
    ref = reference(x, w, b, 1e-5)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, _grads(ref, (base, w, b), dy)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


@triton_cpu
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_op_registration_compiles(kind):
    """The custom op's fake and autograd formula: torch.compile (fullgraph) gives the eager numbers and grads."""
    norm, _, has_bias = NORMS[kind]
    x, w, b = _inputs((6, 40), torch.float32, has_bias)

    def fn(x, w, b):
        return norm(x, w, b, 1e-5, torch.bfloat16, backend="triton").float().sum()

    eager = _grads(fn(x, w, b), (x, w, b), None)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for g, e in zip(_grads(compiled(x, w, b), (x, w, b), None), eager):
        torch.testing.assert_close(g, e)


@triton_cpu
def test_rms_op_exports():
    """torch.export traces the custom op (fake shapes: no mean buffer for RMSNorm) and runs the kernels."""
    x, w, _ = _inputs((5, 24), torch.float32, False)

    class Norm(torch.nn.Module):
        def forward(self, x, w):
            return rms_norm(x, w, 1e-5, backend="triton")

    program = torch.export.export(Norm(), (x.detach(), w.detach()))
    assert any("layer_norm_fwd" in str(node.target) for node in program.graph.nodes)
    torch.testing.assert_close(program.module()(x.detach(), w.detach()), rms_norm_ref(x, w, 1e-5), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("change,exc,match", [
    (dict(weight=torch.ones(5)), ValueError, "weight must be"),
    (dict(bias=torch.ones(3, 4)), ValueError, "bias must be"),
    (dict(x=torch.ones(2, 4, dtype=torch.int64)), TypeError, "floating tensor"),
])
def test_bad_input_names_the_argument(change, exc, match):
    args = dict(x=torch.randn(2, 4), weight=torch.ones(4), bias=torch.zeros(4))
    args.update(change)
    with pytest.raises(exc, match=match):
        layer_norm(args["x"], args["weight"], args["bias"])


@pytest.mark.parametrize("x,weight,exc,match", [
    (torch.randn(2, 4), torch.ones(5), ValueError, "rms_norm: weight must be \\(C,\\) = \\(4,\\)"),
    (torch.randn(2, 4), None, ValueError, "rms_norm: weight must be"),
    (torch.ones(2, 4, dtype=torch.int32), torch.ones(4), TypeError, "rms_norm: x must be a floating tensor"),
])
def test_rms_bad_input_names_the_argument(x, weight, exc, match):
    with pytest.raises(exc, match=match):
        rms_norm(x, weight)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend must be"):
        layer_norm(torch.randn(2, 4), torch.ones(4), None, backend="cuda")
