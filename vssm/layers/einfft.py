"""EinFFT: SiMBA's spectral channel mixer (arXiv 2403.15360, Sec. 3.3).

For tokens x of shape (B, N, C) with the channels split into ``num_blocks`` blocks of C / num_blocks:

    X  = FFT2(x viewed as (B, N, num_blocks, C / num_blocks)) over the token axis N and the block axis ("ortho")
    Y1 = ReLU(X W1 + b1)                 per block, complex weights; ReLU on real and imaginary parts separately
    Y2 = Y1 W2 + b2
    Y  = softshrink(Y2, threshold)       on real and imaginary parts separately (the sparsity threshold)
    y  = real(IFFT2(Y))                  over the same two axes, reshaped back to (B, N, C)

The within-block channel axis is not transformed; there is no hidden expansion (C -> C) and no residual inside.
The complex block-diagonal products run as one real matmul per layer on [real | imag] halves, with the weight
[[Wr, Wi], [-Wi, Wr]]. The FFTs, the soft-shrink and the inverse run in float32 whatever the input dtype (the official
code casts the spectrum to float32 before the soft-shrink); under autocast the two block products follow autocast,
as the official einsums do.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["EinFFT"]


class EinFFT(nn.Module):
    """EinFFT channel mixer; parameter names and layout follow the official SiMBA code.

    Args:
        dim: channels C, divisible by ``num_blocks``.
        num_blocks: channel blocks (official: 4).
        sparsity_threshold: softshrink lambda applied to the spectrum (official: 0.01; 0 disables it).
        init_scale: std of the normal initialisation of weights and biases (official: 0.02).

    Parameters ``complex_weight_{1,2}`` (2, num_blocks, C/num_blocks, C/num_blocks) and ``complex_bias_{1,2}``
    (2, num_blocks, C/num_blocks) hold the real part at index 0 and the imaginary part at index 1.
    """

    def __init__(
            self,
            dim: int,
            num_blocks: int = 4,
            sparsity_threshold: float = 0.01,
            init_scale: float = 0.02,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if dim % num_blocks:
            raise ValueError(f"EinFFT: dim={dim} must be divisible by num_blocks={num_blocks}")
        self.dim = dim
        self.num_blocks = num_blocks
        self.block_size = dim // num_blocks
        self.sparsity_threshold = sparsity_threshold
        weight_shape = (2, num_blocks, self.block_size, self.block_size)
        self.complex_weight_1 = nn.Parameter(torch.randn(weight_shape, **dd) * init_scale)
        self.complex_weight_2 = nn.Parameter(torch.randn(weight_shape, **dd) * init_scale)
        self.complex_bias_1 = nn.Parameter(torch.randn(2, num_blocks, self.block_size, **dd) * init_scale)
        self.complex_bias_2 = nn.Parameter(torch.randn(2, num_blocks, self.block_size, **dd) * init_scale)

    @staticmethod
    def _spectral_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """Complex block-diagonal affine map on [real | imag] halves.

        Args:
            x: (..., num_blocks, 2 * block) real and imaginary parts concatenated on the last axis.
            weight: (2, num_blocks, block, block) real / imaginary parts. bias: (2, num_blocks, block).

        Returns:
            (..., num_blocks, 2 * block): [Xr Wr - Xi Wi + br | Xr Wi + Xi Wr + bi].
        """
        real, imag = weight[0].to(x.dtype), weight[1].to(x.dtype)
        stacked = torch.cat((torch.cat((real, imag), -1), torch.cat((-imag, real), -1)), -2)
        return torch.einsum("...bi,bio->...bo", x, stacked) + torch.cat((bias[0], bias[1]), -1).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Mix channels of a token sequence.

        Args:
            x: (B, N, C), or (B, *grid, C) whose grid axes are flattened in raster order into N.

        Returns:
            Tensor of x's shape and dtype.
        """
        shape, dtype = x.shape, x.dtype
        x = x.reshape(shape[0], -1, self.num_blocks, self.block_size).float()
        # the 2-D (inverse) FFT as two 1-D passes, the same values as fft2 / ifft2: on the CPU those reach MKL's
        # multi-threaded 2-D c2c DFT, which with torch 2.14-2.15 writes 8 bytes past its scratch buffer (valgrind:
        # mkl_dft_avx2_gather_c_c under mkl_dft_compute_backward_c_out_par) and corrupted the heap of later tests
        spectrum = torch.fft.fft(torch.fft.fft(x, dim=2, norm="ortho"), dim=1, norm="ortho")
        y = torch.cat((spectrum.real, spectrum.imag), -1)
        y = F.relu(self._spectral_linear(y, self.complex_weight_1, self.complex_bias_1))
        y = self._spectral_linear(y, self.complex_weight_2, self.complex_bias_2).float()
        if self.sparsity_threshold > 0:
            y = F.softshrink(y, self.sparsity_threshold)
        real, imag = y.chunk(2, -1)
        x = torch.fft.ifft(torch.fft.ifft(torch.complex(real, imag), dim=2, norm="ortho"), dim=1, norm="ortho").real
        return x.reshape(shape).to(dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_blocks={self.num_blocks}, sparsity_threshold={self.sparsity_threshold}"
