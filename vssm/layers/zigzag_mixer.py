"""PlainMamba's 2-D token mixer: four zig-zag selective scans with direction-aware updating (arXiv 2403.17695).

On a (B, H, W, C) map, with E = expand * C inner channels:

    x, z  = in_proj(tokens)                         (with bias in PlainMamba)
    u     = silu(depthwise conv2d 7x7(x))           (on the H x W grid)
    dt, B, C = split(x_proj(u))                     (dt_rank, d_state, d_state), raster order
    for each zig-zag route k (row snake, its reverse, column snake, its reverse; ``scan_paths`` kind 'zigzag'):
        scan u along route k with B + Theta[move_k]  (Theta: 5 learned direction tokens of size d_state, one per move
                                                    start/right/left/up/down, added to the input-dependent B)
    y     = (sum of the 4 scans, each with its own D * u, back in raster order) * silu(z)
    out   = out_proj(y)

Two quirks of the official code are the default, because the released weights were trained with them:

- only u is reordered (``reorder_params=False``): step j of route k reads u at the route's j-th token but dt, B
  and C at raster index j (and adds the direction token of the j-th move to B at raster index j). With
  ``reorder_params=True`` dt, B and C are read at the route's token, as the paper describes.
- the dt bias is added twice (``dt_bias_twice=True``): dt_proj's own bias and again as the scan's delta_bias, i.e.
  softplus(W_dt dt + 2 b_dt). With ``dt_bias_twice=False`` it is added once.

The scan inputs are channels-last views of (B, L, E) / (B, L, N) tensors (the depthwise conv runs channels-last), so
the Triton scan reads whole rows of channels at every token of a zig-zag route.
"""
import math
from typing import Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..ops import multi_scan, scan_paths
from .ssm_init import init_dt_projection_, ssm_parameters

__all__ = ["ZigzagMamba2D", "zigzag_routes"]

NUM_MOVES = len(scan_paths.MOVE_CODES)


@register_notrace_function
@torch.jit.ignore
def zigzag_routes(height: int, width: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """The four zig-zag routes of an (height, width) grid and the move code taken at every step.

    Returns:
        paths (4, L): raster index visited at each step; moves (4, L): ``scan_paths.MOVE_CODES`` index of each step.
    """
    shape = (int(height), int(width))
    return (scan_paths.build("zigzag", shape, device=device),
            scan_paths.direction_codes("zigzag", shape, device=device))


class ZigzagMamba2D(nn.Module):
    """PlainMamba2D: zig-zag multi-direction selective scan with direction tokens (see the module docstring).

    Parameter names follow the official module except ``direction_tokens`` (official ``direction_Bs``).
    """

    def __init__(
            self,
            dim: int,
            d_state: int = 16,
            expand: int = 2,
            dt_rank: Union[int, str] = "auto",
            conv_size: int = 7,
            bias: bool = True,
            conv_bias: bool = True,
            reorder_params: bool = False,
            dt_bias_twice: bool = True,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: Model channels C.
            d_state: SSM state size N.
            expand: Inner width d_inner (E) = expand * C.
            dt_rank: Rank of the step-size projection ('auto' = ceil(C / 16)).
            conv_size: Odd kernel size of the depthwise 2-D conv.
            bias: Bias of in_proj / out_proj.
            conv_bias: Bias of the depthwise conv.
            reorder_params: Read dt, B, C along each route (corrected); False reproduces the official code.
            dt_bias_twice: Add dt_proj's bias twice (official); False adds it once.
        """
        super().__init__()
        if conv_size % 2 != 1:
            raise ValueError(f"ZigzagMamba2D: conv_size must be odd, got {conv_size}")
        dd = {"device": device, "dtype": dtype}
        self.d_inner = int(expand * dim)
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.reorder_params = reorder_params
        self.recompute = 1  # >= 2: no chunk states and no conv output kept; the backward recomputes them
        self.dt_bias_twice = dt_bias_twice
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=bias, **dd)
        self.conv2d = nn.Conv2d(self.d_inner, self.d_inner, conv_size, padding=conv_size // 2, groups=self.d_inner,
                                bias=conv_bias, **dd)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **dd)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **dd)
        init_dt_projection_(self.dt_proj.weight, self.dt_proj.bias)
        self.A_log, self.D = ssm_parameters((self.d_inner,), d_state, device)  # float32 (layers.ssm_init)
        self.direction_tokens = nn.Parameter(torch.zeros(NUM_MOVES, d_state, **dd))
        nn.init.trunc_normal_(self.direction_tokens, std=0.02)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=bias, **dd)

    def _conv_silu(self, u: Tensor) -> Tensor:
        """silu(depthwise conv) of u (B, H, W, E) -> (B, E, L), channels-last."""
        u = self.conv2d(u.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last))  # (B, E, H, W)
        return F.silu(u).flatten(2)

    def _scan_inputs(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Scan inputs of a (B, H, W, C) map, each a channels-last view in raster order.

        Returns:
            u, z, dt (B, E, L); B (B, 4, N, L) with the direction tokens added; C (B, N, L); paths (4, L).
        """
        _, height, width, _ = x.shape
        u, z = self.in_proj(x).chunk(2, dim=-1)  # (B, H, W, E) each
        if self.recompute >= 2 and torch.is_grad_enabled() and not torch.jit.is_scripting():
            # the conv's channels-last input copy and its output are recomputed in the backward from u, a view of
            # in_proj's output, which z keeps alive anyway
            u = checkpoint(self._conv_silu, u, use_reentrant=False)
        else:
            u = self._conv_silu(u)
        dt, B, C = torch.split(self.x_proj(u.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = self.dt_proj(dt) if self.dt_bias_twice else F.linear(dt, self.dt_proj.weight)  # (B, L, E)
        paths, moves = zigzag_routes(height, width, x.device)
        if self.reorder_params:  # the move that reaches each token, in raster order
            moves = torch.zeros_like(moves).scatter_(1, paths, moves)
        B = B.unsqueeze(1) + self.direction_tokens[moves].to(B.dtype)  # (B, 4, L, N)
        return (u, z.flatten(1, 2).transpose(1, 2), dt.transpose(1, 2), B.transpose(2, 3), C.transpose(1, 2),
                paths)

    def forward(self, x: Tensor) -> Tensor:
        """Mix the tokens of a map.

        Args:
            x: (B, H, W, C).

        Returns:
            (B, H, W, C).
        """
        u, z, dt, B, C, paths = self._scan_inputs(x)
        # every argument positional: TorchScript does not apply the defaults of the ignored op; then A <= 0
        # (``a_nonpositive``) and the chunk states recomputed in the backward or not
        y = multi_scan(u, dt, -torch.exp(self.A_log.float()), B, C, paths, self.D.float(), z,
                       self.dt_proj.bias.float(), True, "sum", not self.reorder_params, False, True,
                       self.recompute >= 2)  # (B, E, L)
        return self.out_proj(y.transpose(1, 2)).reshape(x.shape)

    def scan_directions(self, x: Tensor) -> Tensor:
        """The four scans apart, for inspection: (B, H, W, C) -> (B, 4, E, L) in raster order, D * u included,
        before the silu(z) gate and the sum."""
        u, _, dt, B, C, paths = self._scan_inputs(x)
        return multi_scan(u, dt, -torch.exp(self.A_log.float()), B, C, paths, self.D.float(), None,
                          self.dt_proj.bias.float(), True, "none", not self.reorder_params, False, True, False)
