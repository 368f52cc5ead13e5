"""The one scan op behind ``selective_scan`` and ``multi_scan``, registered with ``torch.library``.

Canonical layout (K directions, spatial length L, path length Lp >= L):
    u      (batch, Ku, dim, L)      Ku in {1, K}: shared by all directions or one per direction; spatial order
    delta  (batch, Kd, dim, Ld)     Kd in {1, K}; Ld = L (spatial order) or Lp (``params_at_step``: step order)
    A      (K, dim, N)
    B, C   (batch, K, G, N, Ld)     G groups of dim / G channels
    D, delta_bias (K, dim) or None; z (batch, dim, L) or None (gate shared by the directions)
    paths  (K, Lp) long or None     paths[k, j] = spatial index read at step j of direction k, -1 = a zero token
Outputs: y (batch, dim, L) summed over directions if ``merge`` else (batch, K, dim, L), both in spatial order and
u's dtype; last state (batch, K, dim, N) float32 (float64 for float64 inputs).

The op is a ``torch.library.custom_op`` with a fake and an autograd formula, so torch.compile, torch.export,
torchscript and FX treat it as one opaque node, and autocast passes its inputs through unchanged. Eager calls on
plain tensors run the same implementations behind an ``autograd.Function``, which skips the custom op's dispatch.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import is_in_torch_dispatch_mode
from torch.utils.flop_counter import register_flop_formula

from .selective_scan import _compute_dtype, selective_scan_chunked, selective_scan_ref

BACKENDS = ("ref", "torch", "triton")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_PLAIN = (Tensor, torch.nn.Parameter)


def eager(*tensors: Optional[Tensor]) -> bool:
    """True outside torch.compile / torch.export tracing and dispatch modes (``FlopCounterMode`` counts the custom ops
    by their formulas) and for plain tensors or parameters (no fake or functional subclasses): then the kernels may run
    behind an ``autograd.Function`` instead of the registered custom op."""
    return (not torch.compiler.is_compiling() and not is_in_torch_dispatch_mode()
            and all(t is None or type(t) in _PLAIN for t in tensors))


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for host-side launch arithmetic (``triton.cdiv`` costs microseconds per call in Triton 3.6)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (n >= 1), on the host."""
    return 1 << (n - 1).bit_length()


def dense_strides(x: Tensor) -> bool:
    """True when x's elements fill its storage span without gaps or overlaps (any order of the axes), the layouts
    ``torch.empty_like`` preserves; checked on the strides alone, without an allocation."""
    return _dense_strides(x.shape, x.stride())


@functools.lru_cache(maxsize=1024)
def _dense_strides(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    expected = 1
    for size, stride in sorted((d for d in zip(shape, strides) if d[0] != 1), key=lambda d: d[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def empty_like_dense(x: Tensor) -> Tensor:
    """Empty tensor of x's shape, in x's layout when x is dense, else contiguous."""
    return torch.empty_like(x) if dense_strides(x) else x.new_empty(x.shape)


def axis_order(t: Tensor, axes: tuple[int, ...]) -> tuple[int, ...]:
    """t's ``axes`` ordered as they lie in memory, outermost (largest stride) first; size-1 axes (whose stride means
    nothing) count as outermost."""
    return axis_order_of_strides(t.shape, t.stride(), axes)


@functools.lru_cache(maxsize=1024)
def axis_order_of_strides(shape: tuple[int, ...], strides: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    """``axis_order`` of a tensor of these shape and strides (cached)."""
    return tuple(sorted(axes, key=lambda a: (shape[a] != 1, -strides[a])))


def check_kernel_backend(fn: str, backend: str, device: torch.device, dtypes) -> None:
    """Raise unless ``backend`` is 'torch' or 'triton' and, for 'triton', the kernels can take tensors on ``device``
    (CUDA, or the CPU under TRITON_INTERPRET=1) of ``dtypes`` (not float64). ``fn`` names the op in the message."""
    if backend not in ("triton", "torch"):
        raise ValueError(f"{fn}: backend must be 'triton' or 'torch', got {backend!r}")
    if backend == "triton":
        if device.type != "cuda" and not triton_interpret():
            raise RuntimeError(f"{fn}: the triton backend needs CUDA tensors, or TRITON_INTERPRET=1 on the CPU")
        if torch.float64 in dtypes:
            raise TypeError(f"{fn}: the triton backend supports float32, bfloat16 and float16, not float64")


def check_kernel_dtypes(fn: str, *tensors: Optional[Tensor]) -> None:
    """Raise TypeError unless every tensor given (None skipped) is float32, bfloat16 or float16, the dtypes the Triton
    kernels read; ``fn`` names the op in the message."""
    for t in tensors:
        if t is not None and t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"{fn}: tensors must be float32, bfloat16 or float16, got {t.dtype}")


def resolve_backend(device: torch.device, dtype: torch.dtype) -> str:
    """Backend for tensors on ``device``: VSSM_SCAN_BACKEND if set, else Triton on CUDA, else the PyTorch path."""
    forced = os.environ.get("VSSM_SCAN_BACKEND", "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"VSSM_SCAN_BACKEND must be one of {BACKENDS}, got {forced!r}")
        if forced == "triton":
            if not triton_available():
                raise RuntimeError("VSSM_SCAN_BACKEND=triton but triton is not installed")
            if device.type != "cuda" and not triton_interpret():
                raise RuntimeError("VSSM_SCAN_BACKEND=triton needs CUDA tensors, or TRITON_INTERPRET=1 on the CPU")
            if dtype == torch.float64:
                raise TypeError("the triton scan supports float32, bfloat16 and float16 inputs, not float64")
        return forced
    if device.type == "cuda" and dtype != torch.float64 and triton_available():
        return "triton"
    return "torch"


# ----------------------------------------------------------------------------------------------------------------
# PyTorch implementation of the canonical op (the 'ref' and 'torch' backends): gather, scan, scatter, merge.


def _gather_path(x: Tensor, paths: Tensor, k_total: int) -> Tensor:
    """(batch, Kx, ..., L) in spatial order -> (batch, K, ..., Lp) in path order; -1 steps read zeros."""
    length = x.shape[-1]
    x = torch.nn.functional.pad(x, (0, 1))  # index L is the zero token
    idx = torch.where(paths < 0, torch.full_like(paths, length), paths)
    x = x.expand(x.shape[0], k_total, *x.shape[2:])
    idx = idx.view(1, k_total, *([1] * (x.dim() - 3)), idx.shape[-1]).expand(*x.shape[:-1], idx.shape[-1])
    return torch.gather(x, -1, idx)


def inverse_paths(paths: Tensor, length: int) -> Tensor:
    """(K, Lp) paths -> (K, L) step index at which each spatial position is visited."""
    k_total, lp = paths.shape
    steps = torch.arange(lp, device=paths.device).expand(k_total, lp)
    inv = torch.full((k_total, length + 1), -1, dtype=torch.long, device=paths.device)
    idx = torch.where(paths < 0, torch.full_like(paths, length), paths)
    inv.scatter_(1, idx, steps)
    return inv[:, :length]


def scan_core_torch(u, delta, A, B, C, D, z, delta_bias, paths, delta_softplus, merge, params_at_step, backend):
    """Differentiable PyTorch implementation of the canonical op. Returns (y, last_state)."""
    batch, _, dim, length = u.shape
    k_total, _, n_state = A.shape
    groups = B.shape[2]
    out_dtype = u.dtype
    if paths is not None:
        u = _gather_path(u, paths, k_total)
        if not params_at_step:
            delta = _gather_path(delta, paths, k_total)
            B = _gather_path(B, paths, k_total)
            C = _gather_path(C, paths, k_total)
    steps = B.shape[-1]
    u = u.expand(batch, k_total, dim, steps).reshape(batch, k_total * dim, steps)
    delta = delta.expand(batch, k_total, dim, steps).reshape(batch, k_total * dim, steps)
    scan = selective_scan_ref if backend == "ref" else selective_scan_chunked
    y, last = scan(u, delta, A.reshape(k_total * dim, n_state),
                   B.reshape(batch, k_total * groups, n_state, steps), C.reshape(batch, k_total * groups, n_state, steps),
                   None if D is None else D.reshape(-1), None,
                   None if delta_bias is None else delta_bias.reshape(-1), delta_softplus, return_last_state=True)
    y = y.view(batch, k_total, dim, steps)
    if paths is not None:
        inv = inverse_paths(paths, length)
        y = torch.gather(y, -1, inv.view(1, k_total, 1, length).expand(batch, k_total, dim, length))
    if z is not None:
        y = y * torch.nn.functional.silu(z.to(y.dtype if y.dtype == torch.float64 else torch.float32)).unsqueeze(1)
    if merge:
        y = y.sum(1) if k_total > 1 else y[:, 0]
    return y.to(out_dtype).contiguous(), last.view(batch, k_total, dim, n_state)


# ----------------------------------------------------------------------------------------------------------------
# The registered op.


def _y_shape(u: Tensor, k_total: int, merge: bool) -> tuple[int, ...]:
    batch, _, dim, length = u.shape
    return (batch, dim, length) if merge else (batch, k_total, dim, length)


def _scan_fwd_impl(u, delta, A, B, C, D, z, delta_bias, paths, delta_softplus, merge, params_at_step, save_states,
                   backend):
    if backend == "triton":
        from .triton.scan import scan_fwd_triton

        return scan_fwd_triton(u, delta, A, B, C, D, z, delta_bias, paths, delta_softplus, merge, params_at_step,
                               save_states)
    with torch.no_grad(), torch.autocast(u.device.type, enabled=False):
        y, last = scan_core_torch(u, delta, A, B, C, D, z, delta_bias, paths, delta_softplus, merge, params_at_step,
                                  backend)
    return y, last, u.new_empty(0, dtype=torch.float32)


@torch.library.custom_op("vssm::scan_fwd", mutates_args=())
def _scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
              delta_bias: Optional[Tensor], paths: Optional[Tensor], delta_softplus: bool, merge: bool,
              params_at_step: bool, save_states: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return _scan_fwd_impl(u, delta, A, B, C, D, z, delta_bias, paths, delta_softplus, merge, params_at_step,
                          save_states, backend)


@_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, paths, delta_softplus, merge, params_at_step, save_states, backend):
    k_total, dim, n_state = A.shape
    batch = u.shape[0]
    if backend == "triton":
        from .triton.scan import empty_in_layout

        y = empty_in_layout(u, _y_shape(u, k_total, merge), u.dtype)
    else:
        y = u.new_empty(_y_shape(u, k_total, merge))
    last = u.new_empty((batch, k_total, dim, n_state), dtype=_compute_dtype(u, delta, A, B, C, D, z, delta_bias))
    if backend == "triton" and save_states:
        from .triton.scan import channels_fastest, chunk_count

        steps = B.shape[-1] if paths is None else paths.shape[1]
        n_states = chunk_count(steps, n_state, batch * k_total * dim, channels_fastest(u))
        states = u.new_empty((batch, k_total, dim, n_states, n_state), dtype=torch.float32)
    else:
        states = u.new_empty(0, dtype=torch.float32)
    return y, last, states


@register_flop_formula(torch.ops.vssm.scan_fwd)
def scan_flops(u, delta, A, B, C, D, z, delta_bias, paths, *flags, out_shape=None, **kwargs) -> int:
    """FLOPs of one scan by the rule of the VMamba, LocalMamba and PlainMamba tables (Albert Gu's count of the
    work-efficient parallel scan, state-spaces/mamba#110): 9 B L D N per direction, plus B L D each for the D skip
    and the z gate, with L the path length (window padding counts). Arguments are the op's, tensors as shapes."""
    batch, (k_total, dim, n_state) = u[0], A
    steps = B[-1] if paths is None else paths[1]
    return batch * k_total * dim * steps * (9 * n_state + (D is not None) + (z is not None))


def _scan_bwd_impl(dy, dlast, u, delta, A, B, C, D, z, delta_bias, paths, states, delta_softplus, merge,
                   params_at_step, backend):
    """Grads of (u, delta, A, B, C, D, z, delta_bias), None where the input is None."""
    if backend == "triton":
        from .triton.scan import scan_bwd_triton

        return scan_bwd_triton(dy, dlast, u, delta, A, B, C, D, z, delta_bias, paths, states, delta_softplus, merge,
                               params_at_step)  # in the layouts the fake announces
    grads = _scan_bwd_torch(dy, dlast, u, delta, A, B, C, D, z, delta_bias, paths, delta_softplus, merge,
                            params_at_step, backend)
    return [None if g is None else g.contiguous() for g in grads]


@torch.library.custom_op("vssm::scan_bwd", mutates_args=())
def _scan_bwd(dy: Tensor, dlast: Optional[Tensor], u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
              D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor], paths: Optional[Tensor],
              states: Tensor, delta_softplus: bool, merge: bool, params_at_step: bool, backend: str) -> list[Tensor]:
    grads = _scan_bwd_impl(dy, dlast, u, delta, A, B, C, D, z, delta_bias, paths, states, delta_softplus, merge,
                           params_at_step, backend)
    return _unaliased([u.new_empty(0) if g is None else g for g in grads])


def _unaliased(tensors: list[Tensor]) -> list[Tensor]:
    """Copies of the tensors that share storage with an earlier one (a custom op's outputs may not alias; the Triton
    backward hands out views of shared buffers where the gradients are already float32)."""
    seen, out = set(), []
    for t in tensors:
        storage = t.untyped_storage().data_ptr()
        out.append(t.clone() if t.numel() and storage in seen else t)
        seen.add(storage)
    return out


def _scan_bwd_torch(dy, dlast, u, delta, A, B, C, D, z, delta_bias, paths, delta_softplus, merge, params_at_step,
                    backend):
    """Gradients of the PyTorch implementation by recomputing it under autograd."""
    inputs = [u, delta, A, B, C, D, z, delta_bias]
    leaves = [None if t is None else t.detach().requires_grad_(True) for t in inputs]
    with _autograd_inside_op(), torch.enable_grad(), torch.autocast(u.device.type, enabled=False):
        y, last = scan_core_torch(*leaves, paths, delta_softplus, merge, params_at_step, backend)
        outs, grads_out = [y], [dy]
        if dlast is not None and dlast.numel():
            outs.append(last)
            grads_out.append(dlast.to(last.dtype))
        wrt = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad(outs, wrt, grads_out, allow_unused=True))
    return [None if t is None else _zeros_if_none(next(grads), t) for t in leaves]


def _autograd_inside_op():
    """Re-enable autograd dispatch inside a custom op's implementation (the op runs below the autograd keys)."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for name in dir(torch._C.DispatchKey):
        if name.startswith("Autograd") or name == "ADInplaceOrView":
            exclude = exclude.remove(getattr(torch._C.DispatchKey, name))
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)


def _zeros_if_none(g: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g


@_scan_bwd.register_fake
def _(dy, dlast, u, delta, A, B, C, D, z, delta_bias, paths, states, delta_softplus, merge, params_at_step, backend):
    def grad_like(name, t):
        if t is None:
            return u.new_empty(0)
        if backend == "triton" and name in ("B", "C"):  # fp32 buffers with the N states of a step contiguous
            return t.new_empty(*t.shape[:-2], t.shape[-1], t.shape[-2]).transpose(-1, -2)
        if backend == "triton" and name in ("u", "delta", "z"):  # the kernel writes grads in the input's layout
            return empty_like_dense(t)
        return t.new_empty(t.shape)

    return [grad_like(n, t) for n, t in zip("u delta A B C D z delta_bias".split(), (u, delta, A, B, C, D, z, delta_bias))]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, paths, delta_softplus, merge, params_at_step, save_states, backend = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, paths, output[2])
    ctx.flags = (delta_softplus, merge, params_at_step, backend)


def _backward(ctx, dy, dlast, dstates, scan_bwd=torch.ops.vssm.scan_bwd):
    u, delta, A, B, C, D, z, delta_bias, paths, states = ctx.saved_tensors
    delta_softplus, merge, params_at_step, backend = ctx.flags
    if not dense_strides(dy):  # an expanded or overlapping gradient: make it dense
        dy = dy.contiguous()
    grads = scan_bwd(dy, dlast, u, delta, A, B, C, D, z, delta_bias, paths, states, delta_softplus, merge,
                     params_at_step, backend)
    present = (u, delta, A, B, C, D, z, delta_bias)
    grads = [g if t is not None else None for g, t in zip(grads, present)]
    return (*grads, None, None, None, None, None, None)


torch.library.register_autograd("vssm::scan_fwd", _backward, setup_context=_setup_context)


class _EagerScan(torch.autograd.Function):
    """The same implementations without the custom ops' dispatch (a few tenths of a millisecond of host time per
    forward + backward): the path for eager tensors; compile and export trace the custom ops."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _scan_fwd_impl(*inputs)
        _setup_context(ctx, inputs, output)
        # the saved states are not an output: autograd would fill a zero gradient of their size for the backward
        # (157 MB per Vim-Ti layer, 1.2 ms of a training step on an H100)
        return output[:2]

    @staticmethod
    def backward(ctx, dy, dlast):
        return _backward(ctx, dy, dlast, None, scan_bwd=_scan_bwd_impl)


def scan_core(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
              delta_bias: Optional[Tensor], paths: Optional[Tensor], delta_softplus: bool, merge: bool,
              params_at_step: bool) -> tuple[Tensor, Tensor]:
    """Run the canonical op (layout in the module docstring) on the resolved backend. Returns (y, last_state)."""
    backend = resolve_backend(u.device, _compute_dtype(u, delta, A, B, C, D, z, delta_bias))
    save_states = backend == "triton" and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    args = (u, delta, A, B, C, D, z, delta_bias, paths, delta_softplus, merge, params_at_step, save_states, backend)
    if eager(u, delta, A, B, C, D, z, delta_bias, paths):
        y, last = _EagerScan.apply(*args)
    else:
        y, last, _ = torch.ops.vssm.scan_fwd(*args)
    return y, last
