"""S4ND layer: every layer case of the official golden fixtures (float32 within the case's tolerance, float64 against
the official float64 runs), the kernel cache, autocast, the optimizer hints, the stateful C~ and its doubling, the key
conversion, layouts and gradients; the two convolution paths (FFT and Toeplitz) and their choice; the deterministic
init and the time-kernel re-initialisation of the image -> video inflation; the materialised (direct-convolution)
kernels of the export; the flop count by hand."""
import copy
import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import vssm.layers.s4nd as s4nd_layer
from vssm.layers.s4nd import (S4ND, SSMKernelDPLR, convert_official_s4nd, direct_kernels, generate_matrices,
                              generate_operators, generate_spectra, kernel_params, s4nd_from_official,
                              ssm_convolution, ssm_init)
from vssm.ops.ssm_kernel import bilinear, conj_pairs, dplr_state_matrix

try:
    from tests.models.contract import load_case
except Exception:  # the contract helpers import the whole zoo; fall back to a local reader
    from safetensors.torch import load_file

    def load_case(family, case, device="cpu"):
        root = Path(os.environ.get("VSSM_FIXTURES", Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"))
        path = root / family
        if not path.is_dir():
            pytest.skip(f"golden fixtures not found at {path} (set VSSM_FIXTURES to the shared fixtures folder)")
        meta = json.loads((path / f"{case}.json").read_text())
        return meta, load_file(str(path / f"{case}.weights.safetensors")), load_file(
            str(path / f"{case}.io.safetensors"), device=device)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared CPU they cost a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# (case, input key suffix, rate): every stored input of the layer cases
LAYER_CASES = [
    ("s4nd_layer1d_vit", "", 1.0), ("s4nd_layer1d_vit", ".short", 1.0),
    ("s4nd_layer2d_dplr", "", 1.0), ("s4nd_layer2d_dplr", ".small", 1.0), ("s4nd_layer2d_dplr", ".rate2", 2.0),
    ("s4nd_layer2d_s4d", "", 1.0), ("s4nd_layer2d_s4d", ".rate2", 2.0),
    ("s4nd_layer2d_stem", "", 1.0),
    ("s4nd_layer3d", "", 1.0),
]


def official_layer(case, dtype=torch.float32):
    meta, sd, io = load_case("s4nd", case)
    layer = s4nd_from_official(meta["kwargs"])
    missing, unexpected = layer.load_state_dict(convert_official_s4nd(sd, layer), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return meta, layer.to(dtype).eval(), io


@pytest.mark.parametrize("case, suffix, rate", LAYER_CASES)
def test_official_fixture_float32(case, suffix, rate):
    meta, layer, io = official_layer(case)
    with torch.no_grad():
        y = layer(io["input" + suffix], rate=rate)
    torch.testing.assert_close(y, io["output" + suffix], atol=meta["suggested_atol"], rtol=meta["suggested_rtol"])


@pytest.mark.parametrize("case, suffix, rate", LAYER_CASES)
def test_official_fixture_float64(case, suffix, rate):
    """The official code run in float64 on the same weights: agreement to ~1e-10 relative (the float32 gap of the
    official code itself is up to 1e-3)."""
    _, layer, io = official_layer(case, torch.float64)
    with torch.no_grad():
        y = layer(io["input" + suffix].double(), rate=rate)
    ref = io["output" + suffix + ".fp64"]
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, ref, atol=1e-9 * ref.abs().max().item(), rtol=1e-8)


def test_vit_layer_uses_only_the_first_kernel():
    """The official ViT layer (dim=2 default, int l_max) builds kernel.1 but a (B, L, D) input uses kernel.0 only;
    a 1-D rebuild without kernel.1 computes the same."""
    meta, layer, io = official_layer("s4nd_layer1d_vit")
    _, sd, _ = load_case("s4nd", "s4nd_layer1d_vit")
    one_d = s4nd_from_official({**meta["kwargs"], "dim": 1})
    one_d.load_state_dict(convert_official_s4nd(sd, one_d))
    assert len(one_d.kernel) == 1
    with torch.no_grad():
        torch.testing.assert_close(one_d.eval()(io["input"]), layer(io["input"]), atol=0, rtol=0)


# --- kernel cache --------------------------------------------------------------------------------------------------

class CountCalls:
    """Counts the 1-D kernels generated (``vssm.layers.s4nd.kernels_forward``: one per axis)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        forward = s4nd_layer.kernels_forward

        def counted(kernels, *args, **kwargs):
            self.calls += len(kernels)
            return forward(kernels, *args, **kwargs)

        monkeypatch.setattr(s4nd_layer, "kernels_forward", counted)


def small_layer(**kwargs):
    torch.manual_seed(0)
    defaults = dict(d_model=4, d_state=8, l_max=[6, 5], init="fourier", dt_min=0.1, dt_max=1.0)
    return S4ND(**{**defaults, **kwargs})


def test_cache_hits_in_eval_and_is_dropped_on_changes(monkeypatch):
    counter = CountCalls(monkeypatch)
    layer = small_layer().eval()
    x = torch.randn(2, 4, 6, 5)
    with torch.no_grad():
        y0 = layer(x)
        assert counter.calls == 2  # one kernel per axis
        torch.testing.assert_close(layer(x), y0, atol=0, rtol=0)
        assert counter.calls == 2  # hit
        layer(torch.randn(1, 4, 6, 5))
        assert counter.calls == 2  # batch does not matter
        layer(x[..., :4])  # length change
        assert counter.calls == 4
        layer(x[..., :4])
        assert counter.calls == 4
        layer(x, rate=2.0)  # rate change
        assert counter.calls == 6
        layer(x)
        assert counter.calls == 8
        layer.kernel[1].inv_dt.add_(0.1)  # an in-place parameter update (optimizer step, load_state_dict)
        y1 = layer(x)
        assert counter.calls == 10 and not torch.allclose(y1, y0)
        layer(x.bfloat16())  # dtype change
        assert counter.calls == 12
    with torch.inference_mode():
        layer(x)
        assert counter.calls == 14


def test_cache_follows_dtype_and_state_dict_changes(monkeypatch):
    counter = CountCalls(monkeypatch)
    layer = small_layer().eval()
    x = torch.randn(2, 4, 6, 5)
    with torch.no_grad():
        y0 = layer(x)
        layer.double()
        y64 = layer(x.double())
        assert counter.calls == 4 and y64.dtype == torch.float64
        torch.testing.assert_close(y64.float(), y0, atol=2e-3, rtol=1e-3)  # fourier modes: float32 noise ~1e-4
        other = small_layer()
        other.kernel[0].C.data.mul_(2.0)
        layer.load_state_dict(other.double().state_dict())
        y2 = layer(x.double())
        assert counter.calls == 6
        torch.testing.assert_close(y2, other.eval()(x.double()))


def test_cache_never_used_in_training_or_with_a_graph(monkeypatch):
    counter = CountCalls(monkeypatch)
    layer = small_layer()
    x = torch.randn(2, 4, 6, 5)
    layer(x)
    layer(x)
    assert counter.calls == 4 and layer._kernel_cache is None  # training: regenerated every forward
    layer.eval()
    y = layer(x)  # eval with grad enabled and trainable kernels: no cache, gradients reach the kernels
    y.sum().backward()
    assert layer.kernel[0].C.grad is not None
    layer(x)
    assert counter.calls == 8 and layer._kernel_cache is None
    with torch.no_grad():
        layer(x)
    assert layer._kernel_cache is not None
    layer.train()
    assert layer._kernel_cache is None


def test_cache_can_be_disabled(monkeypatch):
    counter = CountCalls(monkeypatch)
    layer = small_layer(kernel_cache=False).eval()
    with torch.no_grad():
        layer(torch.randn(1, 4, 6, 5))
        layer(torch.randn(1, 4, 6, 5))
    assert counter.calls == 4


# --- numerics policy -----------------------------------------------------------------------------------------------

def test_bf16_autocast_runs_the_ssm_in_float32():
    meta, layer, io = official_layer("s4nd_layer1d_vit")
    x = io["input"]
    with torch.no_grad():
        y32 = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
            y_bf16_in = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16  # the output linear follows autocast
    # only the output linear ran in bf16: error of one bf16 matmul, not of bf16 FFTs
    torch.testing.assert_close(y.float(), y32, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(y_bf16_in.float(), y32, atol=6e-2, rtol=6e-2)


def test_linear_layer_keeps_input_dtype_under_autocast():
    layer = small_layer().eval()
    x = torch.randn(1, 4, 6, 5)
    with torch.no_grad():
        y32 = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, y32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-3)])
def test_cpu_and_gpu_agree(dtype, tol):
    """Same numbers on both devices (float32: within the float32 noise of fourier-init DPLR kernels, ~1e-4)."""
    layer = small_layer(l_max=[8, 8]).to(dtype).eval()
    x = torch.randn(2, 4, 8, 8, dtype=dtype)
    with torch.no_grad():
        y_cpu, y_cpu_rate = layer(x), layer(x, rate=2.0)
        layer.cuda()
        y_gpu, y_gpu_rate = layer(x.cuda()).cpu(), layer(x.cuda(), rate=2.0).cpu()
    scale = y_cpu.abs().max().item()
    torch.testing.assert_close(y_gpu, y_cpu, atol=tol * scale, rtol=tol)
    torch.testing.assert_close(y_gpu_rate, y_cpu_rate, atol=tol * scale, rtol=tol)


# --- parameters ----------------------------------------------------------------------------------------------------

def test_optim_hints_follow_the_official_register():
    layer = S4ND(8, d_state=8, l_max=[4, 4], lr=0.001, linear=False, final_act="glu")
    kernel = layer.kernel[0]
    for name in ("inv_dt", "A_real", "A_imag", "B", "P"):
        assert getattr(kernel, name)._optim == {"lr": 0.001, "weight_decay": 0.0}
    assert kernel.C._optim == {"lr": 0.001}  # global weight decay
    assert not hasattr(layer.D, "_optim") and not hasattr(layer.output_linear.weight, "_optim")
    assert layer.output_linear.bias._optim == {"weight_decay": 0.0}  # transposed output linear (official)
    hints = layer.optim_hints()
    assert hints["kernel.1.C"] == {"lr": 0.001} and hints["kernel.0.inv_dt"]["weight_decay"] == 0.0
    frozen = S4ND(8, d_state=8, l_max=[4, 4], lr=0.0)
    names = dict(frozen.named_parameters())
    assert "kernel.0.A_real" not in names and "kernel.0.A_real" in frozen.state_dict()
    default = S4ND(8, d_state=8, l_max=[4, 4])
    assert default.kernel[0].A_real._optim == {"weight_decay": 0.0} and default.kernel[0].C._optim == {}


def test_initialisations():
    """fourier: Re A = 1e-4 (clamped), Im A = pi k descending with the zero stored as 1e-4; legs: Re A = 1/2;
    diag-lin: Im A = pi n, B = 1, no P."""
    fourier = S4ND(2, d_state=8, l_max=[4, 4], init="fourier").kernel[0]
    torch.testing.assert_close(fourier.A_real, torch.full((2, 4), torch.log(torch.tensor(1e-4)).item()))
    expected = torch.tensor([3.0, 2.0, 1.0, 0.0]) * torch.pi
    torch.testing.assert_close(fourier.A_imag[0], expected.clamp(min=1e-4), atol=1e-4, rtol=1e-5)
    legs = S4ND(2, d_state=8, l_max=[4, 4], init="legs", n_ssm=1).kernel[0]
    torch.testing.assert_close(torch.exp(legs.A_real), torch.full((1, 4), 0.5))
    assert torch.view_as_complex(legs.B).imag.abs().max() <= 2.0 + 1e-6
    diag = S4ND(2, d_state=8, l_max=[4, 4], init="diag-lin", mode="s4d").kernel[0]
    torch.testing.assert_close(diag.A_imag[0], (torch.arange(4.0) * torch.pi).clamp(min=1e-4))
    assert not hasattr(diag, "P") and not hasattr(diag, "l_kernel")
    torch.testing.assert_close(torch.view_as_complex(diag.B), torch.ones(1, 2, 4, dtype=torch.complex64))
    dt = torch.exp(S4ND(64, d_state=8, l_max=[4], dim=1, dt_min=0.1, dt_max=1.0).kernel[0].inv_dt)
    assert dt.shape == (64, 1) and dt.min() >= 0.1 and dt.max() <= 1.0


def impulse_response(kernel: SSMKernelDPLR, c_raw, length):
    """K[l] = C dA^l dB with the raw (not C~) C, from the dense bilinear system."""
    with torch.no_grad():
        dt, A, B, _, P = kernel_params(kernel)  # (H, 1), (H, N), (H, N), -, (R, H, N): the parameter transforms
    dt, A, B, P = dt.double(), A.to(torch.complex128), B.to(torch.complex128), P.to(torch.complex128)
    dA, dB = bilinear(dt, dplr_state_matrix(A, P), conj_pairs(B))
    taps, state = [], dB
    for _ in range(length):
        taps.append(torch.einsum("chn,hn->ch", conj_pairs(c_raw), state).real)
        state = torch.einsum("hmn,hn->hm", dA, state)
    return torch.stack(taps, -1)


def test_fresh_kernel_sets_up_c_tilde_and_doubles():
    """l_kernel == 0 (an official model never run, or l_max None): the first forward turns C into C~ for its length;
    a longer request doubles. Both reproduce the plain impulse response of the raw C."""
    torch.manual_seed(0)
    kernel = SSMKernelDPLR(3, channels=2, l_max=None, d_state=8, init="legs", dt_min=0.05, dt_max=0.2).double()
    assert kernel.l_kernel.item() == 0
    c_raw = torch.view_as_complex(kernel.C.detach().clone())
    k = kernel(L=6)
    assert kernel.l_kernel.item() == 6
    torch.testing.assert_close(k, impulse_response(kernel, c_raw, 6), atol=1e-9, rtol=1e-7)
    k = kernel(L=12)
    assert kernel.l_kernel.item() == 12
    torch.testing.assert_close(k, impulse_response(kernel, c_raw, 12), atol=1e-9, rtol=1e-7)


def test_kernels_of_like_axes_are_generated_together():
    """``kernels_forward``: DPLR kernels of equal taps, roots of unity and shapes share one ``dplr_kernel`` call (a
    square map's two axes; a 3-D layer's height and width but not its time axis); an S4D kernel and a differently
    shaped DPLR kernel run alone. Each kernel equals its own ``kernel_forward``, values and gradients."""
    torch.manual_seed(0)
    layer = S4ND(4, d_state=8, l_max=[6, 5, 5], channels=2, init="fourier").double()
    kernels = [getattr(layer.kernel, str(i)) for i in range(3)]
    mixed = kernels + [SSMKernelDPLR(4, channels=2, l_max=5, d_state=4, init="legs").double(),
                       s4nd_layer.SSMKernelDiag(4, channels=2, l_max=5, d_state=8, init="diag-lin").double()]
    lengths = [6, 5, 5, 5, 5]
    calls = []
    real = s4nd_layer.dplr_kernel

    def counted(*args, **kwargs):
        calls.append(args[0].shape[0])  # the features of one call
        return real(*args, **kwargs)

    s4nd_layer.dplr_kernel = counted
    try:
        together = s4nd_layer.kernels_forward(mixed, lengths, 0.5)
    finally:
        s4nd_layer.dplr_kernel = real
    assert sorted(calls) == [4, 4, 8]  # the time axis, the small-state kernel, height and width together
    alone = [s4nd_layer.kernel_forward(k, n, 0.5) for k, n in zip(mixed, lengths)]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a, b, atol=1e-13, rtol=1e-12)
    grads = []
    for ks in (together, alone):
        params = [p for k in mixed for p in k.parameters()]
        grads.append(torch.autograd.grad(sum(k.square().sum() for k in ks), params))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_l_kernel_changes_are_seen():
    """The kernel reads ``l_kernel`` from the device only when the buffer changes; an in-place change is seen."""
    torch.manual_seed(0)
    kernel = SSMKernelDPLR(3, channels=2, l_max=None, d_state=8, init="legs").double()
    kernel(L=6)
    assert kernel.l_kernel.item() == 6
    with torch.no_grad():
        kernel.l_kernel.fill_(12)  # as load_state_dict of a 12-tap checkpoint would
    c_before = kernel.C.detach().clone()
    assert kernel(L=12).shape[-1] == 12
    assert kernel.l_kernel.item() == 12 and torch.equal(kernel.C, c_before)  # no doubling from a stale 6


def test_loaded_pre_warmup_state_dict_is_set_up_like_the_official():
    torch.manual_seed(0)
    layer = S4ND(3, d_state=8, l_max=[5], dim=1, init="legs").double()
    raw = SSMKernelDPLR(3, channels=2, l_max=None, d_state=8, init="legs").double()
    sd = {f"kernel.0.{k}": v for k, v in raw.state_dict().items()}
    sd["D"] = layer.D.detach().clone()
    assert sd["kernel.0.l_kernel"].item() == 0
    layer.load_state_dict(sd)
    c_raw = torch.view_as_complex(raw.C.detach().clone())
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(1, 3, 5, dtype=torch.float64))
    assert layer.kernel[0].l_kernel.item() == 5
    torch.testing.assert_close(layer.kernel[0](L=5), impulse_response(layer.kernel[0], c_raw, 5), atol=1e-9,
                               rtol=1e-7)


def test_meta_device_construction():
    layer = S4ND(8, d_state=8, l_max=[4, 4], device="meta")
    assert layer.kernel[0].C.device.type == "meta"
    with torch.device("meta"):
        layer = S4ND(8, d_state=8, l_max=[4, 4], init="fourier")
    assert all(t.device.type == "meta" for t in list(layer.parameters()) + list(layer.buffers()))


# --- layouts, variants, gradients ----------------------------------------------------------------------------------

def test_transposed_and_channels_last_agree():
    torch.manual_seed(0)
    a = S4ND(4, d_state=8, l_max=[5, 6], channels=2, linear=False, final_act="glu", transposed=True)
    b = S4ND(4, d_state=8, l_max=[5, 6], channels=2, linear=False, final_act="glu", transposed=False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4, 5, 6)
    torch.testing.assert_close(b(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), a(x), atol=1e-6, rtol=1e-5)


def test_unidirectional_is_causal():
    torch.manual_seed(0)
    layer = S4ND(3, d_state=8, l_max=[7], dim=1, bidirectional=False, init="legs")
    x = torch.randn(1, 3, 7, requires_grad=True)
    y = layer(x)
    y[..., 3].sum().backward()
    assert x.grad[..., 4:].abs().max() < 1e-6 * x.grad.abs().max()  # zero up to FFT round-off


def test_bidirectional_sees_both_sides():
    layer = small_layer(l_max=[7], dim=1)
    x = torch.randn(1, 4, 7, requires_grad=True)
    layer(x)[..., 3].sum().backward()
    assert (x.grad[..., 4:] != 0).any() and (x.grad[..., :3] != 0).any()


@pytest.mark.parametrize("mode", ["dplr", "s4d"])
def test_gradients_reach_every_parameter(mode):
    torch.manual_seed(0)
    layer = S4ND(4, d_state=8, l_max=[5, 4], mode=mode, init="legs" if mode == "dplr" else "diag-inv",
                 linear=False, final_act="glu", bandlimit=None)
    y = layer(torch.randn(2, 4, 5, 4))
    y.square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_odd_lengths_batch_one_and_longer_than_l_max():
    layer = small_layer(l_max=[4, 4]).eval()
    with torch.no_grad():
        assert layer(torch.randn(1, 4, 3, 7)).shape == (1, 4, 3, 7)  # 7 > l_max: the kernel is zero beyond 4 taps
        assert layer(torch.randn(1, 4, 5, 5), rate=0.5).shape == (1, 4, 5, 5)


def test_dense_stem_output_channels():
    torch.manual_seed(0)
    layer = S4ND(3, d_state=8, l_max=[4, 4], out_channels=5, init="fourier")
    assert layer(torch.randn(2, 3, 8, 8)).shape == (2, 5, 8, 8)
    with pytest.raises(ValueError):
        S4ND(3, l_max=[4, 4], out_channels=5, linear=False)


@pytest.mark.parametrize("options", [dict(), dict(trank=2), dict(out_channels=5, init="fourier")],
                         ids=["depthwise", "trank2", "dense-stem"])
def test_the_two_stages_compose_to_the_layer(options):
    """generate_operators then ssm_convolution (what the benchmark's stage split times) is the layer's SSM core on
    the path it runs (Toeplitz for the depthwise layers, FFT for the stem), and gradients reach the kernel parameters
    through the first stage; the FFT stages (generate_spectra) give the same map."""
    torch.manual_seed(0)
    layer = S4ND(3, d_state=8, l_max=[4, 4], linear=True, **options)
    u = torch.randn(2, 3, 5, 6)
    operators = generate_operators(layer, [5, 6], rate=1.0)
    assert set(operators) == ({"fft_sizes", "spectra"} if "out_channels" in options else {"matrices"})
    expected = layer(u)
    torch.testing.assert_close(ssm_convolution(layer, u, **operators), expected, atol=0, rtol=0)
    ssm_convolution(layer, u, **operators).square().sum().backward()
    assert layer.kernel[0].C.grad is not None and layer.kernel[1].C.grad.abs().sum() > 0
    sizes, spectra = generate_spectra(layer, [5, 6], rate=1.0)
    torch.testing.assert_close(ssm_convolution(layer, u, sizes, spectra), expected, atol=1e-5, rtol=1e-5)


def test_trank_two():
    torch.manual_seed(0)
    layer = S4ND(3, d_state=8, l_max=[4, 4], trank=2).eval()
    assert layer.kernel[0].C.shape[0] == 4
    assert layer(torch.randn(1, 3, 4, 4)).shape == (1, 3, 4, 4)


def test_convert_official_keys():
    sd = {"D": 0, "output_linear.0.weight": 1, "output_linear.0.bias": 2, "kernel.0.C": 3, "kernel.1.C": 4,
          "kernel.0.kernel.log_dt": 5, "kernel.0.kernel.inv_w_real": 6, "kernel.0.kernel.w_imag": 7,
          "kernel.0.kernel.L": 8}
    out = convert_official_s4nd(sd, S4ND(4, d_state=4, l_max=4, dim=1))
    assert out == {"D": 0, "output_linear.weight": 1, "output_linear.bias": 2, "kernel.0.C": 3, "kernel.0.inv_dt": 5,
                   "kernel.0.A_real": 6, "kernel.0.A_imag": 7, "kernel.0.l_kernel": 8}
    assert convert_official_s4nd({"output_linear.weight": 1}) == {"output_linear.weight": 1}
    stem = S4ND(3, d_state=4, l_max=[4, 4], out_channels=2)
    assert stem.D is None and convert_official_s4nd({"D": 0, "kernel.1.C": 1}, stem) == {"kernel.1.C": 1}


def test_official_kwargs_validation():
    with pytest.raises(NotImplementedError, match="weight_norm"):
        s4nd_from_official({"d_model": 4, "l_max": [4, 4], "weight_norm": True})
    layer = s4nd_from_official({"d_model": 4, "l_max": [4, 4], "return_state": True, "contract_version": 1,
                                "kernel": "s4d", "init": "diag-lin"})
    assert layer.mode == "s4d"


def test_deepcopy_keeps_numbers():
    layer = small_layer().eval()
    x = torch.randn(1, 4, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(copy.deepcopy(layer)(x), layer(x))


# --- convolution paths: FFT and Toeplitz --------------------------------------------------------------------------

CONV_MODE_CASES = [  # layer kwargs, input shape, rate
    (dict(d_model=4, l_max=[6, 5], init="fourier"), (2, 4, 6, 5), 1.0),
    (dict(d_model=4, l_max=[6, 5], init="fourier"), (1, 4, 3, 7), 2.0),  # kernels of 3 and 2 taps: shorter than 7
    (dict(d_model=4, l_max=7, dim=1, channels=2, transposed=False, linear=False, final_act="glu"), (2, 7, 4), 1.0),
    (dict(d_model=3, l_max=[4, 5], trank=2, bidirectional=False), (1, 3, 5, 5), 1.0),
    (dict(d_model=4, l_max=[5, 4], mode="s4d", init="diag-lin", bandlimit=0.5), (2, 4, 5, 4), 1.0),
    (dict(d_model=2, l_max=[3, 4, 5], init="fourier"), (1, 2, 3, 4, 5), 1.0),
]


@pytest.mark.parametrize("kwargs, shape, rate", CONV_MODE_CASES)
def test_conv_modes_agree(kwargs, shape, rate):
    """conv_mode 'toeplitz' gives the output and the input and parameter gradients of 'fft' (float64), with the same
    state dict."""
    torch.manual_seed(0)
    layers = {mode: S4ND(d_state=8, dt_min=0.1, dt_max=1.0, conv_mode=mode, **kwargs).double()
              for mode in ("fft", "toeplitz")}
    layers["toeplitz"].load_state_dict(layers["fft"].state_dict())
    x = torch.randn(*shape, dtype=torch.float64)
    results = {}
    for mode, layer in layers.items():
        x_mode = x.clone().requires_grad_()
        y = layer(x_mode, rate=rate)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        results[mode] = y.detach(), x_mode.grad, {n: p.grad for n, p in layer.named_parameters()}
    (y_fft, dx_fft, grads_fft), (y, dx, grads) = results["fft"], results["toeplitz"]
    scale = y_fft.abs().max().item()
    torch.testing.assert_close(y, y_fft, atol=1e-12 * scale, rtol=1e-10)
    torch.testing.assert_close(dx, dx_fft, atol=1e-12 * dx_fft.abs().max().item(), rtol=1e-10)
    assert grads.keys() == grads_fft.keys()
    for name, grad in grads.items():  # (the kernel generation amplifies round-off: ~1e-8 relative for A_imag)
        torch.testing.assert_close(grad, grads_fft[name], atol=1e-7 * grads_fft[name].abs().max().item(),
                                   rtol=1e-7, msg=name)


class CountPaths:
    """Counts the calls of each convolution path (``toeplitz_conv_nd``, ``fft_conv_nd``) of ``vssm.layers.s4nd``."""

    def __init__(self, monkeypatch):
        self.calls = {"toeplitz": 0, "fft": 0}
        for path, name in (("toeplitz", "toeplitz_conv_nd"), ("fft", "fft_conv_nd")):
            monkeypatch.setattr(s4nd_layer, name, self._counted(path, getattr(s4nd_layer, name)))

    def _counted(self, path, fn):
        def counted(*args, **kwargs):
            self.calls[path] += 1
            return fn(*args, **kwargs)
        return counted


def test_auto_picks_toeplitz_for_short_depthwise_maps_and_fft_otherwise(monkeypatch):
    counter = CountPaths(monkeypatch)
    layer, stem = small_layer(), S4ND(3, d_state=8, l_max=[4, 4], out_channels=5, init="fourier")
    assert layer.conv_mode == stem.conv_mode == "auto"
    layer(torch.randn(1, 4, 6, 5))
    assert counter.calls == {"toeplitz": 1, "fft": 0}
    stem(torch.randn(1, 3, 6, 5))  # the dense stem
    assert counter.calls == {"toeplitz": 1, "fft": 1}
    monkeypatch.setattr(s4nd_layer, "TOEPLITZ_MAX_LENGTH", 5)
    layer(torch.randn(1, 4, 6, 5))  # an axis longer than the limit
    assert counter.calls == {"toeplitz": 1, "fft": 2}
    layer(torch.randn(1, 4, 5, 5))
    assert counter.calls == {"toeplitz": 2, "fft": 2}
    layer.conv_mode = "fft"
    layer(torch.randn(1, 4, 5, 5))
    assert counter.calls == {"toeplitz": 2, "fft": 3}
    S4ND(4, d_state=8, l_max=[5], init="fourier")(torch.randn(1, 4, 5))  # one axis (the ViT's layer): FFT
    assert counter.calls == {"toeplitz": 2, "fft": 4}


def test_conv_mode_is_checked_and_not_state():
    with pytest.raises(ValueError, match="depthwise kernels only"):
        S4ND(3, d_state=8, l_max=[4, 4], out_channels=5, conv_mode="toeplitz")
    with pytest.raises(ValueError, match="conv_mode 'dft'"):
        small_layer(conv_mode="dft")
    stem = S4ND(3, d_state=8, l_max=[4, 4], out_channels=5, init="fourier")
    with pytest.raises(ValueError, match="depthwise kernels only"):
        generate_matrices(stem, [4, 4])
    stem.conv_mode = "toeplitz"
    with pytest.raises(ValueError, match="depthwise kernels only"):
        stem(torch.randn(1, 3, 4, 4))
    assert small_layer(conv_mode="fft").state_dict().keys() == small_layer(conv_mode="toeplitz").state_dict().keys()
    assert "conv_mode='fft'" in repr(small_layer(conv_mode="fft"))


def test_cache_keeps_what_the_path_uses(monkeypatch):
    """The eval cache holds the Toeplitz matrices or the spectra, whichever the path runs; a path change is a miss."""
    counter = CountCalls(monkeypatch)
    layer = small_layer().eval()
    x = torch.randn(2, 4, 6, 5)
    with torch.no_grad():
        y = layer(x)
        assert counter.calls == 2 and set(layer._kernel_cache[1]) == {"matrices"}
        layer(x)
        assert counter.calls == 2
        layer.conv_mode = "fft"
        y_fft = layer(x)
        assert counter.calls == 4 and set(layer._kernel_cache[1]) == {"fft_sizes", "spectra"}
        torch.testing.assert_close(layer(x), y_fft, atol=0, rtol=0)
        assert counter.calls == 4
        layer.conv_mode = "toeplitz"
        torch.testing.assert_close(layer(x), y, atol=0, rtol=0)
        assert counter.calls == 6
    torch.testing.assert_close(y_fft, y, atol=1e-5, rtol=1e-5)


def test_toeplitz_path_under_bf16_autocast_computes_in_float32():
    """A bf16 input under bf16 autocast: bf16 out, the float32 result of the same input rounded once."""
    layer = small_layer().eval()
    x = torch.randn(1, 4, 6, 5).bfloat16()
    with torch.no_grad():
        expected = layer(x.float()).bfloat16()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, expected, atol=0, rtol=0)


# --- image -> video inflation: deterministic init, time-kernel re-initialisation ----------------------------------

@pytest.mark.parametrize("init", ["legs", "fourier", "hippo"])
def test_deterministic_init_is_the_first_hippo_state(init):
    """Official ``deterministic``: every channel's C is the first state of the original (HiPPO) basis, C = V^* e_0,
    so that over both conjugate halves 2 Re(V C) = e_0; the step is stored where its log belongs (sic), inv_dt = dt,
    log-spaced over the features."""
    kernel = SSMKernelDPLR(4, channels=2, l_max=6, d_state=8, init=init, n_ssm=None, dt_min=0.5, dt_max=2.0,
                           deterministic=True, dtype=torch.float64)
    torch.testing.assert_close(kernel.inv_dt[:, 0], torch.exp(torch.linspace(math.log(0.5), math.log(2.0), 4,
                                                                             dtype=torch.float64)))
    C = torch.view_as_complex(kernel.C)  # (2, 4, 4)
    assert torch.equal(C[0], C[1])
    _, _, _, V = ssm_init(init, 8, 1, 4)  # (S = 4, 8, 4)
    first_state = 2 * (V @ C[0][..., None])[..., 0].real
    torch.testing.assert_close(first_state, torch.eye(8, dtype=torch.float64)[0].expand(4, -1), atol=1e-12, rtol=0)


def test_reinit_time_kernel_follows_the_official_hook():
    """``_reinit`` with the README's arguments: a new time kernel (legs and fourier halves over n_ssm = H, step
    e^2, l_kernel 0), the layer's other kernel options kept, the spatial kernels untouched."""
    torch.manual_seed(0)
    layer = S4ND(4, d_state=8, l_max=[3, 5, 6], init="fourier", n_ssm=1, dt_min=0.1, dt_max=1.0, lr=0.001)
    height, width = layer.kernel[1], layer.kernel[2]
    layer.reinit_time_kernel(init="hippo", n_ssm=None, deterministic=True, dt_min=2.0, dt_max=2.0, normalize=False)
    time = layer.kernel[0]
    assert layer.kernel[1] is height and layer.kernel[2] is width
    assert time.l_max == 3 and time.l_kernel.item() == 0 and time.C.shape == (2, 4, 4, 2)
    legs_then_fourier = torch.tensor([[0.5] * 4] * 2 + [[1e-4] * 4] * 2)
    torch.testing.assert_close(torch.exp(time.A_real), legs_then_fourier)
    torch.testing.assert_close(time.inv_dt, torch.full((4, 1), 2.0))
    assert time.A_real._optim == {"lr": 0.001, "weight_decay": 0.0} and time.C._optim == {"lr": 0.001}
    normalized = S4ND(4, d_state=8, l_max=[3, 5, 6], init="fourier")
    normalized.reinit_time_kernel(measure="hippo", n_ssm=None, deterministic=True, dt_min=2.0, dt_max=2.0,
                                  normalize=True)  # (the official v3 name of init)
    torch.testing.assert_close(normalized.kernel[0].C, time.C.detach() / (0.5 * math.exp(2.0)))
    assert layer(torch.randn(1, 4, 3, 5, 6)).shape == (1, 4, 3, 5, 6) and time.l_kernel.item() == 3
    layer.reinit_time_kernel()  # official defaults: the layer's init, dt = 2 / T
    torch.testing.assert_close(torch.exp(layer.kernel[0].inv_dt), torch.full((4, 1), 2 / 3))
    torch.testing.assert_close(torch.exp(layer.kernel[0].A_real), torch.full((1, 4), 1e-4))
    with pytest.raises(ValueError, match="not 3"):
        small_layer().reinit_time_kernel()


# --- materialised kernels (export) ---------------------------------------------------------------------------------

MATERIALISED = [  # layer kwargs, input shape, rate
    (dict(d_model=4, l_max=[6, 5], init="fourier"), (2, 4, 6, 5), 1.0),
    (dict(d_model=4, l_max=[6, 5], init="fourier"), (1, 4, 4, 3), 1.0),  # shorter than l_max: truncated kernels
    (dict(d_model=4, l_max=[6, 5], init="fourier"), (1, 4, 4, 3), 2.0),
    (dict(d_model=4, l_max=7, dim=1, channels=2, transposed=False, linear=False, final_act="glu"), (2, 7, 4), 1.0),
    (dict(d_model=3, l_max=[4, 4], out_channels=5, init="fourier"), (2, 3, 9, 8), 1.0),  # dense stem
    (dict(d_model=3, l_max=[4, 5], trank=2, bidirectional=False), (1, 3, 4, 5), 1.0),
    (dict(d_model=4, l_max=[5, 4], mode="s4d", init="diag-lin", bandlimit=0.5), (2, 4, 5, 4), 1.0),
    (dict(d_model=2, l_max=[3, 4, 5], init="fourier"), (1, 2, 3, 4, 5), 1.0),
]


@pytest.mark.parametrize("kwargs, shape, rate", MATERIALISED)
def test_materialized_kernels_equal_the_fft_path(kwargs, shape, rate):
    torch.manual_seed(0)
    layer = S4ND(d_state=8, dt_min=0.1, dt_max=1.0, **kwargs).double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    lengths = shape[2:] if layer.transposed else shape[1:-1]
    with torch.no_grad():
        expected = layer(x, rate=rate)
        layer.materialize_kernels(lengths, rate)
        assert not any(k.startswith("direct_taps") for k in layer.state_dict())
        assert all(getattr(layer, f"direct_taps_{i}").shape[-1] <= 2 * n - 1 for i, n in enumerate(lengths))
        y = layer(x, rate=rate)
        torch.testing.assert_close(y, expected, atol=1e-12 * expected.abs().max().item(), rtol=1e-10)
        layer.release_kernels()
        assert not hasattr(layer, "direct_taps_0")
        torch.testing.assert_close(layer(x, rate=rate), expected, atol=0, rtol=0)


def test_direct_kernels_context(monkeypatch):
    """The context materialises every S4ND at the lengths and rate of its call on the example and releases them on exit;
    other lengths run the FFT path in eager mode, and are an error while tracing."""
    torch.manual_seed(0)
    model = nn.Sequential(small_layer(), small_layer()).eval()
    x = torch.randn(1, 4, 6, 5)
    counter = CountCalls(monkeypatch)
    with torch.no_grad():
        expected = model(x)
        with direct_kernels(model, x):
            generated = counter.calls
            torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
            assert counter.calls == generated  # the forward generates no kernel
            assert model(x[..., :4]).shape == (1, 4, 6, 4)  # other lengths: the FFT path
            with pytest.raises(ValueError, match="materialised for lengths"):
                s4nd_layer._direct_taps(model[0], [6, 4], 1.0, traced=True)
    assert all(layer._direct_kernels is None and not hasattr(layer, "direct_taps_0") for layer in model)


# --- tracing -------------------------------------------------------------------------------------------------------

def test_traced_l_kernel_is_the_value_last_loaded(monkeypatch):
    """Under torch.compile / export the buffer has no value to read: the kernel uses the one last set up or loaded."""
    kernel = SSMKernelDPLR(3, channels=2, l_max=None, d_state=8, init="legs")
    loaded = SSMKernelDPLR(3, channels=2, l_max=None, d_state=8, init="legs")
    loaded(L=12)
    kernel.load_state_dict(loaded.state_dict())
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert s4nd_layer._l_kernel(kernel) == 12


def test_cache_is_not_used_while_tracing(monkeypatch):
    layer = small_layer().eval()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with torch.no_grad():
        layer(torch.randn(1, 4, 6, 5))
    assert layer._kernel_cache is None


# --- work ------------------------------------------------------------------------------------------------------------

def test_fft_conv_flops_by_hand():
    """1-D DPLR layer, H = 2, N = 2 (4 poles), bidirectional (C' = 2), l_max 4, input (1, 2, 4): kernel of 4 taps
    from 4 roots of unity (3 nodes), FFT size 8 (5 half-spectrum bins)."""
    torch.manual_seed(0)
    layer = S4ND(2, d_state=4, l_max=4, dim=1, init="legs")
    planned = layer.fft_conv_flops((1, 2, 4))
    layer(torch.randn(1, 2, 4))  # sets up C~ (l_kernel 4)
    kernel = 14 * 2 * 4 * 3 + 8 * (2 * 3) * 2 * 4 * 3 + (20 * 2 * 2 * 3 + 8 * 2 * 3) + 2 * 2 * (5 * 4 * 2)
    assert layer.fft_conv_flops((1, 2, 4)) == planned == dict(
        kernel=kernel,  # Cauchy matrix, contraction, Woodbury, inverse FFT of the C' H kernels
        kernel_fft=1 * 2 * 120,  # the combined kernel of each feature, 5 * 8 * log2(8)
        spectrum=0,  # one axis: no outer product
        input_fft=2 * 120,
        product=6 * 1 * 1 * 2 * 5,
        output_fft=2 * 120,
        skip=2 * 1 * 1 * 2 * 4,
    )
    assert sum(planned.values()) == 2732
