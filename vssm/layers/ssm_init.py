"""The SSM parameters every selective-scan mixer owns, and Mamba's initialisation of them, in one place.

Per scan direction (a leading K axis where a mixer stacks directions) and inner channel:

- ``A_log`` (..., d_inner, d_state): S4D-real, A = -exp(A_log) = -(1, 2, ..., d_state) for every channel.
- ``D`` (..., d_inner): the skip connection, 1.
- the step size: a low-rank projection dt_rank -> d_inner whose weight is U(+-dt_rank^-0.5) and whose bias is the
  inverse softplus of a step drawn log-uniformly in [dt_min, dt_max] (floored at dt_floor), so that
  softplus(bias) starts in that range.

Dtype rule (mamba_ssm's convention): ``A_log`` and ``D`` are float32 whatever ``dtype=`` a mixer is built with, because
the scan's state and its accumulations are float32; the projections (the dt projection's weight and bias included)
follow ``dtype=``. ``ssm_parameters`` applies the rule; every mixer builds its ``A_log`` and ``D`` with it. A later
``module.to(dtype)`` casts every parameter, as in mamba_ssm.

Families whose official effective initialisation differs (timm's trunc-normal over every Linear after Mamba's init:
Vim, VideoMamba, LocalVim, PlainMamba, SiMBA) overwrite the dt projection afterwards; ``A_log`` and ``D`` are the same
everywhere.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["ssm_parameters", "init_a_log_d_", "init_dt_projection_", "dt_bias_init"]


@torch.no_grad()
def init_a_log_d_(A_log: Tensor, D: Tensor) -> None:
    """In place: A_log (..., d_inner, d_state) = log(1..d_state) (S4D-real), D = 1."""
    states = torch.arange(1, A_log.shape[-1] + 1, dtype=torch.float32, device=A_log.device)
    A_log.copy_(states.log().expand_as(A_log))
    D.fill_(1.0)


def ssm_parameters(
        shape: Sequence[int],
        d_state: int,
        device=None,
) -> Tuple[nn.Parameter, nn.Parameter]:
    """``A_log`` (*shape, d_state) and ``D`` (*shape) as float32 Parameters with Mamba's initialisation.

    Args:
        shape: Leading shape, (d_inner,) or (num_directions, d_inner).
        d_state: SSM state size N.
        device: Device of the parameters (float32 whatever the mixer's dtype, see the module docstring).
    """
    A_log = nn.Parameter(torch.empty(*shape, d_state, device=device, dtype=torch.float32))
    D = nn.Parameter(torch.empty(*shape, device=device, dtype=torch.float32))
    init_a_log_d_(A_log, D)
    return A_log, D


def dt_bias_init(
        shape: Sequence[int],
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_floor: float = 1e-4,
        device: Optional[torch.device] = None,
) -> Tensor:
    """float32 bias whose softplus is log-uniform in [dt_min, dt_max] (floored at dt_floor): softplus^-1(dt)."""
    dt = torch.exp(torch.rand(*shape, dtype=torch.float32, device=device) * (math.log(dt_max) - math.log(dt_min))
                   + math.log(dt_min)).clamp(min=dt_floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse of softplus


@torch.no_grad()
def init_dt_projection_(
        weight: Tensor,
        bias: Tensor,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_floor: float = 1e-4,
) -> None:
    """In place, Mamba's step-size initialisation: ``weight`` (..., d_inner, dt_rank) U(+-dt_rank^-0.5), ``bias``
    (..., d_inner) = ``dt_bias_init`` (weight drawn first, then the bias)."""
    bound = weight.shape[-1] ** -0.5
    nn.init.uniform_(weight, -bound, bound)
    bias.copy_(dt_bias_init(bias.shape, dt_min, dt_max, dt_floor, bias.device))
