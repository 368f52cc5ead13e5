"""N-D FFT convolution with separable (per-axis) kernels, as S4ND applies its SSM kernels.

The N-D kernel is the outer product of one 1-D kernel per length axis (per kernel channel and feature), so the
convolution never materialises it in space: each 1-D kernel is transformed once and the spectra are multiplied.

Shapes (letter codes): B batch, H features, C kernel channels, I dense output channels, L1..Ld input lengths,
K1..Kd kernel lengths, F1..Fd FFT sizes. ``r(...)`` real.

* ``bidirectional_kernel`` combines a forward and a backward kernel the official way: the forward taps sit at offsets
  0 .. K-1, the backward tap m at offset -(m + 1) (the zero-offset tap belongs to the forward kernel only), laid out
  for an FFT of size ``L + K`` (forward padded right with L zeros, flipped backward padded left with L zeros).
* ``fft_conv_nd`` is the convolution: ``y = irfftn(rfftn(u, s=F) * prod_i fft(k_i, F_i))[:L1, .., :Ld]`` with the
  official zero padding ``F_i = L_i + K_i`` (so causal kernels never wrap around); optional tensor rank (mean of
  ``rank`` separable terms, the official ``trank``) and a dense contraction over H (the official ``out_channels``
  stem). ``fft_conv_nd_ref`` is the same map written as a direct (circular) convolution sum, for tests.

The FFTs run in float32 whatever the input dtype (float64 stays float64) with autocast disabled inside; the result is
cast back to the input dtype.
"""
import itertools
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bidirectional_kernel", "fft_conv_nd", "fft_conv_nd_ref", "kernel_spectra"]


def bidirectional_kernel(k: Tensor, length: int) -> Tensor:
    """Official bidirectional combination along the last axis.

    Args:
        k: r(2C, H, K): the first C channels are the forward kernels, the last C the backward ones.
        length: L, the input length along this axis.

    Returns: r(C, H, K + L): ``pad(forward, (0, L)) + pad(flip(backward), (L, 0))``.
    """
    forward, backward = torch.chunk(k, 2, dim=-3)
    return F.pad(forward, (0, length)) + F.pad(backward.flip(-1), (length, 0))


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def kernel_spectra(kernels: Sequence[Tensor], fft_sizes: Sequence[int]) -> List[Tensor]:
    """Spectra of the per-axis kernels for ``fft_conv_nd``: full FFT for every axis but the last, real FFT for the
    last (matching ``rfftn``). kernels r(C, H, K_i) -> c(C, H, F_i) (last: c(C, H, F_d // 2 + 1))."""
    spectra = []
    with torch.autocast(device_type=kernels[0].device.type, enabled=False):
        for i, (k, n) in enumerate(zip(kernels, fft_sizes)):
            k = k.to(_compute_dtype(k))
            spectra.append(torch.fft.rfft(k, n=n) if i == len(kernels) - 1 else torch.fft.fft(k, n=n))
    return spectra


def _outer(spectra: Sequence[Tensor], rank: int) -> Tensor:
    """Separable N-D spectrum c(C, H, F1, .., Fd) from per-axis spectra c(rank*C, H, F_i), mean over the rank."""
    full = spectra[0]  # (rC, H, F1)
    for i, s in enumerate(spectra[1:], start=1):
        full = full[..., None] * s.reshape(*s.shape[:2], *([1] * i), s.shape[-1])  # (rC, H, F1, .., F_{i+1})
    if rank > 1:
        full = full.reshape(rank, -1, *full.shape[1:]).mean(0)
    return full


def fft_conv_nd(u: Tensor, kernels: Optional[Sequence[Tensor]] = None, fft_sizes: Optional[Sequence[int]] = None,
                rank: int = 1, out_channels: Optional[int] = None, spectra: Optional[Sequence[Tensor]] = None
                ) -> Tensor:
    """Separable N-D convolution by FFT.

    Args:
        u: r(B, H, L1, .., Ld).
        kernels: d tensors r(rank * C, H, K_i) (already bidirectional-combined if wanted); the kernel channel axis is
            ``(rank, C)`` with the rank outermost, and ``(I, C')`` (I outermost) when ``out_channels=I``.
        fft_sizes: F_i per axis; default ``L_i + K_i`` (the official zero padding).
        rank: number of separable terms averaged (official ``trank``).
        out_channels: None for the depthwise map (every channel c and feature h its own kernel); I to contract over H
            (the official dense stem: output channel i sums all features h with their own kernels).
        spectra: precomputed ``kernel_spectra(kernels, fft_sizes)`` (a kernel cache); then ``kernels`` is unused but
            ``fft_sizes`` is required.

    Returns: r(B, C, H, L1, .., Ld), or r(B, C', I, L1, .., Ld) with ``out_channels``; in u's dtype.
    """
    lengths = u.shape[2:]
    d = len(lengths)
    if fft_sizes is None:
        if kernels is None:
            raise ValueError("fft_conv_nd: precomputed spectra need their fft_sizes")
        fft_sizes = [l + k.shape[-1] for l, k in zip(lengths, kernels)]
    fft_sizes = [int(n) for n in fft_sizes]
    if spectra is None:
        spectra = kernel_spectra(kernels, fft_sizes)
    if len(spectra) != d:
        raise ValueError(f"fft_conv_nd: {len(spectra)} kernels for {d} length axes")
    with torch.autocast(device_type=u.device.type, enabled=False):
        u_f = torch.fft.rfftn(u.to(_compute_dtype(u)), s=fft_sizes, dim=tuple(range(2, 2 + d)))  # (B, H, F..)
        k_f = _outer(spectra, rank)  # (C, H, F..)
        if out_channels is None:
            y_f = u_f[:, None] * k_f[None]  # (B, C, H, F..)
        else:
            k_f = k_f.reshape(out_channels, -1, *k_f.shape[1:])  # (I, C', H, F..)
            y_f = torch.einsum("bh...,ich...->bci...", u_f, k_f)  # (B, C', I, F..)
        y = torch.fft.irfftn(y_f, s=fft_sizes, dim=tuple(range(3, 3 + d)))
        y = y[(Ellipsis, *[slice(0, l) for l in lengths])]
    return y.to(u.dtype)


def fft_conv_nd_ref(u: Tensor, kernels: Sequence[Tensor], fft_sizes: Optional[Sequence[int]] = None, rank: int = 1,
                    out_channels: Optional[int] = None) -> Tensor:
    """Reference for ``fft_conv_nd`` (same arguments but ``spectra``): the N-D kernel built explicitly as the outer
    product, and ``y[x] = sum_j K[j] u[(x - j) mod F]`` (u zero-padded to F), one kernel offset j at a time."""
    lengths = u.shape[2:]
    d = len(lengths)
    if fft_sizes is None:
        fft_sizes = [l + k.shape[-1] for l, k in zip(lengths, kernels)]
    dtype = _compute_dtype(u)
    padded = [F.pad(k.to(dtype), (0, n - k.shape[-1])) for k, n in zip(kernels, fft_sizes)]  # (rC, H, F_i)
    full = padded[0]
    for i, k in enumerate(padded[1:], start=1):  # the outer product, written out
        full = full[..., None] * k.reshape(*k.shape[:2], *([1] * i), k.shape[-1])
    full = full.reshape(rank, -1, *full.shape[1:]).mean(0)  # (C, H, F..)
    u_pad = F.pad(u.to(dtype), [p for l, n in reversed(list(zip(lengths, fft_sizes))) for p in (0, n - l)])
    y = 0
    for offset in itertools.product(*[range(n) for n in fft_sizes]):
        shifted = torch.roll(u_pad, shifts=offset, dims=tuple(range(2, 2 + d)))  # u[(x - j) mod F]
        tap = full[(Ellipsis, *offset)]  # (C, H)
        if out_channels is None:
            y = y + tap.reshape(1, *tap.shape, *([1] * d)) * shifted[:, None]
        else:
            tap = tap.reshape(out_channels, -1, tap.shape[-1])  # (I, C', H)
            y = y + torch.einsum("bh...,ich->bci...", shifted, tap)
    y = y[(Ellipsis, *[slice(0, l) for l in lengths])]
    return y.to(u.dtype)
