"""The one scan op behind ``selective_scan`` and ``multi_scan``, registered with ``torch.library``.

Canonical layout (K = num_directions scan directions, spatial length L, path length Lp >= L, N = d_state):
    u      (batch, Ku, dim, L)      Ku in {1, K}: shared by all directions or one per direction; spatial order
    delta  (batch, Kd, dim, Ld)     Kd in {1, K}; Ld = L (spatial order) or Lp (``params_at_step``: step order)
    A      (K, dim, N)
    B, C   (batch, K, G, N, Ld)     G groups of dim / G channels
    D, delta_bias (K, dim) or None; z (batch, dim, L) or None (gate shared by the directions)
    paths  (K, Lp) int64/int32 or None   paths[k, j] = spatial index read at step j of direction k, -1 = a zero
                                    token; each route a permutation of range(L) plus -1 steps, checked once per
                                    tensor where the op runs (``vssm.ops.common.check_paths``), so a malformed route
                                    reaches no gather and no kernel, eager or compiled
Outputs: y (batch, dim, L) summed over directions if ``merge`` else (batch, K, dim, L), both in spatial order and
u's dtype; last state (batch, K, dim, N) float32 (float64 for float64 inputs).

``a_nonpositive`` is the caller's promise that A <= 0 (A = -exp(A_log) in every layer): with step sizes >= 0 every
decay exp(delta A) is then <= 1, and the Triton backend may compose a chunk's decays associatively (the small-N chunk
kernels), whose products would overflow float32 for A > 0 where the sequential recurrence stays finite. Without it
the Triton kernels run every recurrence step by step, with the reference's inf / NaN placement for any A
(``vssm.ops.triton.scan``, 'Overflow'). The PyTorch backends are exact either way.

The op is a ``torch.library.custom_op`` with a fake and an autograd formula, so torch.compile, torch.export,
torchscript and FX treat it as one opaque node, and autocast passes its inputs through unchanged. Eager calls on
plain tensors run the same implementations behind an ``autograd.Function``, which skips the custom op's dispatch.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .common import check_paths, compute_dtype, dense_strides, eager, empty_in_layout, empty_like_dense, resolve_backend
from .scan_reference import selective_scan_chunked, selective_scan_ref
from .triton.scan_plan import channels_fastest, chunk_count

__all__ = ["scan_core", "scan_core_torch", "scan_flops", "inverse_paths"]

# ----------------------------------------------------------------------------------------------------------------
# PyTorch implementation of the canonical op (the 'ref' and 'torch' backends): gather, scan, scatter, merge.


def _gather_path(x: Tensor, paths: Tensor, num_directions: int) -> Tensor:
    """(batch, Kx, ..., L) in spatial order -> (batch, K, ..., Lp) in path order; -1 steps read zeros."""
    length = x.shape[-1]
    x = torch.nn.functional.pad(x, (0, 1))  # index L is the zero token
    idx = torch.where(paths < 0, torch.full_like(paths, length), paths)
    x = x.expand(x.shape[0], num_directions, *x.shape[2:])
    idx = idx.view(1, num_directions, *([1] * (x.dim() - 3)), idx.shape[-1]).expand(*x.shape[:-1], idx.shape[-1])
    return torch.gather(x, -1, idx)


def inverse_paths(paths: Tensor, length: int) -> Tensor:
    """(K, Lp) paths -> (K, L) step index at which each spatial position is visited."""
    num_directions, lp = paths.shape
    steps = torch.arange(lp, device=paths.device).expand(num_directions, lp)
    inv = torch.full((num_directions, length + 1), -1, dtype=torch.long, device=paths.device)
    idx = torch.where(paths < 0, torch.full_like(paths, length), paths)
    inv.scatter_(1, idx, steps)
    return inv[:, :length]


def scan_core_torch(u, delta, A, B, C, D, z, delta_bias, paths, *, delta_softplus: bool, merge: bool,
                    params_at_step: bool, backend: str):
    """Differentiable PyTorch implementation of the canonical op. Returns (y, last_state)."""
    batch, _, dim, length = u.shape
    num_directions, _, d_state = A.shape
    groups = B.shape[2]
    out_dtype = u.dtype
    if paths is not None:
        check_paths(paths, length, "scan")  # once per paths tensor: no malformed route reaches the gathers
        paths = paths.long()  # gather's index dtype (int32 paths are accepted)
        u = _gather_path(u, paths, num_directions)
        if not params_at_step:
            delta = _gather_path(delta, paths, num_directions)
            B = _gather_path(B, paths, num_directions)
            C = _gather_path(C, paths, num_directions)
    steps = B.shape[-1]
    u = u.expand(batch, num_directions, dim, steps).reshape(batch, num_directions * dim, steps)
    delta = delta.expand(batch, num_directions, dim, steps).reshape(batch, num_directions * dim, steps)
    scan = selective_scan_ref if backend == "ref" else selective_scan_chunked
    y, last = scan(u, delta, A.reshape(num_directions * dim, d_state),
                   B.reshape(batch, num_directions * groups, d_state, steps),
                   C.reshape(batch, num_directions * groups, d_state, steps),
                   None if D is None else D.reshape(-1), None,
                   None if delta_bias is None else delta_bias.reshape(-1), delta_softplus=delta_softplus,
                   return_last_state=True)
    y = y.view(batch, num_directions, dim, steps)
    if paths is not None:
        inv = inverse_paths(paths, length)
        y = torch.gather(y, -1, inv.view(1, num_directions, 1, length).expand(batch, num_directions, dim, length))
    if z is not None:
        y = y * torch.nn.functional.silu(z.to(y.dtype if y.dtype == torch.float64 else torch.float32)).unsqueeze(1)
    if merge:
        y = y.sum(1) if num_directions > 1 else y[:, 0]
    return y.to(out_dtype).contiguous(), last.view(batch, num_directions, dim, d_state)


# ----------------------------------------------------------------------------------------------------------------
# The registered op.


def _y_shape(u: Tensor, num_directions: int, merge: bool) -> tuple[int, ...]:
    batch, _, dim, length = u.shape
    return (batch, dim, length) if merge else (batch, num_directions, dim, length)


def _scan_fwd_impl(u, delta, A, B, C, D, z, delta_bias, paths, delta_softplus, merge, params_at_step, save_states,
                   backend, a_nonpositive):
    if backend == "triton":
        from .triton.scan import scan_fwd_triton

        return scan_fwd_triton(u, delta, A, B, C, D, z, delta_bias, paths, delta_softplus=delta_softplus, merge=merge,
                               params_at_step=params_at_step, save_states=save_states, a_nonpositive=a_nonpositive)
    with torch.no_grad(), torch.autocast(u.device.type, enabled=False):
        y, last = scan_core_torch(u, delta, A, B, C, D, z, delta_bias, paths, delta_softplus=delta_softplus,
                                  merge=merge, params_at_step=params_at_step, backend=backend)
    return y, last, u.new_empty(0, dtype=torch.float32)


@torch.library.custom_op("vssm::scan_fwd", mutates_args=())
def _scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
              delta_bias: Optional[Tensor], paths: Optional[Tensor], delta_softplus: bool, merge: bool,
              params_at_step: bool, save_states: bool, backend: str,
              a_nonpositive: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    return _scan_fwd_impl(u, delta, A, B, C, D, z, delta_bias, paths, delta_softplus, merge, params_at_step,
                          save_states, backend, a_nonpositive)


@_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, paths, delta_softplus, merge, params_at_step, save_states, backend,
      a_nonpositive=False):  # the promise changes the kernels' recurrence form, not the outputs' shapes or layouts
    num_directions, dim, d_state = A.shape
    batch = u.shape[0]
    if backend == "triton":
        y = empty_in_layout(u, _y_shape(u, num_directions, merge), u.dtype)
    else:
        y = u.new_empty(_y_shape(u, num_directions, merge))
    last = u.new_empty((batch, num_directions, dim, d_state), dtype=compute_dtype(u, delta, A, B, C, D, z, delta_bias))
    if backend == "triton" and save_states:
        steps = B.shape[-1] if paths is None else paths.shape[1]
        n_states = chunk_count(steps, d_state, batch * num_directions * dim, channels_fastest(u))
        states = u.new_empty((batch, num_directions, dim, n_states, d_state), dtype=torch.float32)
    else:
        states = u.new_empty(0, dtype=torch.float32)
    return y, last, states


@register_flop_formula(torch.ops.vssm.scan_fwd)
def scan_flops(u, delta, A, B, C, D, z, delta_bias, paths, *flags, out_shape=None, **kwargs) -> int:
    """FLOPs of one scan by the rule of the VMamba, LocalMamba and PlainMamba tables (Albert Gu's count of the
    work-efficient parallel scan, state-spaces/mamba#110): 9 B L D N per direction, plus B L D each for the D skip
    and the z gate, with L the path length (window padding counts). Arguments are the op's, tensors as shapes."""
    batch, (num_directions, dim, d_state) = u[0], A
    steps = B[-1] if paths is None else paths[1]
    return batch * num_directions * dim * steps * (9 * d_state + (D is not None) + (z is not None))


def _scan_bwd_impl(dy, dlast, u, delta, A, B, C, D, z, delta_bias, paths, states, delta_softplus, merge,
                   params_at_step, backend, a_nonpositive):
    """Grads of (u, delta, A, B, C, D, z, delta_bias), None where the input is None. On Triton, a forward that kept
    no chunk states (``scan_core``'s ``recompute_states``) has them computed again here, bitwise, by a states-only
    forward."""
    if backend == "triton":
        from .triton.scan import scan_bwd_triton, scan_fwd_triton

        if not states.numel():
            states = scan_fwd_triton(u, delta, A, B, C, D, z, delta_bias, paths, delta_softplus=delta_softplus,
                                     merge=merge, params_at_step=params_at_step, save_states=True,
                                     a_nonpositive=a_nonpositive, write_y=False)[2]

        # in the layouts the fake announces
        return scan_bwd_triton(dy, dlast, u, delta, A, B, C, D, z, delta_bias, paths, states,
                               delta_softplus=delta_softplus, merge=merge, params_at_step=params_at_step,
                               a_nonpositive=a_nonpositive)
    grads = _scan_bwd_torch(dy, dlast, u, delta, A, B, C, D, z, delta_bias, paths, delta_softplus, merge,
                            params_at_step, backend)
    return [None if g is None else g.contiguous() for g in grads]


@torch.library.custom_op("vssm::scan_bwd", mutates_args=())
def _scan_bwd(dy: Tensor, dlast: Optional[Tensor], u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
              D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor], paths: Optional[Tensor],
              states: Tensor, delta_softplus: bool, merge: bool, params_at_step: bool, backend: str,
              a_nonpositive: bool = False) -> list[Tensor]:
    grads = _scan_bwd_impl(dy, dlast, u, delta, A, B, C, D, z, delta_bias, paths, states, delta_softplus, merge,
                           params_at_step, backend, a_nonpositive)
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
        y, last = scan_core_torch(*leaves, paths, delta_softplus=delta_softplus, merge=merge,
                                  params_at_step=params_at_step, backend=backend)
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
def _(dy, dlast, u, delta, A, B, C, D, z, delta_bias, paths, states, delta_softplus, merge, params_at_step, backend,
      a_nonpositive=False):
    def grad_like(name, t):
        if t is None:
            return u.new_empty(0)
        if backend == "triton" and name in ("B", "C"):  # fp32 buffers with the N states of a step contiguous
            return t.new_empty(*t.shape[:-2], t.shape[-1], t.shape[-2]).transpose(-1, -2)
        if backend == "triton" and name in ("u", "delta", "z"):  # the kernel writes grads in the input's layout
            return empty_like_dense(t)
        return t.new_empty(t.shape)

    names = "u delta A B C D z delta_bias".split()
    return [grad_like(n, t) for n, t in zip(names, (u, delta, A, B, C, D, z, delta_bias))]


def _setup_context(ctx, inputs, output):
    (u, delta, A, B, C, D, z, delta_bias, paths, delta_softplus, merge, params_at_step, save_states, backend,
     a_nonpositive) = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, paths, output[2])
    ctx.flags = (delta_softplus, merge, params_at_step, backend, a_nonpositive)


def _backward(ctx, dy, dlast, dstates, scan_bwd=torch.ops.vssm.scan_bwd):
    u, delta, A, B, C, D, z, delta_bias, paths, states = ctx.saved_tensors
    delta_softplus, merge, params_at_step, backend, a_nonpositive = ctx.flags
    if not dense_strides(dy):  # an expanded or overlapping gradient: make it dense
        dy = dy.contiguous()
    grads = scan_bwd(dy, dlast, u, delta, A, B, C, D, z, delta_bias, paths, states, delta_softplus, merge,
                     params_at_step, backend, a_nonpositive)
    present = (u, delta, A, B, C, D, z, delta_bias)
    grads = [g if t is not None else None for g, t in zip(grads, present)]
    return (*grads, None, None, None, None, None, None, None)


torch.library.register_autograd("vssm::scan_fwd", _backward, setup_context=_setup_context)


class _EagerScan(torch.autograd.Function):
    """The same implementations without the custom ops' dispatch (host time per forward + backward: BENCHMARKS.md,
    launch-plan figures): the path for eager tensors; compile and export trace the custom ops."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _scan_fwd_impl(*inputs)
        _setup_context(ctx, inputs, output)
        # the saved states are not an output: autograd would fill a zero gradient of their size for the backward
        # (BENCHMARKS.md, launch-plan figures)
        return output[:2]

    @staticmethod
    def backward(ctx, dy, dlast):
        return _backward(ctx, dy, dlast, None, scan_bwd=_scan_bwd_impl)


def scan_core(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
              delta_bias: Optional[Tensor], paths: Optional[Tensor], *, delta_softplus: bool, merge: bool,
              params_at_step: bool, a_nonpositive: bool, recompute_states: bool = False) -> tuple[Tensor, Tensor]:
    """Run the canonical op (layout and the promise ``a_nonpositive`` in the module docstring) on the resolved
    backend. ``recompute_states``: a Triton training forward keeps no chunk states (float32, N per channel and
    saved-state spacing, the largest saved activation at N >= 16); the backward runs a states-only forward for them
    instead (the same gradients, bitwise). Returns (y, last_state)."""
    backend = resolve_backend(u.device, compute_dtype(u, delta, A, B, C, D, z, delta_bias))
    save_states = backend == "triton" and not recompute_states and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    args = (u, delta, A, B, C, D, z, delta_bias, paths, delta_softplus, merge, params_at_step, save_states, backend,
            a_nonpositive)
    if eager(u, delta, A, B, C, D, z, delta_bias, paths):
        y, last = _EagerScan.apply(*args)
    else:
        y, last, _ = torch.ops.vssm.scan_fwd(*args)
    return y, last
