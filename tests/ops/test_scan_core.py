"""scan_core helpers: the allocation-free dense-layout check agrees with the layouts ``torch.empty_like`` keeps; the
launch plans are named records and the kernel launchers take their flags by keyword."""
import pytest
import torch

from vssm.ops.scan_core import dense_strides

BASE = torch.zeros(2, 3, 4, 5)
LAYOUTS = {
    "contiguous": BASE,
    "transposed": BASE.transpose(1, 3),
    "permuted": BASE.permute(2, 0, 3, 1),
    "channels_last": BASE.contiguous(memory_format=torch.channels_last),
    "size_one_axis": torch.zeros(2, 1, 5).transpose(0, 1),
    "expanded": torch.zeros(2, 1, 5).expand(2, 3, 5),
    "sliced_last": BASE[..., :3],
    "strided_step": BASE[:, ::2],
    "leading_slice": BASE[1:],
    "overlapping": torch.zeros(8).as_strided((3, 4), (1, 1)),
    "scalar": torch.zeros(()),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_dense_strides_matches_empty_like(name):
    x = LAYOUTS[name]
    assert dense_strides(x) == (torch.empty_like(x).stride() == x.stride()), name


def test_launch_plans_are_named_records():
    """The plans are named records whose fields the launchers read by name; the forward's saved-state spacing is the
    backward's chunk, and the chunk-parallel forward's chunk a multiple of it."""
    from vssm.ops.triton.scan_plan import BackwardPlan, ForwardPlan, backward_plan, forward_plan

    for d_state, dim, rows, steps, cl in [(16, 192, 2 * 2 * 192, 197, False), (1, 96, 2 * 4 * 96, 3136, True),
                                          (64, 8, 64, 40, False)]:
        fwd = forward_plan(d_state, dim, rows, steps, cl, False, ())
        bwd = backward_plan(d_state, dim, rows, steps, cl, False, ())
        assert isinstance(fwd, ForwardPlan) and isinstance(bwd, BackwardPlan)
        assert fwd.save_every == bwd.chunk and fwd.chunk % fwd.save_every == 0
        assert fwd.n_chunks == -(-steps // fwd.chunk) and bwd.n_chunks == -(-steps // bwd.chunk)
        assert fwd.block_n == bwd.block_n >= d_state
        assert fwd.d_blocks == -(-dim // fwd.block_d) and bwd.d_blocks == -(-dim // bwd.block_d)


def test_kernel_launchers_take_flags_by_keyword_only():
    """``scan_fwd_triton`` / ``scan_bwd_triton`` and the conv / norm launchers refuse positional flags."""
    import inspect

    pytest.importorskip("triton")
    from vssm.ops.triton.causal_conv import causal_conv1d_bwd_triton, causal_conv1d_fwd_triton
    from vssm.ops.triton.layer_norm import layer_norm_bwd_triton, layer_norm_fwd_triton
    from vssm.ops.triton.scan import scan_bwd_triton, scan_fwd_triton

    flags = {scan_fwd_triton: {"delta_softplus", "merge", "params_at_step", "save_states", "a_nonpositive", "write_y"},
             scan_bwd_triton: {"delta_softplus", "merge", "params_at_step", "a_nonpositive", "grad_BC_into",
                               "accumulators", "dz_into"},
             causal_conv1d_fwd_triton: {"silu"}, causal_conv1d_bwd_triton: {"silu", "dx_into"},
             layer_norm_fwd_triton: {"rms"}, layer_norm_bwd_triton: {"has_bias", "rms"}}
    for fn, names in flags.items():
        params = inspect.signature(fn).parameters.values()
        assert {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY} == names, fn.__name__
