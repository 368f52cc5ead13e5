"""vssm.flops: GEMMs and convolutions as multiply-adds, the scans by the 9 B L D N rule, the same on the reference and
the kernel paths; full-size counts against the official papers' tables; S4ND's FFT convolution by its rule (a hand
count on a small layer), its complex kernel-generation GEMMs kept out of the dense count."""
import pytest
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vssm.flops import FlopCount, count_flops
from vssm.layers.s4nd import S4ND
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


def test_s4nd_fft_convolution_counted_by_the_rule():
    """A 1-D S4ND (H = 2, N = 2, bidirectional, l_max 4) on (1, 2, 4): hand count 2732 real flops (kernel generation
    1936, FFTs 3 x 240, spectral product 60, D skip 16; tests/layers/test_s4nd.py itemises it); the Cauchy sums run as
    complex GEMMs, which the dense count leaves out."""
    torch.manual_seed(0)
    layer = S4ND(2, d_state=4, l_max=4, dim=1, init="legs")
    x = torch.randn(1, 2, 4)
    count = count_flops(layer, x)
    assert count.dense_macs == 0 and count.scan_flops == 0 and count.s4nd_flops == 2732
    assert count.s4nd["kernel"] == 1936 and count.gflops == pytest.approx(2732e-9)
    assert _total(layer, x) > 0  # torch's counter alone counts the complex GEMMs


def test_s4nd_output_linear_is_a_dense_gemm():
    """The ViT token mixer: its output linear (2 H * channels -> 2 H with the GLU) is a GEMM; the rest is S4ND's."""
    torch.manual_seed(0)
    layer = S4ND(4, d_state=4, l_max=6, dim=1, channels=2, transposed=False, linear=False, final_act="glu")
    x = torch.randn(2, 6, 4)
    count = count_flops(layer, x)
    assert count.dense_macs == 2 * 6 * (4 * 2) * (2 * 4)
    assert count.s4nd_flops == sum(layer.fft_conv_flops(x.shape).values())


def test_model_count_adds_every_s4nd():
    model = timm.create_model("test_s4nd_convnext")
    x = torch.randn(1, 3, 32, 32)
    shapes = []
    for m in model.modules():
        if isinstance(m, S4ND):
            m.register_forward_pre_hook(lambda mod, args: shapes.append((mod, args[0].shape)))
    count = count_flops(model, x)
    assert len(shapes) == 1 + 3 + 4  # stem, downsamples, blocks
    assert count.s4nd_flops == sum(sum(m.fft_conv_flops(shape).values()) for m, shape in shapes)
    assert count.gflops == pytest.approx((count.dense_macs + count.s4nd_flops) / 1e9)
