"""tools/benchmark_scan.py on the CPU: the sweep's configurations and inputs (the timings themselves need a GPU)."""
import argparse

import pytest
import torch

from vssm.ops import selective_scan
from vssm.ops.triton.scan_plan import TILE_OVERRIDES, backward_plan, overrides_key

from .helpers import load_tool


@pytest.mark.parametrize("shape, cl", [((64, 768, 197, 16), False), ((128, 128, 3136, 64), True),
                                       ((64, 384, 3136, 1), True)])
def test_sweep_holds_the_default_backward_plan_and_the_length_split(shape, cl):
    """The backward the GPU plans for a shape (Vim's layer, SiMBA's stage 1, VMamba's N = 1) is among the swept
    configurations (so the sweep compares against it), beside segment counts for the length split."""
    tool = load_tool("benchmark_scan")
    batch, dim, steps, d_state = shape
    TILE_OVERRIDES["gpu_plan"] = True
    try:
        plan = backward_plan(d_state, dim, batch * dim, steps, cl, False, overrides_key())
    finally:
        TILE_OVERRIDES.pop("gpu_plan")
    configs = tool.sweep_configs(d_state)
    assert dict(chunk=plan.chunk, bwd=(plan.block_d, plan.num_warps), states_middle=plan.states_middle) in configs
    assert [c["segments"] for c in configs if "segments" in c] == [1, 2, 4, 8, 16]


def test_channels_last_inputs_are_the_models_views():
    tool = load_tool("benchmark_scan")
    x = tool.scan_inputs(2, 6, 9, 4, device="cpu", requires_grad=True, channels_last=True)
    assert x["u"].shape == x["delta"].shape == (2, 6, 9) and x["u"].stride() == (54, 1, 6)
    assert x["B"].shape == x["C"].shape == (2, 4, 9) and x["B"].stride() == (72, 1, 8)
    y = selective_scan(**x, delta_softplus=True, a_nonpositive=True)
    y.sum().backward()
    assert y.shape == (2, 6, 9) and torch.isfinite(y).all()


def test_sweep_shapes_are_checked():
    tool = load_tool("benchmark_scan")
    assert tool.parse_shape("128,640,196,64") == (128, 640, 196, 64)
    with pytest.raises(argparse.ArgumentTypeError, match="4 positive integers"):
        tool.parse_shape("128,640,196")
