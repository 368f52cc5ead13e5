"""vssm.flops: GEMMs and convolutions as multiply-adds, the scans by the 9 B L D N rule, the same on the reference and
the kernel paths; full-size counts against the official papers' tables."""
import pytest
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vssm.flops import FlopCount, count_flops
from vssm.ops import causal_conv1d, multi_scan, scan_paths, selective_scan

from .ops.scan_cases import KERNEL_DEVICE, backend


def _total(fn, *args, **kwargs) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


def test_gemms_and_convs_count_as_multiply_adds_and_the_mode_is_restored():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)).train()
    count = count_flops(model, torch.randn(1, 3, 6, 6))
    assert count == FlopCount(dense_macs=8 * 16 * 27 + 128 * 5, scan_flops=0)
    assert count.gflops == pytest.approx(4096e-9) and model.training


@pytest.mark.parametrize("kernel", ["torch", "triton"])
@pytest.mark.parametrize("with_d,with_z", [(False, False), (True, True)])
def test_selective_scan_counts_by_the_rule_on_both_backends(kernel, with_d, with_z):
    """9 B L D N, + B L D for D and for z; the chunked PyTorch path's own matmuls are not counted."""
    if kernel == "triton":
        pytest.importorskip("triton")
    batch, dim, length, d_state = 2, 6, 13, 4
    u, z, delta = (torch.randn(batch, dim, length, device=KERNEL_DEVICE) for _ in range(3))
    delta, A = delta.abs(), -torch.rand(dim, d_state, device=KERNEL_DEVICE)
    B, C = (torch.randn(batch, d_state, length, device=KERNEL_DEVICE) for _ in range(2))
    z = z if with_z else None
    D = torch.randn(dim, device=KERNEL_DEVICE) if with_d else None
    with backend(kernel):
        flops = _total(selective_scan, u, delta, A, B, C, D, z)
    assert flops == batch * length * dim * (9 * d_state + with_d + with_z)


def test_multi_scan_counts_every_direction_over_its_padded_path():
    """Local windows pad the path (5 x 3 in 2 x 2 windows: 24 steps for 15 tokens); padding steps count."""
    batch, dim, d_state = 1, 4, 2
    paths = scan_paths.build("local", (5, 3), directions=("h", "w2"))
    k, steps = paths.shape
    assert steps > 15
    u, delta = torch.randn(batch, dim, 15), torch.rand(batch, k, dim, 15)
    B, C = torch.randn(batch, k, d_state, 15), torch.randn(batch, k, d_state, 15)
    flops = _total(multi_scan, u, delta, -torch.rand(k, dim, d_state), B, C, paths, torch.randn(k, dim))
    assert flops == batch * k * dim * steps * (9 * d_state + 1)


def test_causal_conv_kernel_counts_as_the_reference_conv():
    pytest.importorskip("triton")
    x, weight, bias = (torch.randn(shape, device=KERNEL_DEVICE) for shape in ((2, 6, 11), (2, 6, 4), (2, 6)))
    counts = [_total(causal_conv1d, x, weight, bias, [False, True], backend=b) for b in ("torch", "triton")]
    assert counts == [2 * 2 * 2 * 6 * 11 * 4] * 2


@pytest.mark.parametrize("name,official", [("vmamba_tiny", 4.906), ("vmamba_tiny_v0", 5.627),
                                           ("plainmamba_l1", 3.02)])
def test_full_size_counts_match_the_official_tables(name, official):
    """The official fvcore / mmcv counts (fact sheets) also count the norms, which ours leaves out: within 1%."""
    model = timm.create_model(name)
    with backend("torch"):  # the count does not depend on the backend (tests above); the interpreter is slow
        count = count_flops(model, torch.randn(1, 3, 224, 224))
    assert count.gflops == pytest.approx(official, rel=0.01)
