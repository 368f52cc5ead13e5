"""Every model family under ``torch.compile(fullgraph=True)``: no graph break anywhere in the forward (the vssm ops are
registered custom ops; scan paths and route tables are graph constants), and the compiled model gives the eager
outputs and the same input and parameter gradients.

Backend ``aot_eager`` (dynamo and AOTAutograd, the graphs run by eager ATen): it needs from the model code what
``inductor`` needs (one graph, fake tensors through every op, the custom ops' autograd formulas) at a fraction of the
CPU compile time. Each case is its family's smallest variant, cut to the fewest blocks that still run every kind of
block (first and later blocks, every stage), in train mode without drop paths (deterministic), at a 32 px side (video:
2 frames). The ops run as eager runs them on the CPU (the PyTorch paths; ``tests/ops/test_compile.py`` covers the
Triton kernels under compile). S4ND's kernel-generation and FFT-convolution ops are another suite's subject; its tiny
variants are here as models."""
import pytest
import timm
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import vssm  # noqa: F401  (registers the zoo)
from vssm.models.local_vmamba import LOCAL_VIM_TINY_ROUTES, LOCAL_VMAMBA_TINY_ROUTES

TOL = dict(rtol=1e-5, atol=1e-6)

# (case id, registered name, create_model kwargs, input shape (batch 2), slow): one case of every family in the
# default run
CASES = [
    ("vim", "test_vim", dict(img_size=32, depth=2), (2, 3, 32, 32), False),
    ("vmamba_v2", "test_vmamba", dict(depths=(1, 1, 1, 1)), (2, 3, 32, 32), False),
    ("vmamba_v0", "vmamba_tiny_v0", dict(depths=(1, 1, 1, 1), dims=(16, 16, 16, 16), d_state=4), (2, 3, 32, 32),
     False),
    # a non-square map: the official un-scan of the column routes (a cached gather table) runs too
    ("local_vmamba", "test_local_vmamba", dict(depths=(1, 1, 1, 1), directions=LOCAL_VMAMBA_TINY_ROUTES[:4]),
     (2, 3, 32, 64), False),
    ("local_vim", "test_local_vim", dict(img_size=32, directions=LOCAL_VIM_TINY_ROUTES[:2]), (2, 3, 32, 32), False),
    ("plainmamba", "test_plainmamba", dict(depth=2), (2, 3, 32, 32), False),
    ("simba_einfft", "test_simba", dict(), (2, 3, 32, 32), False),
    ("simba_mlp", "test_simba", dict(channel_mixer="mlp"), (2, 3, 32, 32), False),
    ("videomamba", "test_videomamba", dict(img_size=32, num_frames=2, depth=2), (2, 3, 2, 32, 32), False),
    ("s4nd_vit", "test_s4nd_vit", dict(), (2, 3, 32, 32), False),
    ("s4nd_convnext", "test_s4nd_convnext", dict(), (2, 3, 32, 32), True),
]


pytestmark = pytest.mark.usefixtures("fresh_dynamo")  # tests/conftest.py


def _run(model, forward, x):
    """Output, input gradient and ``model``'s parameter gradients of ``forward(x)`` and a fixed weighted-sum loss."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = forward(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), x.grad, grads


def assert_same_step(model, compiled, x, tol=TOL):
    """``compiled`` gives ``model``'s eager output, input gradient and parameter gradients on x."""
    out, dx, grads = _run(model, model, x)
    out_c, dx_c, grads_c = _run(model, compiled, x)
    torch.testing.assert_close(out_c, out, **tol)
    torch.testing.assert_close(dx_c, dx, **tol)
    assert grads and grads_c.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(grads_c[name], grads[name], **tol, msg=lambda m: f"grad of {name}: {m}")


def _build(name, kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=10, drop_path_rate=0.0, **kwargs).train()


@pytest.mark.parametrize("name, kwargs, shape", [
    pytest.param(name, kwargs, shape, id=case, marks=pytest.mark.slow if slow else ())
    for case, name, kwargs, shape, slow in CASES])
def test_compiled_model_matches_eager(name, kwargs, shape):
    model = _build(name, kwargs)
    assert_same_step(model, torch.compile(model, fullgraph=True, backend="aot_eager"), torch.randn(shape))


def test_batch_change_recompiles_once_with_a_dynamic_batch():
    """A batch of another size (an epoch's last, smaller batch) makes torch.compile trace the model once more with a
    symbolic batch (the ops' fakes and autograd formulas on symbolic sizes); that graph serves every later size."""
    model = _build("test_vim", dict(img_size=32, depth=2))
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    for batch in (2, 3, 5):
        assert_same_step(model, compiled, torch.randn(batch, 3, 32, 32))
    assert counter.frame_count == 2


@pytest.mark.slow
def test_inductor_model_matches_eager():
    """The default torch.compile backend on one model (C++ code generation on the CPU: minutes); inductor fuses and
    reorders the float arithmetic around the ops."""
    model = _build("test_vmamba", dict(depths=(1, 1, 1, 1)))
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    assert_same_step(model, compiled, torch.randn(2, 3, 32, 32), tol=dict(rtol=1e-4, atol=1e-5))
