"""Separable N-D FFT convolution (vssm.ops.fft_conv) against convolution by its definition: causal and bidirectional
kernels in 1-D, 2-D and 3-D, tensor rank, the dense (out_channels) contraction, gradients, dtypes and autocast."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from vssm.ops.fft_conv import bidirectional_kernel, fft_conv_nd, fft_conv_nd_ref, kernel_spectra


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def direct_conv(u, taps):
    """Linear convolution by definition with a separable kernel given per axis as {offset: r(C, H)} dicts:
    y[b, c, h, x] = sum over offset tuples j of prod_i k_i[j_i][c, h] * u[b, h, x - j] (zero outside)."""
    batch, H, *lengths = u.shape
    channels = next(iter(taps[0].values())).shape[0]
    y = torch.zeros(batch, channels, H, *lengths, dtype=u.dtype)
    for x in itertools.product(*[range(n) for n in lengths]):
        for offsets in itertools.product(*[list(t.items()) for t in taps]):
            src = tuple(xi - j for xi, (j, _) in zip(x, offsets))
            if all(0 <= s < n for s, n in zip(src, lengths)):
                weight = torch.ones(channels, H, dtype=u.dtype)
                for _, k in offsets:
                    weight = weight * k
                y[(slice(None), slice(None), slice(None), *x)] += weight[None] * u[(slice(None), slice(None), *src)][
                    :, None]
    return y


@pytest.mark.parametrize("lengths, klens", [((7,), (3,)), ((5, 4), (2, 5)), ((3, 4, 2), (2, 3, 2))])
def test_causal_matches_definition(lengths, klens):
    u = rand(2, 3, *lengths)
    kernels = [rand(2, 3, k, seed=i + 1) for i, k in enumerate(klens)]
    taps = [{j: k[..., j] for j in range(k.shape[-1])} for k in kernels]
    expected = direct_conv(u, taps)
    torch.testing.assert_close(fft_conv_nd(u, kernels), expected)
    torch.testing.assert_close(fft_conv_nd_ref(u, kernels), expected)


@pytest.mark.parametrize("lengths, klens", [((6,), (4,)), ((4, 5), (3, 2)), ((3, 2, 4), (2, 2, 3))])
def test_bidirectional_matches_definition(lengths, klens):
    """Forward tap j at offset j, backward tap m at offset -(m + 1): no zero-offset backward tap."""
    u = rand(1, 2, *lengths)
    raw = [rand(4, 2, k, seed=i + 1) for i, k in enumerate(klens)]  # (2C, H, K): forward then backward halves
    kernels = [bidirectional_kernel(k, n) for k, n in zip(raw, lengths)]
    assert [k.shape[-1] for k in kernels] == [n + k for n, k in zip(lengths, klens)]
    taps = []
    for k in raw:
        fwd, bwd = k[:2], k[2:]
        axis = {j: fwd[..., j] for j in range(k.shape[-1])}
        for m in range(k.shape[-1]):
            axis[-(m + 1)] = bwd[..., m]
        taps.append(axis)
    expected = direct_conv(u, taps)
    sizes = [k.shape[-1] for k in kernels]  # the official FFT size L + K
    torch.testing.assert_close(fft_conv_nd(u, kernels, fft_sizes=sizes), expected)
    torch.testing.assert_close(fft_conv_nd_ref(u, kernels, fft_sizes=sizes), expected)


def test_one_dimensional_causal_is_conv1d():
    u, k = rand(2, 3, 9), rand(1, 3, 4, seed=1)
    expected = F.conv1d(F.pad(u, (3, 0)), k[0].flip(-1)[:, None], groups=3)  # cross-correlation with a flipped kernel
    torch.testing.assert_close(fft_conv_nd(u, [k])[:, 0], expected)


@pytest.mark.parametrize("lengths", [(5,), (4, 3), (3, 2, 3)])
@pytest.mark.parametrize("rank, out_channels", [(1, None), (2, None), (1, 3), (2, 2)])
def test_rank_and_dense_match_reference(lengths, rank, out_channels):
    channels = 2 * (out_channels or 1) * rank
    u = rand(2, 3, *lengths)
    kernels = [rand(channels, 3, n + 1, seed=i + 1) for i, n in enumerate(lengths)]
    y = fft_conv_nd(u, kernels, rank=rank, out_channels=out_channels)
    expected_shape = (2, 2, out_channels, *lengths) if out_channels else (2, 2, 3, *lengths)
    assert y.shape == expected_shape
    torch.testing.assert_close(y, fft_conv_nd_ref(u, kernels, rank=rank, out_channels=out_channels))


def test_rank_is_mean_of_separable_terms():
    u = rand(1, 2, 4, 3)
    k0, k1 = rand(4, 2, 2, seed=1), rand(4, 2, 3, seed=2)  # rank 2 x 2 channels, rank outermost
    y = fft_conv_nd(u, [k0, k1], rank=2)
    terms = [fft_conv_nd(u, [k0[2 * r:2 * r + 2], k1[2 * r:2 * r + 2]]) for r in range(2)]
    torch.testing.assert_close(y, (terms[0] + terms[1]) / 2)


def test_dense_sums_features_with_own_kernels():
    u = rand(2, 3, 5)
    k = rand(2 * 1, 3, 3, seed=1)  # out_channels 2, one channel: (I C) = (2, 1)
    y = fft_conv_nd(u, [k], out_channels=2)  # (B, 1, 2, L)
    per_feature = fft_conv_nd(u, [k])  # (B, 2, 3, L): every (i, h) pair
    torch.testing.assert_close(y[:, 0], per_feature.sum(2))


def test_precomputed_spectra():
    u = rand(2, 3, 4, 5)
    kernels = [rand(2, 3, 3, seed=1), rand(2, 3, 2, seed=2)]
    sizes = [7, 7]
    spectra = kernel_spectra(kernels, sizes)
    torch.testing.assert_close(fft_conv_nd(u, fft_sizes=sizes, spectra=spectra), fft_conv_nd(u, kernels, sizes))


def test_gradients():
    u = rand(1, 2, 4, 3).requires_grad_()
    kernels = [bidirectional_kernel(rand(4, 2, 2, seed=1), 4).requires_grad_(),
               bidirectional_kernel(rand(4, 2, 3, seed=2), 3).requires_grad_()]
    sizes = [k.shape[-1] for k in kernels]
    assert torch.autograd.gradcheck(lambda u, a, b: fft_conv_nd(u, [a, b], sizes), (u, *kernels))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_compute_in_float32(dtype):
    u = rand(2, 3, 6, 5, dtype=dtype)
    kernels = [rand(2, 3, 3, seed=1, dtype=torch.float32), rand(2, 3, 2, seed=2, dtype=torch.float32)]
    y = fft_conv_nd(u, kernels)
    assert y.dtype == dtype
    expected = fft_conv_nd_ref(u.double(), [k.double() for k in kernels])
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 3e-3}[dtype]
    torch.testing.assert_close(y.double(), expected, atol=tol * expected.abs().max().item(), rtol=tol)


def test_bf16_autocast_runs_ffts_in_float32():
    u = rand(2, 3, 8, dtype=torch.float32)
    k = rand(2, 3, 5, seed=1, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fft_conv_nd(u, [k])
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, fft_conv_nd(u, [k]))  # no bf16 rounding anywhere inside
