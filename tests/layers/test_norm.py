"""LayerNorm and RmsNorm modules: nn.LayerNorm's / timm RmsNorm's numbers and state dicts, output dtypes under
autocast, TorchScript and FX."""
import os

import pytest
import timm.layers
import torch
import torch.nn.functional as F
from torch import nn

from vssm.layers.norm import LayerNorm, RmsNorm


def test_module_matches_nn_layer_norm_and_loads_its_state_dict():
    torch.manual_seed(0)
    ref = nn.LayerNorm(32, eps=1e-6)
    nn.init.normal_(ref.weight)
    nn.init.normal_(ref.bias)
    ours = LayerNorm(32, eps=1e-6)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("autocast_output,expected", [(False, torch.float32), (True, torch.bfloat16)])
def test_module_output_dtype_under_autocast(autocast_output, expected):
    norm = LayerNorm(16, autocast_output=autocast_output)
    x = torch.randn(3, 16)
    with torch.autocast("cpu", torch.bfloat16):
        y = norm(x)
    assert y.dtype == expected
    torch.testing.assert_close(y.float(), F.layer_norm(x, (16,), norm.weight, norm.bias), rtol=2e-2, atol=2e-2)
    assert norm(x).dtype == torch.float32  # without autocast: the input's dtype


def test_module_scripts_and_fx_traces():
    norm = LayerNorm(8)
    x = torch.randn(2, 8)
    torch.testing.assert_close(torch.jit.script(norm)(x), norm(x))
    from timm.layers import get_notrace_functions
    graph = torch.fx.GraphModule(norm, torch.fx.Tracer(autowrap_functions=tuple(get_notrace_functions())).trace(norm))
    torch.testing.assert_close(graph(x), norm(x))


def _timm_and_ours(channels=32, eps=1e-5, **kwargs):
    torch.manual_seed(0)
    ref = timm.layers.RmsNorm(channels, eps=eps)
    nn.init.normal_(ref.weight)
    ours = RmsNorm(channels, eps=eps, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def test_rms_module_matches_timm_rms_norm_and_loads_its_state_dict():
    ref, ours = _timm_and_ours()
    x = torch.randn(2, 5, 32, requires_grad=True)
    y, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y, y_ref)
    dy = torch.randn_like(y)
    for g, g_ref in zip(torch.autograd.grad(y, (x, ours.weight), dy), torch.autograd.grad(y_ref, (x, ref.weight), dy)):
        torch.testing.assert_close(g, g_ref)
    assert RmsNorm(8, affine=False)(x[..., :8]).shape == (2, 5, 8)


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the Triton kernel needs CUDA or TRITON_INTERPRET=1")
def test_rms_module_on_the_kernel_matches_timm(monkeypatch):
    """The module's kernel path (the default for CUDA tensors; forced here through the op's backend) against timm's
    RmsNorm, forward and gradients, in float32 and under bf16 autocast with a bf16 output."""
    import vssm.layers.norm as norm_module
    from vssm.ops.layer_norm import rms_norm

    monkeypatch.setattr(norm_module, "rms_norm", lambda *args: rms_norm(*args, backend="triton"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ref, ours = (module.to(device) for module in _timm_and_ours(48, autocast_output=True))
    x = torch.randn(3, 7, 48, device=device, requires_grad=True)
    dy = torch.randn(3, 7, 48, device=device)
    y, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(torch.autograd.grad(y, (x, ours.weight), dy), torch.autograd.grad(y_ref, (x, ref.weight), dy)):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)
    with torch.autocast(device, torch.bfloat16):
        y = ours(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("autocast_output,expected", [(False, torch.float32), (True, torch.bfloat16)])
def test_rms_module_output_dtype_under_autocast(autocast_output, expected):
    ref, ours = _timm_and_ours(16, autocast_output=autocast_output)
    x = torch.randn(3, 16)
    with torch.autocast("cpu", torch.bfloat16):
        y = ours(x)
    assert y.dtype == expected
    torch.testing.assert_close(y.float(), ref(x), rtol=2e-2, atol=2e-2)
    assert ours(x).dtype == torch.float32


def test_rms_module_scripts_and_fx_traces():
    _, norm = _timm_and_ours(8)
    x = torch.randn(2, 8)
    torch.testing.assert_close(torch.jit.script(norm)(x), norm(x))
    from timm.layers import get_notrace_functions
    graph = torch.fx.GraphModule(norm, torch.fx.Tracer(autowrap_functions=tuple(get_notrace_functions())).trace(norm))
    torch.testing.assert_close(graph(x), norm(x))
