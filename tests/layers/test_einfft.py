"""EinFFT against a direct complex-arithmetic derivation of the paper's equations; shapes, dtypes, gradients,
TorchScript and FX."""
import pytest
import torch
import torch.nn.functional as F

from vssm.layers.einfft import EinFFT


def einfft_complex(x, mixer):
    """Direct re-derivation with complex tensors: (B, N, C) -> (B, N, C)."""
    batch, tokens, dim = x.shape
    w1 = torch.complex(mixer.complex_weight_1[0], mixer.complex_weight_1[1])  # (blocks, d, d)
    w2 = torch.complex(mixer.complex_weight_2[0], mixer.complex_weight_2[1])
    b1 = torch.complex(mixer.complex_bias_1[0], mixer.complex_bias_1[1])  # (blocks, d)
    b2 = torch.complex(mixer.complex_bias_2[0], mixer.complex_bias_2[1])
    spectrum = torch.fft.fft2(x.reshape(batch, tokens, mixer.num_blocks, -1), dim=(1, 2), norm="ortho")
    y = torch.einsum("bnki,kio->bnko", spectrum, w1) + b1
    y = torch.complex(F.relu(y.real), F.relu(y.imag))
    y = torch.einsum("bnki,kio->bnko", y, w2) + b2
    lam = mixer.sparsity_threshold
    y = torch.complex(F.softshrink(y.real, lam), F.softshrink(y.imag, lam))
    return torch.fft.ifft2(y, dim=(1, 2), norm="ortho").real.reshape(batch, tokens, dim)


def random_einfft(dim, seed=0, **kwargs):
    torch.manual_seed(seed)
    mixer = EinFFT(dim, **kwargs)
    with torch.no_grad():  # weights large enough that ReLU and softshrink both cut
        for p in mixer.parameters():
            p.normal_(0, 0.5)
    return mixer


@pytest.mark.parametrize("tokens, dim", [(1, 8), (7, 16), (30, 48)])
def test_matches_complex_derivation(tokens, dim):
    mixer = random_einfft(dim)
    x = torch.randn(2, tokens, dim)
    torch.testing.assert_close(mixer(x), einfft_complex(x, mixer), atol=1e-5, rtol=1e-5)


def test_grid_input_is_raster_flattened():
    mixer = random_einfft(16)
    x = torch.randn(2, 3, 5, 16)
    out = mixer(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, mixer(x.flatten(1, 2)).reshape(x.shape))


def test_mixes_tokens_and_blocks():
    """The FFT runs over tokens and channel blocks: every output depends on every token and every block."""
    mixer = random_einfft(8)
    x = torch.randn(1, 5, 8)
    jac = torch.autograd.functional.jacobian(lambda t: mixer(t), x)[0, :, :, 0]  # (N, C, N, C)
    assert (jac.abs().sum((1, 3)) > 0).all()  # token -> token
    blocks = jac.abs().sum((0, 2)).reshape(4, 2, 4, 2).sum((1, 3))
    assert (blocks > 0).all()  # channel block -> channel block


def test_sparsity_threshold_zero_disables_softshrink():
    mixer = random_einfft(8, sparsity_threshold=0.0)
    x = torch.randn(2, 4, 8)
    torch.testing.assert_close(mixer(x), einfft_complex(x, mixer), atol=1e-5, rtol=1e-5)
    shrunk = random_einfft(8, sparsity_threshold=0.5)
    assert not torch.allclose(shrunk(x), mixer(x))


def test_gradients_and_dtype():
    mixer = random_einfft(16)
    x = torch.randn(2, 6, 16, requires_grad=True)
    mixer(x).square().sum().backward()
    assert x.grad is not None and all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixer.parameters())
    out = mixer.to(torch.bfloat16)(torch.randn(2, 6, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_parameter_layout():
    mixer = EinFFT(64)
    assert mixer.complex_weight_1.shape == (2, 4, 16, 16) and mixer.complex_bias_2.shape == (2, 4, 16)
    assert sum(p.numel() for p in mixer.parameters()) == 64 * 64 + 4 * 64
    with pytest.raises(ValueError, match="divisible"):
        EinFFT(10)


def test_torchscript_and_fx():
    mixer = random_einfft(16).eval()
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(torch.jit.script(mixer)(x), mixer(x))
    torch.testing.assert_close(torch.fx.symbolic_trace(mixer)(x), mixer(x))
