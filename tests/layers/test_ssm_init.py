"""One SSM initialiser for every mixer: S4D-real A_log, D = 1, Mamba's dt projection, and the dtype rule (A_log and D
float32 whatever ``dtype=``; the projections follow ``dtype=``)."""
import math

import pytest
import torch

from vssm.layers.local_mixer import LocalMambaMixer
from vssm.layers.mamba_mixer import MambaMixer
from vssm.layers.simba_mixer import CausalMambaMixer
from vssm.layers.ss2d import SS2D
from vssm.layers.ssm_init import dt_bias_init, init_dt_projection_, ssm_parameters
from vssm.layers.zigzag_mixer import ZigzagMamba2D

MIXERS = {
    "mamba": lambda **dd: MambaMixer(16, d_state=4, **dd),
    "ss2d": lambda **dd: SS2D(16, d_state=4, **dd),
    "ss2d_local": lambda **dd: SS2D(16, d_state=4, path_kind="local", directions=["h", "w2_flip"], **dd),
    "local_vim": lambda **dd: LocalMambaMixer(16, ["h", "v"], d_state=4, **dd),
    "zigzag": lambda **dd: ZigzagMamba2D(16, d_state=4, **dd),
    "causal": lambda **dd: CausalMambaMixer(16, d_state=4, **dd),
}


def test_ssm_parameters_values():
    A_log, D = ssm_parameters((3, 5), 4)
    assert A_log.shape == (3, 5, 4) and D.shape == (3, 5)
    assert A_log.dtype == D.dtype == torch.float32
    torch.testing.assert_close(-torch.exp(A_log), -torch.arange(1., 5.).expand(3, 5, 4))
    assert torch.equal(D, torch.ones(3, 5))


def test_dt_projection_init_range():
    torch.manual_seed(0)
    weight, bias = torch.empty(2, 64, 3), torch.empty(2, 64)
    init_dt_projection_(weight, bias, dt_min=1e-3, dt_max=0.1)
    assert weight.abs().max() <= 3 ** -0.5
    dt = torch.nn.functional.softplus(bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert dt_bias_init((1000,), 1e-3, 1e-3, 1e-4).allclose(torch.full((1000,), math.log(math.expm1(1e-3))))


@pytest.mark.parametrize("name", MIXERS)
def test_every_mixer_follows_the_dtype_rule(name):
    mixer = MIXERS[name](dtype=torch.bfloat16)
    assert mixer.A_log.dtype == torch.float32 and mixer.D.dtype == torch.float32
    others = {n: p.dtype for n, p in mixer.named_parameters() if n not in ("A_log", "D")}
    assert set(others.values()) == {torch.bfloat16}, others
    torch.testing.assert_close(mixer.A_log.exp()[..., 0, :], torch.arange(1., 5.).expand_as(mixer.A_log[..., 0, :]))
    assert torch.equal(mixer.D, torch.ones_like(mixer.D))


@pytest.mark.parametrize("name", MIXERS)
def test_every_mixer_builds_on_meta(name):
    mixer = MIXERS[name](device="meta")
    assert mixer.A_log.is_meta and mixer.A_log.dtype == torch.float32
