"""Triton kernels of the canonical scan op (layout in ``vssm.ops.scan_core``), forward and backward, and their
launchers ``scan_fwd_triton`` / ``scan_bwd_triton``; the launch plans are in ``vssm.ops.triton.scan_plan``.

One program owns a [BLOCK_D channels x N states] slab of one (batch, direction) sequence and walks the sequence in
chunks of CHUNK steps. Chunk tiles are [CHUNK, BLOCK_D, N] with the step axis first, so each thread holds the whole
chunk of its (channel, state) pairs and the recurrence h -> exp(delta A) h + delta B u runs step by step in registers
(one FMA per state update; where small N leaves lanes over, the chunk spans lanes and, under the caller's promise A <= 0
('Overflow' below), ``tl.associative_scan`` composes the affine steps), and the carry passes between chunks. Tokens are
read through the direction's path (any permutation of spatial positions, -1 = zero token) and written back at their
spatial positions, summed over the directions with atomics when merging, so no per-direction copy of the feature map
exists. Short sequences of large N over many rows run a step-by-step forward (one token per step) along channels-last
routes or for N > 16 (``scan_plan.sequential``). A training forward saves the state at the start of every backward chunk
(its own chunks may be longer).

Backward walks the chunks last to first (with [CHUNK, N, BLOCK_D] tiles where that needs fewer shuffles, see
``scan_plan.backward_plan``): it recomputes the chunk's states from the chunk-start state saved by the forward, then
runs the adjoint recurrence q_t = C_t dy_t + exp(delta_{t+1} A) q_{t+1} backwards, step by step in registers (or as a
reverse associative scan whose segment summaries carry their first decay separately, where the chunk spans lanes).
a_t h_{t-1} is h_t - delta_t B_t u_t, so no division by a decay ever happens. dB/dC are reduced over the channel tile
(inside one warp; a reduce-scatter where the tile lies in one group and its channels on lanes,
``_channel_sums_spread``) and added with relaxed fp32 atomics into buffers whose states are contiguous; dA, dD and
d(delta_bias) are reduced over the chunks and stored once per program, as per-sequence partial sums. Programs of
different sequences run side by side, so concurrent atomics rarely meet on one address.

Length split: where few rows of long sequences would leave the GPU idle (``scan_plan.sequence_segments``), the chunk
kernels cut each sequence into S segments of whole chunks, run by different programs (a third grid axis), in three
passes. Forward: pass 1 (``_scan_fwd_ends_kernel``) scans segments 0 .. S - 2 from a zero state and writes each one's
end state and the sum of its step sizes, so that segment s maps the state h before it to exp(A dt_sum) h + end; the
carry pass (``_segment_carries``, on the host, S - 1 small steps) composes these maps into the state entering each
segment; pass 3 (``_scan_fwd_kernel`` with SPLIT) runs each segment from its carried state as the unsplit kernel runs
the sequence (outputs, saved states at their global indices, the last state from the last segment). The backward
mirrors it from the end: pass 1 (``_scan_bwd_carries_kernel``) runs the adjoint recurrence alone over segments
1 .. S - 1 from a zero carry, the carry pass composes the carries from the last state's adjoint back, and pass 3 runs
each segment's full backward from its carry, with one row of dA, dD and d(delta_bias) partial sums per segment. The
forward and the backward split independently (their chunks and program counts differ). A segment's decays multiply
into one exp(A dt_sum), so the split runs only under the promise A <= 0 ('Overflow' below); with S = 1 no extra pass
runs and the kernels compile as without the split.

Host side, the launchers check ``paths`` (``vssm.ops.common.check_paths``, once per tensor) so that no malformed
route reaches a kernel; an empty batch launches empty grids (no programs).

Overflow (positive A, whose decays exp(delta A) > 1 can overflow float32): ``tl.associative_scan`` multiplies a
chunk's decays together, and the products can overflow where the sequential recurrence stays finite (an inf product
times a zero state gives NaN where the reference has 0 or inf). So the launchers take the caller's promise that
A <= 0 (``a_nonpositive``; with step sizes >= 0 every decay is then <= 1), and only under it do the small-N chunk
kernels scan associatively (``scan_plan._steps_in_thread``). Without it every chunk kernel, forward and backward, runs
the recurrence step by step in registers on the same tiles, as the step-by-step forward does: the reference's order
of operations and its inf / NaN placement for any A. The layers that build A = -exp(A_log) pass the promise, so the
models run the associative kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..common import (axis_order, cdiv, check_kernel_dtypes, check_paths, dense_strides, empty_in_layout,
                      triton_interpret)
from .scan_plan import (TILE_OVERRIDES, backward_plan, channels_fastest, forward_plan, overrides_key,
                        sequence_segments)

__all__ = ["scan_fwd_triton", "scan_bwd_triton", "TILE_OVERRIDES"]

LOG2E = 1.4426950408889634


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    """Compose h -> a1 h + b1 (earlier) with h -> a2 h + b2 (later)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _adjoint_combine(pex1, alast1, v1, pex2, alast2, v2):
    """Segment summaries of q_t = c_t + a_{t+1} q_{t+1} scanned from the end (segment 1 is later in time).

    (pex, alast, v): product of the decays except the segment's earliest, that earliest decay, and the segment's
    adjoint at its earliest step with nothing flowing in from later.
    """
    return pex1 * alast1 * pex2, alast2, v2 + pex2 * alast1 * v1


@triton.jit
def _at_step(x, i: tl.constexpr):
    """Step i of a [CHUNK, a, b] tile whose step axis each thread holds: [a, b], a register selection (summing -0.0,
    the additive identity, with constant masks compiles to nothing)."""
    steps = tl.arange(0, x.shape[0])
    return tl.sum(tl.where((steps == i)[:, None, None], x, -0.0), axis=0)


@triton.jit
def _with_step(x, i: tl.constexpr, value):
    """The [CHUNK, a, b] tile x with step i replaced by the [a, b] tile ``value`` (registers only, as ``_at_step``)."""
    steps = tl.arange(0, x.shape[0])
    return tl.where((steps == i)[:, None, None], value[None, :, :], x)


@triton.jit
def _states_in_chunk(decay, inp, h0):
    """States h_t = decay_t h_{t-1} + inp_t of a chunk from the state h0 before it: [CHUNK, a, b] tiles whose step
    axis each thread holds, so the recurrence runs step by step in registers (one FMA per state update)."""
    # h0 enters as part of step 0's input, so the chain runs in the chunk tiles' layout (a separately loaded h0
    # would otherwise anchor it in the load's layout, with a shared-memory exchange at every step)
    first = (tl.arange(0, decay.shape[0]) == 0)[:, None, None]
    h = _at_step(tl.where(first, decay * h0[None, :, :] + inp, inp), 0)
    hs = _with_step(tl.zeros_like(decay), 0, h)
    for i in tl.static_range(1, decay.shape[0]):
        h = _at_step(decay, i) * h + _at_step(inp, i)
        hs = _with_step(hs, i, h)
    return hs


@triton.jit
def _adjoints_in_chunk(decay, cq, carry):
    """Adjoint states q_t = cq_t + decay_{t+1} q_{t+1} of a chunk, walked back from its last step, where the adjoint
    flowing in from the next chunk (decay q at that chunk's first step) is ``carry``. Returns q ([CHUNK, a, b]) and
    decay_0 q_0, the carry into the previous chunk."""
    last: tl.constexpr = decay.shape[0] - 1
    # the carry enters as part of the last step's input, for the reason given in ``_states_in_chunk``
    qt = _at_step(tl.where((tl.arange(0, decay.shape[0]) == last)[:, None, None], cq + carry[None, :, :], cq), last)
    q = _with_step(tl.zeros_like(cq), last, qt)
    for i in tl.static_range(1, decay.shape[0]):
        qt = _at_step(cq, last - i) + _at_step(decay, last - i + 1) * qt
        q = _with_step(q, last - i, qt)
    return q, _at_step(decay, 0) * qt


@triton.jit
def _spread_round(x, first, lead, ch, BIT: tl.constexpr, D_AXIS: tl.constexpr):
    """One round of ``_channel_sums_spread``, across channel bit BIT (nothing when the tile has no such bit)."""
    if BIT < x.shape[D_AXIS]:
        take_hi = (ch & BIT) != 0
        partner = ch ^ BIT
        if D_AXIS == 1:
            take_hi3 = take_hi[None, :, None]
            partner3 = partner[None, :, None]
        else:
            take_hi3 = take_hi[None, None, :]
            partner3 = partner[None, None, :]
        HALF: tl.constexpr = x.shape[0] // 2
        if HALF > 0:
            pair = tl.reshape(x, [2, HALF, x.shape[1], x.shape[2]])
            lo = tl.sum(tl.where((tl.arange(0, 2) == 0)[:, None, None, None], pair, -0.0), axis=0)
            hi = tl.sum(tl.where((tl.arange(0, 2) == 1)[:, None, None, None], pair, -0.0), axis=0)
            send = tl.where(take_hi3, lo, hi)
            x = tl.where(take_hi3, hi, lo) + tl.gather(send, partner3 + tl.zeros(send.shape, tl.int32), D_AXIS)
            first = first + tl.where(take_hi, HALF, 0)
        else:
            x = x + tl.gather(x, partner3 + tl.zeros(x.shape, tl.int32), D_AXIS)
            lead = lead & ~take_hi
    return x, first, lead


@triton.jit
def _channel_sums_spread(x, ch, D_AXIS: tl.constexpr):
    """Sum a chunk tile x ([CHUNK, ., .], channels ``ch`` = arange(BLOCK_D) along D_AXIS, the lanes) over its channels
    as a reduce-scatter. Each butterfly round across a channel bit sends one half of the steps a lane holds to its
    partner and keeps the other, so ``log2(BLOCK_D)`` rounds exchange CHUNK / 2 + CHUNK / 4 + ... values per lane
    rather than CHUNK per round. Returns the sums [max(1, CHUNK / BLOCK_D), ., .], the step of their first row per
    channel slot (``first``, [BLOCK_D]): slot d holds steps first[d] + 0, 1, ..., and which slots lead (``lead``,
    [BLOCK_D]): where CHUNK < BLOCK_D the steps run out, the remaining rounds sum in full and BLOCK_D / CHUNK slots
    hold each step's sums; only the leading one of them may add it anywhere. BLOCK_D <= 32."""
    first = ch * 0
    lead = ch >= 0
    x, first, lead = _spread_round(x, first, lead, ch, 1, D_AXIS)
    x, first, lead = _spread_round(x, first, lead, ch, 2, D_AXIS)
    x, first, lead = _spread_round(x, first, lead, ch, 4, D_AXIS)
    x, first, lead = _spread_round(x, first, lead, ch, 8, D_AXIS)
    x, first, lead = _spread_round(x, first, lead, ch, 16, D_AXIS)
    return x, first, lead


@triton.jit
def _softplus(x):
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def _ch_st(ch, st, STATES_MIDDLE: tl.constexpr):
    """Channel and state vectors as broadcastable axes of a [BLOCK_N, BLOCK_D] tile (STATES_MIDDLE) or a
    [BLOCK_D, BLOCK_N] one."""
    if STATES_MIDDLE:
        ch2 = ch[None, :]
        st2 = st[:, None]
    else:
        ch2 = ch[:, None]
        st2 = st[None, :]
    return ch2, st2


@triton.jit
def _ch_st3(ch, st, STATES_MIDDLE: tl.constexpr):
    """Channel and state vectors as broadcastable axes of a [CHUNK, BLOCK_N, BLOCK_D] tile (STATES_MIDDLE) or a
    [CHUNK, BLOCK_D, BLOCK_N] one."""
    if STATES_MIDDLE:
        ch3 = ch[None, None, :]
        st3 = st[None, :, None]
    else:
        ch3 = ch[None, :, None]
        st3 = st[None, None, :]
    return ch3, st3


@triton.jit
def _over_states(x, STATES_MIDDLE: tl.constexpr):
    """A [CHUNK, BLOCK_D] tile broadcast along the states axis of the 3-D chunk tiles."""
    if STATES_MIDDLE:
        x3 = x[:, None, :]
    else:
        x3 = x[:, :, None]
    return x3


@triton.jit
def _over_channels(x, STATES_MIDDLE: tl.constexpr):
    """A [CHUNK, BLOCK_N] tile broadcast along the channel axis of the 3-D chunk tiles."""
    if STATES_MIDDLE:
        x3 = x[:, :, None]
    else:
        x3 = x[:, None, :]
    return x3


@triton.jit
def _load_chunk(u_ptr, dt_ptr, B_ptr, C_ptr, path_ptr, bias, g_tile, t, offs_d, offs_n, mask_d, mask_n, pid_k, L, Lp,
                d_per_group, su_d, su_l, sdt_d, sdt_l, sB_g, sB_n, sB_l, sC_g, sC_n, sC_l,
                HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_PATH: tl.constexpr,
                PARAMS_AT_STEP: tl.constexpr, TILE_ONE_GROUP: tl.constexpr, STATES_MIDDLE: tl.constexpr):
    """Load one chunk: u, raw delta, delta [CHUNK, BLOCK_D] and B, C as [CHUNK, BLOCK_D or 1, BLOCK_N] (fp32), or
    as [CHUNK, BLOCK_N, BLOCK_D or 1] if STATES_MIDDLE; steps outside [0, Lp) load nothing."""
    pos, valid, pidx, pvalid, mask_t = _step_index(path_ptr + pid_k * Lp, t, Lp, t, HAS_PATH, PARAMS_AT_STEP)
    m_u = valid[:, None] & mask_d[None, :]
    m_p = pvalid[:, None] & mask_d[None, :]
    u = tl.load(u_ptr + pos[:, None] * su_l + offs_d[None, :] * su_d, mask=m_u, other=0.0).to(tl.float32)
    raw = tl.load(dt_ptr + pidx[:, None] * sdt_l + offs_d[None, :] * sdt_d, mask=m_p, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias[None, :]
    if SOFTPLUS:
        dt = _softplus(raw)
    else:
        dt = raw
    dt = tl.where(mask_t[:, None], dt, 0.0)  # steps past the end are the identity (decay 1, input 0)
    m_bc = pvalid[:, None] & mask_n[None, :]
    if TILE_ONE_GROUP:
        g = g_tile
        Bt = tl.load(B_ptr + g * sB_g + pidx[:, None] * sB_l + offs_n[None, :] * sB_n, mask=m_bc, other=0.0)
        Ct = tl.load(C_ptr + g * sC_g + pidx[:, None] * sC_l + offs_n[None, :] * sC_n, mask=m_bc, other=0.0)
        Bt = _over_channels(Bt.to(tl.float32), STATES_MIDDLE)
        Ct = _over_channels(Ct.to(tl.float32), STATES_MIDDLE)
    else:
        g, n3 = _ch_st3(offs_d // d_per_group, offs_n, STATES_MIDDLE)
        md3 = _ch_st3(mask_d, offs_n, STATES_MIDDLE)[0]
        m3 = _over_channels(m_bc, STATES_MIDDLE) & md3
        Bt = tl.load(B_ptr + g * sB_g + pidx[:, None, None] * sB_l + n3 * sB_n, mask=m3, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + g * sC_g + pidx[:, None, None] * sC_l + n3 * sC_n, mask=m3, other=0.0).to(tl.float32)
    return u, raw, dt, Bt, Ct, pos, valid, pidx, pvalid, mask_t


@triton.jit
def _scan_fwd_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, path_ptr, y_ptr, last_ptr, states_ptr,
        K, dim, L, Lp, N, d_per_group, n_chunks, n_states, starts_ptr, seg_chunks,
        su_b, su_k, su_d, su_l, sdt_b, sdt_k, sdt_d, sdt_l,
        sB_b, sB_k, sB_g, sB_n, sB_l, sC_b, sC_k, sC_g, sC_n, sC_l,
        sz_b, sz_d, sz_l, sy_b, sy_k, sy_d, sy_l,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        HAS_PATH: tl.constexpr, PARAMS_AT_STEP: tl.constexpr, MERGE_ATOMIC: tl.constexpr,
        SAVE_STATES: tl.constexpr, SAVE_EVERY: tl.constexpr, TILE_ONE_GROUP: tl.constexpr, WRITE_Y: tl.constexpr,
        STATES_MIDDLE: tl.constexpr, STEPS_IN_THREAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
        CHUNK: tl.constexpr, SPLIT: tl.constexpr):
    """Forward by chunks of CHUNK steps; a training forward saves the state before every SAVE_EVERY steps (CHUNK is
    a multiple of SAVE_EVERY) into ``states`` (batch, K, dim, n_states, N). Tile layouts as in the backward. Without
    WRITE_Y only the states (and the last state) are written: no output, so C, D and z are never read. SPLIT: pass 3
    of the length split, program (., ., s) runs segment s (chunks s * seg_chunks onward) from the state carried into
    it, ``starts`` (S, batch x K x dim, N), and only the last segment writes the last state."""
    S_AXIS: tl.constexpr = 1 if STATES_MIDDLE else 2  # the states axis of the 3-D tiles
    pid_d = tl.program_id(0)
    pid_bk = tl.program_id(1)
    pid_b = pid_bk // K
    pid_k = pid_bk % K
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < N
    kd = pid_k * dim + offs_d
    kd2, n2 = _ch_st(kd, offs_n, STATES_MIDDLE)  # [BLOCK_N, BLOCK_D] or [BLOCK_D, BLOCK_N] state tiles
    md2, mn2 = _ch_st(mask_d, mask_n, STATES_MIDDLE)
    mask_dn = md2 & mn2
    A2 = tl.load(A_ptr + kd2 * N + n2, mask=mask_dn, other=0.0).to(tl.float32) * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + kd, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + kd, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    u_base = u_ptr + pid_b * su_b + pid_k * su_k
    dt_base = dt_ptr + pid_b * sdt_b + pid_k * sdt_k
    B_base = B_ptr + pid_b * sB_b + pid_k * sB_k
    C_base = C_ptr + pid_b * sC_b + pid_k * sC_k
    seq = _ch_st((pid_b * K + pid_k) * dim + offs_d, offs_n, STATES_MIDDLE)[0]
    if SPLIT:
        pid_s = tl.program_id(2)
        c_first = pid_s * seg_chunks
        c_end = tl.minimum(c_first + seg_chunks, n_chunks)
        t_first = c_first * CHUNK + tl.arange(0, CHUNK)
        h = tl.load(starts_ptr + (pid_s * tl.num_programs(1) * dim + seq) * N + n2, mask=mask_dn, other=0.0)
    else:
        c_first = 0
        c_end = n_chunks
        t_first = tl.arange(0, CHUNK)
        h = tl.zeros_like(A2)
    state_base = states_ptr + seq * (n_states * N) + n2
    SAVES: tl.constexpr = CHUNK // SAVE_EVERY
    g_tile = pid_d * BLOCK_D // d_per_group
    u, raw, dt, Bt, Ct, pos, valid, pidx, pvalid, mask_t = _load_chunk(
        u_base, dt_base, B_base, C_base, path_ptr, bias, g_tile, t_first, offs_d, offs_n, mask_d, mask_n,
        pid_k, L, Lp, d_per_group, su_d, su_l, sdt_d, sdt_l, sB_g, sB_n, sB_l, sC_g, sC_n, sC_l,
        HAS_BIAS, SOFTPLUS, HAS_PATH, PARAMS_AT_STEP, TILE_ONE_GROUP, STATES_MIDDLE)
    for c in range(c_first, c_end):
        # issue the next chunk's loads first (all masked off after the last chunk): their latency hides behind this
        # chunk's scan and stores
        u_nx, raw_nx, dt_nx, B_nx, C_nx, pos_nx, valid_nx, pidx_nx, pvalid_nx, mask_t_nx = _load_chunk(
            u_base, dt_base, B_base, C_base, path_ptr, bias, g_tile, (c + 1) * CHUNK + tl.arange(0, CHUNK), offs_d,
            offs_n, mask_d, mask_n, pid_k, L, Lp, d_per_group, su_d, su_l, sdt_d, sdt_l, sB_g, sB_n, sB_l, sC_g, sC_n,
            sC_l, HAS_BIAS, SOFTPLUS, HAS_PATH, PARAMS_AT_STEP, TILE_ONE_GROUP, STATES_MIDDLE)
        if SAVE_STATES:
            tl.store(state_base + c * SAVES * N, h, mask=mask_dn)
        # 3-D tiles with the step axis first: each thread holds whole chunks of its (d, n) pairs, so the scan runs
        # sequentially in registers
        decay = tl.exp2(_over_states(dt, STATES_MIDDLE) * A2[None, :, :])
        inp = _over_states(dt * u, STATES_MIDDLE) * Bt
        if STEPS_IN_THREAD:
            hs = _states_in_chunk(decay, inp, h)
        else:  # the chunk spans lanes: Triton's scan combines the lanes' partial chunks
            acc_a, acc_b = tl.associative_scan((decay, inp), 0, _affine_combine)
            hs = acc_a * h[None, :, :] + acc_b
        h = _at_step(hs, CHUNK - 1)
        if SAVE_STATES:
            for s in tl.static_range(1, SAVES):  # the states inside the chunk (each thread holds its whole chunk)
                idx = _ch_st(offs_d * 0, c * SAVES + s + offs_n * 0, STATES_MIDDLE)[1]  # the state index
                tl.store(state_base + idx * N, _at_step(hs, s * SAVE_EVERY - 1), mask=mask_dn & (idx < n_states))
        if WRITE_Y:
            y = tl.sum(hs * Ct, axis=S_AXIS)
            if HAS_D:
                y += u * Dv[None, :]
            m_out = valid[:, None] & mask_d[None, :]
            if HAS_Z:
                zt = tl.load(z_ptr + pid_b * sz_b + pos[:, None] * sz_l + offs_d[None, :] * sz_d, mask=m_out,
                             other=0.0).to(tl.float32)
                y = y * zt * tl.sigmoid(zt)
            if MERGE_ATOMIC:
                tl.atomic_add(y_ptr + pid_b * sy_b + pos[:, None] * sy_l + offs_d[None, :] * sy_d, y, mask=m_out,
                              sem="relaxed")
            else:
                tl.store(y_ptr + pid_b * sy_b + pid_k * sy_k + pos[:, None] * sy_l + offs_d[None, :] * sy_d,
                         y.to(y_ptr.dtype.element_ty), mask=m_out)
        u, raw, dt, Bt, Ct, pos, valid, pidx, pvalid, mask_t = (
            u_nx, raw_nx, dt_nx, B_nx, C_nx, pos_nx, valid_nx, pidx_nx, pvalid_nx, mask_t_nx)
    if SPLIT:  # the last segment ends the sequence
        tl.store(last_ptr + seq * N + n2, h, mask=mask_dn & (pid_s == tl.num_programs(2) - 1))
    else:
        tl.store(last_ptr + seq * N + n2, h, mask=mask_dn)


@triton.jit
def _segment_tile(pid_d, pid_bk, K, dim, N, A_ptr, bias_ptr, HAS_BIAS: tl.constexpr, STATES_MIDDLE: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """The tile of a length split's pass-1 program: (batch, direction), channel and state offsets and masks, the
    state index n2 of its [BLOCK_N, BLOCK_D] or [BLOCK_D, BLOCK_N] state tiles with their mask, A * log2(e) on that
    tile and delta's bias (zeros without one)."""
    pid_b = pid_bk // K
    pid_k = pid_bk % K
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < N
    kd = pid_k * dim + offs_d
    kd2, n2 = _ch_st(kd, offs_n, STATES_MIDDLE)
    md2, mn2 = _ch_st(mask_d, mask_n, STATES_MIDDLE)
    mask_dn = md2 & mn2
    A2 = tl.load(A_ptr + kd2 * N + n2, mask=mask_dn, other=0.0).to(tl.float32) * 1.4426950408889634
    if HAS_BIAS:
        bias = tl.load(bias_ptr + kd, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    return pid_b, pid_k, offs_d, offs_n, mask_d, mask_n, n2, mask_dn, A2, bias


@triton.jit
def _scan_fwd_ends_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, bias_ptr, path_ptr, ends_ptr, dt_sums_ptr,
        K, dim, L, Lp, N, d_per_group, n_chunks, seg_chunks,
        su_b, su_k, su_d, su_l, sdt_b, sdt_k, sdt_d, sdt_l,
        sB_b, sB_k, sB_g, sB_n, sB_l, sC_b, sC_k, sC_g, sC_n, sC_l,
        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_PATH: tl.constexpr, PARAMS_AT_STEP: tl.constexpr,
        TILE_ONE_GROUP: tl.constexpr, STATES_MIDDLE: tl.constexpr, STEPS_IN_THREAD: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr):
    """Pass 1 of a forward split into segments of seg_chunks chunks: program (channel block, sequence, s) scans
    segment s from a zero state, in the tiles of ``_scan_fwd_kernel``, and writes its end state to ``ends`` (S - 1,
    batch x K x dim, N) and the sum of its step sizes (delta as the scan uses it, zero past the end) to ``dt_sums``
    (S - 1, batch x K x dim): the segment maps the state h before it to exp(A dt_sum) h + end. Segments 0 .. S - 2
    (the last one's end carries nowhere)."""
    pid_d = tl.program_id(0)
    pid_bk = tl.program_id(1)
    pid_s = tl.program_id(2)
    pid_b, pid_k, offs_d, offs_n, mask_d, mask_n, n2, mask_dn, A2, bias = _segment_tile(
        pid_d, pid_bk, K, dim, N, A_ptr, bias_ptr, HAS_BIAS, STATES_MIDDLE, BLOCK_D, BLOCK_N)
    u_base = u_ptr + pid_b * su_b + pid_k * su_k
    dt_base = dt_ptr + pid_b * sdt_b + pid_k * sdt_k
    B_base = B_ptr + pid_b * sB_b + pid_k * sB_k
    C_base = C_ptr + pid_b * sC_b + pid_k * sC_k
    g_tile = pid_d * BLOCK_D // d_per_group
    c_first = pid_s * seg_chunks
    h = tl.zeros_like(A2)
    dt_sum = tl.zeros([BLOCK_D], dtype=tl.float32)
    u, raw, dt, Bt, Ct, pos, valid, pidx, pvalid, mask_t = _load_chunk(
        u_base, dt_base, B_base, C_base, path_ptr, bias, g_tile, c_first * CHUNK + tl.arange(0, CHUNK), offs_d,
        offs_n, mask_d, mask_n, pid_k, L, Lp, d_per_group, su_d, su_l, sdt_d, sdt_l, sB_g, sB_n, sB_l, sC_g, sC_n, sC_l,
        HAS_BIAS, SOFTPLUS, HAS_PATH, PARAMS_AT_STEP, TILE_ONE_GROUP, STATES_MIDDLE)
    for c in range(c_first, c_first + seg_chunks):  # segments 0 .. S - 2 are whole
        u_nx, raw_nx, dt_nx, B_nx, C_nx, pos_nx, valid_nx, pidx_nx, pvalid_nx, mask_t_nx = _load_chunk(
            u_base, dt_base, B_base, C_base, path_ptr, bias, g_tile, (c + 1) * CHUNK + tl.arange(0, CHUNK), offs_d,
            offs_n, mask_d, mask_n, pid_k, L, Lp, d_per_group, su_d, su_l, sdt_d, sdt_l, sB_g, sB_n, sB_l, sC_g, sC_n,
            sC_l, HAS_BIAS, SOFTPLUS, HAS_PATH, PARAMS_AT_STEP, TILE_ONE_GROUP, STATES_MIDDLE)
        decay = tl.exp2(_over_states(dt, STATES_MIDDLE) * A2[None, :, :])
        inp = _over_states(dt * u, STATES_MIDDLE) * Bt
        if STEPS_IN_THREAD:
            h = _at_step(_states_in_chunk(decay, inp, h), CHUNK - 1)
        else:
            acc_a, acc_b = tl.associative_scan((decay, inp), 0, _affine_combine)
            h = _at_step(acc_a * h[None, :, :] + acc_b, CHUNK - 1)
        dt_sum += tl.sum(dt, axis=0)
        u, raw, dt, Bt, Ct, pos, valid, pidx, pvalid, mask_t = (
            u_nx, raw_nx, dt_nx, B_nx, C_nx, pos_nx, valid_nx, pidx_nx, pvalid_nx, mask_t_nx)
    rows = tl.num_programs(1) * dim
    seq = (pid_b * K + pid_k) * dim + offs_d
    tl.store(ends_ptr + (pid_s * rows + _ch_st(seq, offs_n, STATES_MIDDLE)[0]) * N + n2, h, mask=mask_dn)
    tl.store(dt_sums_ptr + pid_s * rows + seq, dt_sum, mask=mask_d)


@triton.jit
def _step_index(path_row, t, Lp, like, HAS_PATH: tl.constexpr, PARAMS_AT_STEP: tl.constexpr):
    """Token position and parameter index of step(s) t, with their masks (false outside [0, Lp) or at a padding step)
    and the in-range mask, each broadcast to the shape of ``like`` (an arange)."""
    step = t + like * 0
    in_range = (step >= 0) & (step < Lp)
    if HAS_PATH:
        pos = tl.load(path_row + step, mask=in_range, other=-1)
        valid = in_range & (pos >= 0)
        pos = tl.where(valid, pos, 0)
    else:
        pos = step
        valid = in_range
    if PARAMS_AT_STEP:
        pidx = step
        pvalid = in_range
    else:
        pidx = pos
        pvalid = valid
    return pos, valid, pidx, pvalid, in_range


@triton.jit
def _load_step(u_base, dt_base, B_base, C_base, path_row, t, Lp, offs_d, offs_n, mask_d, mask_n, su_l, sdt_l, sB_l,
               sC_l, HAS_PATH: tl.constexpr, PARAMS_AT_STEP: tl.constexpr, TILE_ONE_GROUP: tl.constexpr):
    """Raw u, delta [BLOCK_D] and B, C of step t (zeros for t >= Lp or a padding step), the token position per
    channel and its mask. B, C are [1, BLOCK_N] rows broadcast over the channels when the tile lies in one group
    (B_base, C_base [BLOCK_N] pointers), else [BLOCK_D, BLOCK_N] (pointer tiles); the row form needs fewer registers
    (BENCHMARKS.md, launch-plan figures)."""
    pos, m_u, pidx, m_p, _ = _step_index(path_row, t, Lp, offs_d, HAS_PATH, PARAMS_AT_STEP)
    u = tl.load(u_base + pos * su_l, mask=mask_d & m_u, other=0.0)
    dt = tl.load(dt_base + pidx * sdt_l, mask=mask_d & m_p, other=0.0)
    if TILE_ONE_GROUP:
        _, _, pidx_n, m_n, _ = _step_index(path_row, t, Lp, offs_n, HAS_PATH, PARAMS_AT_STEP)
        m_bc = mask_n & m_n
        Bt = tl.load(B_base + pidx_n * sB_l, mask=m_bc, other=0.0)[None, :]
        Ct = tl.load(C_base + pidx_n * sC_l, mask=m_bc, other=0.0)[None, :]
    else:
        m_bc = (mask_d & m_p)[:, None] & mask_n[None, :]
        Bt = tl.load(B_base + pidx[:, None] * sB_l, mask=m_bc, other=0.0)
        Ct = tl.load(C_base + pidx[:, None] * sC_l, mask=m_bc, other=0.0)
    return u, dt, Bt, Ct, pos, mask_d & m_u


@triton.jit
def _scan_fwd_seq_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, path_ptr, y_ptr, last_ptr, states_ptr,
        K, dim, L, Lp, N, d_per_group, n_states,
        su_b, su_k, su_d, su_l, sdt_b, sdt_k, sdt_d, sdt_l,
        sB_b, sB_k, sB_g, sB_n, sB_l, sC_b, sC_k, sC_g, sC_n, sC_l,
        sz_b, sz_d, sz_l, sy_b, sy_k, sy_d, sy_l,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        HAS_PATH: tl.constexpr, PARAMS_AT_STEP: tl.constexpr, MERGE_ATOMIC: tl.constexpr,
        SAVE_STATES: tl.constexpr, SAVE_EVERY: tl.constexpr, TILE_ONE_GROUP: tl.constexpr, WRITE_Y: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Forward, one step at a time: the [BLOCK_D, N] state stays in registers, each step loads one token (WRITE_Y as
    in ``_scan_fwd_kernel``)."""
    pid_d = tl.program_id(0)
    pid_bk = tl.program_id(1)
    pid_b = pid_bk // K
    pid_k = pid_bk % K
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    kd = pid_k * dim + offs_d
    A2 = tl.load(A_ptr + kd[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32) * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + kd, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + kd, mask=mask_d, other=0.0).to(tl.float32)
    if TILE_ONE_GROUP:
        g = pid_d * BLOCK_D // d_per_group
        B_base = B_ptr + pid_b * sB_b + pid_k * sB_k + g * sB_g + offs_n * sB_n
        C_base = C_ptr + pid_b * sC_b + pid_k * sC_k + g * sC_g + offs_n * sC_n
    else:
        g = (offs_d // d_per_group)[:, None]
        B_base = B_ptr + pid_b * sB_b + pid_k * sB_k + g * sB_g + offs_n[None, :] * sB_n
        C_base = C_ptr + pid_b * sC_b + pid_k * sC_k + g * sC_g + offs_n[None, :] * sC_n
    u_base = u_ptr + pid_b * su_b + pid_k * su_k + offs_d * su_d
    dt_base = dt_ptr + pid_b * sdt_b + pid_k * sdt_k + offs_d * sdt_d
    y_base = y_ptr + pid_b * sy_b + pid_k * sy_k + offs_d * sy_d
    z_base = z_ptr + pid_b * sz_b + offs_d * sz_d
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    state_base = states_ptr + ((pid_b * K + pid_k) * dim + offs_d[:, None]) * (n_states * N) + offs_n[None, :]
    u, dt, Bt, Ct, pos, m_u = _load_step(u_base, dt_base, B_base, C_base, path_ptr + pid_k * Lp, 0, Lp, offs_d, offs_n,
                                         mask_d, mask_n, su_l, sdt_l, sB_l, sC_l, HAS_PATH, PARAMS_AT_STEP,
                                         TILE_ONE_GROUP)
    for t in range(0, Lp):
        # the next step's loads go out before this step's arithmetic (masked off past the end)
        u_nx, dt_nx, B_nx, C_nx, pos_nx, m_u_nx = _load_step(
            u_base, dt_base, B_base, C_base, path_ptr + pid_k * Lp, t + 1, Lp, offs_d, offs_n, mask_d, mask_n, su_l,
            sdt_l, sB_l, sC_l, HAS_PATH, PARAMS_AT_STEP, TILE_ONE_GROUP)
        if SAVE_STATES:
            if t % SAVE_EVERY == 0:
                tl.store(state_base + (t // SAVE_EVERY) * N, h, mask=mask_dn)
        uf = u.to(tl.float32)
        dtf = dt.to(tl.float32)
        if HAS_BIAS:
            dtf = dtf + bias
        if SOFTPLUS:
            dtf = _softplus(dtf)
        h = tl.exp2(dtf[:, None] * A2) * h + (dtf * uf)[:, None] * Bt.to(tl.float32)
        if WRITE_Y:
            y = tl.sum(h * Ct.to(tl.float32), axis=1)
            if HAS_D:
                y += Dv * uf
            if HAS_Z:
                zt = tl.load(z_base + pos * sz_l, mask=m_u, other=0.0).to(tl.float32)
                y = y * zt * tl.sigmoid(zt)
            if MERGE_ATOMIC:
                tl.atomic_add(y_base + pos * sy_l, y, mask=m_u, sem="relaxed")
            else:
                tl.store(y_base + pos * sy_l, y.to(y_ptr.dtype.element_ty), mask=m_u)
        u, dt, Bt, Ct, pos, m_u = u_nx, dt_nx, B_nx, C_nx, pos_nx, m_u_nx
    tl.store(last_ptr + ((pid_b * K + pid_k) * dim + offs_d[:, None]) * N + offs_n[None, :], h, mask=mask_dn)


@triton.jit
def _scan_bwd_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, path_ptr, states_ptr, dy_ptr, dlast_ptr,
        du_ptr, ddt_ptr, dB_ptr, dC_ptr, dz_ptr, partial_ptr,
        K, dim, L, Lp, N, d_per_group, n_chunks, partial_row, seg_chunks,
        su_b, su_k, su_d, su_l, sdt_b, sdt_k, sdt_d, sdt_l,
        sB_b, sB_k, sB_g, sB_n, sB_l, sC_b, sC_k, sC_g, sC_n, sC_l,
        sz_b, sz_d, sz_l, sdz_b, sdz_k, sdz_d, sdz_l, sdy_b, sdy_k, sdy_d, sdy_l, sdB_b, sdB_k, sdB_g, sdB_n, sdB_l,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        HAS_PATH: tl.constexpr, PARAMS_AT_STEP: tl.constexpr,
        U_ATOMIC: tl.constexpr, DT_ATOMIC: tl.constexpr, Z_ATOMIC: tl.constexpr, TILE_ONE_GROUP: tl.constexpr,
        STATES_MIDDLE: tl.constexpr, STEPS_IN_THREAD: tl.constexpr, SPREAD_SUMS: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, SPLIT: tl.constexpr):
    """Gradients; du/ddt are written with the strides of u/delta, dz with its own (sdz_k = 0: summed over the
    directions), all fp32 buffers where atomic. dB and dC are fp32 buffers of equal strides (sdB_*) with N
    contiguous, so that the atomics of a warp cover whole rows of states. dA, dD and d(delta_bias) go to ``partial``
    as per-batch-row partial sums: rows of ``partial_row`` floats holding dA (K, dim, N), then dD (K, dim), then
    d(delta_bias) (K, dim). Chunk tiles are [CHUNK, BLOCK_N, BLOCK_D] if STATES_MIDDLE, else [CHUNK, BLOCK_D,
    BLOCK_N]: Triton spreads the last axis over the lanes first, and which layout needs fewer shuffles for the
    reductions over states and channels depends on the tile (``scan_plan.backward_plan``). SPREAD_SUMS: dB and dC of
    a tile in one group are reduce-scattered over the channel lanes (``scan_plan._channels_on_lanes``), else summed in
    full. SPLIT: pass 3 of the length split, program (., ., s) runs segment s (chunks s * seg_chunks onward) from the
    adjoint carried into its last step, ``dlast`` then being (S, batch x K x dim, N), and writes its partial sums to
    row b x S + s."""
    S_AXIS: tl.constexpr = 1 if STATES_MIDDLE else 2  # the states axis of the 3-D tiles
    D_AXIS: tl.constexpr = 2 if STATES_MIDDLE else 1  # the channel axis
    pid_bk = tl.program_id(0)  # sequences vary fastest: programs running together hit different dB/dC rows
    pid_d = tl.program_id(1)
    pid_b = pid_bk // K
    pid_k = pid_bk % K
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < N
    kd = pid_k * dim + offs_d
    kd2, n2 = _ch_st(kd, offs_n, STATES_MIDDLE)  # [BLOCK_N, BLOCK_D] or [BLOCK_D, BLOCK_N] state tiles
    md2, mn2 = _ch_st(mask_d, mask_n, STATES_MIDDLE)
    mask_dn = md2 & mn2
    A = tl.load(A_ptr + kd2 * N + n2, mask=mask_dn, other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + kd, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + kd, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    u_base = u_ptr + pid_b * su_b + pid_k * su_k
    dt_base = dt_ptr + pid_b * sdt_b + pid_k * sdt_k
    B_base = B_ptr + pid_b * sB_b + pid_k * sB_k
    C_base = C_ptr + pid_b * sC_b + pid_k * sC_k
    du_base = du_ptr + pid_b * su_b + pid_k * su_k
    ddt_base = ddt_ptr + pid_b * sdt_b + pid_k * sdt_k
    dB_base = dB_ptr + pid_b * sdB_b + pid_k * sdB_k
    dC_base = dC_ptr + pid_b * sdB_b + pid_k * sdB_k
    seq = _ch_st((pid_b * K + pid_k) * dim + offs_d, offs_n, STATES_MIDDLE)[0]
    state_base = states_ptr + seq * (n_chunks * N) + n2
    if SPLIT:
        pid_s = tl.program_id(2)
        c_first = pid_s * seg_chunks
        c_last = tl.minimum(c_first + seg_chunks, n_chunks) - 1
        n_walk = c_last + 1 - c_first
        carry = tl.load(dlast_ptr + (pid_s * tl.num_programs(0) * dim + seq) * N + n2, mask=mask_dn, other=0.0)
    else:
        c_last = n_chunks - 1
        n_walk = n_chunks
        carry = tl.load(dlast_ptr + seq * N + n2, mask=mask_dn, other=0.0).to(tl.float32)
    dA_acc = tl.zeros_like(A)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    g_tile = pid_d * BLOCK_D // d_per_group
    u, raw, dt, Bt, Ct, pos, valid, pidx, pvalid, mask_t = _load_chunk(
        u_base, dt_base, B_base, C_base, path_ptr, bias, g_tile, c_last * CHUNK + tl.arange(0, CHUNK), offs_d,
        offs_n, mask_d, mask_n, pid_k, L, Lp, d_per_group, su_d, su_l, sdt_d, sdt_l, sB_g, sB_n, sB_l, sC_g, sC_n, sC_l,
        HAS_BIAS, SOFTPLUS, HAS_PATH, PARAMS_AT_STEP, TILE_ONE_GROUP, STATES_MIDDLE)
    for i in range(n_walk):
        c = c_last - i
        # the previous chunk's loads go out first (all masked off before the first chunk)
        u_nx, raw_nx, dt_nx, B_nx, C_nx, pos_nx, valid_nx, pidx_nx, pvalid_nx, mask_t_nx = _load_chunk(
            u_base, dt_base, B_base, C_base, path_ptr, bias, g_tile, (c - 1) * CHUNK + tl.arange(0, CHUNK), offs_d,
            offs_n, mask_d, mask_n, pid_k, L, Lp, d_per_group, su_d, su_l, sdt_d, sdt_l, sB_g, sB_n, sB_l, sC_g, sC_n,
            sC_l, HAS_BIAS, SOFTPLUS, HAS_PATH, PARAMS_AT_STEP, TILE_ONE_GROUP, STATES_MIDDLE)
        m_out = valid[:, None] & mask_d[None, :]
        m_par = pvalid[:, None] & mask_d[None, :]
        dy = tl.load(dy_ptr + pid_b * sdy_b + pid_k * sdy_k + pos[:, None] * sdy_l + offs_d[None, :] * sdy_d,
                     mask=m_out, other=0.0).to(tl.float32)
        # recompute the chunk's states from its saved start state; 3-D tiles with the step axis first, so both scans
        # run sequentially in each thread's registers
        h0 = tl.load(state_base + c * N, mask=mask_dn, other=0.0)
        decay = tl.exp2(_over_states(dt, STATES_MIDDLE) * A2[None, :, :])
        inp = _over_states(dt * u, STATES_MIDDLE) * Bt
        if STEPS_IN_THREAD:
            hs = _states_in_chunk(decay, inp, h0)
        else:  # the chunk spans lanes: Triton's scan combines the lanes' partial chunks
            acc_a, acc_b = tl.associative_scan((decay, inp), 0, _affine_combine)
            hs = acc_a * h0[None, :, :] + acc_b
        if HAS_Z:
            zp = z_ptr + pid_b * sz_b + pos[:, None] * sz_l + offs_d[None, :] * sz_d
            zt = tl.load(zp, mask=m_out, other=0.0).to(tl.float32)
            y_pre = tl.sum(hs * Ct, axis=S_AXIS)
            if HAS_D:
                y_pre += u * Dv[None, :]
            sig = tl.sigmoid(zt)
            dz = dy * y_pre * sig * (1.0 + zt * (1.0 - sig))
            dz_ptrs = dz_ptr + pid_b * sdz_b + pid_k * sdz_k + pos[:, None] * sdz_l + offs_d[None, :] * sdz_d
            if Z_ATOMIC:
                tl.atomic_add(dz_ptrs, dz, mask=m_out, sem="relaxed")
            else:
                tl.store(dz_ptrs, dz.to(dz_ptr.dtype.element_ty), mask=m_out)
            dy = dy * zt * sig
        du = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
        if HAS_D:
            dD_acc += tl.sum(dy * u, axis=0)
            du = dy * Dv[None, :]
        # dC_t[n] = sum_d h_t dy_t over the tile
        dC_part = hs * _over_states(dy, STATES_MIDDLE)
        m_bc = pvalid[:, None] & mask_n[None, :]
        # adjoint states q_t, scanned from the end of the chunk; carry = adjoint flowing in from the next chunk
        cq = Ct * _over_states(dy, STATES_MIDDLE)
        if STEPS_IN_THREAD:
            q, carry = _adjoints_in_chunk(decay, cq, carry)
        else:  # the chunk spans lanes: Triton's scan combines the lanes' partial chunks
            ones = tl.full(decay.shape, 1.0, tl.float32)
            pex, _, v = tl.associative_scan((ones, decay, cq), 0, _adjoint_combine, reverse=True)
            q = v + pex * carry[None, :, :]
            carry = _at_step(q * decay, 0)
        # h_t - delta_t B_t u_t = a_t h_{t-1}
        q_hprev = q * (hs - inp)
        dB_part = q * _over_states(dt * u, STATES_MIDDLE)
        qB = tl.sum(q * Bt, axis=S_AXIS)
        du += qB * dt
        ddt = qB * u + tl.sum(q_hprev * A[None, :, :], axis=S_AXIS)
        dA_acc += tl.sum(q_hprev * _over_states(dt, STATES_MIDDLE), axis=0)
        if TILE_ONE_GROUP and SPREAD_SUMS:
            # reduce-scattered over the channel lanes: each lane adds the sums of its own steps
            ch = tl.arange(0, BLOCK_D)
            dB_sum, first, lead = _channel_sums_spread(dB_part, ch, D_AXIS)
            dC_sum, _, _ = _channel_sums_spread(dC_part, ch, D_AXIS)
            rows = tl.arange(0, dB_sum.shape[0])
            t_sum, n_sum = _ch_st3(c * CHUNK + first, offs_n, STATES_MIDDLE)
            lead3 = _ch_st3(lead, offs_n, STATES_MIDDLE)[0]
            t_sum = t_sum + rows[:, None, None]
            _, _, pidx_sum, pvalid_sum, _ = _step_index(path_ptr + pid_k * Lp, t_sum, Lp, t_sum, HAS_PATH,
                                                        PARAMS_AT_STEP)
            g = (pid_d * BLOCK_D) // d_per_group
            dBC_offs = g * sdB_g + pidx_sum * sdB_l + n_sum * sdB_n
            m_sum = pvalid_sum & (n_sum < N) & lead3
            tl.atomic_add(dB_base + dBC_offs, dB_sum, mask=m_sum, sem="relaxed")
            tl.atomic_add(dC_base + dBC_offs, dC_sum, mask=m_sum, sem="relaxed")
        elif TILE_ONE_GROUP:
            g = (pid_d * BLOCK_D) // d_per_group
            dBC_offs = g * sdB_g + pidx[:, None] * sdB_l + offs_n[None, :] * sdB_n
            tl.atomic_add(dB_base + dBC_offs, tl.sum(dB_part, axis=D_AXIS), mask=m_bc, sem="relaxed")
            tl.atomic_add(dC_base + dBC_offs, tl.sum(dC_part, axis=D_AXIS), mask=m_bc, sem="relaxed")
        else:
            g3, n3 = _ch_st3(offs_d // d_per_group, offs_n, STATES_MIDDLE)
            md3 = _ch_st3(mask_d, offs_n, STATES_MIDDLE)[0]
            m3 = _over_channels(m_bc, STATES_MIDDLE) & md3
            dBC_offs = g3 * sdB_g + pidx[:, None, None] * sdB_l + n3 * sdB_n
            tl.atomic_add(dB_base + dBC_offs, dB_part, mask=m3, sem="relaxed")
            tl.atomic_add(dC_base + dBC_offs, dC_part, mask=m3, sem="relaxed")
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(raw)
        ddt = tl.where(mask_t[:, None], ddt, 0.0)
        if HAS_BIAS:
            dbias_acc += tl.sum(tl.where(mask_d[None, :], ddt, 0.0), axis=0)
        du_ptrs = du_base + pos[:, None] * su_l + offs_d[None, :] * su_d
        if U_ATOMIC:
            tl.atomic_add(du_ptrs, du, mask=m_out, sem="relaxed")
        else:
            tl.store(du_ptrs, du.to(du_ptr.dtype.element_ty), mask=m_out)
        ddt_ptrs = ddt_base + pidx[:, None] * sdt_l + offs_d[None, :] * sdt_d
        if DT_ATOMIC:
            tl.atomic_add(ddt_ptrs, ddt, mask=m_par, sem="relaxed")
        else:
            tl.store(ddt_ptrs, ddt.to(ddt_ptr.dtype.element_ty), mask=m_par)
        u, raw, dt, Bt, Ct, pos, valid, pidx, pvalid, mask_t = (
            u_nx, raw_nx, dt_nx, B_nx, C_nx, pos_nx, valid_nx, pidx_nx, pvalid_nx, mask_t_nx)
    # per-sequence partial sums, rows of ``partial_row`` floats (the host sums them): no atomics on the few dA/dD
    # addresses
    if SPLIT:
        row = partial_ptr + (pid_b * tl.num_programs(2) + pid_s) * partial_row
    else:
        row = partial_ptr + pid_b * partial_row
    tl.store(row + kd2 * N + n2, dA_acc, mask=mask_dn)
    if HAS_D:
        tl.store(row + K * dim * N + kd, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(row + K * dim * (N + 1) + kd, dbias_acc, mask=mask_d)


@triton.jit
def _scan_bwd_carries_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, z_ptr, bias_ptr, path_ptr, dy_ptr, carries_ptr, dt_sums_ptr,
        K, dim, L, Lp, N, d_per_group, n_chunks, seg_chunks,
        su_b, su_k, su_d, su_l, sdt_b, sdt_k, sdt_d, sdt_l,
        sB_b, sB_k, sB_g, sB_n, sB_l, sC_b, sC_k, sC_g, sC_n, sC_l, sz_b, sz_d, sz_l, sdy_b, sdy_k, sdy_d, sdy_l,
        HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_PATH: tl.constexpr,
        PARAMS_AT_STEP: tl.constexpr, TILE_ONE_GROUP: tl.constexpr, STATES_MIDDLE: tl.constexpr,
        STEPS_IN_THREAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr):
    """Pass 1 of a backward split into segments of seg_chunks chunks: program (sequence, channel block, s) runs the
    adjoint recurrence alone over segment s + 1, in the tiles of ``_scan_bwd_kernel``, from a zero carry, and writes
    the carry leaving its first step (decay q there) to ``carries`` (S - 1, batch x K x dim, N) and the sum of its
    step sizes to ``dt_sums`` (S - 1, batch x K x dim): a carry c entering the segment at its last step leaves it as
    exp(A dt_sum) c + carries[s]. Segments 1 .. S - 1 (the first one's carry leaves the sequence)."""
    pid_bk = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2)
    pid_b, pid_k, offs_d, offs_n, mask_d, mask_n, n2, mask_dn, A2, bias = _segment_tile(
        pid_d, pid_bk, K, dim, N, A_ptr, bias_ptr, HAS_BIAS, STATES_MIDDLE, BLOCK_D, BLOCK_N)
    u_base = u_ptr + pid_b * su_b + pid_k * su_k
    dt_base = dt_ptr + pid_b * sdt_b + pid_k * sdt_k
    B_base = B_ptr + pid_b * sB_b + pid_k * sB_k
    C_base = C_ptr + pid_b * sC_b + pid_k * sC_k
    g_tile = pid_d * BLOCK_D // d_per_group
    c_first = (pid_s + 1) * seg_chunks
    c_last = tl.minimum(c_first + seg_chunks, n_chunks) - 1
    carry = tl.zeros_like(A2)
    dt_sum = tl.zeros([BLOCK_D], dtype=tl.float32)
    u, raw, dt, Bt, Ct, pos, valid, pidx, pvalid, mask_t = _load_chunk(
        u_base, dt_base, B_base, C_base, path_ptr, bias, g_tile, c_last * CHUNK + tl.arange(0, CHUNK), offs_d,
        offs_n, mask_d, mask_n, pid_k, L, Lp, d_per_group, su_d, su_l, sdt_d, sdt_l, sB_g, sB_n, sB_l, sC_g, sC_n, sC_l,
        HAS_BIAS, SOFTPLUS, HAS_PATH, PARAMS_AT_STEP, TILE_ONE_GROUP, STATES_MIDDLE)
    for i in range(c_last + 1 - c_first):
        c = c_last - i
        u_nx, raw_nx, dt_nx, B_nx, C_nx, pos_nx, valid_nx, pidx_nx, pvalid_nx, mask_t_nx = _load_chunk(
            u_base, dt_base, B_base, C_base, path_ptr, bias, g_tile, (c - 1) * CHUNK + tl.arange(0, CHUNK), offs_d,
            offs_n, mask_d, mask_n, pid_k, L, Lp, d_per_group, su_d, su_l, sdt_d, sdt_l, sB_g, sB_n, sB_l, sC_g, sC_n,
            sC_l, HAS_BIAS, SOFTPLUS, HAS_PATH, PARAMS_AT_STEP, TILE_ONE_GROUP, STATES_MIDDLE)
        m_out = valid[:, None] & mask_d[None, :]
        dy = tl.load(dy_ptr + pid_b * sdy_b + pid_k * sdy_k + pos[:, None] * sdy_l + offs_d[None, :] * sdy_d,
                     mask=m_out, other=0.0).to(tl.float32)
        if HAS_Z:
            zt = tl.load(z_ptr + pid_b * sz_b + pos[:, None] * sz_l + offs_d[None, :] * sz_d, mask=m_out,
                         other=0.0).to(tl.float32)
            dy = dy * zt * tl.sigmoid(zt)
        decay = tl.exp2(_over_states(dt, STATES_MIDDLE) * A2[None, :, :])
        cq = Ct * _over_states(dy, STATES_MIDDLE)
        if STEPS_IN_THREAD:
            _, carry = _adjoints_in_chunk(decay, cq, carry)
        else:
            ones = tl.full(decay.shape, 1.0, tl.float32)
            pex, _, v = tl.associative_scan((ones, decay, cq), 0, _adjoint_combine, reverse=True)
            carry = _at_step((v + pex * carry[None, :, :]) * decay, 0)
        dt_sum += tl.sum(dt, axis=0)
        u, raw, dt, Bt, Ct, pos, valid, pidx, pvalid, mask_t = (
            u_nx, raw_nx, dt_nx, B_nx, C_nx, pos_nx, valid_nx, pidx_nx, pvalid_nx, mask_t_nx)
    rows = tl.num_programs(0) * dim
    seq = (pid_b * K + pid_k) * dim + offs_d
    tl.store(carries_ptr + (pid_s * rows + _ch_st(seq, offs_n, STATES_MIDDLE)[0]) * N + n2, carry, mask=mask_dn)
    tl.store(dt_sums_ptr + pid_s * rows + seq, dt_sum, mask=mask_d)


def _segment_carries(ends: Tensor, dt_sums: Tensor, A: Tensor, first: Tensor, reverse: bool) -> Tensor:
    """The carry pass of a length split over S segments: the carries (S, batch, K x dim, N) into the segments from
    pass 1's segment maps, ends (S - 1, batch, K x dim, N) and step-size sums dt_sums (S - 1, batch, K x dim), with A
    (K x dim, N) and the carry ``first`` (batch, K x dim, N) into the first segment (forward: zeros) or, ``reverse``,
    into the last (backward: the adjoint of the last state). Forward: carry[s + 1] = exp(A dt_sums[s]) carry[s] +
    ends[s]; backward, whose pass-1 row s is segment s + 1: carry[s] = exp(A dt_sums[s]) carry[s + 1] + ends[s]."""
    segments = ends.shape[0] + 1
    decays = torch.exp(A * dt_sums.unsqueeze(-1))
    carries = torch.empty(segments, *first.shape, device=first.device, dtype=first.dtype)
    carries[segments - 1 if reverse else 0] = first
    for s in range(segments - 2, -1, -1) if reverse else range(segments - 1):
        torch.addcmul(ends[s], decays[s], carries[s + 1 if reverse else s], out=carries[s if reverse else s + 1])
    return carries


def _sizes(u, A, B, paths):
    """(batch, dim, L, num_directions, d_state, steps, channels per group) of the canonical op's arguments."""
    batch, _, dim, length = u.shape
    num_directions, _, d_state = A.shape
    steps = B.shape[-1] if paths is None else paths.shape[1]
    groups = B.shape[2]
    d_per_group = dim // groups
    return batch, dim, length, num_directions, d_state, steps, d_per_group


def _in_layout_of(x: Tensor, u: Tensor) -> Tensor:
    """x (batch, [K,] dim, L) with its batch, dim and L axes in the memory order of u's (a copy only when it
    differs, or when x is not dense)."""
    rank = x.dim()
    same = tuple(a if a == 0 else a - 4 + rank for a in axis_order(u, (0, 2, 3))) == axis_order(
        x, (0, rank - 2, rank - 1))
    if same and dense_strides(x):
        return x
    return empty_in_layout(u, tuple(x.shape), x.dtype).copy_(x)


def _dense(x: Tensor) -> Tensor:
    """x itself if its strides describe a dense, non-overlapping tensor (grads can share them), else a copy."""
    return x if dense_strides(x) else x.contiguous()


def _float32(x: Tensor) -> Tensor:
    """x as a contiguous float32 tensor (x itself when it is one: parameters usually are)."""
    return x if x.dtype == torch.float32 and x.is_contiguous() else x.float().contiguous()


def _cast(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x if x.dtype == dtype else x.to(dtype)


def _path_arg(paths: Tensor | None, dummy: Tensor) -> Tensor:
    """The kernels read int32 or int64 paths as they are; a dummy pointer when there is no path."""
    return dummy if paths is None else paths.contiguous()


def scan_fwd_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
                    delta_bias: Tensor | None, paths: Tensor | None, *, delta_softplus: bool, merge: bool,
                    params_at_step: bool, save_states: bool, a_nonpositive: bool,
                    write_y: bool = True) -> tuple[Tensor | None, Tensor, Tensor]:
    """Launch the forward of the canonical op (layout in ``vssm.ops.scan_core``). ``save_states``: save the chunk-start
    states the backward needs (a training forward). ``a_nonpositive``: the caller promises A <= 0, which allows the
    associative chunk recurrences (module docstring, 'Overflow'). ``write_y=False``: the states alone (a backward that
    recomputes them; y is None, and C, D and z are not read). Returns (y, last_state, chunk_start_states or
    empty)."""
    check_kernel_dtypes("triton scan", u, delta, B, C, z)
    batch, dim, length, num_directions, d_state, steps, d_per_group = _sizes(u, A, B, paths)
    if paths is not None:  # once per paths tensor: a malformed route would read and write out of bounds
        check_paths(paths, length, "triton scan")
    plan = forward_plan(d_state, dim, batch * num_directions * dim, steps, channels_fastest(u), triton_interpret(),
                        overrides_key(), a_nonpositive)
    chunk = plan.chunk
    save_every = plan.save_every if save_states else chunk
    if chunk % save_every:
        raise ValueError(f"triton scan: the forward chunk ({chunk} steps) must be a multiple of the saved-state "
                         f"spacing ({save_every} steps)")
    n_states = cdiv(steps, save_every)
    merge_atomic = merge and num_directions > 1
    last = torch.empty(batch, num_directions, dim, d_state, device=u.device, dtype=torch.float32)
    if not write_y:
        y = last.view(batch, num_directions, dim, d_state)  # never written: stands for the output's pointer
    elif merge_atomic:
        y = empty_in_layout(u, (batch, 1, dim, length), torch.float32, zero=True)
    else:
        y = empty_in_layout(u, (batch, num_directions, dim, length), u.dtype)
    states = torch.empty(batch, num_directions, dim, n_states, d_state, device=u.device,
                         dtype=torch.float32) if save_states else last
    dummy = last
    A32, bias32, path = _float32(A), dummy if delta_bias is None else _float32(delta_bias), _path_arg(paths, dummy)
    sizes = (num_directions, dim, length, steps, d_state, d_per_group)
    args = (u, delta, A32, B, C, dummy if D is None else _float32(D), dummy if z is None else z, bias32, path, y, last,
            states, *sizes)
    input_strides = (*_k_strides(u), *_k_strides(delta), *B.stride(), *C.stride())
    strides = (*input_strides, *(z.stride() if z is not None else (0, 0, 0)), *_k_strides(y))
    scan_flags = dict(HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, HAS_PATH=paths is not None,
                      PARAMS_AT_STEP=params_at_step, TILE_ONE_GROUP=d_per_group % plan.block_d == 0,
                      BLOCK_D=plan.block_d, BLOCK_N=plan.block_n, num_warps=plan.num_warps)
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, MERGE_ATOMIC=merge_atomic, SAVE_STATES=save_states,
                 SAVE_EVERY=save_every, WRITE_Y=write_y, **scan_flags)
    grid = (plan.d_blocks, batch * num_directions)
    if plan.step_by_step:
        _scan_fwd_seq_kernel[grid](*args, n_states, *strides, **flags)
    else:
        segments = sequence_segments(plan.d_blocks * batch * num_directions, steps, chunk, a_nonpositive)
        seg_chunks = cdiv(plan.n_chunks, segments)
        segments = cdiv(plan.n_chunks, seg_chunks)  # no empty segment
        starts = dummy
        if segments > 1:  # passes 1 and 2: the states carried into the segments, (S, batch, K x dim, N)
            kd = num_directions * dim
            ends = last.new_empty(segments - 1, batch, kd, d_state)
            dt_sums = last.new_empty(segments - 1, batch, kd)
            _scan_fwd_ends_kernel[(*grid, segments - 1)](
                u, delta, A32, B, C, bias32, path, ends, dt_sums, *sizes, plan.n_chunks, seg_chunks, *input_strides,
                CHUNK=chunk, **scan_flags, **plan.options)
            starts = _segment_carries(ends, dt_sums, A32.view(kd, d_state), torch.zeros_like(ends[0]), False)
            grid = (*grid, segments)
        _scan_fwd_kernel[grid](*args, plan.n_chunks, n_states, starts, seg_chunks, *strides, CHUNK=chunk,
                               SPLIT=segments > 1, **flags, **plan.options)
    if not write_y:
        y = None
    elif merge:
        y = _cast(y[:, 0], u.dtype)
    return y, last, states if save_states else last.new_empty(0)


def _k_strides(t: Tensor) -> tuple[int, int, int, int]:
    """Strides (b, k, d, l) of a (batch, K, dim, L) tensor; a K of 1 reads with stride 0 (shared by directions)."""
    sb, sk, sd, sl = t.stride()
    return sb, (0 if t.shape[1] == 1 else sk), sd, sl


def scan_bwd_triton(dy: Tensor, dlast: Tensor | None, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                    D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None, paths: Tensor | None, states: Tensor,
                    *, delta_softplus: bool, merge: bool, params_at_step: bool, a_nonpositive: bool,
                    grad_BC_into: tuple[Tensor, Tensor] | None = None, accumulators: bool = False,
                    dz_into: Tensor | None = None) -> tuple[Tensor | None, ...]:
    """Launch the backward. Returns grads of (u, delta, A, B, C, D, z, delta_bias), None where the input is None.
    ``a_nonpositive``: as in ``scan_fwd_triton`` (the promise of the forward whose states are passed).

    ``grad_BC_into``: zeroed float32 tensors of B's and C's shapes (any strides) that receive dB and dC (returned as
    None then), for a caller that lays them out next to other gradients. ``accumulators``: return the gradients as the
    kernel leaves them (float32 where it accumulates) instead of in the inputs' dtypes. ``dz_into``: a (batch, K,
    dim, L) tensor (any strides) that receives each direction's gate gradient, stored without atomics (dz is returned
    as None then; its sum over K is the gate's gradient)."""
    batch, dim, length, num_directions, d_state, steps, d_per_group = _sizes(u, A, B, paths)
    if paths is not None:
        check_paths(paths, length, "triton scan backward")
    rows = batch * num_directions * dim
    plan = backward_plan(d_state, dim, rows, steps, channels_fastest(u), triton_interpret(), overrides_key(),
                         a_nonpositive)
    if states.numel() != rows * plan.n_chunks * d_state:
        raise RuntimeError("triton scan backward: the forward did not save its chunk states")
    u_atomic = u.shape[1] != num_directions
    dt_atomic = delta.shape[1] != num_directions
    z_atomic = num_directions > 1 and dz_into is None
    f32 = torch.float32
    # the grads share the strides of the inputs (of dense copies where an input is an expanded view)
    u, delta, B, C = _dense(u), _dense(delta), _dense(B), _dense(C)
    z = _dense(z) if z is not None else None
    du = torch.zeros_like(u, dtype=f32) if u_atomic else torch.empty_like(u)
    ddt = torch.zeros_like(delta, dtype=f32) if dt_atomic else torch.empty_like(delta)
    dz = None
    if z is not None and dz_into is not None:
        if dz_into.shape != (batch, num_directions, dim, length):
            raise ValueError(f"triton scan backward: dz_into must be (batch, K, dim, L) = "
                             f"{(batch, num_directions, dim, length)}, got {tuple(dz_into.shape)}")
        dz_strides = dz_into.stride()
    elif z is not None:
        dz = torch.zeros_like(z, dtype=f32) if z_atomic else torch.empty_like(z)
        dz_strides = (dz.stride(0), 0, dz.stride(1), dz.stride(2))
    else:
        dz_strides = (0, 0, 0, 0)
    if grad_BC_into is None:  # (..., N, L) views of one zeroed (2, ..., L, N) buffer, the states of a step contiguous
        dB, dC = torch.zeros(2, *B.shape[:-2], B.shape[-1], B.shape[-2], device=u.device, dtype=f32).transpose(
            -1, -2).unbind(0)
    else:
        dB, dC = grad_BC_into
        if dB.shape != B.shape or dC.shape != C.shape or dB.stride() != dC.stride() or dB.dtype != f32:
            raise ValueError(f"triton scan backward: grad_BC_into must be float32 tensors of B's and C's shape "
                             f"{tuple(B.shape)} with equal strides, got {tuple(dB.shape)} and {tuple(dC.shape)}")
    segments = sequence_segments(batch * num_directions * plan.d_blocks, steps, plan.chunk, a_nonpositive)
    seg_chunks = cdiv(plan.n_chunks, segments)
    segments = cdiv(plan.n_chunks, seg_chunks)  # no empty segment
    # per-batch-row (and segment) partial sums of dA, dD and d(delta_bias) in one buffer (layout in the kernel's
    # docstring)
    kd = num_directions * dim
    partial = torch.empty(batch * segments, kd * (d_state + 2), device=u.device, dtype=f32)
    dy = _in_layout_of(dy, u)  # an incoming gradient often arrives transposed: read it like u
    if merge:
        dy = dy.unsqueeze(1)
    dy_strides = (dy.stride(0), 0 if dy.shape[1] == 1 else dy.stride(1), dy.stride(2), dy.stride(3))
    dummy = partial
    # the kernel always loads the adjoint of the last state (its variant with a constant zero there compiled to a
    # slower backward; BENCHMARKS.md, launch-plan figures), so no gradient of the last state reads as zeros
    if dlast is None or not dlast.numel():
        dlast = torch.zeros(batch, num_directions, dim, d_state, device=u.device, dtype=f32)
    dlast = _float32(dlast)
    A32, bias32, path = _float32(A), dummy if delta_bias is None else _float32(delta_bias), _path_arg(paths, dummy)
    strides = (*_k_strides(u), *_k_strides(delta), *B.stride(), *C.stride(),
               *(z.stride() if z is not None else (0, 0, 0)))
    grid = (batch * num_directions, plan.d_blocks)
    flags = dict(HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, HAS_PATH=paths is not None,
                 PARAMS_AT_STEP=params_at_step, TILE_ONE_GROUP=d_per_group % plan.block_d == 0,
                 STATES_MIDDLE=plan.states_middle, STEPS_IN_THREAD=plan.steps_in_thread, BLOCK_D=plan.block_d,
                 BLOCK_N=plan.block_n, CHUNK=plan.chunk, num_warps=plan.num_warps)
    if segments > 1:  # passes 1 and 2: the adjoints carried into the segments' last steps, (S, batch, K x dim, N)
        carries = partial.new_empty(segments - 1, batch, kd, d_state)
        dt_sums = partial.new_empty(segments - 1, batch, kd)
        _scan_bwd_carries_kernel[(*grid, segments - 1)](
            u, delta, A32, B, C, dummy if z is None else z, bias32, path, dy, carries, dt_sums, num_directions, dim,
            length, steps, d_state, d_per_group, plan.n_chunks, seg_chunks, *strides, *dy_strides,
            HAS_Z=z is not None, **flags)
        dlast = _segment_carries(carries, dt_sums, A32.view(kd, d_state), dlast.reshape(batch, kd, d_state), True)
        grid = (*grid, segments)
    _scan_bwd_kernel[grid](
        u, delta, A32, B, C, dummy if D is None else _float32(D), dummy if z is None else z, bias32, path, states, dy,
        dlast, du, ddt, dB, dC, dz_into if dz_into is not None else dummy if dz is None else dz, partial,
        num_directions, dim, length, steps, d_state, d_per_group, plan.n_chunks, partial.shape[1], seg_chunks,
        *strides, *dz_strides, *dy_strides, *dB.stride(), HAS_D=D is not None, HAS_Z=z is not None,
        U_ATOMIC=u_atomic, DT_ATOMIC=dt_atomic, Z_ATOMIC=z_atomic, SPREAD_SUMS=plan.spread_sums, SPLIT=segments > 1,
        **flags)
    dA, dD, dbias = partial.sum(0).split([kd * d_state, kd, kd])
    grads = (du, ddt, dA.view(A.shape), None if grad_BC_into is not None else dB,
             None if grad_BC_into is not None else dC, None if D is None else dD.view(D.shape), dz,
             None if delta_bias is None else dbias.view(delta_bias.shape))
    if accumulators:
        return grads
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    return tuple(None if g is None else _cast(g, t.dtype) for g, t in zip(grads, inputs))
