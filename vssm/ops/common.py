"""Helpers shared by the ops' dispatchers and their Triton kernels: backend choice, the compute-dtype rule, argument
checks (scan paths included), host-side launch arithmetic and memory-layout queries.

This module imports nothing from ``vssm.ops``: the dispatchers (``selective_scan``, ``scan_core``, ``causal_conv``,
...) and the Triton files (``vssm.ops.triton``) both import it, so neither imports the other upward.
"""
from __future__ import annotations

import functools
import os
import warnings
import weakref
from typing import Callable, Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

__all__ = ["BACKENDS", "FLOAT_DTYPES", "PATH_PAD", "axis_order", "axis_order_of_strides", "cdiv", "check_float_tensor",
           "check_kernel_backend", "check_kernel_dtypes", "check_paths", "check_paths_layout", "compute_dtype",
           "dense_strides", "eager", "empty_in_layout", "empty_like_dense", "graph_constant", "mark_valid_paths",
           "next_power_of_2", "resolve_backend", "trace_quiet", "triton_available", "triton_interpret"]

BACKENDS = ("ref", "torch", "triton")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ----------------------------------------------------------------------------------------------------------------
# Backends.


@torch._dynamo.assume_constant_result  # a constant of torch.compile graphs, without a trace of the cache
def triton_available() -> bool:
    """Whether ``triton`` imports (tried once)."""
    return _triton_imports()


@functools.lru_cache(maxsize=None)
def _triton_imports() -> bool:
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


def trace_quiet(fn):
    """Run ``fn`` (a public op) without TracerWarnings under ``torch.jit.trace``. The ops check and plan with Python
    ints from tensor sizes, which a trace sees as tensors and warns about at every comparison; a trace of an op is
    specialised to its example's shapes anyway (the launch plans and the reference's chunking are), so the ops record
    that silently. Outside tracing: one flag test per call."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not torch.jit.is_tracing():  # (torch.compile traces this test as False)
            return fn(*args, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return fn(*args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------------------------------------------
# Cached constants (scan paths, route tables) that compiled graphs read.


class _CompiledConstants:
    """Holder of the constants that compiled graphs read, one attribute each (``graph_constant``)."""


_COMPILED_CONSTANTS = _CompiledConstants()
_CONSTANT_BUILDERS: dict[str, Callable] = {}
_CONSTANT_NAMES: dict[tuple, str] = {}


def graph_constant(maxsize: Optional[int] = 128) -> Callable:
    """Cache a builder of read-only tensors (a function of hashable arguments that returns a tensor or a tuple of
    tensors) as ``functools.lru_cache(maxsize)`` does, and keep its results as constants of torch.compile graphs.

    Outside tracing a call is the cached call (``f.cache``: the same without the tracing test, for callers that made
    it already). Results are built outside inference mode, so a first call under ``torch.inference_mode`` caches
    tensors that later training steps can save for backward. Under torch.compile the result is read as an attribute
    of a module-level holder: dynamo lifts it as a static graph input (the same tensor object at every call of the
    compiled graph, so the ops' once-per-tensor path check stays a dictionary look-up; static shapes under
    ``dynamic=True``; no copy into CUDA graphs), nothing of the builder or the cache is traced (no ``lru_cache``
    warning, no data-dependent checks), and any number of different results may live in one graph
    (``torch._dynamo.assume_constant_result`` on a tensor-valued function keeps one per function).
    """

    def decorate(builder: Callable) -> Callable:
        key = f"{builder.__module__}.{builder.__qualname__}:{len(_CONSTANT_BUILDERS)}"  # unique per decorated builder

        @functools.lru_cache(maxsize=maxsize)
        def cache(*args):
            with torch.inference_mode(False):
                return builder(*args)

        _CONSTANT_BUILDERS[key] = cache

        @functools.wraps(builder)
        def cached(*args):
            if torch.compiler.is_compiling():
                return getattr(_COMPILED_CONSTANTS, _constant_name(key, *args))
            return cache(*args)

        cached.cache = cache
        return cached

    return decorate


@torch._dynamo.assume_constant_result
def _constant_name(key: str, *args) -> str:
    """Run the builder registered as ``key`` on ``args`` for real (dynamo calls this function at trace time and keeps
    its result, a string, as a constant), store the result on the holder and return the attribute's name."""
    name = _CONSTANT_NAMES.setdefault((key, args), f"constant_{len(_CONSTANT_NAMES)}")
    value = _CONSTANT_BUILDERS[key](*args)
    for t in value if isinstance(value, tuple) else (value,):
        # static shapes also under dynamic=True (no duck sizing with the batch): mark_static's marks, set directly
        # (mark_static called inside a trace marks the traced value instead); no copy into CUDA graphs
        t._dynamo_static_indices = set(range(t.dim()))
        t._has_dynamo_dim_marking = True
        torch._dynamo.mark_static_address(t)
    setattr(_COMPILED_CONSTANTS, name, value)
    return name


# ----------------------------------------------------------------------------------------------------------------
# Dtypes and argument checks.


def compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """The dtype of the recurrent state and accumulations: float64 when any tensor given is float64, else float32
    (whatever the input dtype: fp32, bf16, fp16)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def check_float_tensor(name: str, t, ndims: tuple[int, ...], fn: str = "selective_scan") -> None:
    """Raise TypeError/ValueError naming ``name`` unless ``t`` is a real floating tensor of one of ``ndims`` ranks."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_complex():
        raise TypeError(f"{fn}: {name} must be real; complex dtype {t.dtype} is not supported")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{fn}: {name} must be float32, bfloat16, float16 or float64, got {t.dtype}")
    if t.dim() not in ndims:
        expected = " or ".join(str(n) for n in ndims)
        raise ValueError(f"{fn}: {name} must have {expected} dimensions, got shape {tuple(t.shape)}")


def check_kernel_dtypes(fn: str, *tensors: Optional[Tensor]) -> None:
    """Raise TypeError unless every tensor given (None skipped) is float32, bfloat16 or float16, the dtypes the Triton
    kernels read; ``fn`` names the op in the message."""
    for t in tensors:
        if t is not None and t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"{fn}: tensors must be float32, bfloat16 or float16, got {t.dtype}")


# ----------------------------------------------------------------------------------------------------------------
# Host-side launch arithmetic.


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for host-side launch arithmetic (cheaper per call than ``triton.cdiv``; BENCHMARKS.md, launch-plan
    figures)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (n >= 1), on the host."""
    return 1 << (n - 1).bit_length()


# ----------------------------------------------------------------------------------------------------------------
# Memory layouts.


def dense_strides(x: Tensor) -> bool:
    """True when x's elements fill its storage span without gaps or overlaps (any order of the axes), the layouts
    ``torch.empty_like`` preserves; checked on the strides alone, without an allocation."""
    try:
        return _dense_strides(x.shape, x.stride())
    except TypeError:  # symbolic sizes (torch.compile with dynamic shapes) do not hash: no cache
        return _dense_strides.__wrapped__(x.shape, x.stride())


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
    try:
        return axis_order_of_strides(t.shape, t.stride(), axes)
    except TypeError:  # symbolic sizes do not hash: no cache
        return axis_order_of_strides.__wrapped__(t.shape, t.stride(), axes)


@functools.lru_cache(maxsize=1024)
def axis_order_of_strides(shape: tuple[int, ...], strides: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    """``axis_order`` of a tensor of these shape and strides (cached)."""
    return tuple(sorted(axes, key=lambda a: (bool(shape[a] != 1), -strides[a])))


@functools.lru_cache(maxsize=1024)
def _layout_permutation(shape: tuple[int, ...], strides: tuple[int, ...], rank: int) -> tuple[tuple, tuple | None]:
    """For ``empty_in_layout``: the axes of a rank-3 (batch, dim, L) or rank-4 (batch, K, dim, L) tensor in the memory
    order of a (batch, K, dim, L) tensor of these shape and strides (K right inside the batch axis), and the
    permutation that views a buffer allocated in that order with the logical axis order (None: the identity)."""
    axis = {0: 0, 2: rank - 2, 3: rank - 1}
    phys = [axis[a] for a in axis_order_of_strides.__wrapped__(shape, strides, (0, 2, 3))]  # cached here as a whole
    if rank == 4:
        phys.insert(phys.index(0) + 1, 1)
    inverse = tuple(phys.index(a) for a in range(rank))
    return tuple(phys), None if inverse == tuple(range(rank)) else inverse


def empty_in_layout(u: Tensor, shape: tuple[int, ...], dtype: torch.dtype, *, zero: bool = False) -> Tensor:
    """A (batch, [K,] dim, L) tensor whose batch, dim and L axes lie in memory in the order of u's (batch, K, dim, L)
    (contiguous, channels-last, or dim-major as the Mamba mixer's (dim, batch, L) buffers); K sits right inside the
    batch axis. Outputs and gradients in the inputs' layout let a path of any order read and write whole rows."""
    try:
        phys, inverse = _layout_permutation(u.shape, u.stride(), len(shape))
    except TypeError:  # symbolic sizes do not hash: no cache
        phys, inverse = _layout_permutation.__wrapped__(u.shape, u.stride(), len(shape))
    make = torch.zeros if zero else torch.empty
    out = make([shape[a] for a in phys], device=u.device, dtype=dtype)
    return out if inverse is None else out.permute(inverse)


# ----------------------------------------------------------------------------------------------------------------
# Scan paths: validation of user-built (K, Lp) index tensors, once per tensor (``vssm.ops.scan_paths`` docstring).

PATH_PAD = -1  # a zero-padding step (``vssm.ops.scan_paths.PAD``)


def check_paths(paths: Tensor, length: int, fn: str = "scan_paths.check") -> None:
    """Raise unless ``paths`` is a valid path set for a map of ``length`` tokens (``vssm.ops.scan_paths`` docstring,
    "Validation"; exported there as ``check``).

    Cheap after the first call for the same tensor (and for ``scan_paths.build``'s results): nothing is read from the
    device.

    Args:
        paths: (K, Lp) integer tensor, int64 or int32.
        length: L, the number of tokens of the map the routes walk.
        fn: The op named in the messages.

    Raises:
        TypeError: ``paths`` is not an int64 / int32 tensor.
        ValueError: ``paths`` is not 2-D with K >= 1 and Lp >= L, or a route holds an index outside [0, L) other
            than ``PATH_PAD``, visits a token twice, or misses one; the message names the route (row) and the index.
    """
    if torch.compiler.is_compiling():  # tracing sees fake tensors: their layout only
        check_paths_layout(paths, length, fn)
        return
    length = int(length)  # a size that torch.jit.trace hands over as a tensor
    entry = _VALID.get(id(paths))
    if (entry is not None and entry[3] == length and entry[0]() is paths and entry[1] == _version_of(paths)
            and entry[2] == paths.data_ptr()):
        return
    check_paths_layout(paths, length, fn)
    if type(paths) is not Tensor or paths.device.type == "meta":
        return  # a fake or meta tensor: no values to read (the real one is checked where the op runs)
    if torch.jit.is_tracing():  # read the values without recording the reads into the trace
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            _check_path_values(paths, length, fn)
        finally:
            torch._C._set_tracing_state(state)
    else:
        _check_path_values(paths, length, fn)
    mark_valid_paths(paths, length)


# id(paths) -> (weak reference, _version, data_ptr, L) of the tensors known to be valid; an entry leaves when its
# tensor dies
_VALID: dict[int, tuple] = {}


def mark_valid_paths(paths: Tensor, length: int) -> None:
    """Remember ``paths`` as a valid path set for L = ``length`` until it dies or is edited in place. Tensors without
    storage to point at (fake or functional tensors of a trace) are not remembered; they are checked where they run."""
    if type(paths) is not Tensor or paths.device.type == "meta":
        return
    key = id(paths)

    def forget(_, key=key):
        _VALID.pop(key, None)

    _VALID[key] = (weakref.ref(paths, forget), _version_of(paths), paths.data_ptr(), length)


def _version_of(paths: Tensor) -> Optional[int]:
    """The in-place version counter; None for an inference tensor, which keeps none (it cannot be edited in place
    outside inference mode)."""
    return None if paths.is_inference() else paths._version


def check_paths_layout(paths, length: int, fn: str) -> None:
    """Raise unless ``paths`` has a path set's dtype and shape for L = ``length`` tokens (no values read)."""
    if not isinstance(paths, Tensor) or paths.dtype not in (torch.int64, torch.int32):
        got = (f"{paths.dtype} of shape {tuple(paths.shape)}" if isinstance(paths, Tensor)
               else type(paths).__name__)
        raise TypeError(f"{fn}: paths must be an integer tensor (K, Lp), int64 or int32, e.g. from "
                        f"vssm.ops.scan_paths.build, got {got}")
    if paths.dim() != 2 or paths.shape[0] < 1:
        raise ValueError(f"{fn}: paths must be 2-D (K, Lp) with K >= 1, got shape {tuple(paths.shape)}")
    if paths.shape[1] < length:
        raise ValueError(f"{fn}: paths have {paths.shape[1]} steps per route, fewer than the L={length} tokens each "
                         f"route must visit (shape {tuple(paths.shape)})")


def _check_path_values(paths: Tensor, length: int, fn: str) -> None:
    """Every row of ``paths`` a permutation of range(L) plus ``PATH_PAD`` steps, else a ValueError naming the first bad
    route (one device-to-host copy)."""
    host = paths.detach().to("cpu", torch.int64)
    bad = ((host < 0) & (host != PATH_PAD)) | (host >= length)
    if bool(bad.any()):
        route, step = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{fn}: route {route} (row {route} of paths) holds index {int(host[route, step])} at step "
                         f"{step}; indices must lie in [0, L={length}) or be PAD ({PATH_PAD})")
    real = host != PATH_PAD
    counts = torch.zeros(host.shape[0], length + 1, dtype=torch.int64)
    counts.scatter_add_(1, torch.where(real, host, length), real.to(torch.int64))
    counts = counts[:, :length]
    if bool((counts != 1).any()):
        route, token = (int(i) for i in (counts != 1).nonzero()[0])
        if int(counts[route, token]) > 1:
            steps = (host[route] == token).nonzero().flatten().tolist()
            raise ValueError(f"{fn}: route {route} (row {route} of paths) visits token {token} {len(steps)} times "
                             f"(steps {steps}); each route must visit every token of range(L={length}) exactly once")
        raise ValueError(f"{fn}: route {route} (row {route} of paths) never visits token {token}; each route must "
                         f"visit every token of range(L={length}) exactly once (PAD = {PATH_PAD} marks extra steps)")
