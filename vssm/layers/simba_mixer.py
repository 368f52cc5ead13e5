"""SiMBA's token mixer: the stock ``mamba_ssm.Mamba`` (v1) over raster-order tokens, one causal scan.

    x, z = in_proj(tokens)                          (E = expand * C channels each; no bias)
    u    = silu(causal depthwise conv1d(x))         (width d_conv, with bias, left-padded)
    dt, B, C = split(x_proj(u))                     (dt_rank, d_state, d_state)
    y    = selective_scan(u, W_dt dt, -exp(A_log), B, C, D, z, b_dt, softplus)     (dt bias applied once, in the scan)
    out  = out_proj(y)

Every scan input is handed over as a channels-last view of a (B, L, E) or (B, L, N) tensor (the causal conv runs as
a channels-last 2-D depthwise conv on a 1 x L map), so the Triton scan reads whole rows of channels per token.
"""
import math
from typing import Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..ops import selective_scan
from .ssm_init import init_dt_projection_, ssm_parameters

__all__ = ["CausalMambaMixer"]


class CausalMambaMixer(nn.Module):
    """Mamba (v1) token mixer: one causal selective scan along the token order.

    Parameter names follow ``mamba_ssm.Mamba``: in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj.
    """

    def __init__(
            self,
            dim: int,
            d_state: int = 16,
            d_conv: int = 4,
            expand: int = 2,
            dt_rank: Union[int, str] = "auto",
            bias: bool = False,
            conv_bias: bool = True,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: Model channels C.
            d_state: SSM state size N (SiMBA: 64).
            d_conv: Causal depthwise conv width.
            expand: Inner width d_inner (E) = expand * C.
            dt_rank: Rank of the step-size projection ('auto' = ceil(C / 16)).
            bias: Bias of in_proj / out_proj.
            conv_bias: Bias of the causal conv.
        """
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.d_inner = int(expand * dim)
        self.d_state = d_state
        self.d_conv = d_conv
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=bias, **dd)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, padding=d_conv - 1, groups=self.d_inner,
                                bias=conv_bias, **dd)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **dd)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **dd)
        init_dt_projection_(self.dt_proj.weight, self.dt_proj.bias)
        self.A_log, self.D = ssm_parameters((self.d_inner,), d_state, device)  # float32 (layers.ssm_init)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=bias, **dd)
        self.recompute = 1  # >= 2: no chunk states and no conv output kept; the backward recomputes them

    def _causal_conv(self, x: Tensor) -> Tensor:
        """Causal depthwise conv, channels-last: (B, L, E) -> (B, E, L) view of a (B, L, E) tensor."""
        length = x.shape[1]
        x = x.transpose(1, 2).unsqueeze(2).contiguous(memory_format=torch.channels_last)  # (B, E, 1, L)
        x = F.conv2d(x, self.conv1d.weight.unsqueeze(2), self.conv1d.bias, 1, (0, self.d_conv - 1), 1,
                     self.d_inner)  # (B, E, 1, L + d_conv - 1), left part is causal
        return x[:, :, 0, :length]

    def _conv_silu(self, u: Tensor) -> Tensor:
        """silu(causal depthwise conv) of u (B, L, E) -> (B, E, L), channels-last."""
        return F.silu(self._causal_conv(u))

    def forward(self, x: Tensor) -> Tensor:
        """Mix tokens causally.

        Args:
            x: (B, L, C) tokens in scan order.

        Returns:
            (B, L, C).
        """
        u, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, E) each
        if self.recompute >= 2 and torch.is_grad_enabled() and not torch.jit.is_scripting():
            # the conv's channels-last input copy and its output are recomputed in the backward from u, a view of
            # in_proj's output, which z keeps alive anyway
            u = checkpoint(self._conv_silu, u, use_reentrant=False)
        else:
            u = self._conv_silu(u)
        dt, B, C = torch.split(self.x_proj(u.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (B, L, E); the bias goes into the scan
        A = -torch.exp(self.A_log.float())  # (E, N)
        # every argument positional: TorchScript does not apply the defaults of the ignored op; then A <= 0
        # (``a_nonpositive``) and the chunk states recomputed in the backward or not
        y = selective_scan(u, dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), self.D.float(),
                           z.transpose(1, 2), self.dt_proj.bias.float(), True, False, True,
                           self.recompute >= 2)  # (B, E, L)
        return self.out_proj(y.transpose(1, 2))
