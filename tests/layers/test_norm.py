"""LayerNorm module: nn.LayerNorm's numbers and state dict, output dtypes under autocast, TorchScript and FX."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vssm.layers.norm import LayerNorm


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
