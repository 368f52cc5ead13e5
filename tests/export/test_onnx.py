"""ONNX export (vssm.export, tools/export_onnx.py): the scan's loop-free formulation against the sequential reference,
the lowering of every custom op, every registered model exported and run in onnxruntime against PyTorch (float32,
dynamic batch of 1 and 3), and the named errors of bad input.

The default run exports the ``test_*`` variants (a few seconds each on a calm machine); the smallest real variant of
each family is marked slow.
"""
import json
import os

import numpy as np
import pytest
import torch

from tests.tools.helpers import load_tool
from vssm.ops import scan_paths
from vssm.ops.onnx_scan import CHUNK, scan_fwd_parallel
from vssm.ops.scan_reference import selective_scan_ref
from vssm.ops.scan_core import scan_core_torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from vssm.export import (InputSizeError, OpsetError, UnknownModelError, create_export_model,  # noqa: E402
                         export_onnx, exportable_models)
from vssm.export.onnx import lowering_table, ort_session  # noqa: E402

TOLERANCE = 1e-4  # float32, max abs difference of the logits

# every test variant (test_vim goes through the command line, test_videomamba at another size and frame count below)
TEST_VARIANTS = [n for n in exportable_models("test_*") if n not in ("test_vim", "test_videomamba")]
# the smallest real variant of each family (full sizes: slow); the first four are BENCHMARKS.md's
REAL_VARIANTS = ["vim_tiny_patch16_224", "vmamba_tiny", "simba_s_einfft", "plainmamba_l1", "local_vim_tiny",
                 "local_vmamba_tiny", "simba_s", "simba_s_monarch", "videomamba_tiny_image", "videomamba_tiny",
                 *[n for n in exportable_models("s4nd*") if not n.startswith("test_")][:1]]


# ----------------------------------------------------------------------------------------------------------------
# The scan's formulation.


def _scan_case(kind, shape, options, groups, params_at_step, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(dtype)

    length = int(np.prod(shape))
    paths = scan_paths.build(kind, shape, **options) if kind else None
    k = paths.shape[0] if kind else 1
    steps_len = paths.shape[1] if (kind and params_at_step) else length
    b, d, n = 2, 4, 3
    return dict(u=rnd(b, 1, d, length), delta=rnd(b, k, d, steps_len, scale=0.5),
                A=-(torch.rand(k, d, n, generator=g) * 2 + 0.1).to(dtype), B=rnd(b, k, groups, n, steps_len),
                C=rnd(b, k, groups, n, steps_len), D=rnd(k, d), z=rnd(b, d, length), delta_bias=rnd(k, d, scale=0.5),
                paths=paths)


SCAN_CASES = [  # (kind, grid, options, groups, params_at_step)
    (None, (37,), {}, 1, False),
    ("bidirectional", (29,), {}, 2, False),
    ("cross", (5, 7), {}, 1, False),
    ("zigzag", (4, 6), {}, 1, False),
    ("local", (6, 6), {"directions": ("h", "w4", "w4_flip")}, 1, False),  # window padding: -1 steps
    ("local", (6, 6), {"directions": ("w4", "v")}, 1, True),
    ("spatiotemporal", (2, 3, 4), {}, 1, False),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", SCAN_CASES, ids=[f"{c[0]}-g{c[3]}{'-step' if c[4] else ''}" for c in SCAN_CASES])
@pytest.mark.parametrize("merge", [True, False], ids=["merge", "split"])
@pytest.mark.parametrize("chunk", [4, 8, 16, 32])
def test_parallel_scan_matches_reference(case, dtype, merge, chunk):
    """``scan_fwd_parallel`` == the sequential reference (``selective_scan_ref`` behind the canonical op), outputs and
    last states, for paths with and without padding, groups, per-step parameters, chunks that do and do not divide L."""
    kind, shape, options, groups, params_at_step = case
    args = _scan_case(kind, shape, options, groups, params_at_step, dtype)
    paths = args.pop("paths")
    y_ref, last_ref = scan_core_torch(*args.values(), paths, delta_softplus=True, merge=merge,
                                      params_at_step=params_at_step, backend="ref")
    y, last, states = scan_fwd_parallel(*args.values(), paths, True, merge, params_at_step, chunk=chunk)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    assert y.dtype == y_ref.dtype and last.dtype == last_ref.dtype and states.numel() == 0
    torch.testing.assert_close(y, y_ref, **tol)
    torch.testing.assert_close(last, last_ref, **tol)


def test_parallel_scan_long_sequence_stays_finite():
    """VMamba's first-stage length with strong decays (the closed form's exp(-cumsum) would overflow float32 within a
    chunk): float32 outputs and last states match the float64 sequential reference."""
    g = torch.Generator().manual_seed(0)
    b, d, n, length = 2, 3, 4, 3136
    u = torch.randn(b, 1, d, length, generator=g, dtype=torch.float64)
    delta = torch.rand(b, 1, d, length, generator=g, dtype=torch.float64) * 4  # decays down to e^-8 a step
    A = -(torch.rand(1, d, n, generator=g, dtype=torch.float64) + 1)
    B = torch.randn(b, 1, 1, n, length, generator=g, dtype=torch.float64)
    C = torch.randn(b, 1, 1, n, length, generator=g, dtype=torch.float64)
    y_ref, last_ref = selective_scan_ref(u[:, 0], delta[:, 0], A[0], B[:, 0], C[:, 0], return_last_state=True)
    y, last, _ = scan_fwd_parallel(*(t.float() for t in (u, delta, A, B, C)), None, None, None, None, False, True,
                                   False)
    assert torch.isfinite(y).all() and torch.isfinite(last).all()
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last[:, 0].double(), last_ref, rtol=1e-4, atol=1e-4)


def test_parallel_scan_softplus_is_exact_for_large_deltas():
    """The lowered softplus (max(x, 0) + log1p(exp(-|x|))) equals F.softplus to float32 rounding on both sides of its
    threshold, and stays finite for deltas far beyond exp's range."""
    g = torch.Generator().manual_seed(1)
    b, d, n, length = 1, 3, 2, 9
    delta = torch.tensor([-200.0, -30.0, -5.0, -0.1, 0.0, 0.1, 5.0, 30.0, 200.0]).expand(b, 1, d, length)
    args = dict(u=torch.randn(b, 1, d, length, generator=g), delta=delta, A=-torch.rand(1, d, n, generator=g) * 0.01,
                B=torch.randn(b, 1, 1, n, length, generator=g), C=torch.randn(b, 1, 1, n, length, generator=g))
    y_ref, last_ref = scan_core_torch(*args.values(), None, None, None, None, delta_softplus=True, merge=True,
                                      params_at_step=False, backend="ref")
    y, last, _ = scan_fwd_parallel(*args.values(), None, None, None, None, True, True, False, chunk=4)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, last_ref, rtol=1e-5, atol=1e-5)


def test_parallel_scan_graph_never_holds_the_state_sequence():
    """The lowered scan builds no (batch, K, d, N, L) tensor: no intermediate of the traced graph is larger than its
    largest operand ((K, d, L) delta or (K, N, L) B), 1 / min(d, N) of the state sequence."""
    b, k, d, n, length = 1, 2, 8, 16, 4 * CHUNK
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(b, 1, d, length, generator=g), torch.randn(b, k, d, length, generator=g),
            -torch.rand(k, d, n, generator=g), torch.randn(b, k, 1, n, length, generator=g),
            torch.randn(b, k, 1, n, length, generator=g))
    graph = torch.fx.experimental.proxy_tensor.make_fx(
        lambda u, delta, A, B, C: scan_fwd_parallel(u, delta, A, B, C, None, None, None, None, True, True, False)[0]
    )(*args)
    sizes = [node.meta["val"].numel() for node in graph.graph.nodes if isinstance(node.meta.get("val"), torch.Tensor)]
    assert max(sizes) == max(t.numel() for t in args) < b * k * d * n * length


def test_lowering_of_the_gpu_ops():
    """The causal conv and layer norm decompositions equal the references the Triton kernels are tested against."""
    from vssm.ops.causal_conv import causal_conv1d_ref
    from vssm.ops.layer_norm import layer_norm_ref, rms_norm_ref

    table = lowering_table()
    x, w, bias = torch.randn(2, 5, 11), torch.randn(2, 5, 4), torch.randn(2, 5)
    conv = table[torch.ops.vssm.causal_conv1d_fwd.default](x, w, bias, 0b10, True)
    torch.testing.assert_close(conv, causal_conv1d_ref(x, w, bias, [False, True], "silu"))
    t, weight, beta = torch.randn(3, 4, 8), torch.randn(8), torch.randn(8)
    norm = table[torch.ops.vssm.layer_norm_fwd.default]
    torch.testing.assert_close(norm(t, weight, beta, 1e-5, torch.float32, False)[0], layer_norm_ref(t, weight, beta))
    torch.testing.assert_close(norm(t, weight, None, 1e-6, torch.float32, True)[0], rms_norm_ref(t, weight))


# ----------------------------------------------------------------------------------------------------------------
# Models.


def _export_and_compare(name, tmp_path, **kwargs):
    """Export (through the command line when ``cli_args`` is given), then run batches of 1 and 3 in onnxruntime
    against the same model in PyTorch. Returns the max abs differences {batch: diff}."""
    cli_args = kwargs.pop("cli_args", None)
    path = tmp_path / f"{name}.onnx"
    torch.manual_seed(0)
    if cli_args is None:
        export_onnx(name, path, **kwargs)
    else:
        assert load_tool("export_onnx").main([name, str(path), *cli_args]) == 0
    torch.manual_seed(0)  # the same random weights as the exported model's
    model, shape = create_export_model(name, **kwargs)
    session = ort_session(path)
    graph_input = session.get_inputs()[0]
    assert isinstance(graph_input.shape[0], str), f"batch axis not dynamic: {graph_input.shape}"
    assert tuple(graph_input.shape[1:]) == tuple(shape)
    diffs = {}
    for batch in (1, 3):
        x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {graph_input.name: x.numpy()})[0]
        assert got.shape == expected.shape
        diffs[batch] = float(np.abs(got - expected).max())
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["fixed_input_size"] == "true" and meta["dynamic_axes"] == "batch"
    assert meta["model_name"] == name and tuple(int(s) for s in meta["input_size"][1:-1].split(",")) == tuple(shape)
    print(f"{name}: max abs diff batch 1 {diffs[1]:.2e}, batch 3 {diffs[3]:.2e}")
    assert max(diffs.values()) <= TOLERANCE, diffs
    return diffs


@pytest.mark.parametrize("name", TEST_VARIANTS)
def test_export_test_variant(name, tmp_path):
    _export_and_compare(name, tmp_path)


def test_low_memory_session_gives_the_same_outputs(tmp_path):
    """ort_session(low_memory=True) (no memory arena, no memory-pattern planner) runs the same graph to the same
    outputs as onnxruntime's defaults."""
    path = tmp_path / "test_simba.onnx"
    export_onnx("test_simba", path)
    default, low = ort_session(path), ort_session(path, low_memory=True)
    x = np.random.default_rng(0).standard_normal((2, *default.get_inputs()[0].shape[1:])).astype(np.float32)
    name = default.get_inputs()[0].name
    np.testing.assert_array_equal(low.run(None, {name: x})[0], default.run(None, {name: x})[0])


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_VARIANTS)
def test_export_real_variant(name, tmp_path):
    _export_and_compare(name, tmp_path)


def test_export_video_at_another_size(tmp_path):
    """A video model at another frame size and frame count (a new export; the metadata names the size)."""
    _export_and_compare("test_videomamba", tmp_path, img_size=48, num_frames=2)


def test_s4nd_graph_is_real_valued(tmp_path):
    """S4ND's kernels enter the graph as convolution taps computed at export (no complex numbers, no DFT), at the size
    the metadata names; the model is left generating its kernels again."""
    import onnx

    result = export_onnx("test_s4nd_convnext", tmp_path / "s4nd.onnx", img_size=48)
    graph = onnx.load(result.path).graph
    ops = {node.op_type for node in graph.node}
    assert "DFT" not in ops and "Conv" in ops
    complex_types = (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128)
    assert not any(t.data_type in complex_types for t in graph.initializer)
    assert "S4ND kernels are computed for one input size" in result.metadata["input_size_note"]
    assert result.metadata["input_size"] == "[3, 48, 48]"
    layers = [m for m in result.model.modules() if m.__class__.__name__ == "S4ND"]
    assert layers and all(layer._direct_kernels is None for layer in layers)
    session = ort_session(result.path)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = result.model(x).numpy()
    assert np.abs(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0] - expected).max() <= TOLERANCE


# ----------------------------------------------------------------------------------------------------------------
# The command line and bad input.


def test_cli_exports_and_checks(tmp_path, capsys):
    """tools/export_onnx.py MODEL OUT --img-size --check prints one JSON line; the graph matches PyTorch."""
    _export_and_compare("test_vim", tmp_path, img_size=32, cli_args=["--img-size", "32", "--check"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-2])
    assert report["input_shape"] == ["batch", 3, 32, 32] and report["max_abs_diff"] <= TOLERANCE
    assert report["output"] == str(tmp_path / "test_vim.onnx") and report["opset"] == 18


@pytest.mark.parametrize("argv, message", [
    (["resnet18"], "is not a vssm model"),
    (["test_vim", "--opset", "17"], "opset 17 is too old"),
    (["test_vim", "--num-frames", "4"], "takes images, not clips"),
    (["test_vim", "--img-size", "8"], "does not take inputs of size"),
], ids=["unknown-model", "old-opset", "frames-on-image-model", "refused-size"])
def test_cli_bad_input(argv, message, tmp_path, capsys):
    tool = load_tool("export_onnx")
    assert tool.main([argv[0], str(tmp_path / "x.onnx"), *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "x.onnx")


def test_named_errors(tmp_path):
    with pytest.raises(UnknownModelError, match="did you mean test_vim"):
        export_onnx("test_vin", tmp_path / "x.onnx")
    with pytest.raises(OpsetError):
        export_onnx("test_vim", tmp_path / "x.onnx", opset=13)
    with pytest.raises(InputSizeError):
        export_onnx("test_vim", tmp_path / "x.onnx", img_size=8)
