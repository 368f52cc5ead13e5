"""Two gloo processes under torchrun: the same run as one process with the same global batch, then resumed alone."""
import subprocess
import sys

import pytest
import torch

from vssm.engine import load_config, train

from .helpers import REPO, read_rows, subprocess_env, tiny_config, write_config


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_process_run_matches_one_process_and_resumes_on_one(tmp_path, image_root, fsdp):
    """Per-rank batch 2 on 2 ranks against batch 4 on one rank: the same samples and augmentations per step, so the
    weights agree up to float summation order, and the evaluation (uneven shards of 9 images) counts every image
    once. The 2-process checkpoint then resumes in one process (optimizer state is keyed by parameter name)."""
    text = tiny_config(image_root, epochs=2, batch_size=2, fsdp=fsdp, clip_grad=1.0, grad_accum_steps=2,
                       augment="dict(auto_augment='rand-m9-mstd0.5-inc1')")
    config = write_config(tmp_path, text)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tools" / "train.py"), config, "--work-dir", str(tmp_path / "two"),
               "--cfg-options", "epochs=1"]
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es) on cpu" in (tmp_path / "two" / "train.log").read_text()

    cfg = load_config(config, {"batch_size": 4, "epochs": 1})
    train(cfg, str(tmp_path / "one"))
    two = torch.load(tmp_path / "two" / "last.pth", weights_only=True)
    one = torch.load(tmp_path / "one" / "last.pth", weights_only=True)
    assert two["num_updates"] == one["num_updates"] == 3 and len(two["rng"]) == 2
    for key in one["model"]:
        torch.testing.assert_close(two["model"][key], one["model"][key], rtol=1e-4, atol=1e-5, msg=key)
    row_two, row_one = read_rows(tmp_path / "two" / "summary.csv")[0], read_rows(tmp_path / "one" / "summary.csv")[0]
    assert float(row_two["eval_loss"]) == pytest.approx(float(row_one["eval_loss"]), rel=1e-3)
    assert float(row_two["train_loss"]) == pytest.approx(float(row_one["train_loss"]), rel=1e-3)

    cfg = load_config(config, {"batch_size": 4, "epochs": 2})
    row = train(cfg, str(tmp_path / "two"), resume="auto")
    assert row["epoch"] == 2 and [r["epoch"] for r in read_rows(tmp_path / "two" / "summary.csv")] == ["1", "2"]
