"""tools/train.py and tools/test.py on a tiny generated image folder: outputs, evaluation, exact resume, options."""
import json

import pytest
import torch

from vssm.engine import load_config, train
from vssm.engine.checkpoint import FORMAT

from .helpers import load_tool, read_rows, tiny_config, write_config

SUMMARY_HEADER = ["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr"]


def test_one_epoch_writes_every_output_and_test_py_reproduces_its_accuracy(tmp_path, image_root, capsys):
    config = write_config(tmp_path, tiny_config(image_root))
    work_dir = tmp_path / "run"
    assert load_tool("train").main([config, "--work-dir", str(work_dir)]) == 0
    assert sorted(p.name for p in work_dir.iterdir()) == [
        "best.pth", "config.py", "curves.png", "last.pth", "summary.csv", "train.log"]  # no temporary files left
    rows = read_rows(work_dir / "summary.csv")
    assert list(rows[0]) == SUMMARY_HEADER and [row["epoch"] for row in rows] == ["1"]
    assert "epoch 1/1 train_loss" in (work_dir / "train.log").read_text()
    assert load_config(str(work_dir / "config.py")) == load_config(config)  # the resolved copy

    checkpoint = torch.load(work_dir / "last.pth", weights_only=True)
    assert checkpoint["format"] == FORMAT and checkpoint["epoch"] == 1 and checkpoint["num_updates"] == 6
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "config", "best"} <= set(checkpoint)

    capsys.readouterr()
    assert load_tool("test").main([config, "--checkpoint", str(work_dir / "last.pth")]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["num_samples"] == 9
    assert metrics["top1"] == pytest.approx(float(rows[0]["eval_top1"]))
    assert metrics["loss"] == pytest.approx(float(rows[0]["eval_loss"]), rel=1e-5)


class _Interrupt(Exception):
    pass


def _stop_after_first_epoch(epoch: int, row: dict) -> None:
    raise _Interrupt


def test_resume_after_one_epoch_ends_where_two_epochs_straight_end(tmp_path, image_root):
    """Every source of randomness on (RandAugment, random erasing, Mixup/CutMix, drop path) and every piece of state
    (per-update cosine schedule with warm-up, EMA, accumulation); the resumed half reads through a worker process."""
    text = tiny_config(image_root, epochs=2, grad_accum_steps=2, clip_grad=1.0, smoothing=0.1,
                       model="dict(name='test_vmamba', drop_path_rate=0.2)",
                       augment="dict(auto_augment='rand-m9-mstd0.5-inc1', re_prob=0.5)",
                       mixup="dict(mixup_alpha=0.8, cutmix_alpha=1.0)",
                       scheduler="dict(warmup_epochs=1, on_updates=True)",
                       ema="dict(enable=True, decay=0.9)")
    cfg = load_config(write_config(tmp_path, text))
    straight = train(cfg, str(tmp_path / "straight"))

    with pytest.raises(_Interrupt):
        train(cfg, str(tmp_path / "resumed"), on_epoch_end=_stop_after_first_epoch)
    cfg.data.workers = 1
    resumed = train(cfg, str(tmp_path / "resumed"), resume="auto")

    assert resumed == straight
    assert read_rows(tmp_path / "resumed" / "summary.csv") == read_rows(tmp_path / "straight" / "summary.csv")
    expected = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)
    actual = torch.load(tmp_path / "resumed" / "last.pth", weights_only=True)
    for key in ("model", "model_ema", "optimizer", "scheduler", "scaler", "rng", "epoch", "num_updates", "best"):
        assert_identical(actual[key], expected[key], key)


def assert_identical(actual, expected, where: str) -> None:
    """Bit-for-bit equality of nested dicts / lists of tensors and plain values."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            assert_identical(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_identical(a, e, f"{where}[{i}]")
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected), where
    else:
        assert actual == expected, where


@pytest.mark.parametrize("options", [
    dict(amp="'fp16'", grad_accum_steps=2, clip_grad=0.5, channels_last=True, ema="dict(enable=True)",
         deterministic=True),
    dict(amp="'bf16'", grad_checkpointing=True, clip_mode="'value'", clip_grad=0.1,
         mixup="dict(cutmix_alpha=1.0)", scheduler="dict(sched='step', decay_epochs=1, on_updates=False)"),
], ids=["fp16-scaler-accum-clip-channels_last-ema-deterministic", "bf16-grad_checkpointing-cutmix-step"])
def test_training_options_on_synthetic_data(tmp_path, image_root, options):
    text = tiny_config(image_root, **options) + (
        "data = dict(dataset='synthetic', synthetic_train_size=16, synthetic_val_size=6, num_classes=4, workers=0)\n")
    cfg = load_config(write_config(tmp_path, text))
    row = train(cfg, str(tmp_path / "run"))
    assert row["epoch"] == 1 and torch.isfinite(torch.tensor(row["train_loss"]))
    checkpoint = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert checkpoint["scaler"] == {} or checkpoint["scaler"]["scale"] > 0
    assert (checkpoint["model_ema"] is not None) == cfg.ema.enable


@pytest.mark.slow
def test_torch_compile(tmp_path, image_root):
    cfg = load_config(write_config(tmp_path, tiny_config(image_root, compile="'inductor'")))
    assert train(cfg, str(tmp_path / "run"))["epoch"] == 1
