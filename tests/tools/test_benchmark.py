"""tools/benchmark.py on the CPU: every preset names a registered model, the table shows GFLOPs and step times, and
bad invocations stop with a message (the timings themselves need a GPU)."""
import sys

import pytest
import timm
import torch

from .helpers import load_tool


def test_every_preset_names_a_registered_model():
    tool = load_tool("benchmark")
    names = {case.model for cases in tool.suites().values() for case in cases}
    assert names and [name for name in names if not timm.is_model(name)] == []


def test_table_shows_gflops_and_step_times(capsys):
    tool = load_tool("benchmark")
    row = dict(name="vmamba_tiny", batch=128, frames=0, img_size=224, params_M=30.25, gflops=4.876, infer_per_s=6261.0,
               infer_ms=20.44, train_per_s="OOM", infer_peak_GiB=1.5)
    tool.print_table("vmamba", [row])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3].startswith("| model | batch x [frames x] size | params (M) | GFLOPs | infer /s | infer ms |")
    assert lines[-1] == "| vmamba_tiny | 128 x 224 | 30.2 | 4.88 | 6261 | 20.4 | OOM | - | 1.50 | - |"


def test_s4nd_stages_split_a_training_step(capsys):
    """--s4nd-stages on the CPU: every S4ND layer's input found, each stage timed, the rest the difference, one line."""
    import argparse

    tool = load_tool("benchmark")
    case = tool.Case("test_s4nd_convnext", batch=2, img_size=32)
    row = tool.s4nd_stages(case, argparse.Namespace(amp="float32", warmup=0, iters=1), device="cpu")
    model = timm.create_model("test_s4nd_convnext")
    from vssm.layers.s4nd import S4ND

    assert row["layers"] == sum(isinstance(m, S4ND) for m in model.modules()) > 0
    assert min(row["step_ms"], row["generation_ms"], row["convolution_ms"]) > 0
    assert row["rest_ms"] == pytest.approx(row["step_ms"] - row["generation_ms"] - row["convolution_ms"])
    tool.print_stages(row)
    assert "test_s4nd_convnext 2x32 training step" in capsys.readouterr().out
    with pytest.raises(ValueError, match="has no S4ND layer"):
        tool.s4nd_stages(tool.Case("test_vmamba", batch=1, img_size=32), argparse.Namespace(amp="float32", warmup=0,
                                                                                              iters=1), device="cpu")


def test_profile_split_sorts_kernels_into_classes():
    """--profile's split: kernel names as the H100 profiler reports them, summed per class, largest first."""
    tool = load_tool("benchmark")
    times = {"void regular_fft<112u, EPT<4u, 7u>, 8u, 7u, (padding_t)14>(...)": 9.4,
             "void regular_fft_c2r<392u, EPT<7u, 8u>, 1u, 32u>(...)": 4.9,
             "void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl<...>>(int, ...)": 26.3,
             "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>(...)": 4.2,
             "nvjet_sm90_tst_192x192_64x3_2x1_v_bz_coopB_NNN": 5.8,
             "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3": 14.3,
             "dgrad2d_c1_k1_nhwc_specialized": 4.75,
             "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float>(...)": 4.4,
             "void at::native::reduce_kernel<128, 4, at::native::ReduceOp<float>>(...)": 3.6,
             "_scan_bwd_kernel": 2.0, "_conv_fwd_kernel": 0.5, "some_custom_thing": 0.25}
    split = tool.kernel_split(times)
    assert split == pytest.approx({"element-wise and copies": 30.5, "attention": 14.3, "FFT": 14.3, "GEMM": 5.8,
                     "convolution": 4.75, "norm": 4.4, "reduction": 3.6, "ours (Triton)": 2.5, "other": 0.25})
    assert list(split)[0] == "element-wise and copies"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given on a machine without a GPU")
def test_without_a_gpu_it_says_so(monkeypatch):
    tool = load_tool("benchmark")
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--models", "vmamba_tiny"])
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        tool.main()


def test_onnx_benchmark_runs_a_tiny_model_in_both_runtimes(tmp_path, capsys):
    """tools/benchmark_onnx.py end to end on a test variant (one run each, low-memory session): a table row per batch
    with both runtimes' latencies, and outputs that agree."""
    pytest.importorskip("onnxruntime")
    tool = load_tool("benchmark_onnx")
    assert tool.main(["test_vim", "--batch-sizes", "1", "2", "--iters", "1", "--warmup", "0", "--threads", "1",
                      "--workdir", str(tmp_path), "--low-memory", "--markdown"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| test_vim |")]
    assert [row.split(" | ")[1] for row in rows] == ["1", "2"]
    diffs = [float(line.split('"max_abs_diff": ')[1].rstrip("}")) for line in out.splitlines()
             if '"runtime": "onnxruntime"' in line]
    assert len(diffs) == 2 and max(diffs) < 1e-4
