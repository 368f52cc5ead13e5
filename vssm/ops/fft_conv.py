"""Separable N-D convolution as S4ND applies its SSM kernels: by FFT, by per-axis Toeplitz matrix products, or by
real-valued direct convolutions.

The N-D kernel is the outer product of one 1-D kernel per length axis (per kernel channel and feature), so the
convolution never materialises it in space: each 1-D kernel is transformed once and the spectra are multiplied, or it
is applied along its axis alone.

Shapes (letter codes): B batch, H features, C kernel channels, I dense output channels, L1..Ld input lengths,
K1..Kd kernel lengths, F1..Fd FFT sizes. ``r(...)`` real.

* ``bidirectional_kernel`` combines a forward and a backward kernel the official way: the forward taps sit at offsets
  0 .. K-1, the backward tap m at offset -(m + 1) (the zero-offset tap belongs to the forward kernel only), laid out
  for an FFT of size ``L + K`` (forward padded right with L zeros, flipped backward padded left with L zeros).
* ``fft_conv_nd`` is the convolution: ``y = irfftn(rfftn(u, s=F) * prod_i fft(k_i, F_i))[:L1, .., :Ld]`` with the
  official zero padding ``F_i = L_i + K_i`` (so causal kernels never wrap around); optional tensor rank (mean of
  ``rank`` separable terms, the official ``trank``) and a dense contraction over H (the official ``out_channels``
  stem). ``fft_conv_nd_ref`` is the same map written as a direct (circular) convolution sum, for tests.
* ``toeplitz_conv_nd`` is the same depthwise map as matrix products: along axis i, output x takes input s with the
  weight ``k_i[(x - s) mod F_i]`` (the circular wrap of the FFT form included), an L_i x L_i Toeplitz matrix per
  kernel channel and feature (``toeplitz_matrices``), applied along each axis in turn as batched float32 GEMMs. No
  padding to F, no complex numbers: 2 L_i flops per element and axis, and a few passes over the real tensor instead of
  the FFT form's many over the padded complex grids, so S4ND uses it for short axes (``S4ND``'s ``conv_mode``).
* ``direct_conv_nd`` is the same map again as real-valued convolutions, one depthwise 1-D convolution along each axis
  (the kernel is separable), with the taps of ``conv_taps``: what an ONNX graph of a fixed input size runs (no complex
  numbers, no DFT), exact to rounding. Its weights grow with the input length (up to 2 L - 1 taps per axis), not its
  square.
* ``fft_flops`` / ``fft_conv_nd_flops``: the work of ``fft_conv_nd`` in real flops, 5 N log2 N per 1-D transform of
  length N (``vssm.flops``).

Every form runs in float32 whatever the input dtype (float64 stays float64) with autocast disabled inside; the result
is cast back to the input dtype.
"""
import itertools
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bidirectional_kernel", "conv_taps", "direct_conv_nd", "fft_conv_nd", "fft_conv_nd_flops",
           "fft_conv_nd_ref", "fft_flops", "kernel_spectra", "toeplitz_conv_nd", "toeplitz_matrices"]


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


# --- the same map as Toeplitz matrix products ----------------------------------------------------------------------

def toeplitz_matrices(kernels: Sequence[Tensor], lengths: Sequence[int],
                      fft_sizes: Optional[Sequence[int]] = None) -> List[Tensor]:
    """Per-axis Toeplitz matrices of ``fft_conv_nd``'s depthwise map, for ``toeplitz_conv_nd``.

    Along axis i, output x takes input s through the entry ``(x - s) mod F_i`` of the kernel zero-padded (or cut) to
    F_i, the FFT form's circular wrap included (for F_i < 2 L_i - 1 the offsets d and d - F_i share an entry). One
    gather per axis, differentiable back to the kernels; float32 (float64 stays float64).

    Args:
        kernels: d tensors r(rank * C, H, K_i), as ``fft_conv_nd`` takes them.
        lengths: L_i, the input lengths.
        fft_sizes: F_i >= L_i; default ``L_i + K_i`` (as ``fft_conv_nd``).

    Returns: d tensors r(rank * C, H, L_i, L_i), ``T[.., x, s] = k_i[(x - s) mod F_i]``.
    """
    if fft_sizes is None:
        fft_sizes = [l + k.shape[-1] for l, k in zip(lengths, kernels)]
    matrices = []
    for k, length, size in zip(kernels, lengths, fft_sizes):
        length, size = int(length), int(size)
        if size < length:
            raise ValueError(f"toeplitz_matrices: FFT size {size} is shorter than the input length {length}")
        padded = F.pad(k.to(_compute_dtype(k)), (0, max(0, size - k.shape[-1])))[..., :size]  # (rC, H, F)
        positions = torch.arange(length, device=k.device)
        matrices.append(padded[..., (positions[:, None] - positions[None, :]) % size])
    return matrices


class _ToeplitzProduct(torch.autograd.Function):
    """``y = T @ x^T`` per group: T r(G, L, L), x r(G, M, L) (L innermost) -> r(G, L, M), so that the output's
    innermost axis is x's second-innermost one. The backward gives x's gradient in x's own layout (``grad^T @ T``);
    autograd's bmm formula would give it transposed, and the reshape before the next product would copy it."""

    @staticmethod
    def forward(ctx, matrices: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(matrices, x)
        return torch.bmm(matrices, x.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        matrices, x = ctx.saved_tensors
        grad_matrices = torch.bmm(grad, x) if ctx.needs_input_grad[0] else None
        grad_x = torch.bmm(grad.transpose(1, 2), matrices) if ctx.needs_input_grad[1] else None
        return grad_matrices, grad_x


def toeplitz_conv_nd(u: Tensor, matrices: Sequence[Tensor], rank: int = 1) -> Tensor:
    """``fft_conv_nd``'s depthwise map (``out_channels=None``) as Toeplitz matrix products along each axis.

    u is copied once into the layout (G, B, L1, .., Ld), G = rank * C * H groups (the cast to float32 in the same
    copy); then, from the last axis to the first, one batched GEMM per axis multiplies the innermost axis by its
    matrices and writes it outermost (``T @ x^T``), which leaves the next axis innermost, no copy in between (nor in
    the backward, ``_ToeplitzProduct``). The result, stored (C, H, L1, .., Ld, B), is returned as a permuted view.

    Args:
        u: r(B, H, L1, .., Ld).
        matrices: d tensors r(rank * C, H, L_i, L_i) (``toeplitz_matrices``), channel axis as ``fft_conv_nd``'s
            kernels (rank outermost).
        rank: number of separable terms averaged (official ``trank``).

    Returns: r(B, C, H, L1, .., Ld) in u's dtype (computed in float32, or float64 for float64 input; batch innermost
    in memory).
    """
    batch, features, *lengths = u.shape
    if len(matrices) != len(lengths):
        raise ValueError(f"toeplitz_conv_nd: {len(matrices)} kernels for {len(lengths)} length axes")
    channels = matrices[0].shape[0]  # rank * C
    groups = channels * features
    dtype = _compute_dtype(u)
    with torch.autocast(device_type=u.device.type, enabled=False):
        x = u.transpose(0, 1)[None].expand(channels, features, batch, *lengths)
        x = x.to(dtype, copy=True, memory_format=torch.contiguous_format)  # (rC, H, B, L1, .., Ld)
        for matrix, length in zip(reversed(matrices), reversed(lengths)):
            x = x.view(groups, -1, length)  # (G, M, L_i): the axis innermost
            x = _ToeplitzProduct.apply(matrix.to(dtype).reshape(groups, length, length), x)  # (G, L_i, M)
        y = x.view(rank, channels // rank, features, *lengths, batch)
        y = y.mean(0) if rank > 1 else y.squeeze(0)  # (C, H, L1, .., Ld, B)
        y = y.permute(-1, *range(y.dim() - 1))  # (B, C, H, L1, .., Ld)
    return y.to(u.dtype)


# --- the same map as real-valued convolutions (export) -------------------------------------------------------------

def conv_taps(kernel: Tensor, length: int, fft_size: Optional[int] = None, trim: bool = True) -> Tuple[Tensor, int]:
    """The taps of one axis' kernel for a direct convolution over inputs of ``length`` that equals the circular
    convolution of ``fft_conv_nd`` (input zero-padded to ``fft_size``, first ``length`` outputs kept).

    Output x takes input s through the kernel entry ``(x - s) mod F``, so offsets ``d = x - s`` in ``(-L, L)`` are all
    that matter: tap j holds offset ``d = j - before``, i.e. ``y[x] = sum_j taps[j] u[x - j + before]``.

    Args:
        kernel: r(..., K) in the FFT layout (e.g. ``bidirectional_kernel``'s: forward taps from 0, backward ones at the
            end).
        length: L, the input length along this axis.
        fft_size: F; default ``L + K`` (as ``fft_conv_nd``).
        trim: drop the outermost offsets whose taps are all zero (the padding of short kernels), which needs the
            values (not traceable).

    Returns: (taps r(..., T), before): T <= 2 L - 1 taps, ``before`` of them at negative offsets.
    """
    fft_size = length + kernel.shape[-1] if fft_size is None else int(fft_size)
    padded = F.pad(kernel, (0, max(0, fft_size - kernel.shape[-1])))[..., :fft_size]
    offsets = torch.arange(-(length - 1), length, device=kernel.device)
    taps = padded[..., offsets % fft_size]  # (..., 2L - 1)
    before = length - 1
    if trim:
        used = (taps != 0).reshape(-1, taps.shape[-1]).any(0).nonzero()
        first, last = (int(used.min()), int(used.max())) if used.numel() else (before, before)
        taps, before = taps[..., first:last + 1], before - first
    return taps, before


def _conv_along(x: Tensor, taps: Tensor, before: int, axis: int) -> Tensor:
    """Depthwise convolution of x r(B, G, L1..Ld) along length axis ``axis`` with taps r(G, T) (``conv_taps``)."""
    d = x.dim() - 2
    length, count = taps.shape[-1], x.shape[1]
    shape = [1] * d
    shape[axis] = length
    weight = taps.flip(-1).reshape(count, 1, *shape)  # cross-correlation with the flipped taps
    pad = [0, 0] * d
    pad[2 * (d - 1 - axis)], pad[2 * (d - 1 - axis) + 1] = length - 1 - before, before  # (F.pad: last axis first)
    conv = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
    # NOTE: an explicit zero bias: the ONNX exporter's Conv without one gets a bias of the wrong shape in 3-D
    bias = torch.zeros(count, dtype=x.dtype, device=x.device)
    return conv(F.pad(x, pad), weight, bias, groups=count)


def direct_conv_nd(u: Tensor, taps: Sequence[Tuple[Tensor, int]], rank: int = 1,
                   out_channels: Optional[int] = None) -> Tensor:
    """``fft_conv_nd`` as real-valued direct convolutions: every (kernel channel, feature) pair convolved along each
    axis in turn with its 1-D taps (depthwise convolutions: the kernel is separable), then the mean over the ``rank``
    terms and, with ``out_channels``, the sum over the features.

    Args:
        u: r(B, H, L1, .., Ld).
        taps: per axis ``conv_taps(kernel_i, L_i, F_i)`` of the kernels ``fft_conv_nd`` takes: (r(rank * C, H, T_i),
            before_i); channel layout as there (rank outermost; (I, C') with ``out_channels=I``).
        rank, out_channels: as ``fft_conv_nd``.

    Returns: r(B, C, H, L1, .., Ld), or r(B, C', I, L1, .., Ld) with ``out_channels``; in u's dtype (computed in
    float32, or float64 for float64 input).
    """
    lengths = u.shape[2:]
    if len(taps) != len(lengths):
        raise ValueError(f"direct_conv_nd: {len(taps)} kernels for {len(lengths)} length axes")
    batch, features = u.shape[:2]
    channels = taps[0][0].shape[0]  # rank * C
    dtype = _compute_dtype(u)
    x = u.to(dtype)[:, None].expand(batch, channels, *u.shape[1:]).reshape(batch, channels * features, *lengths)
    for axis, (k, before) in enumerate(taps):
        x = _conv_along(x, k.to(dtype).reshape(channels * features, -1), before, axis)
    y = x.reshape(batch, rank, channels // rank, features, *lengths).mean(1)  # (B, C, H, L..)
    if out_channels is not None:
        y = y.reshape(batch, out_channels, -1, features, *lengths).sum(3).transpose(1, 2)  # (B, C', I, L..)
    return y.to(u.dtype)


# --- work ------------------------------------------------------------------------------------------------------------

def fft_flops(length: int) -> int:
    """Real flops of one 1-D FFT of ``length`` (forward or inverse, real or complex input): the radix-2 count
    5 N log2 N, rounded."""
    return round(5 * length * math.log2(length)) if length > 1 else 0


def _nd_transform_flops(rows: int, fft_sizes: Sequence[int]) -> int:
    """One real N-D transform (``rfftn`` or ``irfftn``) of sizes F1..Fd for each of ``rows`` maps: the real axis over
    the full grid, every other axis over the half spectrum (F_d // 2 + 1 columns)."""
    *first, last = fft_sizes
    spectrum = math.prod(first) * (last // 2 + 1)
    flops = rows * math.prod(first) * fft_flops(last)
    for n in first:
        flops += rows * (spectrum // n) * fft_flops(n)
    return flops


def fft_conv_nd_flops(batch: int, features: int, kernel_channels: int, fft_sizes: Sequence[int], rank: int = 1,
                      out_channels: Optional[int] = None) -> dict:
    """Real flops of ``fft_conv_nd(u r(B, H, ..), kernels r(rank * C, H, K_i), fft_sizes)`` with the kernel spectra
    made from the kernels (``kernel_channels`` = rank * C):

    * ``kernel_fft``: the per-axis kernel transforms, rank * C * H of each axis (5 F log2 F each);
    * ``spectrum``: the separable outer product, (d - 1) complex products (6 flops) per entry of the rank * C * H
      half-spectrum grids, and 2 (rank - 1) per entry for the mean over the rank;
    * ``input_fft`` / ``output_fft``: ``rfftn`` of the B * H inputs and ``irfftn`` of the B * C * H (dense:
      B * C' * I) outputs (``fft_flops`` per 1-D transform, the real axis over the full grid);
    * ``product``: the spectral product, one complex product (6 flops) per entry, or (dense) one complex
      multiply-add (8 flops) per (output, feature) pair.

    Returns: dict of those counts (ints).
    """
    d = len(fft_sizes)
    *first, last = fft_sizes
    spectrum = math.prod(first) * (last // 2 + 1)  # entries of one half-spectrum grid
    channels = kernel_channels // rank  # C
    kernel_fft = sum(kernel_channels * features * fft_flops(n) for n in fft_sizes)
    outer = kernel_channels * features * spectrum * (6 * (d - 1)) + channels * features * spectrum * 2 * (rank - 1)
    if out_channels is None:
        outputs, product = batch * channels * features, 6 * batch * channels * features * spectrum
    else:
        outputs = batch * channels  # (C' * I maps)
        product = 8 * batch * channels * features * spectrum
    return dict(kernel_fft=kernel_fft, spectrum=outer, input_fft=_nd_transform_flops(batch * features, fft_sizes),
                product=product, output_fft=_nd_transform_flops(outputs, fft_sizes))
