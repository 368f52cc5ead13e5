#!/usr/bin/env python
"""CPU inference speed: the exported ONNX graph in onnxruntime against the model in PyTorch eager.

    python tools/benchmark_onnx.py [MODEL ...] [--batch-sizes 1 8] [--threads N] [--iters 10] [--warmup 2]
                                   [--workdir DIR [--reuse]] [--markdown]

Defaults: vim_tiny_patch16_224 vmamba_tiny simba_s_einfft plainmamba_l1 at batch 1 and 8, random weights (speed does
not depend on them), float32, onnxruntime's CPU provider and PyTorch with the same number of threads (all cores
by default). Each model is exported once (to --workdir, a temporary folder by default). Per model and batch: the
median latency over --iters timed runs after --warmup runs, the throughput (batch / median latency) and the largest
difference between the two runtimes' outputs (same random weights). The load average of the machine before and after
is printed too: numbers from a busy machine are not comparable. Prints one JSON line per measurement, then a Markdown
table with --markdown.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_MODELS = ["vim_tiny_patch16_224", "vmamba_tiny", "simba_s_einfft", "plainmamba_l1"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", default=DEFAULT_MODELS, help="registered model names")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of both runtimes")
    parser.add_argument("--iters", type=int, default=10, help="timed runs per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--workdir", help="folder for the exported graphs (kept); a temporary one by default")
    parser.add_argument("--reuse", action="store_true", help="use the graphs already in --workdir (no export)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table at the end")
    parser.add_argument("--low-memory", action="store_true",
                        help="onnxruntime without its memory arena and pattern planner (vssm.export.onnx.ort_session)")
    return parser.parse_args(argv)


def _median_seconds(fn, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(name: str, workdir: str, batch_sizes, threads: int, iters: int, warmup: int,
                reuse: bool = False, low_memory: bool = False) -> list:
    """Rows {model, runtime, batch, latency_ms, throughput} for onnxruntime and PyTorch eager."""
    import torch

    from vssm.export import create_export_model, export_onnx
    from vssm.export.onnx import ort_session

    path = os.path.join(workdir, f"{name}.onnx")
    torch.manual_seed(0)
    if not (reuse and os.path.exists(path)):
        export_onnx(name, path)
    torch.manual_seed(0)  # the exported model's random weights
    model, shape = create_export_model(name)
    session = ort_session(path, threads)
    input_name = session.get_inputs()[0].name
    torch.set_num_threads(threads)
    rows = []
    for batch in batch_sizes:
        x = torch.randn(batch, *shape)
        x_np = x.numpy()

        def run_torch():
            with torch.no_grad():
                model(x)

        def run_ort():
            session.run(None, {input_name: x_np})

        with torch.no_grad():
            diff = float(abs(session.run(None, {input_name: x_np})[0] - model(x).numpy()).max())
        for runtime, fn in (("onnxruntime", run_ort), ("pytorch-eager", run_torch)):
            seconds = _median_seconds(fn, iters, warmup)
            rows.append(dict(model=name, runtime=runtime, batch=batch, latency_ms=round(seconds * 1e3, 1),
                             throughput=round(batch / seconds, 2), max_abs_diff=diff))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list) -> str:
    """Table: model, batch, then latency and throughput of each runtime and onnxruntime's speed-up."""
    lines = ["| model | batch | ORT latency (ms) | ORT img/s | eager latency (ms) | eager img/s | ORT speed-up |",
             "|---|---|---|---|---|---|---|"]
    keyed = {(r["model"], r["batch"], r["runtime"]): r for r in rows}
    for model, batch in dict.fromkeys((r["model"], r["batch"]) for r in rows):
        ort, eager = keyed[(model, batch, "onnxruntime")], keyed[(model, batch, "pytorch-eager")]
        lines.append(f"| {model} | {batch} | {ort['latency_ms']} | {ort['throughput']} | {eager['latency_ms']} | "
                     f"{eager['throughput']} | {eager['latency_ms'] / ort['latency_ms']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from vssm.engine import USER_ERRORS, one_line

    print(json.dumps({"loadavg_before": os.getloadavg(), "cpus": os.cpu_count(), "threads": args.threads}), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        try:
            for name in args.models:
                rows += bench_model(name, workdir, args.batch_sizes, args.threads, args.iters, args.warmup,
                                    args.reuse, args.low_memory)
        except USER_ERRORS as error:
            print(f"error: {one_line(error)}", file=sys.stderr)
            return 2
    print(json.dumps({"loadavg_after": os.getloadavg()}), flush=True)
    if args.markdown:
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
