"""LocalMamba's plain-model token mixer (LocalVim, official ``MultiMamba``) and the token routing it runs on.

Paper: `LocalMamba: Visual State Space Model with Windowed Selective Scan` - https://arxiv.org/abs/2403.09338;
original code https://github.com/hunto/LocalMamba (Apache-2.0), commit 75e5d1f.

Routes are ``vssm.ops.scan_paths`` kind 'local' (``h``, ``v``, ``wK`` windows and their ``_flip``s). ``route_tokens``
materialises the K routes of a token sequence (zeros at window-padding steps) and ``unroute_tokens`` brings route
outputs back to raster order; both are gathers in forward and backward (``_Route`` / ``_Unroute``: autograd's own
backward of indexing would scatter with accumulation, which is slow). The hierarchical LocalVMamba mixer is
``vssm.layers.ss2d.SS2D(path_kind='local')``.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath, register_notrace_function, trunc_normal_
from torch import Tensor, nn

from vssm.layers.norm import RmsNorm
from vssm.layers.ss2d import RouteChannelAttention, official_v_unscan
from vssm.layers.ssm_init import init_a_log_d_, ssm_parameters
from vssm.ops import causal_conv1d, scan_paths, selective_scan
from vssm.ops.common import graph_constant

__all__ = ["LocalMambaMixer", "LocalVimBlock", "route_tables", "route_tokens", "unroute_tokens"]


@graph_constant(maxsize=64)  # cached; a constant of torch.compile graphs (``scan_paths.inverse`` reads values)
def route_tables(directions: Tuple[str, ...], height: int, width: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """(gather (K, Lp) with padding steps reading index L, un-scan (K, L) step of each token) for the routes."""
    paths = scan_paths.build("local", (height, width), device=device, directions=directions)
    length = height * width
    gather = torch.where(paths < 0, torch.full_like(paths, length), paths)
    return gather, scan_paths.inverse(paths)


class _Route(torch.autograd.Function):
    """tokens (B, C, L) -> routes (B, K, C, Lp) along ``gather`` (padding steps read a zero). Every token sits once on
    every route, so its gradient is the sum of its K route steps, read through ``unscan``: a gather where autograd's
    backward of indexing scatters with accumulation (sort-based: 45% of a LocalVim-T training step on an H100)."""

    @staticmethod
    def forward(ctx, tokens: Tensor, gather: Tensor, unscan: Tensor) -> Tensor:
        ctx.save_for_backward(unscan)
        batch, channels, _ = tokens.shape
        routes = F.pad(tokens, (0, 1)).index_select(-1, gather.flatten())
        return routes.view(batch, channels, *gather.shape).transpose(1, 2)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (unscan,) = ctx.saved_tensors
        batch, num_directions, channels, _ = grad.shape
        return grad.gather(-1, unscan[None, :, None].expand(batch, num_directions, channels, -1)).sum(1), None, None


class _Unroute(torch.autograd.Function):
    """routes (B, K, C, Lp) -> (B, K, C, L) in raster order through ``unscan``; the backward gathers along ``gather``
    (padding steps get zeros) where autograd's would scatter-add."""

    @staticmethod
    def forward(ctx, routes: Tensor, gather: Tensor, unscan: Tensor) -> Tensor:
        ctx.save_for_backward(gather)
        return routes.gather(-1, unscan[None, :, None].expand(*routes.shape[:3], -1))

    @staticmethod
    def backward(ctx, grad: Tensor):
        (gather,) = ctx.saved_tensors
        return F.pad(grad, (0, 1)).gather(-1, gather[None, :, None].expand(*grad.shape[:3], -1)), None, None


@register_notrace_function
@torch.jit.ignore
def route_tokens(tokens: Tensor, directions: List[str], height: int, width: int) -> Tensor:
    """(B, C, H*W) tokens in raster order -> (B, K, C, Lp) in route order, zeros at padding steps."""
    return _Route.apply(tokens, *route_tables(tuple(directions), height, width, tokens.device))


@register_notrace_function
@torch.jit.ignore
def unroute_tokens(routes: Tensor, directions: List[str], height: int, width: int) -> Tensor:
    """(B, K, C, Lp) route outputs -> (B, K, C, H*W) in raster order (the padding steps are dropped)."""
    return _Unroute.apply(routes, *route_tables(tuple(directions), height, width, routes.device))


class LocalMambaMixer(nn.Module):
    """LocalVim's token mixer (official ``MultiMamba``): Mamba along each of K routes, merged by channel attention.

    in_proj -> [x | z] routed together -> per route: causal depthwise conv -> SiLU -> x_proj -> (dt, B, C) ->
    selective scan with D skip and SiLU(z) gate -> un-scan -> per-route channel attention -> sum -> out_proj.
    With a middle class token, the token is taken out before routing and inserted at index N // 2 of every route.
    The causal conv runs in route order over the padded routes, so window padding feeds it zeros as real steps, and
    the K routes run as one selective scan over K * d_inner channels.
    """

    def __init__(
            self,
            dim: int,
            directions: Sequence[str],
            d_state: int = 16,
            d_conv: int = 4,
            expand: int = 2,
            middle_cls_token: bool = False,
            tie_route_A: bool = True,
            reproduce_v_unscan_bug: bool = True,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: Token width.
            directions: Route names in parameter order, e.g. ['h', 'v_flip', 'w7', 'w7_flip'].
            d_state: SSM state size N.
            d_conv: Causal conv kernel size.
            expand: Inner width d_inner = expand * dim.
            middle_cls_token: The token sequence carries a class token at index (H*W) // 2.
            tie_route_A: Run every route with one A (the mean of the stored copies), as the official model does.
            reproduce_v_unscan_bug: Official 'v' un-scan (wrong on non-square grids).
        """
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        self.directions = list(directions)
        self.d_inner = expand * dim
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16)
        self.middle_cls_token = middle_cls_token
        self.tie_route_A = tie_route_A
        self.reproduce_v_unscan_bug = reproduce_v_unscan_bug
        self.num_directions = len(directions)
        num_directions, d_inner, dt_rank = self.num_directions, self.d_inner, self.dt_rank
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False, **dd)
        # depthwise, one conv per route
        self.conv1d_weight = nn.Parameter(torch.empty(num_directions, d_inner, d_conv, **dd))
        self.conv1d_bias = nn.Parameter(torch.empty(num_directions, d_inner, **dd))
        self.x_proj_weight = nn.Parameter(torch.empty(num_directions, dt_rank + 2 * d_state, d_inner, **dd))
        self.dt_proj_weight = nn.Parameter(torch.empty(num_directions, d_inner, dt_rank, **dd))
        self.dt_proj_bias = nn.Parameter(torch.empty(num_directions, d_inner, **dd))
        self.A_log, self.D = ssm_parameters((num_directions, d_inner), d_state, device)  # float32 (layers.ssm_init)
        self.attn = RouteChannelAttention(d_inner, **dd)
        self.out_proj = nn.Linear(d_inner, dim, bias=False, **dd)
        self.recompute = 1  # >= 2: the scan keeps no chunk states; the backward recomputes them

    @torch.no_grad()
    def reset_parameters(self, depth: int):
        """The official effective init (timm's trunc-normal(0.02) over every Linear after Mamba's init, so the dt
        projections get trunc-normal weights and zero biases); A_log and D by ``vssm.layers.ssm_init``; ``depth``
        scales out_proj as Mamba does."""
        for linear in (self.in_proj, self.attn.global_reduce, self.attn.channel_select):
            trunc_normal_(linear.weight, std=0.02)
        for bias in (self.attn.global_reduce.bias, self.attn.channel_select.bias, self.dt_proj_bias):
            nn.init.zeros_(bias)
        for weight in (self.x_proj_weight, self.dt_proj_weight):
            trunc_normal_(weight, std=0.02)
        bound = self.conv1d_weight.shape[-1] ** -0.5  # nn.Conv1d's default for a depthwise conv
        nn.init.uniform_(self.conv1d_weight, -bound, bound)
        nn.init.uniform_(self.conv1d_bias, -bound, bound)
        nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
        self.out_proj.weight /= math.sqrt(depth)
        init_a_log_d_(self.A_log, self.D)

    def forward(self, x: Tensor, grid: List[int]) -> Tensor:
        """(B, T, C) tokens of an (H, W) grid (T = H*W, plus the class token at index H*W // 2) -> (B, T, C)."""
        height, width = grid[0], grid[1]
        batch = x.shape[0]
        num_directions, d_inner = self.num_directions, self.d_inner
        xz = self.in_proj(x).transpose(1, 2)  # (B, 2 d_inner, T)
        cls_index = (height * width) // 2
        cls_xz = xz[:, :, cls_index:cls_index + 1]
        if self.middle_cls_token:
            xz = torch.cat([xz[:, :, :cls_index], xz[:, :, cls_index + 1:]], dim=2)
        xz = route_tokens(xz, self.directions, height, width)  # (B, K, 2 d_inner, Lp)
        if self.middle_cls_token:
            cls_xz = cls_xz.unsqueeze(1).expand(-1, num_directions, -1, -1)
            xz = torch.cat([xz[..., :cls_index], cls_xz, xz[..., cls_index:]], dim=-1)
        steps = xz.shape[-1]
        x_routes, z = xz.chunk(2, dim=2)  # (B, K, d_inner, L') each
        channels = num_directions * d_inner  # the K routes side by side, one scan
        u = causal_conv1d(x_routes.reshape(batch, channels, steps), self.conv1d_weight.view(1, channels, -1),
                          self.conv1d_bias.view(1, -1), [False], "silu", None)[:, 0]  # route order
        x_dbl = torch.matmul(self.x_proj_weight, u.view(batch, num_directions, d_inner, steps))  # (B, K, R+2N, L')
        dt_low, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        delta = torch.matmul(self.dt_proj_weight, dt_low)  # (B, K, d_inner, L')
        A_log = self.A_log.mean(0, keepdim=True).expand_as(self.A_log) if self.tie_route_A else self.A_log
        A = -torch.exp(A_log.float()).flatten(0, 1)  # (K * d_inner, N)
        # every argument positional (TorchScript); then A <= 0 (``a_nonpositive``) and the chunk states recomputed
        # in the backward or not
        y = selective_scan(u, delta.reshape(batch, channels, steps), A, B, C, self.D.float().flatten(),
                           z.reshape(batch, channels, steps), self.dt_proj_bias.float().flatten(), True, False, True,
                           self.recompute >= 2)
        y = y.view(batch, num_directions, d_inner, steps)
        cls_y = y[..., cls_index:cls_index + 1]
        if self.middle_cls_token:
            y = torch.cat([y[..., :cls_index], y[..., cls_index + 1:]], dim=-1)
        routes = unroute_tokens(y, self.directions, height, width).transpose(2, 3)  # (B, K, H*W, d_inner)
        if self.reproduce_v_unscan_bug:
            routes = official_v_unscan(routes, self.directions, height, width)
        if self.middle_cls_token:
            routes = torch.cat([routes[:, :, :cls_index], cls_y.transpose(2, 3), routes[:, :, cls_index:]], dim=2)
        return self.out_proj(self.attn(routes))


class LocalVimBlock(nn.Module):
    """Pre-norm block with a separate residual stream (Mamba's fused add + norm), kept in float32:

    residual = residual + DropPath(hidden) (the first block starts from hidden); hidden = mixer(RMSNorm(residual)).
    """

    def __init__(self, dim: int, mixer: LocalMambaMixer, drop_path: float = 0.0, norm_eps: float = 1e-5, device=None,
                 dtype=None):
        super().__init__()
        self.norm = RmsNorm(dim, eps=norm_eps, autocast_output=True, device=device, dtype=dtype)
        self.mixer = mixer
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, hidden: Tensor, residual: Optional[Tensor], grid: List[int]) -> Tuple[Tensor, Tensor]:
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        residual = residual.float()
        return self.mixer(self.norm(residual).to(hidden.dtype), grid), residual
