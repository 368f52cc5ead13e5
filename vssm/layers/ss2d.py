"""SS2D: the 2-D selective-scan token mixer of VMamba, over any 2-D scan-path kind (LocalVMamba's local routes
included).

The mixer takes a (B, H, W, C) map, or (B, C, H, W) with ``channel_first=True`` (same weights, same numbers), and runs

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

The scan order is an argument, ``path_kind`` (a 2-D ``vssm.ops.scan_paths`` kind), not a class:

- ``path_kind='cross'`` (VMamba, the default): the four cross paths (row-major, column-major, and both reversed),
  merged by a plain sum inside the kernel.
- ``path_kind='local'`` with ``directions`` (LocalVMamba): K local routes per block (``h``, ``v``, ``w2``, ``w7`` and
  their ``_flip``s; window routes zero-pad the map to a multiple of the window, and the padding steps are scanned as
  ordinary zero tokens, as the official code does), merged by ``RouteChannelAttention`` (each route gated by its own
  channel attention, then summed).
- any other 2-D kind (``raster``, ``bidirectional``, ``zigzag``) scans along its paths, merged by a sum.

``gated=True`` is the z-gated v0 path (Vanilla VMamba, LocalVMamba), ``gated=False`` the no-z v2 path.

Official quirk kept by default (``reproduce_v_unscan_bug=True``): LocalMamba un-scans the column-major routes ``v`` /
``v_flip`` by reshaping the sequence as (H, W) instead of (W, H), which is the inverse only on square maps. Converted
official weights need it (it changes nothing at the 224 px classification sizes, whose maps are square); set
``reproduce_v_unscan_bug=False`` for the correct inverse on non-square maps (detection and segmentation inputs). The
quirk belongs to the official pairing, local routes merged by attention; a sum merge (inside the kernel) always
un-scans correctly.
"""
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor, nn

from vssm.layers.norm import LayerNorm
from vssm.layers.ssm_init import init_a_log_d_, init_dt_projection_, ssm_parameters
from vssm.ops import projected_multi_scan, scan_paths
from vssm.ops.common import graph_constant

__all__ = ["SS2D", "RouteChannelAttention", "grid_paths", "official_v_unscan"]

COLUMN_ROUTES = ("v", "v_flip")
MERGES = ("sum", "attention")
# num_directions K of each 2-D ``scan_paths`` kind ('local': one per direction name)
PATH_KIND_DIRECTIONS = {"raster": 1, "bidirectional": 2, "cross": 4, "zigzag": 4, "local": None}


@register_notrace_function
@torch.jit.ignore
def grid_paths(path_kind: str, height: int, width: int, directions: List[str], device: torch.device) -> Tensor:
    """Scan paths (K, Lp) of a 2-D ``scan_paths`` kind on an (H, W) grid (cached); ``directions`` for 'local' only
    (its routes end-padded to the longest)."""
    if path_kind == "local":
        return scan_paths.build(path_kind, (height, width), device=device, directions=directions)
    return scan_paths.build(path_kind, (height, width), device=device)


@graph_constant(maxsize=64)  # cached; a constant of torch.compile graphs
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
    """VMamba's 2-D selective scan along the paths of ``path_kind``, merged by a sum or by route channel attention
    (see the module docstring)."""
    directions: List[str]  # TorchScript needs the element type of an empty list

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
            path_kind: str = "cross",
            directions: Optional[Sequence[str]] = None,
            merge: Optional[str] = None,
            reproduce_v_unscan_bug: bool = True,
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
            path_kind: The scan order, a 2-D ``vssm.ops.scan_paths`` kind ('cross', 'local', 'zigzag', 'raster',
                'bidirectional'); num_directions K is its path count.
            directions: Route names of ``path_kind='local'`` in parameter order, e.g. ['h_flip', 'v', 'w2', 'w7_flip'].
            merge: 'sum' or 'attention' (``RouteChannelAttention``); None: 'attention' for 'local' (LocalVMamba),
                'sum' otherwise (VMamba).
            reproduce_v_unscan_bug: Un-scan 'v'/'v_flip' local routes as the official code does (wrong on non-square
                maps).
        """
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        if path_kind not in PATH_KIND_DIRECTIONS:
            raise ValueError(f"SS2D: path_kind must be one of {tuple(PATH_KIND_DIRECTIONS)}, got {path_kind!r}")
        if (directions is not None) != (path_kind == "local"):
            raise ValueError(f"SS2D: directions go with path_kind='local' only, got path_kind={path_kind!r} and "
                             f"directions={directions!r}")
        merge = ("attention" if path_kind == "local" else "sum") if merge is None else merge
        if merge not in MERGES:
            raise ValueError(f"SS2D: merge must be one of {MERGES}, got {merge!r}")
        self.d_inner = int(ssm_ratio * dim)
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.gated = gated
        self.channel_first = channel_first
        self.path_kind = path_kind
        self.directions = [] if directions is None else list(directions)
        self.merge = merge
        self.reproduce_v_unscan_bug = reproduce_v_unscan_bug
        self.num_directions = PATH_KIND_DIRECTIONS[path_kind] or len(self.directions)

        self.in_proj = nn.Linear(dim, self.d_inner * (2 if gated else 1), bias=False, **dd)
        self.conv2d = nn.Conv2d(
            self.d_inner, self.d_inner, d_conv, padding=(d_conv - 1) // 2, groups=self.d_inner, bias=conv_bias, **dd,
        )
        num_directions, d_inner, dt_rank = self.num_directions, self.d_inner, self.dt_rank
        # per direction: d_inner -> (dt_low, B, C)
        self.x_proj_weight = nn.Parameter(torch.empty(num_directions, dt_rank + 2 * d_state, d_inner, **dd))
        self.dt_proj_weight = nn.Parameter(torch.empty(num_directions, d_inner, dt_rank, **dd))
        self.dt_proj_bias = nn.Parameter(torch.empty(num_directions, d_inner, **dd))
        self.A_log, self.D = ssm_parameters((num_directions, d_inner), d_state, device)  # float32 (layers.ssm_init)
        self.out_norm = LayerNorm(self.d_inner, eps=1e-5, autocast_output=True, **dd)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False, **dd)
        self.reset_ssm_parameters()
        # parameter-free Identity for the sum merge: no state-dict keys, and TorchScript sees one module type
        self.attn = RouteChannelAttention(self.d_inner, **dd) if merge == "attention" else nn.Identity()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4):
        """Mamba's initialisation of the raw SSM parameters (VMamba ``ssm_init='v0'``).

        x_proj: nn.Linear's default, U(+-1/sqrt(d_inner)); then ``vssm.layers.ssm_init``: dt_proj weight U(+-R^-0.5),
        dt bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max] (floored); A_log = log(1..N); D = 1.
        """
        bound = self.d_inner ** -0.5
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        init_dt_projection_(self.dt_proj_weight, self.dt_proj_bias, dt_min, dt_max, dt_floor)
        init_a_log_d_(self.A_log, self.D)

    def scan(self, x: Tensor) -> Tensor:
        """Scan of the conv features x (B, d_inner, H, W), channels-last storage, along the K paths, merged;
        returns (B, L, d_inner)."""
        height, width = x.shape[-2:]
        paths = grid_paths(self.path_kind, height, width, self.directions, x.device)
        if self.merge == "sum":
            y = projected_multi_scan(x.flatten(2), self.x_proj_weight, self.dt_proj_weight, self.dt_proj_bias,
                                     self.A_log, self.D, paths, "sum")  # (B, d_inner, L)
            return y.transpose(1, 2)
        ys = projected_multi_scan(x.flatten(2), self.x_proj_weight, self.dt_proj_weight, self.dt_proj_bias,
                                  self.A_log, self.D, paths, "none")  # (B, K, d_inner, L)
        routes = ys.transpose(2, 3)  # (B, K, L, d_inner)
        if self.reproduce_v_unscan_bug and self.path_kind == "local":
            routes = official_v_unscan(routes, self.directions, height, width)
        return self.attn(routes)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C), or (B, C, H, W) -> (B, C, H, W) when channel_first."""
        if self.channel_first:
            x = x.permute(0, 2, 3, 1)
        x = self.in_proj(x)  # (B, H, W, d_inner or 2 d_inner)
        z = x
        if self.gated:
            x, z = x.chunk(2, dim=-1)
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)  # (B, d_inner, H, W), no copy if no z
        x = F.silu(self.conv2d(x))
        y = self.out_norm(self.scan(x)).unflatten(1, x.shape[-2:])  # (B, H, W, d_inner)
        if self.gated:
            y = y * F.silu(z)
        y = self.out_proj(y)
        return y.permute(0, 3, 1, 2) if self.channel_first else y
