"""SSM kernel generation (vssm.ops.ssm_kernel): the vectorised Cauchy / Vandermonde products and the S4 (DPLR) and
S4D (diagonal) kernels against their plain references, forward and gradients, in float64 and float32; odd and
truncated lengths, one feature, ranks 1 and 2; the C~ construction; the Nyquist node; the flop counts by hand."""
import math

import pytest
import torch

from vssm.ops.ssm_kernel import (
    bandlimit_mask, bilinear, bilinear_diag, bilinear_dplr, cauchy, cauchy_ref, conj_pairs, diag_kernel,
    diag_kernel_flops, diag_kernel_ref, dplr_kernel, dplr_kernel_flops, dplr_kernel_ref, dplr_state_matrix,
    dplr_tilde_c, vandermonde, vandermonde_ref, zoh_diag,
)


def ssm_params(H=3, N=6, channels=2, rank=1, dtype=torch.float64, seed=0, real_scale=0.5, imag_scale=10.0):
    """Random stable SSM: A c(H, N) with Re A < 0, B c(H, N), C c(C, H, N), P c(R, H, N), dt r(H, 1)."""
    g = torch.Generator().manual_seed(seed)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    real = -(torch.rand(H, N, generator=g, dtype=torch.float64) * real_scale + 0.01)
    imag = -torch.rand(H, N, generator=g, dtype=torch.float64) * imag_scale
    A = torch.complex(real, imag).to(cdtype)
    B = torch.randn(H, N, generator=g, dtype=torch.complex128).to(cdtype)
    C = torch.randn(channels, H, N, generator=g, dtype=torch.complex128).to(cdtype)
    P = (0.3 * torch.randn(rank, H, N, generator=g, dtype=torch.complex128)).to(cdtype)
    dt = torch.exp(torch.rand(H, 1, generator=g, dtype=torch.float64) * math.log(10) + math.log(0.05)).to(dtype)
    return A, B, C, P, dt


def leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def assert_grads_match(fast_fn, ref_fn, inputs, atol=1e-9, rtol=1e-7, seed=1):
    a, b = leaves(*inputs), leaves(*inputs)
    out_fast, out_ref = fast_fn(*a), ref_fn(*b)
    torch.testing.assert_close(out_fast, out_ref, atol=atol, rtol=rtol)
    weight = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if out_ref.is_complex():
        weight = torch.complex(weight, weight.flip(-1))
    (out_fast * weight.to(out_fast.dtype)).real.sum().backward()
    (out_ref * weight.to(out_ref.dtype)).real.sum().backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad, atol=atol, rtol=rtol)


# --- structured products -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("conj", [True, False])
def test_cauchy_matches_reference(conj):
    A, B, C, _, _ = ssm_params(H=2, N=5)
    z = torch.randn(7, dtype=torch.complex128)
    scale = torch.randn(7, dtype=torch.complex128)
    v = C * B  # (C, H, N) numerators sharing the poles A (H, N)
    assert_grads_match(lambda v, w: cauchy(v, z, w, conj=conj), lambda v, w: cauchy_ref(v, z, w, conj=conj), (v, A))
    assert_grads_match(lambda v, w: cauchy(v, z, w, scale, conj), lambda v, w: cauchy_ref(v, z, w, scale, conj),
                       (v, A))


def test_cauchy_is_the_sum_over_poles():
    v = torch.tensor([[1.0 + 1j, 2.0]], dtype=torch.complex128)
    w = torch.tensor([[-1.0 - 1j, -0.5]], dtype=torch.complex128)
    z = torch.tensor([0.5j, 2.0], dtype=torch.complex128)
    expected = torch.stack([sum(v[0, n] / (zk - w[0, n]) for n in range(2)) for zk in z])
    torch.testing.assert_close(cauchy(v, z, w, conj=False)[0], expected)
    both = expected + torch.stack([sum(v[0, n].conj() / (zk - w[0, n].conj()) for n in range(2)) for zk in z])
    torch.testing.assert_close(cauchy(v, z, w)[0], both)


def test_cauchy_homogeneous_node_at_zero_scale_is_finite():
    A, B, C, _, _ = ssm_params(H=1, N=3, channels=1)
    z = torch.tensor([1.0, 2.0], dtype=torch.complex128)
    scale = torch.tensor([1.0, 0.0], dtype=torch.complex128)  # second node at infinity in z / scale terms
    y = cauchy(C * B, z, A, scale)
    assert torch.isfinite(torch.view_as_real(y)).all()
    torch.testing.assert_close(y[..., 1], conj_pairs(C * B).sum(-1) / 2.0)


@pytest.mark.parametrize("length", [1, 6, 13])
def test_vandermonde_matches_reference(length):
    A, B, C, _, dt = ssm_params(H=3, N=4)
    assert_grads_match(lambda v, x: vandermonde(v, x, length), lambda v, x: vandermonde_ref(v, x, length),
                       (C * B, dt * A))


# --- discretisations -----------------------------------------------------------------------------------------------

def test_diagonal_discretisations_match_dense_forms():
    A, B, _, _, dt = ssm_params(H=2, N=4)
    dA, dB = bilinear_diag(dt, A, B)
    dA_dense, dB_dense = bilinear(dt, torch.diag_embed(A), B)
    torch.testing.assert_close(torch.diag_embed(dA), dA_dense)
    torch.testing.assert_close(dB, dB_dense)
    dA, dB = zoh_diag(dt, A, B)
    dA_dense = torch.linalg.matrix_exp(dt[..., None] * torch.diag_embed(A))
    torch.testing.assert_close(torch.diag_embed(dA), dA_dense)
    # ZOH input matrix: integral_0^dt exp(sA) ds B = A^-1 (exp(dt A) - I) B
    torch.testing.assert_close(dB, torch.linalg.solve(torch.diag_embed(A), ((dA_dense - torch.eye(4)) @ B[..., None]
                                                                             )[..., 0]))


def test_dplr_state_matrix_is_diagonal_minus_low_rank():
    A, _, _, P, _ = ssm_params(H=1, N=3, rank=2)
    full = dplr_state_matrix(A, P)[0]
    p = conj_pairs(P[:, 0])  # (R, 2N)
    expected = torch.diag(conj_pairs(A[0])) - sum(torch.outer(p[r], p[r].conj()) for r in range(2))
    torch.testing.assert_close(full, expected)


# --- kernels -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length, fft_length", [(16, 16), (7, 16), (9, 9), (5, 8), (1, 3), (12, 6)])
@pytest.mark.parametrize("rank", [1, 2])
def test_dplr_kernel_matches_dense_reference(length, fft_length, rank):
    A, B, C, P, dt = ssm_params(H=3, N=6, channels=2, rank=rank)
    k = dplr_kernel(A, B, C, P, dt, length, fft_length)
    assert k.shape == (2, 3, min(length, fft_length)) and k.dtype == torch.float64
    torch.testing.assert_close(k, dplr_kernel_ref(A, B, C, P, dt, length, fft_length), atol=1e-10, rtol=1e-9)


def test_dplr_kernel_gradients_match_reference():
    A, B, C, P, dt = ssm_params(H=2, N=4, channels=1)
    assert_grads_match(lambda *t: dplr_kernel(*t, 7, 10), lambda *t: dplr_kernel_ref(*t, 7, 10), (A, B, C, P, dt),
                       atol=1e-8, rtol=1e-6)


def test_dplr_kernel_float32_one_feature():
    params64 = ssm_params(H=1, N=8, channels=1)
    params32 = [t.to(torch.complex64 if t.is_complex() else torch.float32) for t in params64]
    k32 = dplr_kernel(*params32, 11, 16)
    assert k32.dtype == torch.float32
    k64 = dplr_kernel_ref(*params64, 11, 16)
    torch.testing.assert_close(k32.double(), k64, atol=1e-5 * k64.abs().max().item(), rtol=1e-4)


def test_dplr_kernel_float32_near_unit_circle_nyquist():
    """Fourier-like modes (Re A ~ -1e-4, Im A up to pi (N/2 - 1)): the even FFT length puts a node at w = -1; the
    homogeneous form keeps it finite and float32 within 1e-5 of float64 (the official form loses ~1e-4 here)."""
    H, N = 4, 32
    A64, B64, C64, P64, dt64 = ssm_params(H=H, N=N, channels=2, seed=3)
    A64 = torch.complex(torch.full((H, N), -1e-4, dtype=torch.float64),
                        -math.pi * torch.arange(N, dtype=torch.float64).expand(H, N))
    dt64 = dt64 * 4
    k64 = dplr_kernel(A64, B64, C64, P64, dt64, 16, 16)
    torch.testing.assert_close(k64, dplr_kernel_ref(A64, B64, C64, P64, dt64, 16, 16), atol=1e-8, rtol=1e-7)
    k32 = dplr_kernel(A64.to(torch.complex64), B64.to(torch.complex64), C64.to(torch.complex64),
                      P64.to(torch.complex64), dt64.float(), 16, 16)
    assert torch.isfinite(k32).all()
    assert (k32.double() - k64).abs().max() <= 1e-5 * k64.abs().max()


def test_dplr_tilde_c_makes_the_truncated_impulse_response():
    """With C~ = (I - dA^L)^T C the frequency-domain kernel is exactly K[l] = C dA^l dB for l < L; doubling
    (C~ <- (I + dA^L)^T C~) extends it to 2L."""
    A, B, C, P, dt = ssm_params(H=2, N=4, channels=2, real_scale=0.05)
    dA, dB = bilinear(dt, dplr_state_matrix(A, P), conj_pairs(B))
    c_full = conj_pairs(C)

    def impulse(length):
        taps, state = [], dB
        for _ in range(length):
            taps.append(torch.einsum("chn,hn->ch", c_full, state).real)
            state = torch.einsum("hmn,hn->hm", dA, state)
        return torch.stack(taps, -1)

    c8 = dplr_tilde_c(C, A, P, dt, 8)
    torch.testing.assert_close(dplr_kernel(A, B, c8, P, dt, 8), impulse(8), atol=1e-10, rtol=1e-9)
    c16 = dplr_tilde_c(c8, A, P, dt, 8, double=True)
    torch.testing.assert_close(dplr_kernel(A, B, c16, P, dt, 16), impulse(16), atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("rank", [1, 2])
def test_bilinear_dplr_matches_dense_solve(rank):
    A, _, _, P, dt = ssm_params(H=3, N=5, rank=rank)
    torch.testing.assert_close(bilinear_dplr(dt, A, P), bilinear(dt, dplr_state_matrix(A, P))[0])


@pytest.mark.parametrize("channels, length, double", [(1, 1, False), (2, 6, False), (1, 40, False), (8, 37, False),
                                                       (2, 5, True), (8, 33, True)])
@pytest.mark.parametrize("rank", [1, 2])
def test_dplr_tilde_c_matches_definition(channels, length, double, rank):
    """Both evaluation orders (vector steps for few channels / short lengths, matrix power otherwise)."""
    A, _, C, P, dt = ssm_params(H=2, N=4, channels=channels, rank=rank, real_scale=0.05)
    dA = torch.linalg.matrix_power(bilinear(dt, dplr_state_matrix(A, P))[0], length)
    c_full = conj_pairs(C)
    expected = c_full + (1 if double else -1) * torch.einsum("hnm,chn->chm", dA, c_full)
    torch.testing.assert_close(dplr_tilde_c(C, A, P, dt, length, double), expected[..., :4], atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("length", [1, 8, 11])
def test_diag_kernel_matches_reference(disc, length):
    A, B, C, _, dt = ssm_params(H=3, N=5, channels=2)
    k = diag_kernel(A, B, C, dt, length, disc)
    assert k.shape == (2, 3, length)
    assert_grads_match(lambda *t: diag_kernel(*t, length, disc), lambda *t: diag_kernel_ref(*t, length, disc),
                       (A, B, C, dt))


def test_diag_kernel_float32():
    params64 = ssm_params(H=1, N=8, channels=1)
    A, B, C, _, dt = [t.to(torch.complex64 if t.is_complex() else torch.float32) for t in params64]
    k32 = diag_kernel(A, B, C, dt, 9)
    assert k32.dtype == torch.float32
    k64 = diag_kernel_ref(params64[0], params64[1], params64[2], params64[4], 9)
    torch.testing.assert_close(k32.double(), k64, atol=1e-5 * k64.abs().max().item(), rtol=1e-4)


def test_diag_kernel_rejects_unknown_discretisation():
    A, B, C, _, dt = ssm_params(H=1, N=2, channels=1)
    with pytest.raises(ValueError, match="disc"):
        diag_kernel(A, B, C, dt, 4, "dss")


def test_bandlimit_mask():
    dt = torch.tensor([[1.0], [0.1]], dtype=torch.float64)
    A = torch.complex(torch.full((2, 3), -0.5, dtype=torch.float64),
                      -torch.tensor([[0.0, 1.0, 4.0], [0.0, 10.0, 40.0]], dtype=torch.float64))
    # frequency dt |Im A| / 2 pi < b / 2 with b = 1: |Im A| < pi / dt
    expected = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(bandlimit_mask(dt, A, 1.0), expected)


def test_kernel_flops_by_hand():
    """H = 2 features, C = 2 channels, N = 4 (8 poles), rank 1, 8 roots of unity (5 nodes)."""
    cauchy_matrix = 14 * 2 * 8 * 5  # H x 2N x K entries: a product, an add, a reciprocal
    contraction = 8 * (2 * 3) * 2 * 8 * 5  # (1 + R)(C + R) numerator rows, complex multiply-adds
    woodbury = 20 * 2 * 2 * 5 + 8 * 2 * 5
    inverse_fft = 2 * 2 * 5 * 8 * 3  # C x H kernels, 5 N log2 N with N = 8
    assert dplr_kernel_flops(2, 2, 4, 1, 8) == cauchy_matrix + contraction + woodbury + inverse_fft == 5920
    assert diag_kernel_flops(2, 2, 4, 6) == 8 * 2 * 4 * 6 + 8 * 2 * 2 * 4 * 6 + 20 * 2 * 2 * 4
