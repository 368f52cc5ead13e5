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


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given on a machine without a GPU")
def test_without_a_gpu_it_says_so(monkeypatch):
    tool = load_tool("benchmark")
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--models", "vmamba_tiny"])
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        tool.main()
