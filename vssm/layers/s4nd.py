"""S4ND: multidimensional state space layer (Nguyen, Goel, Gu et al., "S4ND: Modeling Images and Videos as
Multidimensional Signals Using State Spaces", NeurIPS 2022, arXiv 2210.06583).

A re-implementation of the official ``S4ND`` module (github:state-spaces/s4, ``src/models/sequence/modules/s4nd.py``
at e757cef, Apache-2.0), with its 1-D SSM kernels ``SSMKernelDPLR`` (S4, the default) and ``SSMKernelDiag`` (S4D).
The math lives in ``vssm.ops.ssm_kernel`` (kernel generation) and ``vssm.ops.fft_conv`` (separable convolution).

Forward of ``S4ND`` on u (B, H, L1..Ld) (or (B, L1..Ld, H) with ``transposed=False``) at rate r:

1. per axis i a 1-D kernel of ``L_kernel_i = L_i`` (no ``l_max``) or ``min(L_i, round(l_max_i / r))`` taps from its own
   SSM (``kernel.i``), shape (C', H, L_kernel_i), C' = channels x (out_channels or 1) x trank x (2 if bidirectional);
   at rate r the SSM step is dt * r and ``round(l_kernel / r)`` frequency nodes are used (the same continuous kernel,
   sampled coarser); an input shorter than ``l_max`` gets the l_max kernel truncated; axes whose DPLR kernels agree in
   taps, nodes and shapes are generated in one call (``kernels_forward``);
2. bidirectional: forward half + flipped backward half (``vssm.ops.fft_conv.bidirectional_kernel``);
3. N-D kernel = outer product of the per-axis kernels (mean over ``trank`` terms); FFT convolution with zero padding to
   ``L_i + L_kernel_i``; output channel ``c * H + h``. The depthwise layer (no ``out_channels``) computes the same map
   as per-axis Toeplitz matrix products (``vssm.ops.fft_conv.toeplitz_conv_nd``: real float32 GEMMs, far less memory
   traffic than the padded complex FFT grids) over 2 or 3 axes of at most ``TOEPLITZ_MAX_LENGTH`` each
   (``conv_mode='auto'``); ``conv_mode`` forces either path;
4. skip ``+ u * D[c, h]`` (not with ``out_channels``: the dense stem, every (out i, in h) pair its own kernel, no D);
5. unless ``linear``: dropout(activation(y)), then ``output_linear`` (H * channels -> H, or 2H followed by a GLU when
   ``final_act='glu'``).

Only the first d kernels are used for a d-axis input (the official ViT builds ``dim=2`` kernels for a 1-D sequence;
``kernel.1`` is then never used). The SSM part (kernels, FFTs, D skip) runs in float32 (float64 for float64 input)
with autocast disabled and is cast back to the input dtype; the output linear follows autocast.

Kernel cache: the official code regenerates the kernels every forward (so do we in training). In eval, when no
autograd graph is needed (``torch.no_grad``/``inference_mode`` or frozen kernel parameters), what the convolution path
uses (the kernel spectra or the Toeplitz matrices) is cached for a fixed (kernel parameter and buffer storage +
``_version``, input dtype, device, lengths, rate, inference mode, path); any change, an in-place parameter update or
``train()`` drops it. ``kernel_cache=False`` disables it. Never while tracing (torch.compile, torch.export: fake
tensors have no storage).

Stateful C (official behaviour): the DPLR kernel stores ``C~ = (I - dA^L)^T C`` with ``L = l_max`` and the buffer
``l_kernel = L``. As the official, a fresh kernel (``l_kernel == 0``: just built, or an official model never run)
converts C in place on its first forward (a dense (H, 2N, 2N) matrix power in the parameters' precision, done once:
about 2 s per ViT-B layer on a CPU; trained checkpoints store C~ and skip it). A longer kernel than ``l_kernel``
doubles it (``C~ <- (I + dA^l)^T C~``, l_kernel *= 2).

Tracing: ``S4ND`` is an FX leaf (timm ``register_notrace_module``); under TorchScript its SSM core (``S4ND._ssm``:
kernels, convolution, D skip) is ``torch.jit.ignore``-d and runs as Python inside the scripted model, which is why the
kernel helpers (``kernel_forward``, ``kernel_params``, ``setup_c_tilde``) are functions rather than methods. Under
torch.compile (fullgraph) the kernel length comes from the value of ``l_kernel`` last read, set up or loaded (a traced
buffer has no value), and a fresh kernel's C~ set-up is traced into the graph. For torch.export / ONNX at a fixed input
size, ``direct_kernels(model, example)`` (``S4ND.materialize_kernels``) computes the kernels once and runs the layer
as real-valued depthwise convolutions along each axis (``vssm.ops.fft_conv.direct_conv_nd``): no complex numbers.

Image -> video inflation: ``S4ND.reinit_time_kernel`` is the official ``_reinit`` hook (a new time kernel for a 3-axis
layer; ``deterministic`` is the official deterministic init it uses). ``fft_conv_flops`` counts the layer's work for
``vssm.flops`` by the FFT rule, whichever path runs.

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
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import register_notrace_module
from torch import Tensor

from ..ops.fft_conv import (bidirectional_kernel, conv_taps, direct_conv_nd, fft_conv_nd, fft_conv_nd_flops,
                            kernel_spectra, toeplitz_conv_nd, toeplitz_matrices)
from ..ops.ssm_kernel import (bandlimit_mask, diag_kernel, diag_kernel_flops, dplr_kernel, dplr_kernel_flops,
                              dplr_tilde_c)

__all__ = ["CONV_MODES", "S4ND", "SSMKernelDPLR", "SSMKernelDiag", "TOEPLITZ_MAX_LENGTH", "convert_official_s4nd",
           "direct_kernels", "generate_matrices", "generate_operators", "generate_spectra", "kernel_forward",
           "kernel_params", "kernels_forward", "s4nd_from_official", "setup_c_tilde", "ssm_convolution", "ssm_init"]

_DPLR_MODES = ("dplr", "s4", "nplr")
_DIAG_MODES = ("s4d", "diag")
_INIT_COMBINATIONS = {"hippo": ["legs", "fourier"], "diag": ["diag-inv", "diag-lin"],
                      "all": ["legs", "fourier", "diag-inv", "diag-lin"]}
CONV_MODES = ("auto", "fft", "toeplitz")
# the longest input axis for which ``conv_mode='auto'`` applies the kernels of a 2-D or 3-D layer as Toeplitz
# matrices: their products cost 2 L flops per element and axis, the FFT path O(log L) flops but many more passes over
# its grids, zero-padded to twice the length along every axis (H100 figures in BENCHMARKS.md: the Toeplitz products
# win up to 256 x 256, the largest measured; the 1-D layer of S4ND-ViT-B, 196 long, trains faster by FFT)
TOEPLITZ_MAX_LENGTH = 256


# --- initialisation (HiPPO and S4D inits, official kernels/dplr.py + hippo/hippo.py semantics) ----------------------

def _hippo_nplr(measure: str, N: int):
    """Normal-plus-low-rank form of the HiPPO matrices: (W c(N/2), P c(1, N/2), B c(N/2), V c(N, N/2)) with the
    state matrix unitarily equivalent (by V) to ``diag(W) - P P^*`` over both conjugate halves; complex128."""
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
    return W, P, B, V


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
        V = torch.eye(N, dtype=torch.complex128, device="cpu")[:, :N // 2]
        return A, P, B, V.expand(S, -1, -1)
    if rank != 1:
        raise ValueError(f"init {init!r} has a rank-1 correction; got rank={rank}")
    W, P, B, V = _hippo_nplr(init, N)
    return W.expand(S, -1), P[:, None].expand(-1, S, -1), B.expand(S, -1), V.expand(S, -1, -1)


def ssm_init(init: Union[str, Sequence[str]], N: int, rank: int, S: int):
    """(A c(S, N/2), P c(R, S, N/2), B c(S, N/2), V c(S, N, N/2)) for ``init`` in 'legs' (S4ND-ViT), 'fourier'
    (S4ND-ConvNeXt), 'diag-lin' / 'diag-inv' (S4D), or the combinations 'hippo' / 'diag' / 'all' (S split between
    them); complex128. V maps the diagonal basis back to the original (HiPPO) state basis (the identity's first N/2
    columns for the S4D inits)."""
    inits = _INIT_COMBINATIONS.get(init, [init]) if isinstance(init, str) else list(init)
    if S % len(inits):
        raise ValueError(f"n_ssm={S} must be a multiple of the {len(inits)} inits {inits}")
    parts = [_single_init(i, N, rank, S // len(inits)) for i in inits]
    A = torch.cat([p[0] for p in parts], dim=0)
    P = torch.cat([p[1] for p in parts], dim=1)
    B = torch.cat([p[2] for p in parts], dim=0)
    V = torch.cat([p[3] for p in parts], dim=0)
    return A, P, B, V


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
        deterministic: the official deterministic init (its "simple exponential decay kernel" for S4ND's image ->
            video inflation): ``inv_dt = exp(linspace(log dt_min, log dt_max, H))`` and C the first state of the
            original (HiPPO) basis, ``C = V^* e_0``, in every channel. NOTE: as the official code, the step itself is
            stored where its log belongs, so the step is ``e^dt`` (dt_min = dt_max = 2 gives e^2 = 7.39).
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
            deterministic: bool = False,
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
        A, P, B, V = ssm_init(init, d_state, rank, self.n_ssm)
        # computed on the CPU (also under a meta / cuda default device), then moved
        if deterministic:
            inv_dt = torch.exp(torch.linspace(math.log(dt_min), math.log(dt_max), d_model, dtype=torch.float64,
                                              device="cpu"))[:, None]  # (sic: the official stores dt as log dt)
            first_state = V[:, 0, :].conj()  # (S, N/2): V^* e_0
            C = first_state.repeat(d_model // self.n_ssm, 1).expand(channels, -1, -1).contiguous()
        else:
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
    _remember_l_kernel(kernel, 2 * current if double else length)


class SSMKernelDPLR(_SSMKernel):
    """S4 kernel (diagonal plus low rank, bilinear), official ``SSMKernelDPLR``: ``forward(L, rate) -> r(C', H, L)``.

    Parameters: ``inv_dt`` (H, 1) = log dt; ``A_real`` (S, N/2) = log(-Re A); ``A_imag`` (S, N/2) = -Im A;
    ``B`` (1, S, N/2, 2), ``P`` (R, S, N/2, 2), ``C`` (C', H, N/2, 2) complex as (real, imag); buffer ``l_kernel``.
    """
    __jit_ignored_attributes__ = ["_l_kernel_value"]  # Python-side bookkeeping (``_l_kernel``)

    def __init__(self, d_model: int, **kwargs):
        super().__init__(d_model, **kwargs)
        inv_dt, A, P, B, C = self._init
        del self._init
        self._register_common(inv_dt, A, B, C)
        self._register("P", torch.view_as_real(P).contiguous(), self._lr["A"], self._wd["A"])
        self.register_buffer("l_kernel", torch.tensor(0, device=self._dd["device"]))  # C~ is set up on first use
        _remember_l_kernel(self, 0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if not _tracing(self.l_kernel) and self.l_kernel.device.type != "meta":
            _remember_l_kernel(self, int(self.l_kernel.item()))

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


def _tracing(t: Tensor) -> bool:
    """True under torch.compile / torch.export tracing or for a fake / functional tensor: no storage to read
    (``data_ptr``, ``item``)."""
    return torch.compiler.is_compiling() or type(t) not in (Tensor, nn.Parameter)


def _cache_key(kernels, u: Tensor, lengths, rate: float, conv_mode: str):
    state = tuple((t.data_ptr(), t._version, t.dtype) for k in kernels for t in _kernel_tensors(k))
    return state, u.dtype, u.device, tuple(lengths), float(rate), torch.is_inference_mode_enabled(), conv_mode


def _remember_l_kernel(kernel: nn.Module, value: int) -> None:
    """Keep ``l_kernel``'s value beside the buffer (``_l_kernel`` checks it against the buffer in eager mode)."""
    if not _scripted(kernel):
        kernel._l_kernel_value = (None, value)


def _scripted(module: nn.Module) -> bool:
    """A submodule of a TorchScript module (as an ignored function sees it: no Python-side attributes)."""
    return getattr(module, "__dict__", None) is None


def _l_kernel(kernel: nn.Module) -> int:
    """``kernel.l_kernel`` as an int, read from the device only when the buffer changed (no sync per forward). Under
    torch.compile / torch.export the value last read, set up or loaded is used (a traced buffer has no value); a
    submodule of a TorchScript module is read every time."""
    buffer = kernel.l_kernel
    cached = getattr(kernel, "_l_kernel_value", None)
    if cached is None:  # a submodule of a TorchScript module
        return int(buffer.item())
    if _tracing(buffer):
        return cached[1]
    key = (buffer.data_ptr(), buffer._version, buffer.device)
    if cached[0] != key:
        cached = (key, int(buffer.item()))
        kernel._l_kernel_value = cached
    return cached[1]


def _planned_l_kernel(kernel: nn.Module, L: int, rate: float) -> int:
    """The ``l_kernel`` that ``kernel_forward(kernel, L, rate)`` runs with (after its set-up and doublings), without
    changing the kernel."""
    current = _l_kernel(kernel)
    if current == 0:
        current = kernel.l_max or round(rate * L)
    while round(rate * L) > current:
        current *= 2
    return current


def kernel_forward(kernel: nn.Module, L: int, rate: float = 1.0) -> Tensor:
    """The kernel r(C', H, L) of an ``SSMKernelDPLR`` / ``SSMKernelDiag`` at ``rate`` (their ``forward``; a function so
    that a TorchScript-compiled module, whose Python-side submodules cannot be called, still runs it).

    DPLR: set up C~ on first use (``l_kernel == 0``) and double it while ``round(rate * L)`` exceeds ``l_kernel``
    (official), then ``round(l_kernel / rate)`` roots of unity, truncated to L taps. S4D: the Vandermonde kernel."""
    if not hasattr(kernel, "P"):
        dt, A, B, C = kernel_params(kernel, rate)
        return diag_kernel(A, B, C, dt, L, kernel.disc)
    fft_length = _prepare_dplr(kernel, L, rate)
    dt, A, B, C, P = kernel_params(kernel, rate)
    return dplr_kernel(A, B, C, P, dt, L, fft_length)


def _prepare_dplr(kernel: nn.Module, L: int, rate: float) -> int:
    """A DPLR kernel's C~ set up (first use) or doubled for ``L`` taps at ``rate`` (``kernel_forward``); returns the
    number of roots of unity, ``round(l_kernel / rate)``."""
    if _l_kernel(kernel) == 0 and kernel.l_max:
        setup_c_tilde(kernel, kernel.l_max)
    while round(rate * L) > _l_kernel(kernel):  # a longer kernel than C~ was made for
        setup_c_tilde(kernel, round(rate * L))
    return round(_l_kernel(kernel) / rate)


def kernels_forward(kernels: Sequence[nn.Module], lengths: Sequence[int], rate: float = 1.0) -> List[Tensor]:
    """``kernel_forward`` of several kernel modules (an ``S4ND``'s axes) with ``lengths`` taps each: the DPLR kernels of
    equal taps, roots of unity and parameter shapes are generated together, their features side by side in one
    ``dplr_kernel`` call (its math is per feature: the same kernels, half the dispatched ops for a square map)."""
    out: List[Optional[Tensor]] = [None] * len(kernels)
    groups: Dict[tuple, List[int]] = {}
    for i, (kernel, L) in enumerate(zip(kernels, lengths)):
        if not hasattr(kernel, "P") or _scripted(kernel):
            out[i] = kernel_forward(kernel, L, rate)
            continue
        fft_length = _prepare_dplr(kernel, L, rate)
        key = (int(L), fft_length, kernel.C.shape, kernel.P.shape, kernel.inv_dt.dtype, kernel.inv_dt.device)
        groups.setdefault(key, []).append(i)
    for (L, fft_length, *_), members in groups.items():
        params = [kernel_params(kernels[i], rate) for i in members]
        if len(members) == 1:
            dt, A, B, C, P = params[0]
            out[members[0]] = dplr_kernel(A, B, C, P, dt, L, fft_length)
            continue
        dt, A, B = (torch.cat([p[j] for p in params]) for j in range(3))  # (n H, ...)
        C, P = (torch.cat([p[j] for p in params], dim=1) for j in (3, 4))  # (C', n H, N), (R, n H, N)
        for i, k in zip(members, dplr_kernel(A, B, C, P, dt, L, fft_length).chunk(len(members), dim=1)):
            out[i] = k  # (C', H, L)
    return out


def _kernel_lengths(layer: nn.Module, lengths: Sequence[int], rate: float) -> List[int]:
    """Taps of each axis' kernel for inputs of ``lengths`` at ``rate`` (official: ``min(L, round(l_max / rate))``)."""
    return [l if lm is None else min(l, round(lm / rate)) for l, lm in zip(lengths, layer.l_max)]


def _combined_kernels(layer: nn.Module, lengths: Sequence[int], rate: float) -> Tuple[List[Tensor], List[int]]:
    """Per-axis kernels of an ``S4ND`` for input lengths ``lengths`` at ``rate``, bidirectional halves combined, in the
    layout of an FFT of size ``L + L_kernel`` (r(C' / 2, H, F_i), or r(C', H, F_i) unidirectional), and the FFT
    sizes."""
    kernels = [getattr(layer.kernel, str(i)) for i in range(len(lengths))]  # (also on a TorchScript module)
    kernel_lengths = _kernel_lengths(layer, lengths, rate)
    ks = kernels_forward(kernels, kernel_lengths, rate)  # (C', H, lk) each
    if layer.bidirectional:
        ks = [bidirectional_kernel(k, l) for k, l in zip(ks, lengths)]  # (C'/2, H, lk + l)
    return ks, [l + lk for l, lk in zip(lengths, kernel_lengths)]


def _direct_taps(layer: nn.Module, lengths: Sequence[int], rate: float,
                 traced: bool) -> Optional[List[Tuple[Tensor, int]]]:
    """The taps of ``S4ND.materialize_kernels`` for these lengths and rate, or None (generate the kernels)."""
    direct = getattr(layer, "_direct_kernels", None)  # (a TorchScript module keeps no such attribute)
    if direct is None:
        return None
    if direct[0] != tuple(lengths) or direct[1] != float(rate):
        if traced:  # the FFT path would put complex numbers into the graph
            raise ValueError(f"S4ND: kernels are materialised for lengths {list(direct[0])} at rate {direct[1]}, "
                             f"not for {list(lengths)} at rate {rate}")
        return None
    return [(getattr(layer, f"direct_taps_{axis}"), before) for axis, before in enumerate(direct[2])]


def _check_conv_mode(conv_mode: str, out_channels: Optional[int]) -> None:
    if conv_mode not in CONV_MODES:
        raise ValueError(f"S4ND: conv_mode {conv_mode!r} (supported: {CONV_MODES})")
    if conv_mode == "toeplitz" and out_channels is not None:
        raise ValueError("S4ND: conv_mode='toeplitz' applies depthwise kernels only; the dense stem "
                         "(out_channels) runs the FFT path ('fft' or 'auto')")


def _conv_path(layer: nn.Module, lengths: Sequence[int]) -> str:
    """The convolution path of an ``S4ND`` for inputs of ``lengths``: ``'toeplitz'`` or ``'fft'`` (``conv_mode``;
    ``'auto'``: Toeplitz for the depthwise layer over 2 or 3 axes with every length at most ``TOEPLITZ_MAX_LENGTH``)."""
    _check_conv_mode(layer.conv_mode, layer.out_channels)
    if layer.conv_mode != "auto":
        return layer.conv_mode
    short = len(lengths) >= 2 and all(int(length) <= TOEPLITZ_MAX_LENGTH for length in lengths)
    return "toeplitz" if layer.out_channels is None and short else "fft"


def _kernel_operators(layer: nn.Module, u: Tensor, lengths, rate: float) -> dict:
    """``generate_operators`` for an ``S4ND``'s input u, cached in eval when no graph is needed (never while
    tracing)."""
    kernels = [getattr(layer.kernel, str(i)) for i in range(len(lengths))]
    needs_graph = torch.is_grad_enabled() and any(t.requires_grad for k in kernels for t in _kernel_tensors(k))
    use_cache = layer.kernel_cache and not layer.training and not needs_graph and not _tracing(u)
    path = _conv_path(layer, lengths)
    if use_cache:
        cache = layer.__dict__.get("_kernel_cache")
        if cache is not None and cache[0] == _cache_key(kernels, u, lengths, rate, path):
            return cache[1]
    if not _tracing(u):
        layer.__dict__["_kernel_cache"] = None
    operators = generate_operators(layer, lengths, rate)
    if use_cache:  # key again: a first forward may have set up C~ in place
        layer.__dict__["_kernel_cache"] = (_cache_key(kernels, u, lengths, rate, path), operators)
    return operators


def generate_spectra(layer: nn.Module, lengths: Sequence[int], rate: float = 1.0) -> Tuple[List[int], List[Tensor]]:
    """The first stage of an ``S4ND``'s SSM core on the FFT path: its per-axis kernels for input ``lengths`` at
    ``rate`` (bidirectional halves combined) and their spectra, in float32 (float64 for float64 parameters) with their
    graph, never cached. Returns (FFT sizes, spectra) as ``ssm_convolution`` takes them."""
    kernel_device = getattr(layer.kernel, "0").inv_dt.device.type
    with torch.autocast(device_type=kernel_device, enabled=False):
        ks, fft_sizes = _combined_kernels(layer, [int(l) for l in lengths], rate)
        return fft_sizes, kernel_spectra(ks, fft_sizes)


def generate_matrices(layer: nn.Module, lengths: Sequence[int], rate: float = 1.0) -> List[Tensor]:
    """The first stage on the Toeplitz path (depthwise layers): the per-axis kernels as ``generate_spectra`` makes
    them, as Toeplitz matrices r(trank * channels, H, L_i, L_i) (``vssm.ops.fft_conv.toeplitz_matrices``), with their
    graph, never cached."""
    _check_conv_mode("toeplitz", layer.out_channels)
    lengths = [int(l) for l in lengths]
    kernel_device = getattr(layer.kernel, "0").inv_dt.device.type
    with torch.autocast(device_type=kernel_device, enabled=False):
        ks, fft_sizes = _combined_kernels(layer, lengths, rate)
        return toeplitz_matrices(ks, lengths, fft_sizes)


def generate_operators(layer: nn.Module, lengths: Sequence[int], rate: float = 1.0) -> dict:
    """The first stage for the path the layer runs on inputs of ``lengths`` (its ``conv_mode``): the keyword
    arguments of ``ssm_convolution``, ``{'fft_sizes', 'spectra'}`` (``generate_spectra``) or ``{'matrices'}``
    (``generate_matrices``); never cached."""
    if _conv_path(layer, lengths) == "toeplitz":
        return dict(matrices=generate_matrices(layer, lengths, rate))
    fft_sizes, spectra = generate_spectra(layer, lengths, rate)
    return dict(fft_sizes=fft_sizes, spectra=spectra)


def ssm_convolution(layer: nn.Module, u: Tensor, fft_sizes: Optional[Sequence[int]] = None,
                    spectra: Optional[Sequence[Tensor]] = None,
                    taps: Optional[List[Tuple[Tensor, int]]] = None,
                    matrices: Optional[Sequence[Tensor]] = None) -> Tensor:
    """The second stage: u (B, H, L1..Ld) convolved with ``generate_spectra``'s kernels by FFT, with
    ``generate_matrices``' Toeplitz matrices, or with ``materialize_kernels``' taps by direct convolutions, plus the
    D skip, in float32 (float64 stays float64) with autocast off -> (B, channels * H (or I * channels), L1..Ld) in u's
    dtype, channel c * H + h."""
    in_dtype = u.dtype
    with torch.autocast(device_type=u.device.type, enabled=False):
        u = u.to(torch.float64 if in_dtype == torch.float64 else torch.float32)
        if taps is not None:
            y = direct_conv_nd(u, taps, rank=layer.trank, out_channels=layer.out_channels)
        elif matrices is not None:
            y = toeplitz_conv_nd(u, matrices, rank=layer.trank)  # (B, C, H, L..), batch innermost in memory
        else:
            y = fft_conv_nd(u, fft_sizes=fft_sizes, spectra=spectra, rank=layer.trank,
                            out_channels=layer.out_channels)  # (B, C, H, L..) or (B, C, I, L..)
        if layer.D is not None:
            # NOTE: the contiguous skip term first: the sum takes the layout of its first operand
            y = u[:, None] * layer.D.reshape(*layer.D.shape, *([1] * (u.dim() - 2))).to(u.dtype) + y
        return y.flatten(1, 2).to(in_dtype)


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
        init, rank, n_ssm, dt_min, dt_max, lr, wd, bandlimit, deterministic: SSM kernel options
            (``SSMKernelDPLR``).
        disc: S4D discretisation (``'zoh'`` or ``'bilinear'``).
        kernel_cache: cache the kernel spectra or Toeplitz matrices in eval (see the module docstring).
        conv_mode: how the kernels are applied: ``'fft'``, ``'toeplitz'`` (per-axis Toeplitz matrix products; depthwise
            layers only) or ``'auto'`` (Toeplitz for the depthwise layer over 2 or 3 axes when every input length is at
            most ``TOEPLITZ_MAX_LENGTH``, else FFT). Not state: a benchmark may set the attribute.
    """
    __jit_ignored_attributes__ = ["_direct_kernels", "_kernel_kwargs"]  # Python-side (the SSM core is not scripted)

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
            deterministic: bool = False,
            kernel_cache: bool = True,
            conv_mode: str = "auto",
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
        _check_conv_mode(conv_mode, out_channels)
        self.conv_mode = conv_mode
        if l_max is None:
            self.l_max = [None] * dim
        elif isinstance(l_max, int):
            self.l_max = [l_max] * dim
        else:
            self.l_max = list(l_max)
        if mode not in _DPLR_MODES + _DIAG_MODES:
            raise NotImplementedError(f"S4ND mode {mode!r} (supported: {_DPLR_MODES + _DIAG_MODES})")
        self.mode = mode
        # the 1-D kernels' options (also for ``reinit_time_kernel``)
        self._kernel_kwargs = dict(mode=mode, disc=disc, d_state=d_state, dt_min=dt_min, dt_max=dt_max, rank=rank,
                                   n_ssm=n_ssm, init=init, lr=lr, wd=wd, bandlimit=bandlimit,
                                   deterministic=deterministic)
        # skip term D (channels, H); the dense stem has none (the official builds an unused one, dropped on conversion)
        self.D = nn.Parameter(torch.randn(channels, d_model, **dd)) if out_channels is None else None
        self.kernel = nn.ModuleList([self._make_kernel(L, **dd) for L in self.l_max])
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
        self._direct_kernels: Optional[tuple] = None  # (lengths, rate, taps before offset 0 per axis), see below

    def _make_kernel(self, l_max: Optional[int], **overrides) -> nn.Module:
        """A 1-D SSM kernel of this layer's kind and options (``overrides`` win) for kernels of ``l_max`` taps."""
        kwargs = {**self._kernel_kwargs, **overrides}
        mode, disc = kwargs.pop("mode"), kwargs.pop("disc")
        channels = self.channels * (self.out_channels or 1) * self.trank * (2 if self.bidirectional else 1)
        if mode in _DPLR_MODES:
            return SSMKernelDPLR(self.d_model, channels=channels, l_max=l_max, **kwargs)
        return SSMKernelDiag(self.d_model, channels=channels, l_max=l_max, disc=disc, **kwargs)

    @torch.no_grad()
    def reinit_time_kernel(self, dt_min: Optional[float] = None, dt_max: Optional[float] = None,
                           normalize: bool = False, **kernel_overrides) -> None:
        """Replace the first (time) kernel of a 3-axis layer by a fresh one (official ``S4ND._reinit``, the hook of
        S4ND's image -> video inflation): the layer's kernel options with ``kernel_overrides`` (e.g. ``init='hippo'``,
        ``n_ssm=None``, ``deterministic=True``; the official v3 name ``measure`` is taken for ``init``), the step in
        [dt_min, dt_max] (default 2 / T for T = the time axis' l_max), and with ``normalize`` C divided by dt / 2.
        The new kernel has ``l_kernel = 0`` (its C~ is set up on the first forward) and its parameters may have other
        shapes than the old one's (``n_ssm``)."""
        if len(self.l_max) != 3:
            raise ValueError(f"S4ND.reinit_time_kernel: the layer has {len(self.l_max)} axes, not 3 (time, H, W)")
        if "measure" in kernel_overrides:
            kernel_overrides["init"] = kernel_overrides.pop("measure")
        length = self.l_max[0]
        if length is None and (dt_min is None or dt_max is None):
            raise ValueError("S4ND.reinit_time_kernel: the time axis has no l_max; give dt_min and dt_max")
        old = self.kernel[0].inv_dt
        kernel = self._make_kernel(length, dt_min=dt_min or 2.0 / length, dt_max=dt_max or 2.0 / length,
                                   device=old.device, dtype=old.dtype, **kernel_overrides)
        if normalize:
            kernel.C.div_(0.5 * torch.exp(kernel.inv_dt)[:, :, None])  # (C', H, N, 2) / (H, 1, 1)
        self.kernel[0] = kernel
        self.__dict__["_kernel_cache"] = None

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

    @torch.no_grad()
    def materialize_kernels(self, lengths: Sequence[int], rate: float = 1.0) -> None:
        """Compute the kernels for inputs of ``lengths`` at ``rate`` once, as the taps of real-valued direct
        convolutions (``vssm.ops.fft_conv.conv_taps``: buffers ``direct_taps_{axis}``, not in the state dict), and
        run inputs of exactly these lengths at this rate through ``direct_conv_nd`` (the same map, no complex numbers,
        no FFT) until ``release_kernels``: a graph that torch.export and ONNX take at a fixed input size."""
        self.release_kernels()
        lengths = [int(l) for l in lengths]
        with torch.autocast(device_type=self.kernel[0].inv_dt.device.type, enabled=False):
            ks, fft_sizes = _combined_kernels(self, lengths, rate)
        befores = []
        for axis, (k, length, size) in enumerate(zip(ks, lengths, fft_sizes)):
            taps, before = conv_taps(k, length, size)
            self.register_buffer(f"direct_taps_{axis}", taps.contiguous(), persistent=False)
            befores.append(before)
        self._direct_kernels = (tuple(lengths), float(rate), tuple(befores))

    def release_kernels(self) -> None:
        """Drop the kernels of ``materialize_kernels`` (back to generating them per forward)."""
        if self._direct_kernels is not None:
            for axis in range(len(self._direct_kernels[2])):
                del self._buffers[f"direct_taps_{axis}"]
        self._direct_kernels = None

    @torch.jit.ignore  # TorchScript: runs as Python (complex math, value-dependent lengths, the stateful C~)
    def _ssm(self, u: Tensor, rate: float) -> Tensor:
        """u (B, H, L1..Ld) -> kernels, convolution and D skip -> (B, channels * H (or I), L1..Ld), u's dtype."""
        lengths = list(u.shape[2:])
        if len(lengths) > len(self.l_max):
            raise ValueError(f"S4ND: {len(lengths)} length axes but only {len(self.l_max)} kernels")
        taps = _direct_taps(self, lengths, rate, _tracing(u))
        if taps is not None:
            return ssm_convolution(self, u, taps=taps)
        return ssm_convolution(self, u, **_kernel_operators(self, u, lengths, rate))

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

    def fft_conv_flops(self, input_shape: Sequence[int], rate: float = 1.0) -> Dict[str, int]:
        """Real flops of the SSM core of one forward on an input of ``input_shape`` (in the forward's layout) at
        ``rate``: ``kernel``, the generation of every axis' kernel (``dplr_kernel_flops`` / ``diag_kernel_flops``,
        with the ``l_kernel`` the forward runs with); the FFT convolution's parts (``fft_conv_nd_flops``, also for
        the Toeplitz path); ``skip``, the D term (a multiply and an add per output element). The output linear is a
        GEMM, counted as such by ``vssm.flops``."""
        shape = [int(n) for n in input_shape]
        batch, features = shape[0], shape[1] if self.transposed else shape[-1]
        lengths = shape[2:] if self.transposed else shape[1:-1]
        kernel_lengths = _kernel_lengths(self, lengths, rate)
        counts = {"kernel": 0}
        for i, length in enumerate(kernel_lengths):
            kernel = self.kernel[i]
            if hasattr(kernel, "P"):
                fft_length = round(_planned_l_kernel(kernel, length, rate) / rate)
                counts["kernel"] += dplr_kernel_flops(features, kernel.channels, kernel.N, kernel.rank, fft_length)
            else:
                counts["kernel"] += diag_kernel_flops(features, kernel.channels, kernel.N, length)
        combined = self.kernel[0].channels // (2 if self.bidirectional else 1)  # rank * C kernel channels per axis
        fft_sizes = [l + lk for l, lk in zip(lengths, kernel_lengths)]
        counts.update(fft_conv_nd_flops(batch, features, combined, fft_sizes, self.trank, self.out_channels))
        counts["skip"] = 0 if self.D is None else 2 * batch * self.channels * features * math.prod(lengths)
        return counts

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, l_max={self.l_max}, channels={self.channels}, "
                f"out_channels={self.out_channels}, bidirectional={self.bidirectional}, mode={self.mode!r}, "
                f"transposed={self.transposed}, linear={self.linear}, conv_mode={self.conv_mode!r}")


@contextmanager
def direct_kernels(model: nn.Module, *example_args, **example_kwargs) -> Iterator[nn.Module]:
    """Within the context, every ``S4ND`` of ``model`` runs the input size of the example through real-valued direct
    convolutions with kernels computed once (``S4ND.materialize_kernels``): what torch.export and the ONNX export need
    (no complex numbers in the graph, no data-dependent kernel lengths). One eager forward without gradients on the
    example finds each layer's input lengths and rate; on exit the layers generate their kernels again."""
    layers = [m for m in model.modules() if isinstance(m, S4ND)]
    calls = {}

    def record(layer, args, kwargs):
        u = args[0]
        rate = args[1] if len(args) > 1 else kwargs.get("rate", 1.0)
        lengths = u.shape[2:] if layer.transposed else u.shape[1:-1]
        calls.setdefault(layer, (tuple(int(n) for n in lengths), float(rate)))

    handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
    try:
        with torch.no_grad():
            model(*example_args, **example_kwargs)
    finally:
        for handle in handles:
            handle.remove()
    try:
        for layer, (lengths, rate) in calls.items():
            layer.materialize_kernels(lengths, rate)
        yield model
    finally:
        for layer in layers:
            layer.release_kernels()


# --- official checkpoints ------------------------------------------------------------------------------------------

_V3_RENAMES = (("log_dt", "inv_dt"), ("inv_w_real", "A_real"), ("log_w_real", "A_real"), ("w_imag", "A_imag"),
               ("L", "l_kernel"))
_IGNORED_KWARGS = {"return_state": None, "contract_version": None, "verbose": None}
_DEFAULT_ONLY = {"initializer": None, "weight_norm": False, "tie_dropout": (None, False),
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
