"""The trainer's step options against the plain step on a tiny model: normalisation and random erasing on the device
(uint8 loader) against the CPU transform, the synthetic split held on the device against its loader, foreach and
fused optimizers and clipping against the per-parameter loop, the CUDA-graph step (GPU) and its named fallback, and
the absence of host synchronisation in a step (GPU)."""
import json
import random
import re

import pytest
import torch

from vssm.data import SyntheticDataset
from vssm.engine import load_config, train
from vssm.engine.data import (
    DeviceBatches, DeviceSplit, EvalSampler, TrainSampler, build_loader, build_transforms, erasing_of, open_train_set,
    resolve_input_config,
)
from vssm.engine.step import graph_obstacle, reset_implementation
from vssm.engine.trainer import build_model

from .helpers import load_tool, tiny_config, write_config

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SYNTHETIC = ("dict(dataset='synthetic', synthetic_train_size=24, synthetic_val_size=6, num_classes=4, workers=0, "
             "img_size=16)")


def step_losses(work_dir) -> list[float]:
    """The loss of every logged step (log_interval=1) of a run's train.log."""
    return [float(loss) for loss in re.findall(r" step \d+/\d+ loss ([0-9.]+) ", (work_dir / "train.log").read_text())]


def weights(work_dir, key: str = "model") -> dict:
    """The model (or ``key``) state dict of a run's last.pth."""
    return torch.load(work_dir / "last.pth", weights_only=True)[key]


def assert_same_weights(actual_dir, expected_dir) -> None:
    actual = weights(actual_dir)
    for key, value in weights(expected_dir).items():
        assert torch.equal(actual[key], value), key


def run(tmp_path, name: str, root, **options):
    """Train the tiny config with ``options``; returns the run's work dir."""
    cfg = load_config(write_config(tmp_path, tiny_config(root, log_interval=1, **options), name=f"{name}.py"))
    train(cfg, str(tmp_path / name))
    return tmp_path / name


def image_batches(cfg, sampler, use_prefetcher: bool, erasing=None, split: int = 0, batch_size: int = 4) -> list:
    """Every batch of the image folder's training (split 0) or evaluation (1) transform under ``sampler``; through
    ``DeviceBatches`` on the CPU when ``use_prefetcher``."""
    dataset = open_train_set(cfg.data)
    with torch.random.fork_rng(devices=[]):  # the model is built only for its input config
        input_config = resolve_input_config(cfg, build_model(cfg, 3))
    dataset.transform = build_transforms(cfg, input_config, use_prefetcher=use_prefetcher)[split]
    loader = build_loader(dataset, sampler, batch_size, 0, False)
    if use_prefetcher:
        loader = DeviceBatches(loader, CPU, input_config["mean"], input_config["std"], erasing)
    return list(loader)


def test_device_normalisation_gives_the_cpu_transforms_numbers(tmp_path, image_root):
    augment = "dict(auto_augment='rand-m9-mstd0.5-inc1', scale=(0.5, 1.0))"
    cfg = load_config(write_config(tmp_path, tiny_config(image_root, augment=augment)))
    for split, sampler in ((0, TrainSampler(24, 4, 1, 0, seed=3)), (1, EvalSampler(24, 1, 0))):
        on_cpu = image_batches(cfg, sampler, use_prefetcher=False, split=split)
        on_device = image_batches(cfg, sampler, use_prefetcher=True, split=split)
        assert len(on_cpu) == len(on_device) == 6
        for (cpu_images, cpu_targets), (images, targets) in zip(on_cpu, on_device):
            assert images.dtype == torch.float32 and torch.equal(images, cpu_images)  # bit for bit
            assert torch.equal(targets, cpu_targets)


def test_device_erasing_depends_on_the_sample_keys_alone(tmp_path, image_root):
    """Random erasing on the device: every image erased at re_prob=1, the same boxes and noise for one rank of batch 4
    as for two ranks of batch 2, for a resumed epoch as for the whole epoch; the global generators untouched."""
    cfg = load_config(write_config(tmp_path, tiny_config(image_root, augment="dict(re_prob=1.0, re_mode='pixel')")))
    erasing = erasing_of(cfg.augment, CPU)
    plain = image_batches(cfg, TrainSampler(24, 4, 1, 0, seed=3), use_prefetcher=True)
    states = random.getstate(), torch.get_rng_state()
    erased = image_batches(cfg, TrainSampler(24, 4, 1, 0, seed=3), use_prefetcher=True, erasing=erasing)
    assert random.getstate() == states[0] and torch.equal(torch.get_rng_state(), states[1])
    for (images, _), (clean, _) in zip(erased, plain):
        assert (images != clean).flatten(1).any(dim=1).all()  # every image has a box

    ranks = [image_batches(cfg, TrainSampler(24, 2, 2, rank, seed=3), use_prefetcher=True, erasing=erasing,
                           batch_size=2) for rank in (0, 1)]
    for step, (images, targets) in enumerate(erased):
        assert torch.equal(images[0::2], ranks[0][step][0]) and torch.equal(images[1::2], ranks[1][step][0])
        assert torch.equal(targets[0::2], ranks[0][step][1])

    resumed_sampler = TrainSampler(24, 4, 1, 0, seed=3)
    resumed_sampler.set_epoch(0, start_step=4)
    resumed = image_batches(cfg, resumed_sampler, use_prefetcher=True, erasing=erasing)
    assert len(resumed) == 2
    for (images, _), (expected, _) in zip(resumed, erased[4:]):
        assert torch.equal(images, expected)


def test_prefetcher_and_pipeline_measurement_train_as_the_cpu_transform_does(tmp_path, image_root):
    """The same run (RandAugment, Mixup/CutMix) with the uint8 loader normalising on the device, and timing the input
    pipeline first, ends with the CPU transform run's weights bit for bit; the log names the pipeline's speed."""
    options = dict(augment="dict(auto_augment='rand-m9-mstd0.5-inc1', scale=(0.5, 1.0))",
                   mixup="dict(mixup_alpha=0.8, cutmix_alpha=1.0)")
    data = f"dict(dataset='imagefolder', root={str(image_root)!r}, img_size=16, crop_pct=1.0, workers=0"
    cpu = run(tmp_path, "cpu", image_root, data=data + ", prefetcher=False)", **options)
    device = run(tmp_path, "device", image_root, data=data + ", measure_pipeline=3)", **options)
    assert step_losses(device) == step_losses(cpu) and len(step_losses(cpu)) == 6
    assert_same_weights(device, cpu)
    log = (device / "train.log").read_text()
    assert "giving uint8 images; normalisation on cpu; Mixup/CutMix on cpu" in log
    assert re.search(r"input pipeline alone: [0-9.]+ img/s per process over 3 batches", log)
    assert re.search(r"img/s \(waiting for data \d+%\)", log)


def test_synthetic_split_on_the_device_serves_the_loaders_batches():
    dataset = SyntheticDataset(9, num_classes=4, img_size=8, seed=5)
    train_sampler = TrainSampler(9, 2, 1, 0, seed=1)
    for start_step in (0, 3):
        train_sampler.set_epoch(2, start_step)
        split = DeviceSplit(dataset, train_sampler, 2, CPU, workers=0)
        expected = list(build_loader(dataset, train_sampler, 2, 0, False))
        assert len(split) == len(expected) == 4 - start_step
        for (images, targets), (want_images, want_targets) in zip(split, expected):
            assert torch.equal(images, want_images) and torch.equal(targets, want_targets)
    eval_sampler = EvalSampler(9, world_size=2, rank=1)  # 4 real keys and one padding key
    split = DeviceSplit(dataset, eval_sampler, 2, CPU, workers=0)
    batches, expected = list(split), list(build_loader(dataset, eval_sampler, 2, 0, False))
    assert [len(t) for _, t in batches] == [2, 2, 1] and batches[-1][1].tolist() == [-1]
    for (images, targets), (want_images, want_targets) in zip(batches, expected):
        assert torch.equal(images, want_images) and torch.equal(targets, want_targets)
    assert split.nbytes == 9 * 3 * 8 * 8 * 4


def test_synthetic_training_on_the_device_equals_the_loader_run(tmp_path, image_root):
    loader = run(tmp_path, "loader", image_root, data=SYNTHETIC[:-1] + ", synthetic_on_device=False)")
    device = run(tmp_path, "device", image_root, data=SYNTHETIC)
    assert step_losses(device) == step_losses(loader)
    assert_same_weights(device, loader)
    assert "synthetic data generated once and held on cpu (24 + 6 images" in (device / "train.log").read_text()


@pytest.mark.parametrize("opt, implementation", [
    ("adamw", "foreach=True"), ("adamw", "fused=True"), ("momentum", "fused=True"),
])
def test_optimizer_implementations_follow_the_per_parameter_loop(tmp_path, image_root, opt, implementation):
    """foreach / fused optimizers with foreach clipping and the EMA: the loss trajectory and the weights of the
    per-parameter loop (foreach=False) within float rounding."""
    options = dict(data=SYNTHETIC, clip_grad=0.5, ema="dict(enable=True, decay=0.9)")
    plain = run(tmp_path, "plain", image_root, **options,
                optimizer=f"dict(opt='{opt}', lr=1e-2, weight_decay=0.05, foreach=False)")
    fast = run(tmp_path, "fast", image_root, **options,
               optimizer=f"dict(opt='{opt}', lr=1e-2, weight_decay=0.05, {implementation})")
    assert f"optimizer {opt} ({implementation.split('=')[0]})" in (fast / "train.log").read_text()
    assert step_losses(fast) == pytest.approx(step_losses(plain), abs=2e-4) and len(step_losses(plain)) == 6
    for key in ("model", "model_ema"):
        actual = weights(fast, key)
        for name, value in weights(plain, key).items():
            torch.testing.assert_close(actual[name], value, rtol=1e-5, atol=1e-6, msg=f"{key}.{name}")


@pytest.mark.parametrize("model, mixers", [("test_vim", 3), ("test_vmamba", 0)])
def test_activation_recompute_reaches_the_mamba_mixers(tmp_path, image_root, model, mixers):
    """The config key sets every Mamba mixer's level (the fused node's backward recomputes, identical gradients: the
    ops tests); the log says how many mixers it reached, or that the model has none."""
    run_dir = run(tmp_path, "run", image_root, data=SYNTHETIC, model=f"dict(name={model!r}, img_size=16)",
                  activation_recompute=2)
    log = (run_dir / "train.log").read_text()
    assert f"activation_recompute=2 on {mixers} Mamba mixer(s)" in log
    assert ("this model has none" in log) == (mixers == 0)
    assert len(step_losses(run_dir)) == 6


def test_cuda_graph_on_the_cpu_trains_eagerly_and_says_why_in_one_line(tmp_path, image_root):
    eager = run(tmp_path, "eager", image_root, data=SYNTHETIC, cuda_graph=False)
    graph = run(tmp_path, "graph", image_root, data=SYNTHETIC, cuda_graph=True)
    log = (graph / "train.log").read_text()
    assert log.count("cuda_graph:") == 1 and "cuda_graph: not used (the device is cpu); the step runs eagerly" in log
    assert_same_weights(graph, eager)
    default = run(tmp_path, "default", image_root, data=SYNTHETIC)  # cuda_graph None: where it can, silently not here
    assert "cuda_graph:" not in (default / "train.log").read_text()
    assert_same_weights(default, eager)


@pytest.mark.parametrize("options, distributed, reason", [
    ({}, False, None),
    ({"optimizer.opt": "momentum"}, False, None),
    ({}, True, "DDP and FSDP steps are not captured"),
    ({"amp": "fp16"}, False, "amp='fp16' loss scaling decides on the host"),
    ({"grad_accum_steps": 2}, False, "grad_accum_steps > 1"),
    ({"nonfinite": "skip"}, False, "nonfinite='skip'"),
    ({"compile": "inductor"}, False, "torch.compile runs the step"),
    ({"optimizer.opt": "lamb"}, False, "optimizer 'lamb' has no capturable step"),
    ({"optimizer.opt": "sgd", "optimizer.fused": False}, False, "SGD is captured only with its fused step"),
])
def test_what_stops_a_cuda_graph_capture_is_named(tmp_path, image_root, options, distributed, reason):
    cfg = load_config(write_config(tmp_path, tiny_config(image_root, cuda_graph=True)), options)
    found = graph_obstacle(cfg, torch.device("cuda"), distributed)
    if reason is None:
        assert found is None
    else:
        assert reason in found


def test_a_resumed_optimizer_keeps_this_runs_implementation():
    """torch's load_state_dict takes the checkpoint's implementation flags (a fused GPU run resumed on the CPU);
    reset_implementation restores the built ones and moves Adam's step counters where they belong."""
    param = torch.nn.Parameter(torch.randn(3))
    param.grad = torch.ones(3)
    fused = torch.optim.AdamW([param], lr=0.1, fused=True)
    fused.step()
    plain = torch.optim.AdamW([param], lr=0.1, foreach=False)
    plain.load_state_dict(fused.state_dict())
    assert plain.param_groups[0]["fused"]
    reset_implementation(plain)
    assert plain.param_groups[0]["fused"] is None and plain.param_groups[0]["foreach"] is False
    assert plain.state[param]["step"].device.type == "cpu" and plain.state[param]["step"].item() == 1
    plain.step()
    assert plain.state[param]["step"].item() == 2


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("opt", ["adamw", "momentum"])
def test_cuda_graph_step_follows_the_eager_step_on_the_gpu(tmp_path, image_root, opt):
    """Captured after 3 eager steps and replayed for 5 more: the loss trajectory and the weights of the eager step
    (float32, Mixup and clipping on, the per-update cosine schedule written into the graph's lr tensors)."""
    options = dict(data=SYNTHETIC[:-1] + ", synthetic_train_size=32)", clip_grad=1.0, device="'cuda'",
                   mixup="dict(mixup_alpha=0.8, cutmix_alpha=1.0)",
                   optimizer=f"dict(opt='{opt}', lr=1e-2, weight_decay=0.05)")
    eager = run(tmp_path, "eager", image_root, cuda_graph=False, **options)
    graph = run(tmp_path, "graph", image_root, **options)  # the default captures on one GPU
    assert "cuda_graph: captured the training step after 3 eager steps" in (graph / "train.log").read_text()
    assert step_losses(graph) == pytest.approx(step_losses(eager), rel=1e-4) and len(step_losses(eager)) == 8
    actual = weights(graph)
    for key, value in weights(eager).items():
        torch.testing.assert_close(actual[key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "cuda_graph"])
def test_a_training_step_never_waits_for_the_gpu(tmp_path, image_root, cuda_graph):
    """After the first steps (kernel compilation, cuDNN's algorithm search, the capture), a step (Mixup, forward,
    backward, clipping, fused optimizer, EMA, schedule, the non-finite guard) runs under CUDA's sync debug mode
    'error': any host synchronisation would raise."""
    import logging

    from vssm.engine import report
    from vssm.engine.distributed import DistContext
    from vssm.engine.runtime import NonFiniteGuard
    from vssm.engine.trainer import _Trainer

    text = tiny_config(image_root, data=SYNTHETIC[:-1] + ", synthetic_train_size=40)", clip_grad=1.0,
                       device="'cuda'", amp="'bf16'", ema="dict(enable=True)", cuda_graph=cuda_graph,
                       mixup="dict(mixup_alpha=0.8, cutmix_alpha=1.0)")
    cfg = load_config(write_config(tmp_path, text))
    ctx = DistContext(cfg.device)
    try:
        trainer = _Trainer(cfg, ctx, str(tmp_path / "run"), None, False, False)
        trainer.train_loader.sampler.set_epoch(0)
        guard = NonFiniteGuard(cfg.nonfinite, ctx, 0)
        batches = iter(trainer.train_loader)
        for step in range(10):
            images, targets = trainer._prepare(*next(batches))
            torch.cuda.set_sync_debug_mode("error" if step >= 5 else "default")
            try:
                trainer._train_step(images, targets, step, True, guard)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        assert trainer.num_updates == 10 and (trainer.captured is not None) == cuda_graph
        guard.check()
    finally:
        report.close_logging(logging.getLogger(report.LOGGER_NAME))
        ctx.close()


def test_benchmark_train_step_reads_the_trainers_windows(tmp_path, capsys):
    """tools/benchmark_train_step.py on the CPU (its smoke-test mode): one row per model and option with the img/s of
    each window after the warm-up epoch, and the trainer's CUDA-graph note."""
    out = tmp_path / "result.json"
    assert load_tool("benchmark_train_step").main([
        "--device", "cpu", "--models", "test_vmamba", "--img-size", "16", "--batch", "4", "--steps", "2",
        "--windows", "2", "--amp", "float32", "--workers", "0", "--options", "eager", "cuda_graph",
        "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(row["model"], row["option"]) for row in rows] == [("test_vmamba", "eager"), ("test_vmamba", "cuda_graph")]
    for row in rows:
        assert "error" not in row and len(row["windows_img_s"]) == 2 and row["img_s"] > 0
    assert rows[1]["notes"] == ["cuda_graph: not used (the device is cpu); the step runs eagerly"]
    assert "| test_vmamba | cuda_graph |" in capsys.readouterr().out
