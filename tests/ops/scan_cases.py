"""Shared helpers of the scan tests: random inputs, float64 references of gradients, backend forcing."""
import os
from contextlib import contextmanager

import numpy as np
import torch

FLOAT_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@contextmanager
def backend(name: str):
    """Force VSSM_SCAN_BACKEND for the duration of the block. Triton variants: "triton-seq" forces the step-by-step
    forward (by default small problems take the chunk-parallel one); "triton-long-chunk" runs the forward in chunks
    of 4 backward chunks (32 steps under the interpreter), so a training forward saves 3 states inside each chunk;
    "triton-gpu-plan" launches as on a GPU filled with rows (the measured chunk lengths, tiles and kernel kinds)."""
    from vssm.ops.triton.scan_plan import TILE_OVERRIDES

    old = os.environ.get("VSSM_SCAN_BACKEND")
    os.environ["VSSM_SCAN_BACKEND"] = "triton" if name.startswith("triton") else name
    overrides = {"triton-seq": {"sequential": True}, "triton-long-chunk": {"fwd_chunk": 32},
                 "triton-gpu-plan": {"gpu_plan": True, "min_rows": 1}}.get(name, {})
    TILE_OVERRIDES.update(overrides)
    try:
        yield
    finally:
        for key in overrides:
            TILE_OVERRIDES.pop(key)
        if old is None:
            del os.environ["VSSM_SCAN_BACKEND"]
        else:
            os.environ["VSSM_SCAN_BACKEND"] = old


def make_inputs(batch, dim, length, d_state, bc_layout="batch", groups=1, has_d=True, has_z=True, has_bias=True,
                seed=0, dtype=torch.float32, positive_delta=False):
    """Random selective_scan inputs; A negative, delta around softplus's useful range (positive if asked, for scans
    without softplus: a negative step size makes the state grow exponentially)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    if bc_layout == "const":
        bc_shape = (dim, d_state)
    elif bc_layout == "batch":
        bc_shape = (batch, d_state, length)
    else:
        bc_shape = (batch, groups, d_state, length)
    delta = rnd(batch, dim, length, scale=0.5)
    bias = torch.randn(dim, generator=g) * 0.5
    if positive_delta:
        delta, bias = delta.abs(), bias.abs()
    return dict(
        u=rnd(batch, dim, length), delta=delta,
        A=-(torch.rand(dim, d_state, generator=g) * 2 + 0.1),  # fp32 parameter
        B=rnd(*bc_shape), C=rnd(*bc_shape),
        D=torch.randn(dim, generator=g) if has_d else None,
        z=rnd(batch, dim, length) if has_z else None,
        delta_bias=bias if has_bias else None)


KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the Triton kernels run (interpreter on a CPU)


def kernel_device() -> str:
    """Where the forced backend runs: ``KERNEL_DEVICE`` for Triton, else the CPU."""
    return KERNEL_DEVICE if os.environ.get("VSSM_SCAN_BACKEND") == "triton" else "cpu"


def run_with_grads(fn, inputs: dict, weights: torch.Tensor, state_weights: torch.Tensor, to64: bool, **kwargs):
    """Call fn(**inputs, return_last_state=True) on ``kernel_device()``; backprop sum(y*w) + sum(last*ws). Returns
    (y, last, grads) on the CPU."""
    device = kernel_device()
    leaves = {k: (None if v is None else (v.double() if to64 else v.clone()).to(device).requires_grad_(True))
              for k, v in inputs.items()}
    y, last = fn(**leaves, return_last_state=True, **kwargs)
    loss = (y.double() * weights.to(device)).sum() + (last.double() * state_weights.to(device)).sum()
    loss.backward()
    return y.detach().cpu(), last.detach().cpu(), {k: v.grad.cpu() for k, v in leaves.items() if v is not None}


def record_saved_bytes(monkeypatch) -> list:
    """Bytes every autograd node saves for its backward (the storages of its non-scalar tensors), one entry per
    ``save_for_backward`` call, for as long as ``monkeypatch`` lasts."""
    saved = []
    real_save = torch.autograd.function.FunctionCtx.save_for_backward

    def record(ctx, *tensors):
        saved.append(sum(t.untyped_storage().nbytes() for t in tensors if t is not None and t.dim() > 0))
        return real_save(ctx, *tensors)

    monkeypatch.setattr(torch.autograd.function.FunctionCtx, "save_for_backward", record)
    return saved


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64; ||actual|| where expected is exactly zero (dA of a one-step
    scan, whose fp32 value on a GPU is rounding noise where FMA contraction fuses the product into a difference)."""
    actual, expected = actual.double(), expected.double()
    scale = expected.norm()
    return float((actual - expected).norm() / scale) if scale > 0 else float(actual.norm())


def naive_scan_np(u, delta, A, B, C, D, z, delta_bias, softplus):
    """An independent float64 definition in numpy, one (batch, channel, state) at a time. B, C: (b, G, N, L)."""
    u, delta, A, B, C = (np.asarray(t, dtype=np.float64) for t in (u, delta, A, B, C))
    batch, dim, length = u.shape
    d_state = A.shape[1]
    per_group = dim // B.shape[1]
    y = np.zeros((batch, dim, length))
    last = np.zeros((batch, dim, d_state))
    for b in range(batch):
        for d in range(dim):
            g = d // per_group
            for n in range(d_state):
                h = 0.0
                for t in range(length):
                    dt = delta[b, d, t] + (0.0 if delta_bias is None else float(delta_bias[d]))
                    if softplus:
                        dt = np.log1p(np.exp(dt))
                    h = np.exp(dt * A[d, n]) * h + dt * B[b, g, n, t] * u[b, d, t]
                    y[b, d, t] += C[b, g, n, t] * h
                last[b, d, n] = h
    if D is not None:
        y += np.asarray(D, dtype=np.float64)[None, :, None] * u
    if z is not None:
        z = np.asarray(z, dtype=np.float64)
        y *= z / (1 + np.exp(-z))
    return y, last
