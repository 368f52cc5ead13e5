#!/usr/bin/env python
"""Training throughput of tools/train.py's own step: the trainer (``vssm.engine.train``) on synthetic data held on the
device, per model and step option, beside tools/benchmark.py's CUDA-graph training figure of the same model.

    python tools/benchmark_train_step.py                       # the issue's seven models x eager / cuda_graph / compile
    python tools/benchmark_train_step.py --models vim_tiny_patch16_224 deit_tiny_patch16_224 --options eager cuda_graph
    python tools/benchmark_train_step.py --models vmamba_tiny --reference   # + benchmark.py --cuda-graph, same run

Each run is ``train()`` with: batch ``--batch`` (128), bf16, AdamW (lr 1e-3, no warm-up), label smoothing 0.1, no
augmentation, no EMA, synthetic data generated once on the device (``--steps`` x batch training images). The first
epoch of ``--steps`` steps is the warm-up (Triton compilation, torch.compile, the CUDA-graph capture); each of the next
``--windows`` epochs is one window whose img/s is the trainer's own log line at the epoch's last step
(``log_interval = --steps``; the timer restarts at each epoch, so evaluation and checkpoint writes between epochs are
not counted). Options: ``eager``; ``cuda_graph`` (``cuda_graph=True``); ``compile`` (``compile='inductor'``, with
``--compile-mode``). ``--reference`` also times tools/benchmark.py's training step of each model (``--cuda-graph``,
forward, cross-entropy, backward and an SGD step) in the same process. Prints a markdown table and writes JSON.

The trainer writes its resolved config with mmengine, which must be importable. Every run compiles its kernels again
in its warm-up epoch (and torch.compile its graph); split long tables with ``--models`` to stay under a time limit.
"""
import argparse
import gc
import importlib.util
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = ["vim_tiny_patch16_224", "vim_small_patch16_224", "vmamba_tiny", "simba_s", "plainmamba_l1",
          "swin_tiny_patch4_window7_224", "deit_tiny_patch16_224"]
OPTIONS = ("eager", "cuda_graph", "compile")
LOG_LINE = re.compile(r"epoch (\d+)/\d+ step (\d+)/(\d+) loss \S+ lr \S+ ([0-9.]+) img/s \(waiting for data (\d+)%\)"
                      r"(?: peak mem ([0-9.]+) GiB)?")


def run_config(model: str, option: str, args) -> dict:
    """The trainer config of one run (a dict for ``vssm.engine.config_from_dict``)."""
    data = dict(dataset="synthetic", num_classes=1000, synthetic_train_size=args.batch * args.steps,
                synthetic_val_size=args.batch, workers=args.workers)
    if args.img_size is not None:
        data["img_size"] = args.img_size
    return dict(
        model=dict(name=model), data=data, augment=dict(no_aug=True), epochs=1 + args.windows, batch_size=args.batch,
        amp=None if args.amp == "float32" else "bf16", log_interval=args.steps, smoothing=0.1,
        optimizer=dict(opt="adamw", lr=1e-3, weight_decay=0.05), scheduler=dict(warmup_epochs=0),
        ema=dict(enable=False), cuda_graph=option == "cuda_graph", compile="inductor" if option == "compile" else None,
        compile_mode=args.compile_mode if option == "compile" else None, device=args.device, seed=0,
        activation_recompute=args.recompute,
    )


def measure_trainer(model: str, option: str, args) -> dict:
    """img/s of each window after the warm-up epoch, peak memory, and the trainer's notes (pipeline, CUDA graph)."""
    from vssm.engine import config_from_dict, train

    row = dict(model=model, option=option)
    with tempfile.TemporaryDirectory() as work_dir:
        try:
            train(config_from_dict(run_config(model, option, args)), work_dir)
        except torch.OutOfMemoryError:
            row["error"] = "OOM"
        except Exception as error:  # a model that cannot run this option: record why, go on with the table
            row["error"] = f"{type(error).__name__}: {' '.join(str(error).split())[:160]}"
        log = (Path(work_dir) / "train.log").read_text() if (Path(work_dir) / "train.log").exists() else ""
    windows, peaks = [], []
    for match in LOG_LINE.finditer(log):
        epoch, step, steps, rate, _, peak = match.groups()
        if int(epoch) > 1 and step == steps:
            windows.append(float(rate))
            peaks.append(float(peak or 0))
    row["windows_img_s"] = windows
    if windows:
        row["img_s"] = statistics.median(windows)
        row["peak_GiB"] = max(peaks)
    row["notes"] = [line.split(" ", 2)[2] for line in log.splitlines() if "cuda_graph:" in line]
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def measure_reference(model: str, args) -> float | str:
    """tools/benchmark.py's CUDA-graph training img/s of ``model`` (its ``measure``), in this process."""
    spec = importlib.util.spec_from_file_location("vssm_benchmark", Path(__file__).with_name("benchmark.py"))
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    options = argparse.Namespace(amp="bfloat16" if args.amp == "bf16" else "float32", cuda_graph=True, compile=None,
                                 modes=["train"], warmup=5, iters=20, profile=0, recompute=args.recompute)
    case = benchmark.Case(model, batch=args.batch, img_size=args.img_size or 224)
    return benchmark.measure(case, options)["train_per_s"]


def print_table(rows: list[dict], references: dict) -> None:
    print("\n| model | option | trainer img/s (median of windows) | windows | peak GiB | benchmark.py --cuda-graph "
          "train img/s | trainer / benchmark | notes |\n|---|---|---|---|---|---|---|---|")
    for row in rows:
        reference = references.get(row["model"], "-")
        rate = row.get("img_s")
        ratio = f"{rate / reference:.2f}" if isinstance(rate, float) and isinstance(reference, float) else "-"
        cells = [row["model"], row["option"], f"{rate:.0f}" if rate else row.get("error", "-"),
                 ", ".join(f"{w:.0f}" for w in row["windows_img_s"]) or "-",
                 f"{row['peak_GiB']:.2f}" if "peak_GiB" in row else "-",
                 f"{reference:.0f}" if isinstance(reference, float) else str(reference), ratio,
                 "; ".join(row["notes"]) or "-"]
        print("| " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=OPTIONS)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=None, help="default: each model's own input size")
    parser.add_argument("--steps", type=int, default=25, help="steps per window (and of the warm-up epoch)")
    parser.add_argument("--windows", type=int, default=3, help="timed windows after the warm-up epoch")
    parser.add_argument("--amp", default="bf16", choices=["bf16", "float32"])
    parser.add_argument("--compile-mode", default=None,
                        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    parser.add_argument("--recompute", type=int, default=None, choices=[0, 1, 2, 3],
                        help="the trainer's activation_recompute (the Mamba mixers); default: the models'")
    parser.add_argument("--workers", type=int, default=8, help="loader workers that generate the synthetic data once")
    parser.add_argument("--reference", action="store_true",
                        help="also time tools/benchmark.py --cuda-graph's training step of each model")
    parser.add_argument("--device", default=None, help="default: CUDA; 'cpu' only to smoke-test this script")
    parser.add_argument("--out", default="benchmark_train_step.json")
    args = parser.parse_args(argv)
    import timm

    import vssm  # noqa: F401  (registers the zoo)

    unknown = [m for m in args.models if not timm.is_model(m)]
    if unknown:
        parser.error(f"unknown model name(s): {', '.join(unknown)}")
    if args.device is None and not torch.cuda.is_available():
        parser.error("no CUDA GPU (pass --device cpu to smoke-test the script)")
    if args.reference and args.device == "cpu":
        parser.error("--reference times CUDA graphs: it needs a GPU")
    meta = dict(device=torch.cuda.get_device_name() if args.device != "cpu" else platform.processor() or "cpu",
                torch=torch.__version__, timm=timm.__version__, date=str(date.today()), command=" ".join(sys.argv))
    print(meta, flush=True)
    started = time.time()
    rows, references = [], {}
    for model in args.models:
        if args.reference:
            references[model] = measure_reference(model, args)
        for option in args.options:
            rows.append(measure_trainer(model, option, args))
            row = rows[-1]
            print(f"{model} {option}: {row.get('img_s', row.get('error'))} img/s, windows {row['windows_img_s']}",
                  flush=True)
        Path(args.out).write_text(json.dumps(dict(meta=meta, rows=rows, references=references), indent=1))
    print_table(rows, references)
    print(f"\ntotal {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
