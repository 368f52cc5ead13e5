"""Launch planning of the Triton scan kernels (``vssm.ops.triton.scan``): which forward runs, chunk lengths, tile
shapes, warps and tile layouts, as named records (``ForwardPlan``, ``BackwardPlan``).

Plans depend only on the problem's sizes (N = ``d_state`` states, ``dim`` channels, ``rows`` = batch x num_directions x
dim sequences of ``steps`` steps, channels-last or dim-major), on whether the plan is for a GPU or for the interpreter,
on ``TILE_OVERRIDES``, and on the caller's promise that A <= 0 (``a_nonpositive``: with step sizes >= 0 every decay
exp(delta A) <= 1), without which no chunk kernel composes decays with ``tl.associative_scan``. The thresholds and
tiles were measured best on an H100 (BENCHMARKS.md, launch-plan figures). This module needs no Triton: the scan op's
fake (meta) implementation also reads it.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

from torch import Tensor

from ..common import cdiv, next_power_of_2, triton_interpret

__all__ = ["TILE_OVERRIDES", "ForwardPlan", "BackwardPlan", "forward_plan", "backward_plan", "overrides_key",
           "channels_fastest", "chunk_len", "forward_chunk_len", "chunk_count", "sequential", "sequence_segments"]

# Launch-configuration overrides for tuning runs (tools/benchmark_scan.py --sweep) and tests; empty in normal use:
# {"sequential": bool, "chunk": steps, "fwd_chunk": steps, "fwd": (BLOCK_D, num_warps), "bwd": (BLOCK_D, num_warps),
#  "fwd_maxnreg": registers or None, "states_middle" / "fwd_states_middle": bool (tile layouts of the backward and
#  the chunk-parallel forward, ``backward_plan``, ``_short_dim_major``), "steps_in_thread": bool (the recurrences
#  step by step in registers or by ``tl.associative_scan``, the latter only under the promise A <= 0,
#  ``_steps_in_thread``), "segments": segments per sequence of the chunk kernels (``sequence_segments``, only under
#  the promise); for tests under TRITON_INTERPRET=1:
#  "gpu_plan": bool (plan as on a GPU), "min_rows": rows (from which the GPU counts as filled, SEQUENTIAL_MIN_ROWS)}.
TILE_OVERRIDES: dict[str, object] = {}


# The step-by-step forward runs short sequences (up to SEQUENTIAL_MAX_STEPS) of N > 4 over at least
# SEQUENTIAL_MIN_ROWS rows, except dim-major rows of 4 < N <= 16 (``_short_dim_major``); measured best on an H100
# (BENCHMARKS.md, launch-plan figures).
SEQUENTIAL_MIN_ROWS = 16384
SEQUENTIAL_MAX_STEPS = 512
# The chunk kernels split each sequence into segments (``sequence_segments``) where a launch has fewer programs than
# one H100 has multiprocessors (SPLIT_MAX_PROGRAMS) over sequences of at least SPLIT_MIN_STEPS: enough segments for
# SPLIT_TARGET_PROGRAMS programs, of at least SPLIT_MIN_SEGMENT steps. Not yet measured on a GPU.
SPLIT_MAX_PROGRAMS = 132
SPLIT_TARGET_PROGRAMS = 264
SPLIT_MIN_STEPS = 8192
SPLIT_MIN_SEGMENT = 1024
# Fewest backward programs for which a wider backward tile pays: with fewer, its fewer programs lose more to exposed
# latency than its cheaper reductions win (BENCHMARKS.md, launch-plan figures)
BACKWARD_MIN_PROGRAMS = 768


def channels_fastest(u: Tensor) -> bool:
    """Whether u (batch, [K,] dim, L) lies with channels closer in memory than steps (the channels-last maps of the
    2-D models) rather than each channel's sequence contiguous (the 1-D mixers' dim-major buffers). The launch plans
    differ: along a channels-last path a program reads BLOCK_D contiguous channels per step."""
    return u.shape[-2] > 1 and u.shape[-1] > 1 and u.stride(-2) < u.stride(-1)


def _many_rows(rows: int) -> bool:
    """Whether ``rows`` sequences fill the GPU (the plans below differ)."""
    return rows >= TILE_OVERRIDES.get("min_rows", SEQUENTIAL_MIN_ROWS)


def _short_dim_major(d_state: int, rows: int, steps: int, cl: bool) -> bool:
    """Short sequences (<= 512 steps) of 4 < N <= 16 over many dim-major rows (the Vim layer): the chunk-parallel
    forward with 8-step chunks of [chunk, N, 256 / N channels] tiles in one warp beats the step-by-step one, which
    reads each step's channels at a stride of L (BENCHMARKS.md, launch-plan figures)."""
    return 4 < d_state <= 16 and _many_rows(rows) and steps <= SEQUENTIAL_MAX_STEPS and not cl


def sequential(d_state: int, rows: int, steps: int, cl: bool) -> bool:
    """Step-by-step forward (the [BLOCK_D, N] state in registers, one token per step) or the chunk-parallel one."""
    default = (d_state > 4 and _many_rows(rows) and steps <= SEQUENTIAL_MAX_STEPS
               and not _short_dim_major(d_state, rows, steps, cl))
    return bool(TILE_OVERRIDES.get("sequential", default))


def _backward_tile(d_state: int, rows: int, cl: bool) -> tuple[int, int, int]:
    """(chunk steps, BLOCK_D channels, warps) of the backward, measured best on an H100 (BENCHMARKS.md, launch-plan
    figures). Dim-major N = 16 takes the widest of 8-step chunks of 8 channels, 16-step chunks of 4 and of 2 that still
    launches ``BACKWARD_MIN_PROGRAMS`` programs, any length (8-step chunks save twice the states of 16-step ones, 8
    bytes per row and step, and run faster). Where 16384 rows fill the GPU: channels-last N = 1 takes 4-step chunks of
    32 channels (coalesced reads of 64 bytes per step), channels-last N = 16 8-step chunks of 8 channels; with fewer
    rows 16-step chunks of 8 channels for N = 1. Channels-last N >= 64 (SiMBA) takes 8-step chunks of 4 channels in two
    warps (with [CHUNK, N, BLOCK_D] tiles, ``backward_plan``): 3.2x and 4.8x the backward of 16-step chunks of one
    channel on SiMBA-S's stage-1 and stage-3 maps, for twice the saved states (32 bytes per channel and step). Else one
    warp of 32 / N channels over 16-step chunks."""
    bn = next_power_of_2(d_state)
    many = _many_rows(rows)
    if bn == 1:
        return (4, 32, 1) if cl and many else (16, 8, 1)
    if bn == 16 and not cl:
        if many or rows >= 8 * BACKWARD_MIN_PROGRAMS:
            return 8, 8, 1
        return (16, 4, 1) if rows >= 4 * BACKWARD_MIN_PROGRAMS else (16, 2, 1)
    if bn == 16 and many:
        return 8, 8, 1
    if bn >= 64 and cl:
        return 8, 4, 2
    return 16, max(1, 32 // bn), 1


def _plans_as_gpu() -> bool:
    return not triton_interpret() or bool(TILE_OVERRIDES.get("gpu_plan", False))


def chunk_len(d_state: int, rows: int, steps: int, cl: bool) -> int:
    """Steps per chunk of the backward (power of two), also the spacing of the states a training forward saves for
    it, for ``rows`` = batch x num_directions x dim sequences of N = ``d_state`` over ``steps``, channels-last if
    ``cl``. Each thread scans a whole chunk in its registers, so chunks are short. Under TRITON_INTERPRET=1 (CPU
    tests) chunks are 8 steps: the interpreter scans element by element, and short chunks put chunk carries inside
    the small test sequences."""
    if "chunk" in TILE_OVERRIDES:
        return TILE_OVERRIDES["chunk"]
    if not _plans_as_gpu():
        return 8
    return _backward_tile(d_state, rows, cl)[0]


def forward_chunk_len(d_state: int, rows: int, steps: int, cl: bool) -> int:
    """Steps per chunk of the chunk-parallel forward, a multiple of ``chunk_len`` (a training forward saves a state
    every ``chunk_len`` steps inside its chunks): 32 where the loads in flight of longer chunks pay (small N, or
    fewer than 4096 rows to spread over the GPU), else 16 (measured best on an H100, BENCHMARKS.md)."""
    if "fwd_chunk" in TILE_OVERRIDES:
        return TILE_OVERRIDES["fwd_chunk"]
    saved = chunk_len(d_state, rows, steps, cl)
    if not _plans_as_gpu() or _short_dim_major(d_state, rows, steps, cl):
        return saved
    return max(saved, 32 if d_state <= 4 or rows < 4096 else 16)


def chunk_count(steps: int, d_state: int, rows: int, cl: bool) -> int:
    """Number of chunk states a training forward saves."""
    return cdiv(steps, chunk_len(d_state, rows, steps, cl))


def sequence_segments(programs: int, steps: int, chunk: int, a_nonpositive: bool) -> int:
    """Segments S >= 1 into which a chunk kernel's launch of ``programs`` programs splits each sequence of ``steps``
    steps in chunks of ``chunk`` (the length split of ``vssm.ops.triton.scan``: S programs per sequence, a third grid
    axis; each segment a whole number of chunks, so S <= the chunk count). On the GPU plan a launch of fewer than
    SPLIT_MAX_PROGRAMS programs over at least SPLIT_MIN_STEPS steps takes the smallest power of two S that brings it
    to SPLIT_TARGET_PROGRAMS, capped at steps / SPLIT_MIN_SEGMENT segments (the last segment holds the rest, maybe
    fewer steps); these thresholds are not yet measured on a GPU. Under the interpreter S = 1 unless
    ``TILE_OVERRIDES["segments"]`` gives it. Only under the promise A <= 0: the carry pass multiplies a whole
    segment's decays into one, which can overflow float32 for A > 0 (as ``_steps_in_thread``)."""
    if not a_nonpositive or programs == 0:
        return 1
    if "segments" in TILE_OVERRIDES:
        segments = TILE_OVERRIDES["segments"]
    elif _plans_as_gpu() and programs < SPLIT_MAX_PROGRAMS and steps >= SPLIT_MIN_STEPS:
        segments = min(next_power_of_2(cdiv(SPLIT_TARGET_PROGRAMS, programs)), steps // SPLIT_MIN_SEGMENT)
    else:
        return 1
    return max(1, min(segments, cdiv(steps, chunk)))


def _launch_config(kind: str, d_state: int, dim: int, rows: int, steps: int, chunk: int,
                   cl: bool) -> tuple[int, int]:
    """(BLOCK_D, num_warps), measured best on an H100 (BENCHMARKS.md, launch-plan figures). The step-by-step forward
    keeps a [BLOCK_D, N] state of 256 fp32 in one warp, and so does the chunk-parallel forward of short dim-major
    sequences (``_short_dim_major``). Otherwise the chunk-parallel forward takes two warps of 64 / N channels for N
    from 5 to 32 (one warp of 8 channels for channels-last N = 16 over many rows), one warp of one channel for N = 64,
    and for small N 8 steps per thread, the rest of the warp splitting the chunk (more programs, more loads in
    flight). The backward runs one warp, so its reductions over channels stay inside the
    warp, except channels-last N >= 64 (tiles in ``_backward_tile``)."""
    bn = next_power_of_2(d_state)
    if kind in TILE_OVERRIDES:
        block_d, warps = TILE_OVERRIDES[kind]
    elif kind == "bwd":
        block_d, warps = _backward_tile(d_state, rows, cl)[1:]
    elif sequential(d_state, rows, steps, cl) or _short_dim_major(d_state, rows, steps, cl):
        block_d, warps = max(1, 256 // bn), 1
    elif d_state > 32:
        block_d, warps = 1, 1
    elif bn == 16 and cl and _many_rows(rows):
        block_d, warps = 8, 1
    else:
        block_d, warps = (max(1, 64 // bn), 2) if d_state > 4 else (max(1, 256 // (chunk * bn)), 1)
    return max(1, min(next_power_of_2(dim), block_d)), warps


def _forward_maxnreg(d_state: int, rows: int, cl: bool) -> int | None:
    """ptxas register limit of the chunk-parallel forward: 128 for channels-last N = 1 over many rows (ptxas then
    allocates more registers and the scan runs faster; BENCHMARKS.md, launch-plan figures), else ptxas's choice."""
    if "fwd_maxnreg" in TILE_OVERRIDES:
        return TILE_OVERRIDES["fwd_maxnreg"]
    return 128 if next_power_of_2(d_state) == 1 and cl and _many_rows(rows) else None


def _steps_in_thread(block_d: int, block_n: int, warps: int, a_nonpositive: bool) -> bool:
    """Whether the chunk kernels run their recurrences step by step in registers (``STEPS_IN_THREAD``) rather than by
    ``tl.associative_scan``. Under the promise ``a_nonpositive``: where the lanes and warps of a program fit in the
    (channel, state) axes of its chunk tiles, so that each thread holds whole chunks; otherwise (small N) the chunk's
    steps spread over lanes and the kernels scan associatively. Both forms compute the recurrence on any tile, but the
    associative one multiplies a chunk's decays together, and with A > 0 (decays > 1) those products can overflow
    float32 where the step-by-step recurrence stays finite: without the promise the kernels always run step by step,
    the reference's order of operations (the tiles unchanged)."""
    if not a_nonpositive:
        return True
    return bool(TILE_OVERRIDES.get("steps_in_thread", block_d * block_n >= 32 * warps))


def _channels_on_lanes(block_d: int, block_n: int, warps: int, states_middle: bool) -> bool:
    """Whether every channel bit of the backward's chunk tiles is a lane bit of its one warp: the lanes go to the last
    axis first, channels with STATES_MIDDLE, else states. Then the reduce-scatter of dB and dC over channels
    (``_channel_sums_spread``) exchanges the fewest values; where channels also lie in registers, the full sum, which
    adds those inside each thread first, is cheaper (fewer SASS instructions per chunk; BENCHMARKS.md, launch-plan
    figures)."""
    return warps == 1 and (states_middle or block_d * block_n <= 32)


class ForwardPlan(NamedTuple):
    """Launch plan of a forward (``forward_plan``)."""

    step_by_step: bool  # the step-by-step kernel (one token per step) rather than the chunk-parallel one
    chunk: int  # steps per chunk of the chunk-parallel kernel
    n_chunks: int  # chunks covering the sequence
    save_every: int  # spacing of the states a training forward saves (the backward's chunk)
    block_d: int  # BLOCK_D channels per program
    num_warps: int
    block_n: int  # BLOCK_N, N padded to a power of two
    d_blocks: int  # channel blocks (programs along dim)
    options: dict  # launch options of the chunk-parallel kernel: tile layout, steps in thread, ptxas register cap


class BackwardPlan(NamedTuple):
    """Launch plan of a backward (``backward_plan``)."""

    chunk: int  # steps per chunk (also the spacing of the states the forward saved)
    n_chunks: int
    block_d: int
    num_warps: int
    block_n: int
    d_blocks: int
    states_middle: bool  # [CHUNK, N, BLOCK_D] chunk tiles rather than [CHUNK, BLOCK_D, N]
    steps_in_thread: bool  # recurrences step by step in registers rather than by ``tl.associative_scan``
    spread_sums: bool  # dB and dC reduce-scattered over the channel lanes (``_channels_on_lanes``)


def overrides_key() -> tuple:
    """``TILE_OVERRIDES`` as a hashable key of the plan caches."""
    return tuple(sorted(TILE_OVERRIDES.items())) if TILE_OVERRIDES else ()


@functools.lru_cache(maxsize=1024)
def forward_plan(d_state: int, dim: int, rows: int, steps: int, cl: bool, interpret: bool, overrides: tuple,
                 a_nonpositive: bool = False) -> ForwardPlan:
    """Launch plan of a forward for ``rows`` = batch x num_directions x dim sequences of N = ``d_state`` over
    ``steps``, channels-last if ``cl``; ``a_nonpositive``: the caller promises A <= 0, which allows the associative
    chunk recurrences (``_steps_in_thread``). Cached: the host path runs on every call; ``interpret`` and
    ``overrides`` only key the cache (the helpers read them)."""
    chunk = forward_chunk_len(d_state, rows, steps, cl)
    save_every = chunk_len(d_state, rows, steps, cl)
    step_by_step = sequential(d_state, rows, steps, cl)
    block_d, warps = _launch_config("fwd", d_state, dim, rows, steps, chunk, cl)
    options = {"STATES_MIDDLE": bool(TILE_OVERRIDES.get("fwd_states_middle",
                                                        _short_dim_major(d_state, rows, steps, cl))),
               "STEPS_IN_THREAD": _steps_in_thread(block_d, next_power_of_2(d_state), warps, a_nonpositive)}
    maxnreg = _forward_maxnreg(d_state, rows, cl)
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    return ForwardPlan(step_by_step=step_by_step, chunk=chunk, n_chunks=cdiv(steps, chunk), save_every=save_every,
                       block_d=block_d, num_warps=warps, block_n=next_power_of_2(d_state),
                       d_blocks=cdiv(dim, block_d), options=options)


@functools.lru_cache(maxsize=1024)
def backward_plan(d_state: int, dim: int, rows: int, steps: int, cl: bool, interpret: bool, overrides: tuple,
                  a_nonpositive: bool = False) -> BackwardPlan:
    """Launch plan of a backward; cached and promised (``a_nonpositive``) like ``forward_plan``. States middle:
    [CHUNK, N, BLOCK_D] chunk tiles (lanes over channels first) for dim-major rows that fill the GPU or have N = 16,
    and channels-last N >= 64, else [CHUNK, BLOCK_D, N]: on an H100 the first needs fewer shuffles in the reductions
    over states and in the layout conversions there, and costs time with the few-row tiles of other N and along other
    channels-last routes (BENCHMARKS.md, launch-plan figures)."""
    chunk = chunk_len(d_state, rows, steps, cl)
    block_d, warps = _launch_config("bwd", d_state, dim, rows, steps, chunk, cl)
    block_n = next_power_of_2(d_state)
    default_middle = (cl and block_n >= 64) or (not cl and (_many_rows(rows) or block_n == 16))
    states_middle = bool(TILE_OVERRIDES.get("states_middle", default_middle))
    return BackwardPlan(chunk=chunk, n_chunks=cdiv(steps, chunk), block_d=block_d, num_warps=warps, block_n=block_n,
                        d_blocks=cdiv(dim, block_d), states_middle=states_middle,
                        steps_in_thread=_steps_in_thread(block_d, block_n, warps, a_nonpositive),
                        spread_sums=_channels_on_lanes(block_d, block_n, warps, states_middle))
