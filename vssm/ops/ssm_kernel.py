"""Convolution kernels of structured state space models (S4 / S4D, as S4ND uses them), as pure functions on tensors.

A linear SSM ``x' = A x + B u, y = Re(C x)`` with diagonal (S4D) or diagonal-plus-low-rank (S4, "DPLR") state
matrix, discretised with step ``dt``, is the convolution ``y = K * u`` with the kernel ``K[l] = C dA^l dB``. Both
parameterisations keep one half of each complex-conjugate pair of eigenvalues (N here is half the real state size);
every sum over the state runs over both halves.

Shapes (letter codes): C kernel channels, H features, N state (one half of the conjugate pairs), R low rank,
L kernel taps, K frequency nodes. ``r(...)`` real, ``c(...)`` complex.

* ``diag_kernel`` (S4D): ``K[l] = 2 Re sum_n C_n dB_n dA_n^l`` through the log-Vandermonde product
  (``vandermonde``), with zero-order-hold (``'zoh'``, the official S4D default) or bilinear discretisation.
* ``dplr_kernel`` (S4): bilinear discretisation evaluated in frequency, as the official ``SSMKernelDPLR``: the
  resolvent at the roots of unity through the Cauchy kernel (``cauchy``) and the Woodbury identity for the low-rank
  part, then an inverse real FFT. The stored C is the official "C~" = ``(I - dA^L)^T C``, which makes the sampled
  generating function exactly the length-L kernel (``dplr_tilde_c`` computes it, with the discretised state matrix
  from ``bilinear_dplr``: the Woodbury solve in O(H N^2 R)).
* Each has a plain reference beside it (``*_ref``): an explicit loop over taps or states that a reader can check
  against the equations; ``dplr_kernel_ref`` materialises the dense 2N x 2N discretised state matrix.
* ``dplr_kernel_flops`` / ``diag_kernel_flops``: their work in real flops (``vssm.flops``).

Numerics: the DPLR nodes are written in homogeneous form, ``sum_n 2 v_n / (2 (1 - w_k) - dtA_n (1 + w_k))`` with
``w_k = exp(-2 pi i k / L)``, which is the official ``2 / (1 + w) * sum_n v_n / (z_k - dtA_n)``,
``z = 2 (1 - w) / (1 + w)``, without the infinite node at the Nyquist bin (there the official form is an inf * 0
cancellation, z ~ 6e6 in float32). On the golden fixtures our float32 layers land 1.5-2x closer to the official float64
runs than the official float32 ones do. Complex math runs in complex64 for float32 parameters and in complex128 for
float64 ones; nodes are computed in float64 and rounded once. Nothing here is subject to autocast (complex tensors);
callers under autocast disable it around the FFTs (``vssm.ops.fft_conv``, ``vssm.layers.s4nd``).
"""
import math
from typing import Optional

import torch
from torch import Tensor

from .fft_conv import fft_flops

__all__ = [
    "cauchy", "cauchy_ref", "vandermonde", "vandermonde_ref", "conj_pairs", "bilinear", "zoh_diag", "bilinear_diag",
    "dplr_state_matrix", "bilinear_dplr", "dplr_tilde_c", "dplr_kernel", "dplr_kernel_ref", "diag_kernel",
    "diag_kernel_ref", "bandlimit_mask", "fft_nodes", "dplr_kernel_flops", "diag_kernel_flops",
]


def conj_pairs(x: Tensor) -> Tensor:
    """(..., N) -> (..., 2N): both halves of the conjugate pairs."""
    return torch.cat([x, x.conj()], dim=-1)


def _complex_dtype(*tensors: Tensor) -> torch.dtype:
    double = any(t.dtype in (torch.float64, torch.complex128) for t in tensors)
    return torch.complex128 if double else torch.complex64


# --- structured products -------------------------------------------------------------------------------------------

def _batched_over_w(v: Tensor, w: Tensor):
    """Views of v c(*E, *W, N) as (M, E, N) and w c(*W, N) as (M, N), M = prod(W), so that per-w work is done once."""
    w_batch = w.shape[:-1]
    n = w.shape[-1]
    extra = v.shape[:v.dim() - w.dim()]
    if tuple(v.shape[v.dim() - w.dim():]) != tuple(w.shape):
        raise ValueError(f"v {tuple(v.shape)} must end with the shape of w {tuple(w.shape)}")
    m = math.prod(w_batch)
    e = math.prod(extra)
    v2 = v.reshape(e, m, n).transpose(0, 1)  # (M, E, N)
    return v2, w.reshape(m, n), extra, w_batch


def cauchy_ref(v: Tensor, z: Tensor, w: Tensor, zscale: Optional[Tensor] = None, conj: bool = True) -> Tensor:
    """Cauchy product by its definition: ``y[..., k] = sum_n v[..., n] / (z[k] - zscale[k] * w[..., n])``.

    Args:
        v: c(..., N) numerators.
        z: c(K) nodes.
        w: c(..., N) poles, broadcastable against v.
        zscale: c(K) or None (ones): homogeneous nodes ``z / zscale`` (finite even where ``zscale`` is 0).
        conj: sum over both halves of the conjugate pairs of v and w (the official default).

    Returns: c(..., K).
    """
    if conj:
        v, w = conj_pairs(v), conj_pairs(w)
    if zscale is None:
        zscale = torch.ones_like(z)
    v, w = torch.broadcast_tensors(v, w)
    y = 0
    for n in range(v.shape[-1]):  # one pole at a time
        y = y + v[..., n, None] / (z - zscale * w[..., n, None])
    return y


def cauchy(v: Tensor, z: Tensor, w: Tensor, zscale: Optional[Tensor] = None, conj: bool = True) -> Tensor:
    """Vectorised ``cauchy_ref``: the Cauchy matrix ``1 / (z - zscale w)`` is built once per pole set w c(*W, N)
    and contracted with all numerators v c(*E, *W, N) sharing it by one batched matmul (no (E, N, K) tensor)."""
    if conj:
        v, w = conj_pairs(v), conj_pairs(w)
    if zscale is None:
        zscale = torch.ones_like(z)
    v2, w2, extra, w_batch = _batched_over_w(v, w)
    cauchy_matrix = torch.reciprocal(z - zscale * w2[..., None])  # (M, N, K)
    y = torch.bmm(v2, cauchy_matrix)  # (M, E, K)
    return y.transpose(0, 1).reshape(*extra, *w_batch, z.shape[-1])


def vandermonde_ref(v: Tensor, x: Tensor, length: int) -> Tensor:
    """Log-Vandermonde product by its definition: ``y[..., l] = sum_n v[..., n] exp(x[..., n] l)``, l < length.

    Args:
        v: c(..., N).
        x: c(..., N) logs of the nodes, broadcastable against v.

    Returns: c(..., length). (Callers take ``2 Re`` for the conjugate pairs.)
    """
    return torch.stack([(v * torch.exp(x * l)).sum(-1) for l in range(length)], dim=-1)


def vandermonde(v: Tensor, x: Tensor, length: int) -> Tensor:
    """Vectorised ``vandermonde_ref``: the Vandermonde matrix exp(x l) is built once per node set x c(*W, N) and
    contracted with all v c(*E, *W, N) sharing it by one batched matmul."""
    v2, x2, extra, w_batch = _batched_over_w(v, x)
    steps = torch.arange(length, device=x.device, dtype=x2.real.dtype)
    vander = torch.exp(x2[..., None] * steps)  # (M, N, L)
    y = torch.bmm(v2, vander)  # (M, E, L)
    return y.transpose(0, 1).reshape(*extra, *w_batch, length)


# --- discretisations -----------------------------------------------------------------------------------------------

def bilinear(dt: Tensor, A: Tensor, B: Optional[Tensor] = None):
    """Bilinear (Tustin) discretisation of a dense SSM: ``dA = (I - dt/2 A)^-1 (I + dt/2 A)``,
    ``dB = (I - dt/2 A)^-1 dt B``.

    Args:
        dt: r(H, 1).
        A: c(H, N, N).
        B: c(H, N) or None.

    Returns: dA c(H, N, N), dB c(H, N) or None.
    """
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    half = (dt / 2)[..., None].to(A.dtype)  # (H, 1, 1)
    backward = eye - half * A
    dA = torch.linalg.solve(backward, eye + half * A)
    dB = None if B is None else torch.linalg.solve(backward, (dt.to(A.dtype) * B)[..., None])[..., 0]
    return dA, dB


def zoh_diag(dt: Tensor, A: Tensor, B: Tensor):
    """Zero-order hold of a diagonal SSM (S4D default): ``dA = exp(dt A)``, ``dB = (exp(dt A) - 1) / A B``.
    dt r(H, 1), A c(H, N), B c(..., H, N) -> dA c(H, N), dB c(..., H, N)."""
    dA = torch.exp(dt * A)
    return dA, B * (dA - 1.0) / A


def bilinear_diag(dt: Tensor, A: Tensor, B: Tensor):
    """Bilinear discretisation of a diagonal SSM: ``dA = (1 + dt A / 2) / (1 - dt A / 2)``,
    ``dB = dt B / (1 - dt A / 2)``. Shapes as ``zoh_diag``."""
    dtA = dt * A
    return (1.0 + dtA / 2) / (1.0 - dtA / 2), B * dt / (1.0 - dtA / 2)


def dplr_state_matrix(A: Tensor, P: Tensor) -> Tensor:
    """Dense DPLR state matrix over both conjugate halves: ``diag(A, conj A) - sum_r p_r p_r^*`` with
    ``p_r = (P_r, conj P_r)``. A c(H, N), P c(R, H, N) -> c(H, 2N, 2N)."""
    p = conj_pairs(P)  # (R, H, 2N)
    return torch.diag_embed(conj_pairs(A)) - torch.einsum("rhm,rhn->hmn", p, p.conj())


def bilinear_dplr(dt: Tensor, A: Tensor, P: Tensor) -> Tensor:
    """``bilinear(dt, dplr_state_matrix(A, P))[0]`` in O(H N^2 R): the solve with ``I - dt/2 M``,
    ``M = diag(A) - p p^*``, by the Woodbury identity (a diagonal and an R x R system per feature) instead of a dense
    LU. dt r(H, 1), A c(H, N), P c(R, H, N) -> dA c(H, 2N, 2N)."""
    a = conj_pairs(A)  # (H, 2N)
    p = conj_pairs(P).permute(1, 2, 0)  # (H, 2N, R)
    half = (dt / 2).to(a.dtype)  # (H, 1)
    d_inv = torch.reciprocal(1 - half * a)  # (I - dt/2 diag(A))^-1
    u = half[..., None] * p  # I - dt/2 M = diag(1 - dt/2 A) + u p^*
    d_inv_u = d_inv[..., None] * u  # (H, 2N, R)
    small = torch.eye(p.shape[-1], dtype=a.dtype, device=a.device) + p.conj().transpose(1, 2) @ d_inv_u  # (H, R, R)
    p_h = p.conj().transpose(1, 2)  # (H, R, 2N)
    right = torch.linalg.solve(small, p_h * d_inv[:, None, :])  # (I - dt/2 M)^-1 = D^-1 - D^-1 u right
    e = 1 + half * a  # I + dt/2 M = diag(e) - u p^*
    # dA = (D^-1 - D^-1 u right)(diag(e) - u p^*) = diag(e / d) - D^-1 u (right diag(e) + (I - right u) p^*)
    eye = torch.eye(p.shape[-1], dtype=a.dtype, device=a.device)
    dA = -(d_inv_u @ (right * e[:, None, :] + (eye - right @ u) @ p_h))  # (H, 2N, 2N), one rank-R product
    dA.diagonal(dim1=-2, dim2=-1).add_(d_inv * e)
    return dA


def dplr_tilde_c(C: Tensor, A: Tensor, P: Tensor, dt: Tensor, length: int, double: bool = False) -> Tensor:
    """The official C~: ``(I - dA^L)^T C`` (or ``(I + dA^L)^T C`` when doubling a kernel of length L to 2L), with dA
    the bilinear discretisation of the DPLR state matrix at dt (``bilinear_dplr``). ``(dA^L)^T C`` is taken as L
    batched vector-matrix steps or a matrix power, whichever costs fewer multiplications (C channel vectors against
    about 2 log2(L) 2N x 2N products).

    Args:
        C: c(C, H, N); A: c(H, N); P: c(R, H, N); dt: r(H, 1).

    Returns: c(C, H, N).
    """
    dA = bilinear_dplr(dt, A.to(C.dtype), P.to(C.dtype))  # (H, 2N, 2N)
    c_full = conj_pairs(C)  # (C, H, 2N)
    products = length.bit_length() - 1 + bin(length).count("1") - 1  # matmuls of the binary matrix power
    if length * C.shape[0] <= products * dA.shape[-1]:
        v = c_full.transpose(0, 1)  # (H, C, 2N) rows: v^T dA^l = ((dA^l)^T v)^T
        for _ in range(length):
            v = torch.bmm(v, dA)
        prod = v.transpose(0, 1)
    else:
        prod = torch.einsum("hnm,chn->chm", torch.linalg.matrix_power(dA, length), c_full)  # (dA^L)^T C
    c_full = c_full + prod if double else c_full - prod
    return c_full[..., :C.shape[-1]]


def bandlimit_mask(dt: Tensor, A: Tensor, bandlimit: float) -> Tensor:
    """S4ND's anti-aliasing mask on the modes: 1 where the mode's frequency ``dt |Im A| / (2 pi)`` is below
    ``bandlimit / 2``, else 0. Uses the base dt (the official ``dt / rate``), so the mask does not change with the
    rate. dt r(H, 1), A c(H, N) -> r(H, N)."""
    freqs = dt * A.imag.abs() / (2 * math.pi)
    return (freqs < bandlimit * 0.5).to(dt.dtype)


# --- kernels -------------------------------------------------------------------------------------------------------

def fft_nodes(fft_length: int, dtype: torch.dtype, device=None) -> Tensor:
    """``w_k = exp(-2 pi i k / L)`` for k = 0 .. L // 2 (the rfft bins), computed in float64, rounded once."""
    k = torch.arange(fft_length // 2 + 1, dtype=torch.float64, device=device)
    angle = -2 * math.pi * k / fft_length
    return torch.polar(torch.ones_like(angle), angle).to(dtype)


def dplr_kernel(A: Tensor, B: Tensor, C: Tensor, P: Tensor, dt: Tensor, length: int,
                fft_length: Optional[int] = None) -> Tensor:
    """S4 (DPLR) convolution kernel, bilinear discretisation, evaluated at the roots of unity (fast path).

    Args:
        A: c(H, N) diagonal part (negative real part), one half of the conjugate pairs.
        B: c(H, N).
        C: c(C, H, N) the stored C~ (see ``dplr_tilde_c``).
        P: c(R, H, N) low-rank part: the state matrix is ``diag(A) - P P^*`` (over both halves).
        dt: r(H, 1) step (already multiplied by the rate).
        length: taps returned (the official truncation).
        fft_length: number of roots of unity (official ``discrete_L``, the length C~ was made for divided by the
            rate); defaults to ``length``.

    Returns: r(C, H, min(length, fft_length)).
    """
    fft_length = length if fft_length is None else fft_length
    cdtype = _complex_dtype(A, C, dt)
    A, B, C, P = A.to(cdtype), B.to(cdtype), C.to(cdtype), P.to(cdtype)
    channels, rank = C.shape[0], P.shape[0]
    omega = fft_nodes(fft_length, cdtype, A.device)  # (K,)
    half = (1 + omega) / 2  # zscale: the bilinear factor, 0 at the Nyquist node
    dtc = dt.to(cdtype)
    left = torch.cat([B[None], P], dim=0) * dtc  # (1+R, H, N): B and P, dt folded in
    right = torch.cat([C, P.conj()], dim=0)  # (C+R, H, N): C and Q = conj P
    v = left[:, None] * right[None]  # (1+R, C+R, H, N)
    # r[i, j, h, k] = sum_n 2 v / (2 (1 - w_k) - dtA_n (1 + w_k)) over both conjugate halves
    r = cauchy(v, 1 - omega, dtc * A, half)  # (1+R, C+R, H, K)
    r00, r01, r10, r11 = r[0, :channels], r[0, channels:], r[1:, :channels], r[1:, channels:]
    if rank == 1:  # Woodbury, rank 1: k = r_BC - t r_BQ r_PC / (1 + t r_PQ)
        k_f = r00 - half * r01[0] * r10[0] / (1 + half * r11[0, 0])
    else:  # k = r_BC - t r_BQ (I + t r_PQ)^-1 r_PC
        eye = torch.eye(rank, dtype=cdtype, device=A.device)
        system = eye + half[:, None, None] * r11.permute(2, 3, 0, 1)  # (H, K, Rp, Rq)
        solved = torch.linalg.solve(system, r10.permute(2, 3, 0, 1))  # (H, K, Rq, C)
        k_f = r00 - half * torch.einsum("qhk,hkqc->chk", r01, solved)
    k = torch.fft.irfft(k_f, n=fft_length)  # (C, H, fft_length)
    return k[..., :length]


def dplr_kernel_ref(A: Tensor, B: Tensor, C: Tensor, P: Tensor, dt: Tensor, length: int,
                    fft_length: Optional[int] = None) -> Tensor:
    """Reference for ``dplr_kernel`` (same arguments): the dense bilinear system over both conjugate halves,
    ``K[l] = C_eff^T dA^l dB`` with ``C_eff = (I - dA^Lf)^-T C~`` (undoing the C~ made for ``Lf = fft_length``), one
    tap at a time."""
    fft_length = length if fft_length is None else fft_length
    cdtype = _complex_dtype(A, C, dt)
    A, B, C, P = A.to(cdtype), B.to(cdtype), C.to(cdtype), P.to(cdtype)
    dA, dB = bilinear(dt, dplr_state_matrix(A, P), conj_pairs(B))  # (H, 2N, 2N), (H, 2N)
    eye = torch.eye(dA.shape[-1], dtype=cdtype, device=A.device)
    periodic = eye - torch.linalg.matrix_power(dA, fft_length)  # (H, 2N, 2N)
    c_eff = torch.linalg.solve(periodic.transpose(-1, -2), conj_pairs(C).permute(1, 2, 0))  # (H, 2N, C)
    taps, state = [], dB
    for _ in range(min(length, fft_length)):
        taps.append(torch.einsum("hnc,hn->ch", c_eff, state).real)  # (C, H)
        state = torch.einsum("hmn,hn->hm", dA, state)
    return torch.stack(taps, dim=-1)


def diag_kernel(A: Tensor, B: Tensor, C: Tensor, dt: Tensor, length: int, disc: str = "zoh") -> Tensor:
    """S4D (diagonal) convolution kernel ``K[l] = 2 Re sum_n C_n dB_n dA_n^l`` through the log-Vandermonde product.

    Args:
        A: c(H, N) (negative real part); B: c(H, N); C: c(C, H, N); dt: r(H, 1) (already times the rate).
        disc: ``'zoh'`` (official S4D default) or ``'bilinear'``.

    Returns: r(C, H, length).
    """
    cdtype = _complex_dtype(A, C, dt)
    A, B, C = A.to(cdtype), B.to(cdtype), C.to(cdtype)
    dtA = dt * A  # (H, N)
    if disc == "zoh":
        v = B * C * (torch.exp(dtA) - 1.0) / A  # (C, H, N)
        log_nodes = dtA
    elif disc == "bilinear":
        v = B * C * (1.0 - dtA / 2).reciprocal() * dt
        log_nodes = ((1.0 + dtA / 2) / (1.0 - dtA / 2)).log()
    else:
        raise ValueError(f"diag_kernel: disc must be 'zoh' or 'bilinear', got {disc!r}")
    return 2 * vandermonde(v, log_nodes, length).real


def diag_kernel_ref(A: Tensor, B: Tensor, C: Tensor, dt: Tensor, length: int, disc: str = "zoh") -> Tensor:
    """Reference for ``diag_kernel`` (same arguments): discretise, then run the impulse response one tap at a time,
    ``x_0 = dB, x_{l+1} = dA x_l, K[l] = 2 Re sum_n C_n x_l``."""
    cdtype = _complex_dtype(A, C, dt)
    A, B, C = A.to(cdtype), B.to(cdtype), C.to(cdtype)
    if disc == "zoh":
        dA, dB = zoh_diag(dt, A, B)
    elif disc == "bilinear":
        dA, dB = bilinear_diag(dt, A, B)
    else:
        raise ValueError(f"diag_kernel_ref: disc must be 'zoh' or 'bilinear', got {disc!r}")
    taps, state = [], dB  # (H, N)
    for _ in range(length):
        taps.append(2 * (C * state).sum(-1).real)  # (C, H)
        state = dA * state
    return torch.stack(taps, dim=-1)


# --- work ----------------------------------------------------------------------------------------------------------
# Real flops per complex operation: a product 6 (4 multiplies, 2 adds), a multiply-add 8, an add 2, a reciprocal 6
# (counted as a product), an exponential 6 (as a product); the O(H N) discretisation and parameter transforms are not
# counted.

def dplr_kernel_flops(features: int, channels: int, state: int, rank: int, fft_length: int) -> int:
    """Real flops of one ``dplr_kernel`` call: H = ``features``, C = ``channels``, N = ``state`` (one half of the
    conjugate pairs), R = ``rank``, K = fft_length // 2 + 1 nodes:

    * the Cauchy matrices ``1 / (z - zscale w)`` over both halves: 14 per entry (a product, an add, a reciprocal),
      H * 2N * K entries;
    * their contraction with the (1 + R)(C + R) numerator rows: 8 per multiply-add, (1 + R)(C + R) * H * 2N * K;
    * the low-rank (Woodbury) correction: 20 R per (C, H, node) (two products, a quotient, an add per rank; the
      R x R solve of R > 1 is not counted) and 8 per (H, node) for its denominator;
    * the inverse real FFT of the C * H kernels: ``fft_flops(fft_length)`` each.
    """
    nodes, poles = fft_length // 2 + 1, 2 * state
    cauchy_matrix = 14 * features * poles * nodes
    contraction = 8 * (1 + rank) * (channels + rank) * features * poles * nodes
    woodbury = 20 * rank * channels * features * nodes + 8 * features * nodes
    return cauchy_matrix + contraction + woodbury + channels * features * fft_flops(fft_length)


def diag_kernel_flops(features: int, channels: int, state: int, length: int) -> int:
    """Real flops of one ``diag_kernel`` call (H = ``features``, C = ``channels``, N = ``state``, L = ``length``):
    the Vandermonde matrices ``exp(dtA l)``, 8 per entry (a real-by-complex product, an exponential), H * N * L
    entries; their contraction with the C numerators, 8 per multiply-add, C * H * N * L; the numerators
    ``B C (exp(dtA) - 1) / A``, 20 per (C, H, N)."""
    return 8 * features * state * length + 8 * channels * features * state * length + 20 * channels * features * state
