"""MambaMixer against the official formulation (flip the whole sequence for the backward branch, causal conv, scan,
flip back), the official key conversion, gradients, dtypes, TorchScript and FX."""
import pytest
import torch
import torch.nn.functional as F

from vssm.layers.mamba_mixer import MambaBlock, MambaMixer, stack_official_directions
from vssm.ops import selective_scan_ref


def official_direction(xz, conv_w, conv_b, x_proj_w, dt_proj_w, dt_proj_b, A_log, D):
    """One direction of mamba_inner_fn_no_out_proj, with the reference scan: (B, 2E, L) -> (B, E, L)."""
    length = xz.shape[-1]
    x, z = xz.chunk(2, dim=1)
    x = F.silu(F.conv1d(x, conv_w, conv_b, padding=conv_w.shape[-1] - 1, groups=x.shape[1])[..., :length])
    x_dbl = torch.einsum("bel,ce->bcl", x, x_proj_w)
    rank, n_state = dt_proj_w.shape[1], A_log.shape[1]
    dt, B, C = torch.split(x_dbl, [rank, n_state, n_state], dim=1)
    delta = torch.einsum("brl,er->bel", dt, dt_proj_w)
    return selective_scan_ref(x, delta, -torch.exp(A_log), B, C, D, z, dt_proj_b, True)


def official_mixer(sd, hidden, bidirectional, divide_out):
    """The official Mamba forward (bimamba 'v2' or 'none') from official-named weights: (B, L, D) -> (B, L, D)."""
    xz = (hidden @ sd["in_proj.weight"].t()).transpose(1, 2)
    names = ("conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D")
    y = official_direction(xz, *(sd[n] for n in names))
    if bidirectional:
        back = ("conv1d_b.weight", "conv1d_b.bias", "x_proj_b.weight", "dt_proj_b.weight", "dt_proj_b.bias",
                "A_b_log", "D_b")
        y = y + official_direction(xz.flip(-1), *(sd[n] for n in back)).flip(-1)
        if divide_out:
            y = y / 2
    return y.transpose(1, 2) @ sd["out_proj.weight"].t()


def random_official_weights(dim, d_state, bidirectional, d_conv=4, expand=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    inner, rank = expand * dim, -(-dim // 16)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    sd = {"in_proj.weight": randn(2 * inner, dim, scale=dim ** -0.5),
          "out_proj.weight": randn(dim, inner, scale=inner ** -0.5)}
    suffixes = ("", "_b") if bidirectional else ("",)
    for s in suffixes:
        sd[f"conv1d{s}.weight"] = randn(inner, 1, d_conv, scale=0.3)
        sd[f"conv1d{s}.bias"] = randn(inner, scale=0.1)
        sd[f"x_proj{s}.weight"] = randn(rank + 2 * d_state, inner, scale=2.5 * inner ** -0.5)
        sd[f"dt_proj{s}.weight"] = randn(inner, rank, scale=rank ** -0.5)
        sd[f"dt_proj{s}.bias"] = torch.log(torch.expm1(torch.rand(inner, generator=g) * 0.5 + 0.05))
        sd["A_b_log" if s else "A_log"] = torch.log(torch.rand(inner, d_state, generator=g) * d_state + 0.5)
        sd[f"D{s}"] = torch.rand(inner, generator=g) + 0.5
    return sd


def mixer_from_official(sd, dim, d_state, bidirectional, merge):
    mixer = MambaMixer(dim, d_state=d_state, bidirectional=bidirectional, merge=merge)
    prefixed = {"mixer." + k: v for k, v in sd.items()}
    stacked = {k[len("mixer."):]: v for k, v in stack_official_directions(prefixed, mixer.num_directions).items()}
    mixer.load_state_dict(stacked, strict=True)
    return mixer


@pytest.mark.parametrize("bidirectional,merge", [(True, "mean"), (True, "sum"), (False, "mean")])
@pytest.mark.parametrize("length", [1, 5, 37])
def test_matches_official_formulation(bidirectional, merge, length):
    dim, d_state = 24, 8
    sd = random_official_weights(dim, d_state, bidirectional)
    mixer = mixer_from_official(sd, dim, d_state, bidirectional, merge)
    x = torch.randn(2, length, dim)
    expected = official_mixer(sd, x, bidirectional, merge == "mean")
    torch.testing.assert_close(mixer(x), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dim", [24, 128])
def test_gradients_match_official_formulation(dim):
    """Every parameter's gradient too. With R = 2 (dim 24) the dt projection's GEMMs run on operands zero-padded to 8
    columns; with R = 8 (dim 128) they do not."""
    d_state = 4
    sd = random_official_weights(dim, d_state, True, seed=1)
    mixer = mixer_from_official(sd, dim, d_state, True, "mean")
    sd = {k: v.clone().requires_grad_() for k, v in sd.items()}
    x, weights = torch.randn(2, 13, dim), torch.randn(2, 13, dim)
    (mixer(x) * weights).sum().backward()
    (official_mixer(sd, x, True, True) * weights).sum().backward()
    official = {k: v.grad for k, v in sd.items()}
    for name, key in (("x_proj_weight", "x_proj{}.weight"), ("dt_proj_weight", "dt_proj{}.weight"),
                      ("dt_proj_bias", "dt_proj{}.bias"), ("conv_weight", "conv1d{}.weight"), ("D", "D{}")):
        for k, suffix in enumerate(("", "_b")):
            expected = official[key.format(suffix)].reshape(getattr(mixer, name).grad[k].shape)
            torch.testing.assert_close(getattr(mixer, name).grad[k], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mixer.A_log.grad[1], official["A_b_log"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mixer.in_proj.weight.grad, official["in_proj.weight"], atol=1e-5, rtol=1e-4)


def test_directions_are_not_interchangeable():
    """Swapping the forward and backward parameters changes the output: each direction really reads its own."""
    dim, d_state = 16, 4
    sd = random_official_weights(dim, d_state, True, seed=3)
    mixer = mixer_from_official(sd, dim, d_state, True, "mean")
    x = torch.randn(1, 9, dim)
    out = mixer(x)
    with torch.no_grad():
        for p in (mixer.conv_weight, mixer.conv_bias, mixer.x_proj_weight, mixer.dt_proj_weight, mixer.dt_proj_bias,
                  mixer.A_log, mixer.D):
            p.copy_(p.flip(0))
    assert not torch.allclose(mixer(x), out, atol=1e-3)


def test_conversion_requires_backward_keys():
    sd = random_official_weights(8, 4, bidirectional=False)
    with pytest.raises(KeyError, match="conv1d_b.weight"):
        stack_official_directions({"mixer." + k: v for k, v in sd.items()}, num_directions=2)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)  # drop path keeps at least one of the two samples
    block = MambaBlock(16, norm_layer=torch.nn.LayerNorm, drop_path=0.1, d_state=4).train()
    x = torch.randn(2, 7, 16, requires_grad=True)
    block(x).square().mean().backward()
    assert x.grad is not None
    missing = [n for n, p in block.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_initialisation():
    mixer = MambaMixer(32, d_state=16)
    assert mixer.A_log.shape == (2, 64, 16) and mixer.A_log.dtype == torch.float32
    torch.testing.assert_close(mixer.A_log[1, 5], torch.log(torch.arange(1.0, 17.0)))
    assert torch.equal(mixer.D, torch.ones(2, 64))
    dt = F.softplus(mixer.dt_proj_bias)
    assert dt.min() >= 1e-4 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    with torch.device("meta"):
        assert MambaMixer(32).A_log.is_meta


def test_bfloat16_autocast_keeps_float32_state():
    mixer = MambaMixer(16, d_state=4)
    x = torch.randn(2, 11, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mixer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), mixer(x), atol=5e-2, rtol=5e-2)


def test_torchscript_and_fx():
    from timm.models._features_fx import create_feature_extractor

    block = MambaBlock(16, norm_layer=torch.nn.LayerNorm, d_state=4).eval()
    x = torch.randn(1, 6, 16)
    scripted = torch.jit.script(block)
    torch.testing.assert_close(scripted(x), block(x))
    fx_block = create_feature_extractor(block, return_nodes=["add"])
    assert torch.equal(fx_block(x)["add"], block(x))


def test_triton_path_matches_torch_path(monkeypatch):
    """The mixer on the Triton scan (interpreted on the CPU when there is no GPU) equals the PyTorch path, gradients
    included: both directions go through the fused multi-direction kernel."""
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    mixer = MambaMixer(16, d_state=4).to(device)
    x = torch.randn(2, 9, 16, device=device)
    results = []
    for backend in ("torch", "triton"):
        monkeypatch.setenv("VSSM_SCAN_BACKEND", backend)
        mixer.zero_grad()
        out = mixer(x)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in mixer.parameters()]))
    (out_torch, grads_torch), (out_triton, grads_triton) = results
    torch.testing.assert_close(out_triton, out_torch, atol=1e-5, rtol=1e-4)
    for g_triton, g_torch in zip(grads_triton, grads_torch):
        torch.testing.assert_close(g_triton, g_torch, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("name, count", [("test_simba", 5), ("test_plainmamba", 3), ("test_local_vim", None)])
def test_activation_recompute_reaches_the_scan_mixers(monkeypatch, name, count):
    """SiMBA's, PlainMamba's and LocalVim's scan mixers: levels 0 and 1 keep the scan's chunk states, 2 and 3 ask the
    scan to recompute them in the backward (``recompute_states`` reaches ``scan_core``)."""
    import importlib

    import timm

    from vssm.layers.mamba_mixer import set_activation_recompute

    flags = []
    for module in map(importlib.import_module, ("vssm.ops.multi_scan", "vssm.ops.selective_scan")):
        real = module.scan_core

        def spy(*args, real=real, **kwargs):
            flags.append(kwargs["recompute_states"])
            return real(*args, **kwargs)

        monkeypatch.setattr(module, "scan_core", spy)
    model = timm.create_model(name)
    size = model.pretrained_cfg["input_size"]
    for level, expected in ((1, False), (2, True), (3, True), (0, False)):
        mixers = set_activation_recompute(model, level)
        assert mixers > 0 and (count is None or mixers == count)
        flags.clear()
        model(torch.randn(1, *size)).sum().backward()
        assert flags and set(flags) == {expected}, level


@pytest.mark.parametrize("kind", ["simba", "plainmamba"])
def test_level_two_recomputes_the_conv_of_the_scan_mixers(kind):
    """From level 2 SiMBA's and PlainMamba's mixers keep neither their conv's channels-last input copy nor its output
    (recomputed in the backward from in_proj's output): at least those bytes fewer saved, the same gradients."""
    from vssm.layers.mamba_mixer import set_activation_recompute
    from vssm.layers.simba_mixer import CausalMambaMixer
    from vssm.layers.zigzag_mixer import ZigzagMamba2D

    torch.manual_seed(0)
    if kind == "simba":  # 35 tokens, E = 32; the conv's output is 3 steps longer (the causal padding)
        mixer, x, conv_bytes = CausalMambaMixer(16, d_state=8), torch.randn(2, 35, 16), 2 * 32 * (35 + 38) * 4
    else:  # a 5 x 7 map, E = 32
        mixer, x, conv_bytes = ZigzagMamba2D(16, d_state=4), torch.randn(2, 5, 7, 16), 2 * 2 * 32 * 35 * 4
    results = []
    for level in (1, 2):
        set_activation_recompute(mixer, level)
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = mixer(x)
        mixer.zero_grad()
        y.square().sum().backward()
        results.append((sum(storages.values()), y.detach(), [p.grad.clone() for p in mixer.parameters()]))
    (kept, y1, grads1), (kept2, y2, grads2) = results
    assert kept - kept2 >= conv_bytes
    assert torch.equal(y1, y2) and all(torch.equal(a, b) for a, b in zip(grads1, grads2))
