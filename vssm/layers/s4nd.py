"""S4ND: multidimensional state space layer (Nguyen, Goel, Gu et al., "S4ND: Modeling Images and Videos as
Multidimensional Signals Using State Spaces", NeurIPS 2022, arXiv 2210.06583).

A re-implementation of the official ``S4ND`` module (github:state-spaces/s4, ``src/models/sequence/modules/s4nd.py``
at e757cef, Apache-2.0), with its 1-D SSM kernels ``SSMKernelDPLR`` (S4, the default) and ``SSMKernelDiag`` (S4D).
The math lives in ``vssm.ops.ssm_kernel`` (kernel generation) and ``vssm.ops.fft_conv`` (separable FFT convolution).

Forward of ``S4ND`` on u (B, H, L1..Ld) (or (B, L1..Ld, H) with ``transposed=False``) at rate r:

1. per axis i a 1-D kernel of ``L_kernel_i = L_i`` (no ``l_max``) or ``min(L_i, round(l_max_i / r))`` taps from its own
   SSM (``kernel.i``), shape (C', H, L_kernel_i), C' = channels x (out_channels or 1) x trank x (2 if bidirectional);
   at rate r the SSM step is dt * r and ``round(l_kernel / r)`` frequency nodes are used (the same continuous kernel,
   sampled coarser); an input shorter than ``l_max`` gets the l_max kernel truncated;
2. bidirectional: forward half + flipped backward half (``vssm.ops.fft_conv.bidirectional_kernel``);
3. N-D kernel = outer product of the per-axis kernels (mean over ``trank`` terms); FFT convolution with zero padding to
   ``L_i + L_kernel_i``; output channel ``c * H + h``;
4. skip ``+ u * D[c, h]`` (not with ``out_channels``: the dense stem, every (out i, in h) pair its own kernel, no D);
5. unless ``linear``: dropout(activation(y)), then ``output_linear`` (H * channels -> H, or 2H followed by a GLU when
   ``final_act='glu'``).

Only the first d kernels are used for a d-axis input (the official ViT builds ``dim=2`` kernels for a 1-D sequence;
``kernel.1`` is then never used). The SSM part (kernels, FFTs, D skip) runs in float32 (float64 for float64 input)
with autocast disabled and is cast back to the input dtype; the output linear follows autocast.

Kernel cache: the official code regenerates the kernels every forward (so do we in training). In eval, when no
autograd graph is needed (``torch.no_grad``/``inference_mode`` or frozen kernel parameters), the kernel spectra are
cached for a fixed (kernel parameter and buffer storage + ``_version``, input dtype, device, lengths, rate, inference
mode); any change, an in-place parameter update or ``train()`` drops them. ``kernel_cache=False`` disables it.

Stateful C (official behaviour): the DPLR kernel stores ``C~ = (I - dA^L)^T C`` with ``L = l_max`` and the buffer
``l_kernel = L``. As the official, a fresh kernel (``l_kernel == 0``: just built, or an official model never run)
converts C in place on its first forward (a dense (H, 2N, 2N) matrix power in the parameters' precision, done once:
about 2 s per ViT-B layer on a CPU; trained checkpoints store C~ and skip it). A longer kernel than ``l_kernel``
doubles it (``C~ <- (I + dA^l)^T C~``, l_kernel *= 2).

Tracing: ``S4ND`` is an FX leaf (timm ``register_notrace_module``); under TorchScript its SSM core (``S4ND._ssm``:
kernels, FFTs, D skip) is ``torch.jit.ignore``-d and runs as Python inside the scripted model, which is why the kernel
helpers (``kernel_forward``, ``kernel_params``, ``setup_c_tilde``) are functions rather than methods.

Optimizer hints (official ``_optim`` attributes): with ``lr`` a float, ``inv_dt``, ``A_real``, ``A_imag``, ``B``, ``P``
carry ``param._optim = {"lr": lr, "weight_decay": wd}`` (wd defaults to 0.0) and ``C`` carries ``{"lr": lr}`` (global
weight decay); ``lr=0.0`` makes them buffers (frozen), as the official. ``D`` and ``output_linear`` carry nothing,
except the bias of a transposed output linear (``{"weight_decay": 0.0}``, official ``TransposedLinear``).
``S4ND.optim_hints()`` returns the same as a dict (``copy.deepcopy`` does not copy Parameter attributes).

State-dict keys equal the official ones, except the output linear (and the unused official parameters):

=====================================================  ===========================================================
official                                               vssm
=====================================================  ===========================================================
``D``                                                  ``D`` (channels, H); dropped for ``out_channels``
``kernel.{i}.inv_dt`` / ``A_real`` / ``A_imag``        same (H, 1) / (S, N/2) / (S, N/2)
``kernel.{i}.B`` / ``P`` / ``C``                       same (1, S, N/2, 2) / (R, S, N/2, 2) / (C', H, N/2, 2)
``kernel.{i}.l_kernel`` (DPLR only)                    same (int64 scalar)
``output_linear.0.{weight,bias}`` (final_act set)      ``output_linear.{weight,bias}``
``output_linear.{weight,bias}`` (final_act None)       ``output_linear.{weight,bias}``
v3 ``kernel.{i}.kernel.*`` (``log_dt``, ``L``, ..)     ``kernel.{i}.*`` (``inv_dt``, ``l_kernel``, ..), see below
=====================================================  ===========================================================

``convert_official_s4nd`` applies it (v3 names: ``log_dt`` -> ``inv_dt``, ``inv_w_real`` / ``log_w_real`` ->
``A_real``, ``w_imag`` -> ``A_imag``, ``L`` -> ``l_kernel``) and, given the layer, drops the official parameters it
does not build (``kernel.{i}`` of axes a 1-D rebuild lacks, the dense stem's ``D``); ``s4nd_from_official`` builds
the layer from the official constructor kwargs.
"""
import math
import re
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
from timm.layers import register_notrace_module
from torch import Tensor

from ..ops.fft_conv import bidirectional_kernel, fft_conv_nd, kernel_spectra
from ..ops.ssm_kernel import bandlimit_mask, diag_kernel, dplr_kernel, dplr_tilde_c

__all__ = ["S4ND", "SSMKernelDPLR", "SSMKernelDiag", "convert_official_s4nd", "kernel_forward", "kernel_params",
           "s4nd_from_official", "setup_c_tilde", "ssm_init"]

_DPLR_MODES = ("dplr", "s4", "nplr")
_DIAG_MODES = ("s4d", "diag")
_INIT_COMBINATIONS = {"hippo": ["legs", "fourier"], "diag": ["diag-inv", "diag-lin"],
                      "all": ["legs", "fourier", "diag-inv", "diag-lin"]}


# --- initialisation (HiPPO and S4D inits, official kernels/dplr.py + hippo/hippo.py semantics) ----------------------

def _hippo_nplr(measure: str, N: int):
    """Normal-plus-low-rank form of the HiPPO matrices: (W c(N/2), P c(1, N/2), B c(N/2)) with the state matrix
    unitarily equivalent to ``diag(W) - P P^*`` over both conjugate halves; complex128."""
    q = torch.arange(N, dtype=torch.float64, device="cpu")
    if measure == "legs":
        r = torch.sqrt(2 * q + 1)
        A = -torch.tril(r[:, None] * r[None, :], -1) - torch.diag(q + 1)  # -(sqrt(2n+1) sqrt(2k+1)) below, -(n+1) diag
        B = r.clone()
        P = torch.sqrt(0.5 + q)[None]
    elif measure in ("fourier", "fout"):
        freqs = torch.arange(N // 2, dtype=torch.float64, device="cpu")
        d = torch.stack([torch.zeros_like(freqs), freqs], dim=-1).reshape(-1)[1:]
        A = math.pi * (-torch.diag(d, 1) + torch.diag(d, -1))
        B = torch.zeros_like(q)
        B[0::2] = 2 ** 0.5
        B[0] = 1
        A = A - B[:, None] * B[None, :]
        P = B.clone()[None]
    else:
        raise NotImplementedError(f"HiPPO measure {measure!r} (supported: 'legs', 'fourier')")
    AP = A + P.T @ P  # identity times a constant plus a skew-symmetric matrix
    w_re = torch.diagonal(AP).mean()
    w_im, V = torch.linalg.eigh(AP.to(torch.complex128) * -1j)
    W = w_re + 1j * w_im
    order = torch.argsort(W.imag)
    W, V = W[order][:N // 2], V[:, order][:, :N // 2]  # keep the eigenvalues with negative imaginary part
    if W[-1].abs() < 1e-4:  # the Fourier zero eigenvalue pair: fix its eigenvector (official convention)
        V[:, -1] = 0.0
        V[0, -1] = 2 ** -0.5
        V[1, -1] = 2 ** -0.5 * 1j
    V_inv = V.conj().T
    B = V_inv @ B.to(V.dtype)
    P = (V_inv @ P.to(V.dtype).T).T
    B = B.real + 1j * torch.clamp(B.imag, min=-2.0, max=2.0)  # official B_clip=2
    return W, P, B


def _single_init(init: str, N: int, rank: int, S: int):
    if init.startswith("diag"):  # S4D inits: A = -1/2 - i imag, B = 1, P = 0
        kind = init.split("-", 1)[1] if "-" in init else "inv"
        n = torch.arange(N // 2, dtype=torch.float64, device="cpu")
        if kind in ("lin", "linear"):
            imag = math.pi * n
        elif kind in ("inv", "inverse"):
            imag = 1 / math.pi * N * (N / (1 + 2 * n) - 1)
        else:
            raise NotImplementedError(f"S4D init {init!r} (supported: 'diag-lin', 'diag-inv')")
        A = (-0.5 - 1j * imag).expand(S, -1)
        B = torch.ones(S, N // 2, dtype=torch.complex128, device="cpu")
        P = torch.zeros(rank, S, N // 2, dtype=torch.complex128, device="cpu")
        return A, P, B
    if rank != 1:
        raise ValueError(f"init {init!r} has a rank-1 correction; got rank={rank}")
    W, P, B = _hippo_nplr(init, N)
    return W.expand(S, -1), P[:, None].expand(-1, S, -1), B.expand(S, -1)


def ssm_init(init: Union[str, Sequence[str]], N: int, rank: int, S: int):
    """(A c(S, N/2), P c(R, S, N/2), B c(S, N/2)) for ``init`` in 'legs' (S4ND-ViT), 'fourier' (S4ND-ConvNeXt),
    'diag-lin' / 'diag-inv' (S4D), or the combinations 'hippo' / 'diag' / 'all' (S split between them); complex128."""
    inits = _INIT_COMBINATIONS.get(init, [init]) if isinstance(init, str) else list(init)
    if S % len(inits):
        raise ValueError(f"n_ssm={S} must be a multiple of the {len(inits)} inits {inits}")
    parts = [_single_init(i, N, rank, S // len(inits)) for i in inits]
    A = torch.cat([p[0] for p in parts], dim=0)
    P = torch.cat([p[1] for p in parts], dim=1)
    B = torch.cat([p[2] for p in parts], dim=0)
    return A, P, B


# --- 1-D kernels ---------------------------------------------------------------------------------------------------

def _hint_table(value, keys=("dt", "A", "B", "C")) -> Dict[str, Optional[float]]:
    if value is None or isinstance(value, (int, float)):
        return {k: value for k in keys}
    return {k: value.get(k) for k in keys}


class _SSMKernel(nn.Module):
    """Parameters shared by the DPLR and diagonal kernels (official ``SSMKernelDiag`` layout).

    Args:
        d_model: H features (each its own dt and C).
        channels: C' kernel channels.
        l_max: kernel length (DPLR: the length C~ is made for).
        d_state: N, the real state size (N/2 conjugate pairs stored).
        dt_min, dt_max: log-uniform range of the initial step.
        rank: low-rank correction rank (DPLR).
        n_ssm: S independent (A, B, P) copies shared by the H features (None: H).
        init: see ``ssm_init``.
        lr, wd: optimizer hints (float or dict over 'dt', 'A', 'B', 'C'), see the module docstring.
        bandlimit: mask modes with ``dt |Im A| / 2 pi >= bandlimit / 2`` (S4ND anti-aliasing) or None.
    """

    def __init__(
            self,
            d_model: int,
            channels: int = 1,
            l_max: Optional[int] = None,
            d_state: int = 64,
            dt_min: float = 0.001,
            dt_max: float = 0.1,
            rank: int = 1,
            n_ssm: Optional[int] = None,
            init: Union[str, Sequence[str]] = "legs",
            lr: Union[None, float, dict] = None,
            wd: Union[None, float, dict] = 0.0,
            bandlimit: Optional[float] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        self.H, self.channels, self.l_max = d_model, channels, l_max
        self.N = d_state // 2
        self.rank = rank
        self.n_ssm = d_model if n_ssm is None else n_ssm
        if d_model % self.n_ssm:
            raise ValueError(f"n_ssm={self.n_ssm} must divide d_model={d_model}")
        self.bandlimit = bandlimit
        self._lr, self._wd = _hint_table(lr), _hint_table(wd)
        self._hints: Dict[str, dict] = {}
        dtype = dtype or torch.get_default_dtype()
        self._dd = {"device": device if device is not None else torch.get_default_device(), "dtype": dtype}
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        A, P, B = ssm_init(init, d_state, rank, self.n_ssm)
        # computed on the CPU (also under a meta / cuda default device), then moved
        inv_dt = torch.rand(d_model, 1, dtype=torch.float64, device="cpu") * (math.log(dt_max) - math.log(dt_min))
        inv_dt = inv_dt + math.log(dt_min)
        C = torch.randn(channels, d_model, self.N, dtype=cdtype, device="cpu").to(torch.complex128)
        self._init = (inv_dt, A, P, B, C)  # consumed by the subclass

    def _register(self, name: str, tensor: Tensor, lr, wd):
        """Official ``Kernel.register``: lr 0 -> buffer; else a Parameter with ``_optim`` hints."""
        tensor = tensor.to(**self._dd)
        if lr == 0.0:
            self.register_buffer(name, tensor)
            return
        self.register_parameter(name, nn.Parameter(tensor))
        hints = {}
        if lr is not None:
            hints["lr"] = lr
        if wd is not None:
            hints["weight_decay"] = wd
        getattr(self, name)._optim = hints
        self._hints[name] = hints

    def _register_common(self, inv_dt, A, B, C):
        real = lambda z: torch.view_as_real(z.resolve_conj()).contiguous()  # noqa: E731
        self._register("inv_dt", inv_dt, self._lr["dt"], self._wd["dt"])
        self._register("A_real", torch.log(torch.clamp(-A.real, min=1e-4)), self._lr["A"], self._wd["A"])
        self._register("A_imag", torch.clamp(-A.imag, min=1e-4), self._lr["A"], self._wd["A"])
        self._register("B", real(B[None]), self._lr["B"], self._wd["B"])
        self._register("C", real(C), self._lr["C"], None)

    def optim_hints(self) -> Dict[str, dict]:
        return dict(self._hints)

    def extra_repr(self) -> str:
        return (f"d_model={self.H}, channels={self.channels}, d_state={2 * self.N}, l_max={self.l_max}, "
                f"n_ssm={self.n_ssm}, bandlimit={self.bandlimit}")


def kernel_params(kernel: nn.Module, rate: float = 1.0):
    """The SSM of a kernel module at ``rate``: dt r(H, 1) (times the rate), A c(H, N), B c(H, N), C c(C', H, N)
    (bandlimit applied), and for DPLR kernels P c(R, H, N); (A, B, P) repeated from the S copies to the H features
    (feature h uses copy h mod S)."""
    base_dt = torch.exp(kernel.inv_dt)
    A = -torch.exp(kernel.A_real) - 1j * kernel.A_imag  # (S, N)
    repeat = kernel.H // A.shape[0]
    A = A.repeat(repeat, 1)  # (H, N)
    B = torch.view_as_complex(kernel.B)[0].repeat(repeat, 1)
    C = torch.view_as_complex(kernel.C)
    if kernel.bandlimit is not None:
        C = C * bandlimit_mask(base_dt, A, kernel.bandlimit)
    if not hasattr(kernel, "P"):
        return base_dt * rate, A, B, C
    return base_dt * rate, A, B, C, torch.view_as_complex(kernel.P).repeat(1, repeat, 1)


@torch.no_grad()
def setup_c_tilde(kernel: nn.Module, length: int) -> None:
    """DPLR kernel, in place: C -> C~ = (I - dA^L)^T C for a fresh kernel (``l_kernel == 0``), or double its length
    (C~ <- (I + dA^l)^T C~, l_kernel -> 2 l_kernel) when ``length > l_kernel``; in the parameters' precision, as the
    official (complex64 for float32)."""
    current = _l_kernel(kernel)
    if current == 0:
        double = False
    elif length > current:
        double, length = True, current
    else:
        return
    dt = torch.exp(kernel.inv_dt)
    A = -torch.exp(kernel.A_real) - 1j * kernel.A_imag
    repeat = kernel.H // A.shape[0]
    P = torch.view_as_complex(kernel.P)
    c_new = dplr_tilde_c(torch.view_as_complex(kernel.C), A.repeat(repeat, 1), P.repeat(1, repeat, 1), dt, length,
                         double=double)
    kernel.C.copy_(torch.view_as_real(c_new))
    kernel.l_kernel.fill_(2 * current if double else length)


class SSMKernelDPLR(_SSMKernel):
    """S4 kernel (diagonal plus low rank, bilinear), official ``SSMKernelDPLR``: ``forward(L, rate) -> r(C', H, L)``.

    Parameters: ``inv_dt`` (H, 1) = log dt; ``A_real`` (S, N/2) = log(-Re A); ``A_imag`` (S, N/2) = -Im A;
    ``B`` (1, S, N/2, 2), ``P`` (R, S, N/2, 2), ``C`` (C', H, N/2, 2) complex as (real, imag); buffer ``l_kernel``.
    """

    def __init__(self, d_model: int, **kwargs):
        super().__init__(d_model, **kwargs)
        inv_dt, A, P, B, C = self._init
        del self._init
        self._register_common(inv_dt, A, B, C)
        self._register("P", torch.view_as_real(P).contiguous(), self._lr["A"], self._wd["A"])
        self.register_buffer("l_kernel", torch.tensor(0, device=self._dd["device"]))  # C~ is set up on first use

    @torch.jit.ignore  # TorchScript: runs as Python (see ``kernel_forward``)
    def forward(self, L: int, rate: float = 1.0) -> Tensor:
        return kernel_forward(self, L, rate)


class SSMKernelDiag(_SSMKernel):
    """S4D kernel (diagonal, ZOH by default), official ``SSMKernelDiag``: ``forward(L, rate) -> r(C', H, L)``.

    Parameters as ``SSMKernelDPLR`` without ``P`` and ``l_kernel``.
    """

    def __init__(self, d_model: int, disc: str = "zoh", **kwargs):
        super().__init__(d_model, **kwargs)
        if disc not in ("zoh", "bilinear"):
            raise NotImplementedError(f"S4D discretisation {disc!r} (supported: 'zoh', 'bilinear')")
        self.disc = disc
        inv_dt, A, P, B, C = self._init
        del self._init
        self._register_common(inv_dt, A, B, C)

    @torch.jit.ignore
    def forward(self, L: int, rate: float = 1.0) -> Tensor:
        return kernel_forward(self, L, rate)


# --- the layer -----------------------------------------------------------------------------------------------------

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "elu": nn.ELU, "swish": nn.SiLU, "silu": nn.SiLU,
                "sigmoid": nn.Sigmoid, "softplus": nn.Softplus}


def _activation(name: Optional[str], dim: int = -1) -> nn.Module:
    if name in (None, "id", "identity", "linear", "none"):
        return nn.Identity()
    if name == "glu":
        return nn.GLU(dim=dim)
    if name in _ACTIVATIONS:
        return _ACTIVATIONS[name]()
    raise NotImplementedError(f"activation {name!r}")


_KERNEL_TENSORS = ("inv_dt", "A_real", "A_imag", "B", "P", "C", "l_kernel")


def _kernel_tensors(kernel: nn.Module):
    """The parameters and buffers of a kernel module, by name (also on a TorchScript module)."""
    return [getattr(kernel, name) for name in _KERNEL_TENSORS if hasattr(kernel, name)]


def _cache_key(kernels, u: Tensor, lengths, rate: float):
    state = tuple((t.data_ptr(), t._version, t.dtype) for k in kernels for t in _kernel_tensors(k))
    return state, u.dtype, u.device, tuple(lengths), float(rate), torch.is_inference_mode_enabled()


def _l_kernel(kernel: nn.Module) -> int:
    """``kernel.l_kernel`` as an int, read from the device only when the buffer changed (no sync per forward)."""
    buffer = kernel.l_kernel
    store = getattr(kernel, "__dict__", None)  # (a submodule of a TorchScript module has none: read every time)
    if store is None:
        return int(buffer.item())
    key = (buffer.data_ptr(), buffer._version, buffer.device)
    cached = store.get("_l_kernel_value")
    if cached is None or cached[0] != key:
        cached = (key, int(buffer.item()))
        store["_l_kernel_value"] = cached
    return cached[1]


def kernel_forward(kernel: nn.Module, L: int, rate: float = 1.0) -> Tensor:
    """The kernel r(C', H, L) of an ``SSMKernelDPLR`` / ``SSMKernelDiag`` at ``rate`` (their ``forward``; a function so
    that a TorchScript-compiled module, whose Python-side submodules cannot be called, still runs it).

    DPLR: set up C~ on first use (``l_kernel == 0``) and double it while ``round(rate * L)`` exceeds ``l_kernel``
    (official), then ``round(l_kernel / rate)`` roots of unity, truncated to L taps. S4D: the Vandermonde kernel."""
    if not hasattr(kernel, "P"):
        dt, A, B, C = kernel_params(kernel, rate)
        return diag_kernel(A, B, C, dt, L, kernel.disc)
    if _l_kernel(kernel) == 0 and kernel.l_max:
        setup_c_tilde(kernel, kernel.l_max)
    while round(rate * L) > _l_kernel(kernel):  # a longer kernel than C~ was made for
        setup_c_tilde(kernel, round(rate * L))
    fft_length = round(_l_kernel(kernel) / rate)  # roots of unity at this rate
    dt, A, B, C, P = kernel_params(kernel, rate)
    return dplr_kernel(A, B, C, P, dt, L, fft_length)


def _kernel_spectra(layer: nn.Module, u: Tensor, lengths, rate: float):
    """Per-axis kernel spectra and FFT sizes of an ``S4ND`` for input lengths ``lengths`` at ``rate`` (cached in eval
    when no graph is needed)."""
    kernels = [getattr(layer.kernel, str(i)) for i in range(len(lengths))]  # (also on a TorchScript module)
    needs_graph = torch.is_grad_enabled() and any(t.requires_grad for k in kernels for t in _kernel_tensors(k))
    use_cache = layer.kernel_cache and not layer.training and not needs_graph
    cache = layer.__dict__.get("_kernel_cache")
    key = _cache_key(kernels, u, lengths, rate) if use_cache else None
    if use_cache and cache is not None and cache[0] == key:
        return cache[1], cache[2]
    layer.__dict__["_kernel_cache"] = None
    kernel_lengths = [l if lm is None else min(l, round(lm / rate)) for l, lm in zip(lengths, layer.l_max)]
    with torch.autocast(device_type=u.device.type, enabled=False):
        ks = [kernel_forward(kernel, lk, rate) for kernel, lk in zip(kernels, kernel_lengths)]  # (C', H, lk)
        if layer.bidirectional:
            ks = [bidirectional_kernel(k, l) for k, l in zip(ks, lengths)]  # (C'/2, H, lk + l)
        fft_sizes = [l + lk for l, lk in zip(lengths, kernel_lengths)]
        spectra = kernel_spectra(ks, fft_sizes)
    if use_cache:  # key again: a first forward may have set up C~ in place
        layer.__dict__["_kernel_cache"] = (_cache_key(kernels, u, lengths, rate), fft_sizes, spectra)
    return fft_sizes, spectra


@register_notrace_module  # an FX leaf: kernel lengths and the stateful C~ depend on values (l_kernel, rate)
class S4ND(nn.Module):
    """S4ND layer (official ``S4ND``); see the module docstring for the forward and the parameter layout.

    Args:
        d_model: H features.
        d_state: N state size of each 1-D SSM.
        l_max: kernel length per axis (int for every axis, a list, or None for input-length kernels). A list sets the
            number of axes (official).
        dim: number of axes (and 1-D kernels) when ``l_max`` is an int or None.
        out_channels: None for the depthwise layer; I for the dense stem (output (B, I * channels, ...), no D).
        channels: kernel channels per feature (output H * channels before the output linear).
        bidirectional: forward + backward kernels per axis.
        activation: applied before the output linear when not ``linear``.
        final_act: activation of the output linear (``'glu'`` doubles its width).
        dropout: after the activation.
        transposed: input (B, H, L1..Ld) if True, else (B, L1..Ld, H).
        trank: tensor rank of the separable kernel (mean of trank outer products).
        linear: no activation / output linear (S4ND as a pure convolution, as in ConvNeXt).
        mode: ``'dplr'`` (S4, default) or ``'s4d'`` / ``'diag'``.
        init, rank, n_ssm, dt_min, dt_max, lr, wd, bandlimit: SSM kernel options (``SSMKernelDPLR``).
        disc: S4D discretisation (``'zoh'`` or ``'bilinear'``).
        kernel_cache: cache the kernel spectra in eval (see the module docstring).
    """

    def __init__(
            self,
            d_model: int,
            d_state: int = 64,
            l_max: Union[None, int, Sequence[Optional[int]]] = None,
            dim: int = 2,
            out_channels: Optional[int] = None,
            channels: int = 1,
            bidirectional: bool = True,
            activation: Optional[str] = "gelu",
            final_act: Optional[str] = None,
            dropout: float = 0.0,
            transposed: bool = True,
            trank: int = 1,
            linear: bool = True,
            mode: str = "dplr",
            init: Union[str, Sequence[str]] = "legs",
            rank: int = 1,
            n_ssm: Optional[int] = None,
            dt_min: float = 0.001,
            dt_max: float = 0.1,
            lr: Union[None, float, dict] = None,
            wd: Union[None, float, dict] = 0.0,
            bandlimit: Optional[float] = None,
            disc: str = "zoh",
            kernel_cache: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.d_model = self.h = d_model
        self.d_state = d_state
        self.channels = channels
        self.out_channels = out_channels
        self.bidirectional = bidirectional
        self.transposed = transposed
        self.trank = trank
        self.linear = linear
        self.kernel_cache = kernel_cache
        if out_channels is not None and not linear:
            raise ValueError("S4ND: out_channels (the dense stem) requires linear=True (official)")
        if l_max is None:
            self.l_max = [None] * dim
        elif isinstance(l_max, int):
            self.l_max = [l_max] * dim
        else:
            self.l_max = list(l_max)
        kernel_channels = channels * (out_channels or 1) * trank * (2 if bidirectional else 1)
        common = dict(channels=kernel_channels, d_state=d_state, dt_min=dt_min, dt_max=dt_max, rank=rank,
                      n_ssm=n_ssm, init=init, lr=lr, wd=wd, bandlimit=bandlimit, **dd)
        if mode in _DPLR_MODES:
            make = lambda L: SSMKernelDPLR(d_model, l_max=L, **common)  # noqa: E731
        elif mode in _DIAG_MODES:
            make = lambda L: SSMKernelDiag(d_model, l_max=L, disc=disc, **common)  # noqa: E731
        else:
            raise NotImplementedError(f"S4ND mode {mode!r} (supported: {_DPLR_MODES + _DIAG_MODES})")
        self.mode = mode
        # skip term D (channels, H); the dense stem has none (the official builds an unused one, dropped on conversion)
        self.D = nn.Parameter(torch.randn(channels, d_model, **dd)) if out_channels is None else None
        self.kernel = nn.ModuleList([make(L) for L in self.l_max])
        self.activation = _activation(None if linear else activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0.0 and not linear else nn.Identity()
        self.output_linear, self.final_act = nn.Identity(), nn.Identity()  # (linear: none; modules without state)
        if not linear:
            glu = final_act is not None and final_act.startswith("glu")
            self.output_linear = nn.Linear(d_model * channels, d_model * (2 if glu else 1), **dd)
            self.final_act = _activation(final_act, dim=-1)
            if transposed:  # official TransposedLinear bias hint
                self.output_linear.bias._optim = {"weight_decay": 0.0}
        self.__dict__["_kernel_cache"] = None  # (plain attribute: not state, not scripted)

    def optim_hints(self) -> Dict[str, dict]:
        """``{parameter name: _optim dict}`` for the parameters that carry optimizer hints."""
        hints = {}
        for i, k in enumerate(self.kernel):
            hints.update({f"kernel.{i}.{n}": h for n, h in k.optim_hints().items()})
        if not self.linear and self.transposed:
            hints["output_linear.bias"] = {"weight_decay": 0.0}
        return hints

    def train(self, mode: bool = True):
        self.__dict__["_kernel_cache"] = None
        return super().train(mode)

    @torch.jit.ignore  # TorchScript: runs as Python (complex math, value-dependent lengths, the stateful C~)
    def _ssm(self, u: Tensor, rate: float) -> Tensor:
        """u (B, H, L1..Ld) -> kernels, FFT convolution and D skip -> (B, channels * H (or I), L1..Ld), u's dtype."""
        lengths = list(u.shape[2:])
        if len(lengths) > len(self.l_max):
            raise ValueError(f"S4ND: {len(lengths)} length axes but only {len(self.l_max)} kernels")
        in_dtype = u.dtype
        fft_sizes, spectra = _kernel_spectra(self, u, lengths, rate)
        with torch.autocast(device_type=u.device.type, enabled=False):
            u = u.to(torch.float64 if in_dtype == torch.float64 else torch.float32)
            y = fft_conv_nd(u, fft_sizes=fft_sizes, spectra=spectra, rank=self.trank,
                            out_channels=self.out_channels)  # (B, C, H, L..) or (B, C, I, L..)
            if self.D is not None:
                y = y + u[:, None] * self.D.reshape(*self.D.shape, *([1] * len(lengths))).to(u.dtype)
            return y.flatten(1, 2).to(in_dtype)  # channel c * H + h

    def forward(self, u: Tensor, rate: float = 1.0) -> Tensor:
        """u: (B, H, L1..Ld) if transposed else (B, L1..Ld, H) -> same layout, H (or out_channels * channels)
        features. ``rate``: resolution change (dt scaled by rate, ``round(l_max / rate)`` taps)."""
        if not self.transposed:
            u = u.movedim(-1, 1)
        y = self._ssm(u, rate)
        if not self.linear:
            y = self.dropout(self.activation(y))
        if not self.transposed or not self.linear:
            y = y.movedim(1, -1)  # (B, L.., features)
        if not self.linear:
            y = self.final_act(self.output_linear(y))
            if self.transposed:
                y = y.movedim(-1, 1)
        return y

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, l_max={self.l_max}, channels={self.channels}, "
                f"out_channels={self.out_channels}, bidirectional={self.bidirectional}, mode={self.mode!r}, "
                f"transposed={self.transposed}, linear={self.linear}")


# --- official checkpoints ------------------------------------------------------------------------------------------

_V3_RENAMES = (("log_dt", "inv_dt"), ("inv_w_real", "A_real"), ("log_w_real", "A_real"), ("w_imag", "A_imag"),
               ("L", "l_kernel"))
_IGNORED_KWARGS = {"return_state": None, "contract_version": None, "verbose": None}
_DEFAULT_ONLY = {"deterministic": False, "initializer": None, "weight_norm": False, "tie_dropout": (None, False),
                 "ln": False, "hyper_act": None, "dt_tie": True, "dt_transform": "exp", "real_transform": "exp",
                 "imag_transform": "none", "is_real": False, "dt_fast": False}


def convert_official_s4nd(state_dict: Dict[str, Tensor], layer: Optional[S4ND] = None) -> Dict[str, Tensor]:
    """Map an official S4ND layer state dict (keys relative to the layer) to ``S4ND``'s keys.

    ``output_linear.0.*`` -> ``output_linear.*``; v3 ``kernel.{i}.kernel.{log_dt, inv_w_real/log_w_real, w_imag, L}``
    -> ``kernel.{i}.{inv_dt, A_real, A_imag, l_kernel}``. With ``layer``, the official parameters it does not have
    are dropped: the kernels of axes it lacks (the official ViT's never-used ``kernel.1``) and the dense stem's
    unused ``D``."""
    num_axes = None if layer is None else len(layer.kernel)
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r"^output_linear\.0\.", "output_linear.", key)
        match = re.match(r"^kernel\.(\d+)\.kernel\.(.+)$", key)
        if match:  # v3 layout
            name = dict(_V3_RENAMES).get(match.group(2), match.group(2))
            key = f"kernel.{match.group(1)}.{name}"
        match = re.match(r"^kernel\.(\d+)\.", key)
        if num_axes is not None and match and int(match.group(1)) >= num_axes:
            continue
        if layer is not None and key == "D" and layer.D is None:
            continue
        out[key] = value
    return out


def s4nd_from_official(kwargs: dict, **overrides) -> S4ND:
    """``S4ND`` equivalent to the official ``S4ND(**kwargs)`` (the official layer's constructor kwargs); raises for
    official options that this re-implementation does not support with non-default values."""
    kwargs = dict(kwargs)
    for name in _IGNORED_KWARGS:
        kwargs.pop(name, None)
    for name, default in _DEFAULT_ONLY.items():
        if name in kwargs:
            value = kwargs.pop(name)
            allowed = default if isinstance(default, tuple) else (default,)
            if value not in allowed:
                raise NotImplementedError(f"S4ND option {name}={value!r} is not supported")
    if kwargs.get("kernel") is not None:
        kwargs["mode"] = kwargs.pop("kernel")
    kwargs.pop("kernel", None)
    if "measure" in kwargs:
        kwargs["init"] = kwargs.pop("measure")
    if "dropout" in kwargs and not kwargs["dropout"]:
        kwargs["dropout"] = 0.0
    kwargs.update(overrides)
    return S4ND(**kwargs)
