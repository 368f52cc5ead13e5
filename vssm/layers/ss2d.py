"""SS2D: the 2-D selective-scan token mixer of VMamba, and its local-route variant from LocalVMamba.

Both mixers take a (B, H, W, C) map, or (B, C, H, W) with ``channel_first=True`` (same weights, same numbers), and run

    in_proj -> [x | z] -> depthwise 3x3 conv -> SiLU -> K-direction selective scan -> merge -> out_norm [* SiLU(z)]
    -> out_proj

The scan runs on ``vssm.ops.projected_multi_scan`` (``multi_scan`` with its input projections): each direction is a
scan path (``vssm.ops.scan_paths``) with its own projections (``x_proj_weight``, ``dt_proj_weight``,
``dt_proj_bias``), ``A_log`` and ``D``; B and C are computed per direction and shared by all channels. The projections
act per token, so they are computed once in spatial order and the kernel reads them along each path; on the GPU the
gather, the scan and the scatter (+ merge) are one Triton kernel, and in eager mode the projections and the scan are
one autograd node.
Inside the mixer everything is channels-last: the conv runs on channels-last storage and the scan gets (B, L, C) views
(``.transpose``), so the kernel reads whole rows of channels per token along any path and returns channels-last
outputs; the layout option only decides the mixer's input and output.

- ``SS2D`` (VMamba): the four ``cross`` paths (row-major, column-major, and both reversed), merged by a plain sum
  inside the kernel. ``gated=True`` is the z-gated v0 path (Vanilla VMamba, LocalVMamba), ``gated=False`` the no-z v2
  path.
- ``LocalSS2D`` (LocalVMamba): K ``local`` routes per block (``h``, ``v``, ``w2``, ``w7`` and their ``_flip``s;
  window routes zero-pad the map to a multiple of the window, and the padding steps are scanned as ordinary zero
  tokens, as the official code does), merged by ``RouteChannelAttention`` (each route gated by its own channel
  attention, then summed).

Official quirk kept by default (``reproduce_v_unscan_bug=True``): LocalMamba un-scans the column-major routes ``v`` /
``v_flip`` by reshaping the sequence as (H, W) instead of (W, H), which is the inverse only on square maps. Converted
official weights need it (it changes nothing at the 224 px classification sizes, whose maps are square); set
``reproduce_v_unscan_bug=False`` for the correct inverse on non-square maps (detection and segmentation inputs).
"""
import functools
import math
from typing import List, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor, nn

from vssm.layers.norm import LayerNorm
from vssm.ops import projected_multi_scan, scan_paths

__all__ = ["SS2D", "LocalSS2D", "RouteChannelAttention", "official_v_unscan"]

COLUMN_ROUTES = ("v", "v_flip")


@register_notrace_function
@torch.jit.ignore
def cross_paths(height: int, width: int, device: torch.device) -> Tensor:
    """VMamba's four cross-scan paths (4, H*W) on an (H, W) grid (cached)."""
    return scan_paths.build("cross", (height, width), device=device)


@register_notrace_function
@torch.jit.ignore
def local_paths(height: int, width: int, directions: List[str], device: torch.device) -> Tensor:
    """LocalMamba routes (K, Lp) on an (H, W) grid, end-padded to the longest route (cached)."""
    return scan_paths.build("local", (height, width), device=device, directions=directions)


@functools.lru_cache(maxsize=64)
def _official_v_sources(directions: Tuple[str, ...], height: int, width: int, device: torch.device) -> Tensor:
    """(K, L): for each route, the token whose correctly un-scanned output the official code puts at position m."""
    grid = torch.arange(height * width, device=device).view(height, width)
    column_major = grid.t().flatten()  # step j of the 'v' route visits token column_major[j]
    # the official reshape gives position m the output of step column_major[m] = (m % H) * W + m // H, that is the
    # output of token column_major[column_major[m]]
    v_sources = column_major[column_major]
    return torch.stack([v_sources if name in COLUMN_ROUTES else grid.flatten() for name in directions])


@register_notrace_function
@torch.jit.ignore
def official_v_unscan(routes: Tensor, directions: List[str], height: int, width: int) -> Tensor:
    """Reproduce LocalMamba's un-scan of the column-major routes on an (H, W) grid with H != W.

    The official code turns the ``v`` sequence s (step j visits token (j % H) * W + j // H) back into a map with
    ``rearrange(s, 'b d (h w) -> b d (w h)')``, so position m receives step (m % H) * W + m // H instead of the step
    that visited m (``v_flip`` un-flips first, then does the same). Given correctly un-scanned routes, this applies
    that scramble; on square grids it is the identity.

    Args:
        routes: (B, K, H*W, C) per-route outputs in spatial order, route k scanned along ``directions[k]``.
        directions: The K route names.
        height: Grid height H.
        width: Grid width W.

    Returns:
        ``routes`` with the ``v`` / ``v_flip`` routes scrambled as the official code does.
    """
    if height == width or not any(name in COLUMN_ROUTES for name in directions):
        return routes
    sources = _official_v_sources(tuple(directions), height, width, routes.device)  # (K, L)
    return routes.gather(2, sources[None, :, :, None].expand_as(routes))


class RouteChannelAttention(nn.Module):
    """LocalMamba's merge ("BiAttn", channel branch only): gate each route by its own channel attention, then sum.

    For each route X (L tokens x C channels): g = sigmoid(W2 GELU(W1 mean_L(LN(X)) + b1) + b2), output X * g. One
    module (one set of weights) serves all routes; the gated routes are summed unweighted. The official spatial branch
    is commented out upstream and absent here.
    """

    def __init__(self, dim: int, reduction: float = 0.125, device=None, dtype=None):
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        hidden = int(dim * reduction)
        self.norm = LayerNorm(dim, autocast_output=True, **dd)
        self.global_reduce = nn.Linear(dim, hidden, **dd)
        self.act = nn.GELU()
        self.channel_select = nn.Linear(hidden, dim, **dd)

    def forward(self, routes: Tensor) -> Tensor:
        """(B, K, L, C) routes in spatial order -> (B, L, C)."""
        pooled = self.norm(routes).mean(2)  # (B, K, C)
        gate = torch.sigmoid(self.channel_select(self.act(self.global_reduce(pooled))))  # (B, K, C)
        return (routes * gate.unsqueeze(2)).sum(1)


class SS2D(nn.Module):
    """VMamba's 2-D selective scan over the four cross directions, merged by a sum (see the module docstring)."""

    def __init__(
            self,
            dim: int,
            d_state: int = 16,
            ssm_ratio: float = 2.0,
            dt_rank: Union[int, str] = "auto",
            d_conv: int = 3,
            conv_bias: bool = True,
            gated: bool = True,
            channel_first: bool = False,
            num_directions: int = 4,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: Input/output channels (the stage width).
            d_state: SSM state size N.
            ssm_ratio: Inner width d_inner = int(ssm_ratio * dim).
            dt_rank: Rank R of the delta projection; 'auto' = ceil(dim / 16) (from the stage width, not d_inner).
            d_conv: Depthwise conv kernel size.
            conv_bias: Bias in the depthwise conv.
            gated: Split in_proj into x and a SiLU(z) gate applied after out_norm (v0); False: no z branch (v2).
            channel_first: Input/output layout (B, C, H, W) if True, else (B, H, W, C).
            num_directions: K scan directions (4 for the cross scan; ``LocalSS2D`` passes its route count).
        """
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_inner = int(ssm_ratio * dim)
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.gated = gated
        self.channel_first = channel_first

        self.in_proj = nn.Linear(dim, self.d_inner * (2 if gated else 1), bias=False, **dd)
        self.conv2d = nn.Conv2d(
            self.d_inner, self.d_inner, d_conv, padding=(d_conv - 1) // 2, groups=self.d_inner, bias=conv_bias, **dd,
        )
        k, d, r, n = num_directions, self.d_inner, self.dt_rank, d_state
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d, **dd))  # per direction: d -> (dt_low, B, C)
        self.dt_proj_weight = nn.Parameter(torch.empty(k, d, r, **dd))
        self.dt_proj_bias = nn.Parameter(torch.empty(k, d, **dd))
        self.A_log = nn.Parameter(torch.empty(k, d, n, **dd))
        self.D = nn.Parameter(torch.empty(k, d, **dd))
        self.out_norm = LayerNorm(self.d_inner, eps=1e-5, autocast_output=True, **dd)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False, **dd)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4):
        """Mamba's initialisation of the raw SSM parameters (VMamba ``ssm_init='v0'``).

        x_proj: nn.Linear's default, U(+-1/sqrt(d_inner)); dt_proj weight U(+-R^-0.5); dt bias = softplus^-1(dt), dt
        log-uniform in [dt_min, dt_max] (floored); A_log = log(1..N); D = 1.
        """
        bound = self.d_inner ** -0.5
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        nn.init.uniform_(self.dt_proj_weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        log_dt = torch.rand_like(self.dt_proj_bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = log_dt.exp().clamp(min=dt_floor)
        self.dt_proj_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        states = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        self.A_log.copy_(states.log().expand_as(self.A_log))
        self.D.fill_(1.0)

    def scan(self, x: Tensor) -> Tensor:
        """Cross scan of the conv features x (B, d, H, W), channels-last storage; returns the merged (B, L, d)."""
        height, width = x.shape[-2:]
        y = projected_multi_scan(x.flatten(2), self.x_proj_weight, self.dt_proj_weight, self.dt_proj_bias,
                                 self.A_log, self.D, cross_paths(height, width, x.device), "sum")  # (B, d, L)
        return y.transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C), or (B, C, H, W) -> (B, C, H, W) when channel_first."""
        if self.channel_first:
            x = x.permute(0, 2, 3, 1)
        x = self.in_proj(x)  # (B, H, W, d or 2d)
        z = x
        if self.gated:
            x, z = x.chunk(2, dim=-1)
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)  # (B, d, H, W), no copy without z
        x = F.silu(self.conv2d(x))
        y = self.out_norm(self.scan(x)).unflatten(1, x.shape[-2:])  # (B, H, W, d)
        if self.gated:
            y = y * F.silu(z)
        y = self.out_proj(y)
        return y.permute(0, 3, 1, 2) if self.channel_first else y


class LocalSS2D(SS2D):
    """LocalVMamba's SS2D: one scan per searched local route, merged by route channel attention."""

    def __init__(
            self,
            dim: int,
            directions: List[str],
            reproduce_v_unscan_bug: bool = True,
            device=None,
            dtype=None,
            **kwargs,
    ):
        """
        Args:
            dim: Input/output channels.
            directions: Route names in parameter order, e.g. ['h_flip', 'v', 'w2', 'w7_flip'].
            reproduce_v_unscan_bug: Un-scan 'v'/'v_flip' as the official code does (wrong on non-square maps).
            **kwargs: ``SS2D`` arguments.
        """
        super().__init__(dim, num_directions=len(directions), device=device, dtype=dtype, **kwargs)
        self.directions = list(directions)
        self.reproduce_v_unscan_bug = reproduce_v_unscan_bug
        self.attn = RouteChannelAttention(self.d_inner, device=device, dtype=dtype)

    def scan(self, x: Tensor) -> Tensor:
        """Local-route scans of x (B, d, H, W), channels-last storage, merged by channel attention -> (B, L, d)."""
        height, width = x.shape[-2:]
        ys = projected_multi_scan(x.flatten(2), self.x_proj_weight, self.dt_proj_weight, self.dt_proj_bias,
                                  self.A_log, self.D, local_paths(height, width, self.directions, x.device),
                                  "none")  # (B, K, d, L)
        routes = ys.transpose(2, 3)  # (B, K, L, d)
        if self.reproduce_v_unscan_bug:
            routes = official_v_unscan(routes, self.directions, height, width)
        return self.attn(routes)
