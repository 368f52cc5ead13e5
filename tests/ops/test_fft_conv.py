"""Separable N-D FFT convolution (vssm.ops.fft_conv) against convolution by its definition: causal and bidirectional
kernels in 1-D, 2-D and 3-D, tensor rank, the dense (out_channels) contraction, gradients, dtypes and autocast; the
Toeplitz-matrix form and the real-valued direct form (the ONNX export's) against the FFT form; the flop count against
a hand count."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from vssm.ops.fft_conv import (bidirectional_kernel, conv_taps, direct_conv_nd, fft_conv_nd, fft_conv_nd_flops,
                                fft_conv_nd_ref, fft_flops, kernel_spectra, toeplitz_conv_nd, toeplitz_matrices)


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


# --- the direct (export) form --------------------------------------------------------------------------------------

def test_conv_taps_place_forward_and_backward_offsets():
    """A bidirectional kernel of K taps over L = 6 inputs: forward tap j at offset j, backward tap m at offset
    -(m + 1); trimmed to the 2K offsets that carry taps."""
    raw = rand(2, 3, 4)  # (2C, H, K): forward, backward
    kernel = bidirectional_kernel(raw, 6)  # for the FFT size L + K = 10, its own length
    taps, before = conv_taps(kernel, 6, 10)
    assert taps.shape == (1, 3, 8) and before == 4
    torch.testing.assert_close(taps[..., before:], raw[:1])  # offsets 0..3
    torch.testing.assert_close(taps[..., :before], raw[1:].flip(-1))  # offsets -4..-1: backward taps 3..0
    full, full_before = conv_taps(kernel, 6, 10, trim=False)
    assert full.shape[-1] == 2 * 6 - 1 and full_before == 5


CASES = [  # lengths, kernel lengths, bidirectional, rank, out_channels
    ((7,), (3,), False, 1, None), ((5,), (5,), True, 1, None), ((5, 4), (2, 4), True, 1, None),
    ((3, 4, 2), (2, 3, 2), True, 2, None), ((6, 5), (3, 3), True, 1, 2), ((4, 3), (4, 3), False, 2, 3),
    ((5, 7), (6, 2), True, 1, None),  # a kernel longer than its axis: the circular wrap of the FFT form
]


@pytest.mark.parametrize("lengths, klens, bidirectional, rank, out_channels", CASES)
@pytest.mark.parametrize("batch", [1, 2])
def test_direct_conv_equals_fft_conv(lengths, klens, bidirectional, rank, out_channels, batch):
    channels = 2 * rank * (out_channels or 1)
    u = rand(batch, 3, *lengths)
    raw = [rand(channels * (2 if bidirectional else 1), 3, k, seed=i + 1) for i, k in enumerate(klens)]
    kernels = [bidirectional_kernel(k, n) for k, n in zip(raw, lengths)] if bidirectional else raw
    sizes = [n + k for n, k in zip(lengths, klens)]
    expected = fft_conv_nd(u, kernels, sizes, rank=rank, out_channels=out_channels)
    for trim in (True, False):
        taps = [conv_taps(k, n, f, trim=trim) for k, n, f in zip(kernels, lengths, sizes)]
        y = direct_conv_nd(u, taps, rank=rank, out_channels=out_channels)
        assert y.shape == expected.shape and y.dtype == u.dtype
        torch.testing.assert_close(y, expected, atol=1e-12, rtol=1e-12)
    u32 = u.float().requires_grad_()
    taps32 = [(t.float(), b) for t, b in (conv_taps(k, n, f) for k, n, f in zip(kernels, lengths, sizes))]
    y32 = direct_conv_nd(u32, taps32, rank=rank, out_channels=out_channels)
    torch.testing.assert_close(y32.double(), expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-5)
    weight = rand(*y32.shape, seed=9, dtype=torch.float32)
    (y32 * weight).sum().backward()
    u_ref = u.float().requires_grad_()
    (fft_conv_nd(u_ref, [k.float() for k in kernels], sizes, rank=rank, out_channels=out_channels) * weight).sum(
    ).backward()
    torch.testing.assert_close(u32.grad, u_ref.grad, atol=1e-5, rtol=1e-4)


# --- the Toeplitz form -----------------------------------------------------------------------------------------------

def test_toeplitz_matrices_hold_the_circular_offsets():
    """T[x, s] = k[(x - s) mod F]: a causal kernel of K = 2 taps over L = 4 (F = 6) is a lower band; a bidirectional
    kernel puts its backward taps above the diagonal; a kernel padded only to F = L wraps its taps around."""
    k = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64)
    (causal,) = toeplitz_matrices([k], [4])
    torch.testing.assert_close(causal[0, 0], torch.tensor([[1, 0, 0, 0], [2, 1, 0, 0], [0, 2, 1, 0], [0, 0, 2, 1]],
                                                          dtype=torch.float64))
    (wrapped,) = toeplitz_matrices([k], [4], [4])  # offset -3 = 1 mod 4
    torch.testing.assert_close(wrapped[0, 0], torch.tensor([[1, 0, 0, 2], [2, 1, 0, 0], [0, 2, 1, 0], [0, 0, 2, 1]],
                                                           dtype=torch.float64))
    raw = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]], dtype=torch.float64)  # forward (1, 2), backward (3, 4)
    (both,) = toeplitz_matrices([bidirectional_kernel(raw, 3)], [3], [5])  # offsets -1, -2: backward taps 0, 1
    torch.testing.assert_close(both[0, 0], torch.tensor([[1, 3, 4], [2, 1, 3], [0, 2, 1]], dtype=torch.float64))
    with pytest.raises(ValueError, match="shorter than the input length"):
        toeplitz_matrices([k], [4], [3])


TOEPLITZ_CASES = [  # lengths, kernel lengths, bidirectional, rank, channels
    ((7,), (3,), False, 1, 1), ((9,), (9,), True, 1, 2), ((5,), (2,), True, 2, 1),
    ((5, 4), (2, 4), True, 1, 1), ((3, 7), (3, 2), False, 1, 2), ((5, 7), (6, 2), True, 2, 2),
    ((3, 4, 5), (2, 3, 2), True, 1, 1), ((3, 2, 5), (3, 2, 5), False, 2, 2),
]


def toeplitz_case(lengths, klens, bidirectional, rank, channels, batch, seed=0):
    """Input, kernels and the official FFT sizes (L + K: the combined bidirectional kernel's own length)."""
    u = rand(batch, 3, *lengths, seed=seed)
    raw = [rand(rank * channels * (2 if bidirectional else 1), 3, k, seed=seed + i + 1) for i, k in enumerate(klens)]
    kernels = [bidirectional_kernel(k, n) for k, n in zip(raw, lengths)] if bidirectional else raw
    return u, kernels, [n + k for n, k in zip(lengths, klens)]


@pytest.mark.parametrize("lengths, klens, bidirectional, rank, channels", TOEPLITZ_CASES)
@pytest.mark.parametrize("batch", [1, 2])
def test_toeplitz_conv_equals_fft_conv(lengths, klens, bidirectional, rank, channels, batch):
    """Kernels shorter and longer than their axis, odd lengths, tensor rank and kernel channels, at the official FFT
    sizes, the default ones and FFT sizes equal to the lengths (kernel taps wrapped around and truncated): float64
    agreement with the FFT form and its reference."""
    u, kernels, official = toeplitz_case(lengths, klens, bidirectional, rank, channels, batch)
    for sizes in (official, None, list(lengths)):
        expected = fft_conv_nd(u, kernels, sizes, rank=rank)
        y = toeplitz_conv_nd(u, toeplitz_matrices(kernels, lengths, sizes), rank=rank)
        assert y.shape == expected.shape == (batch, channels, 3, *lengths) and y.dtype == torch.float64
        torch.testing.assert_close(y, expected, atol=1e-12, rtol=1e-12)
    y = toeplitz_conv_nd(u, toeplitz_matrices(kernels, lengths, official), rank=rank)
    torch.testing.assert_close(y, fft_conv_nd_ref(u, kernels, official, rank=rank), atol=1e-12, rtol=1e-12)


def test_toeplitz_gradcheck():
    """Gradients w.r.t. the input and the raw (bidirectional) kernels through the gather and the matrix products."""
    u = rand(2, 2, 3, 4).requires_grad_()
    raw = [rand(4, 2, 2, seed=1).requires_grad_(), rand(4, 2, 3, seed=2).requires_grad_()]  # rank 2, C = 1

    def conv(u, a, b):
        kernels = [bidirectional_kernel(a, 3), bidirectional_kernel(b, 4)]
        return toeplitz_conv_nd(u, toeplitz_matrices(kernels, (3, 4), (5, 7)), rank=2)

    assert torch.autograd.gradcheck(conv, (u, *raw))


@pytest.mark.parametrize("lengths, klens, bidirectional, rank, channels", TOEPLITZ_CASES[3:])
def test_toeplitz_gradients_equal_fft_gradients(lengths, klens, bidirectional, rank, channels):
    u, kernels, sizes = toeplitz_case(lengths, klens, bidirectional, rank, channels, batch=2)
    weight = rand(2, channels, 3, *lengths, seed=7)
    grads = []
    for conv in (lambda u, ks: fft_conv_nd(u, ks, sizes, rank=rank),
                 lambda u, ks: toeplitz_conv_nd(u, toeplitz_matrices(ks, lengths, sizes), rank=rank)):
        leaves = [u.detach().clone().requires_grad_()] + [k.detach().clone().requires_grad_() for k in kernels]
        (conv(leaves[0], leaves[1:]) * weight).sum().backward()
        grads.append([t.grad for t in leaves])
    for fft_grad, toeplitz_grad in zip(*grads):
        torch.testing.assert_close(toeplitz_grad, fft_grad, atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_toeplitz_computes_in_float32(dtype):
    """Any input dtype: float32 products (the result equals the float32 map of the same input, rounded once), the
    output in the input dtype, float32 under bf16 autocast too."""
    u = rand(2, 3, 6, 5, dtype=dtype)
    kernels = [rand(2, 3, 3, seed=1, dtype=torch.float32), rand(2, 3, 2, seed=2, dtype=torch.float32)]
    matrices = toeplitz_matrices(kernels, (6, 5))
    assert all(m.dtype == torch.float32 for m in matrices)
    expected = toeplitz_conv_nd(u.float(), matrices).to(dtype)
    y = toeplitz_conv_nd(u, matrices)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_autocast = toeplitz_conv_nd(u, matrices)
    assert y.dtype == y_autocast.dtype == dtype
    torch.testing.assert_close(y, expected, atol=0, rtol=0)
    torch.testing.assert_close(y_autocast, expected, atol=0, rtol=0)
    reference = fft_conv_nd_ref(u.double(), [k.double() for k in kernels])
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(y.double(), reference, atol=tol * reference.abs().max().item(), rtol=tol)


def test_toeplitz_checks_the_axes():
    with pytest.raises(ValueError, match="1 kernels for 2 length axes"):
        toeplitz_conv_nd(rand(1, 3, 4, 5), toeplitz_matrices([rand(1, 3, 2)], [4]))


# --- work ------------------------------------------------------------------------------------------------------------

def test_fft_flops_rule():
    assert [fft_flops(n) for n in (1, 2, 8, 6)] == [0, 10, 120, round(30 * math.log2(6))]


def test_fft_conv_flops_by_hand():
    """B = 2, H = 3, kernels (rank 1, C = 2) for L = (3, 4) with FFT sizes (6, 8): half-spectrum grid 6 x 5 = 30
    entries."""
    f6, f8 = round(30 * math.log2(6)), 120
    counts = fft_conv_nd_flops(2, 3, 2, (6, 8))
    assert counts == dict(
        kernel_fft=2 * 3 * (f6 + f8),  # every axis' kernel, C * H of them
        spectrum=6 * 2 * 3 * 30,  # one complex product per entry of the C * H grids
        input_fft=2 * 3 * (6 * f8 + 5 * f6),  # real axis over the 6 rows, then 5 half-spectrum columns
        product=6 * 2 * 2 * 3 * 30,  # B * C * H grids, one complex product per entry
        output_fft=2 * 2 * 3 * (6 * f8 + 5 * f6),  # B * C * H maps back
    )
    dense = fft_conv_nd_flops(1, 3, 4, (6, 8), rank=2, out_channels=2)  # rank 2, I = 2, C' = 1
    assert dense["spectrum"] == 6 * 4 * 3 * 30 + 2 * 2 * 3 * 30  # outer products of 4 grids, mean of 2 into 2
    assert dense["product"] == 8 * 1 * 2 * 3 * 30  # complex multiply-adds over the 3 features, into C' I = 2 maps
    assert dense["output_fft"] == 1 * 2 * (6 * f8 + 5 * f6)
