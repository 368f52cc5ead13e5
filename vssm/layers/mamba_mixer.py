"""Mamba (S6) token mixer over a 1-D token sequence, scanned forward or forward and backward, and its residual block.

The bidirectional mixer is Vim's bimamba "v2" (also VideoMamba's ``bimamba=True``): shared in/out projections, and per
scan direction k a depthwise causal conv, x/dt projections, A and D of its own::

    x, z = in_proj(tokens)                            (B, E, L) each, E = expand * dim
    x_k = silu(conv_k(x))                             causal along direction k's scan order (k = 1: reversed)
    dt_k, B_k, C_k = split(x_proj_k(x_k))             (R, N, N) rows
    y = sum_k scan_k(x_k, dt_proj_k(dt_k), -exp(A_log_k), B_k, C_k, D_k) * silu(z)    (divided by K if merge='mean')
    out = out_proj(y)

Per-direction parameters are stacked on a leading K axis (``A_log`` is (K, E, N), ``x_proj_weight`` (K, R + 2N, E), ...)
so that each projection is one batched matmul; ``stack_official_directions`` converts the official per-direction keys
(``conv1d``/``conv1d_b``, ``A_log``/``A_b_log``, ...). The backward direction's conv is causal from the sequence's end
(``vssm.ops.causal_conv1d`` computes both directions from one read of x in spatial order), so the scan reads both
directions from one (B, K, E, L) tensor in spatial order and nothing is flipped or copied per direction
(``vssm.ops.multi_scan``). The whole computation is ``vssm.ops.mamba_inner``: every (E-channel, B, L) activation lies
dim-major, in (E, B * L) buffers (the official ``mamba_inner_fn`` layout), and eager GPU calls run it as one autograd
node with a hand-written backward.
"""
import math
from typing import Callable, Dict, Optional

import torch
from timm.layers import DropPath
from torch import Tensor, nn

from ..ops import mamba_inner
from .local_mixer import LocalMambaMixer
from .simba_mixer import CausalMambaMixer
from .ssm_init import init_a_log_d_, init_dt_projection_, ssm_parameters
from .zigzag_mixer import ZigzagMamba2D

__all__ = ["MambaMixer", "MambaBlock", "set_activation_recompute", "stack_official_directions"]

# Official per-direction parameter names (Vim / VideoMamba forks of mamba_ssm) -> stacked name, and the suffix of the
# backward direction's copy ('' for the forward one).
_OFFICIAL_DIRECTION_KEYS = {
    "conv1d.weight": "conv_weight",
    "conv1d.bias": "conv_bias",
    "x_proj.weight": "x_proj_weight",
    "dt_proj.weight": "dt_proj_weight",
    "dt_proj.bias": "dt_proj_bias",
    "A_log": "A_log",
    "D": "D",
}
_OFFICIAL_BACKWARD_KEYS = {
    "conv1d.weight": "conv1d_b.weight",
    "conv1d.bias": "conv1d_b.bias",
    "x_proj.weight": "x_proj_b.weight",
    "dt_proj.weight": "dt_proj_b.weight",
    "dt_proj.bias": "dt_proj_b.bias",
    "A_log": "A_b_log",
    "D": "D_b",
}


class MambaMixer(nn.Module):
    """Mamba token mixer (B, L, dim) -> (B, L, dim), one direction or both (Vim bimamba v2 / VideoMamba)."""

    def __init__(
            self,
            dim: int,
            d_state: int = 16,
            d_conv: int = 4,
            expand: float = 2,
            dt_rank: Optional[int] = None,
            bidirectional: bool = True,
            merge: str = "mean",
            dt_min: float = 1e-3,
            dt_max: float = 0.1,
            dt_init_floor: float = 1e-4,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: Token width D.
            d_state: SSM state size N.
            d_conv: Depthwise conv kernel size.
            expand: Inner width d_inner (E) = expand * dim.
            dt_rank: Rank R of the delta projection; ceil(dim / 16) when None.
            bidirectional: Scan forward and backward (K = 2) or forward only (K = 1, plain Mamba).
            merge: How the K directions combine: 'mean' (Vim's (fwd + bwd) / 2) or 'sum' (VideoMamba).
            dt_min, dt_max, dt_init_floor: Range of the initial softplus(dt_proj_bias) (Mamba's dt init).
        """
        super().__init__()
        if merge not in ("mean", "sum"):
            raise ValueError(f"MambaMixer: merge must be 'mean' or 'sum', got {merge!r}")
        dd = {"device": device, "dtype": dtype}
        self.d_inner = int(expand * dim)
        self.d_state = d_state
        self.d_conv = d_conv
        self.dt_rank = math.ceil(dim / 16) if dt_rank is None else dt_rank
        self.num_directions = 2 if bidirectional else 1
        self.merge = merge
        self.reverse = [False, True][:self.num_directions]  # direction k scans from the end (its conv too)
        self.dt_range = (dt_min, dt_max, dt_init_floor)
        num_directions, d_inner, dt_rank = self.num_directions, self.d_inner, self.dt_rank

        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False, **dd)
        self.conv_weight = nn.Parameter(torch.empty(num_directions, d_inner, d_conv, **dd))
        self.conv_bias = nn.Parameter(torch.empty(num_directions, d_inner, **dd))
        self.x_proj_weight = nn.Parameter(torch.empty(num_directions, dt_rank + 2 * d_state, d_inner, **dd))
        self.dt_proj_weight = nn.Parameter(torch.empty(num_directions, d_inner, dt_rank, **dd))
        self.dt_proj_bias = nn.Parameter(torch.empty(num_directions, d_inner, **dd))
        self.A_log, self.D = ssm_parameters((num_directions, d_inner), d_state, device)  # float32 (layers.ssm_init)
        self.out_proj = nn.Linear(d_inner, dim, bias=False, **dd)
        self.recompute = 1  # what the fused node's backward recomputes (``vssm.ops.mamba_inner``; a runtime choice)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's initialisation: PyTorch defaults for the conv and x_proj, then ``vssm.layers.ssm_init`` for the dt
        projection (softplus(bias) log-uniform in [dt_min, dt_max]), A (S4D-real) and D."""
        conv_bound = self.d_conv ** -0.5  # nn.Conv1d's default for a depthwise conv (fan_in = d_conv)
        nn.init.uniform_(self.conv_weight, -conv_bound, conv_bound)
        nn.init.uniform_(self.conv_bias, -conv_bound, conv_bound)
        x_proj_bound = self.d_inner ** -0.5  # nn.Linear's default
        nn.init.uniform_(self.x_proj_weight, -x_proj_bound, x_proj_bound)
        init_dt_projection_(self.dt_proj_weight, self.dt_proj_bias, *self.dt_range)
        init_a_log_d_(self.A_log, self.D)

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, dim) -> (B, L, dim)."""
        return mamba_inner(x, self.in_proj.weight, self.conv_weight, self.conv_bias, self.reverse, self.x_proj_weight,
                           self.dt_proj_weight, self.dt_proj_bias, self.A_log, self.D, self.out_proj.weight,
                           self.merge, self.recompute)


class MambaBlock(nn.Module):
    """Pre-norm residual block x + drop_path(mixer(norm(x))) over a (B, L, dim) residual stream kept in float32.

    This is the official "Add -> Norm -> Mixer" block (which carries (hidden, residual) pairs so that the add and the
    norm fuse) re-associated: official layer i's add uses the drop-path rate of layer i, applied to the mixer output of
    layer i - 1, and the final add before the last norm uses the full rate. So the mixer output of block j is dropped
    with rate ``linspace(0, rate, depth)[j]``, the usual per-block schedule.
    """

    def __init__(
            self,
            dim: int,
            norm_layer: Callable[..., nn.Module],
            drop_path: float = 0.,
            device=None,
            dtype=None,
            **mixer_kwargs,
    ):
        """
        Args:
            dim: Token width.
            norm_layer: Norm constructor, called as ``norm_layer(dim, device=..., dtype=...)``.
            drop_path: Stochastic-depth rate of the mixer branch.
            **mixer_kwargs: ``MambaMixer`` options (d_state, d_conv, expand, dt_rank, bidirectional, merge, ...).
        """
        super().__init__()
        self.norm = norm_layer(dim, device=device, dtype=dtype)
        self.mixer = MambaMixer(dim, device=device, dtype=dtype, **mixer_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, dim) float32 stream -> same; the norm runs in the parameters' dtype (float32 under autocast)."""
        return x + self.drop_path(self.mixer(self.norm(x.to(self.norm.weight.dtype))))


def set_activation_recompute(model: nn.Module, level: int) -> int:
    """Set what every Mamba mixer of ``model`` recomputes in its backward instead of saving. ``MambaMixer`` (Vim,
    VideoMamba, U-Mamba; ``vssm.ops.mamba_inner``): 0 nothing, 1 the conv output and delta (the default), 2 also the
    scan's chunk states, 3 also the scan's output. The scan mixers of SiMBA, PlainMamba and LocalVim / LocalVMamba:
    from 2 on, the scan's chunk states (``vssm.ops.scan_core``'s ``recompute_states``), and in SiMBA and PlainMamba
    also the depthwise conv's input copy and output (``torch.utils.checkpoint``; LocalVim's fused conv keeps only its
    input); 0 and 1 keep them. Returns how many mixers there are.

    Raises:
        ValueError: An unknown level.
    """
    from ..ops.mamba_inner import RECOMPUTE_LEVELS

    if level not in RECOMPUTE_LEVELS:
        raise ValueError(f"activation recompute level must be one of {RECOMPUTE_LEVELS}, got {level!r}")
    kinds = (MambaMixer, CausalMambaMixer, ZigzagMamba2D, LocalMambaMixer)
    mixers = [m for m in model.modules() if isinstance(m, kinds)]
    for mixer in mixers:
        mixer.recompute = level
    return len(mixers)


def stack_official_directions(state_dict: Dict[str, Tensor], num_directions: int) -> Dict[str, Tensor]:
    """Official Mamba mixer keys (``<prefix>mixer.conv1d.weight``, ``...conv1d_b.weight``, ``A_b_log``, ...) ->
    ``MambaMixer``'s stacked keys; every other key passes through unchanged.

    Raises:
        KeyError: A mixer misses its backward-direction parameters while ``num_directions == 2``.
    """
    out: Dict[str, Tensor] = {}
    consumed = set()
    for key, value in state_dict.items():
        prefix, sep, name = key.rpartition("mixer.")
        if not sep or name not in _OFFICIAL_DIRECTION_KEYS:
            continue
        base = prefix + "mixer."
        tensors = [value]
        if num_directions == 2:
            backward_key = base + _OFFICIAL_BACKWARD_KEYS[name]
            if backward_key not in state_dict:
                raise KeyError(f"{backward_key} missing: a bidirectional mixer needs the backward-direction copy of "
                               f"{key}")
            tensors.append(state_dict[backward_key])
            consumed.add(backward_key)
        if name == "conv1d.weight":  # (E, 1, d_conv) depthwise Conv1d weight
            tensors = [t.squeeze(1) for t in tensors]
        out[base + _OFFICIAL_DIRECTION_KEYS[name]] = torch.stack(tensors)
        consumed.add(key)
    for key, value in state_dict.items():
        if key not in consumed:
            out[key] = value
    return out
