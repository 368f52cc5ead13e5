"""Throughput and peak memory of zoo models next to their attention / conv peers, measured in one run.

    python tools/benchmark.py --suite vim [--out results.json]            # a preset table of the issues
    python tools/benchmark.py --models vim_tiny_patch16_224 deit_tiny_patch16_224 --batch 128 --img-size 224

Inference: eval forward under ``torch.no_grad``; training: forward, cross-entropy, backward and an SGD step. Both
under bf16 autocast (``--amp``), images per second from CUDA-event timings of ``--iters`` steps after ``--warmup``
steps, the step time in milliseconds, peak allocated memory from ``torch.cuda.max_memory_allocated``. GFLOPs per
image (clip) from ``vssm.flops.count_flops`` on a batch of one: GEMMs and convolutions as multiply-adds (the papers'
fvcore convention), each scan by the 9 B L D N rule of the SSM papers (+ B L D for D and the gate); norms, elementwise
work and FFTs are not counted. ``--profile K`` also runs one step of each
mode under the torch profiler and prints its GPU kernel time (against the timed step: a smaller share means the host
sets the pace) and its K most expensive kernels; ``--s4nd-stages`` splits each S4ND model's training step into kernel
generation, convolution (FFT or Toeplitz) and the rest. A model that runs out of memory is reported as
OOM. Video models take (batch, 3, frames, H, W); their attention peer is timm's VisionTransformer of the same width on
the frames stacked along the height (joint space-time attention over the same tokens). Prints a markdown table per
suite and writes all rows as JSON.
"""
import argparse
import gc
import json
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vssm  # noqa: E402,F401  (registers the zoo)
from vssm.flops import count_flops  # noqa: E402
from vssm.layers.mamba_mixer import set_activation_recompute  # noqa: E402


@dataclass
class Case:
    """One model at one input size. ``frames`` > 0: a video input (batch, 3, frames, H, W)."""
    model: str
    batch: int = 128
    img_size: int = 224
    frames: int = 0
    kwargs: dict = field(default_factory=dict)
    label: str = ""
    stacked: bool = False  # an image model given the frames stacked along the height (the joint-attention peer)


def suites() -> dict[str, list[Case]]:
    """The speed tables the model issues ask for (H100, bf16, batch 128 at 224 unless a table says otherwise)."""
    vim = ["vim_tiny_patch16_224", "vim_tiny_patch16_stride8_224", "vim_small_patch16_224",
           "vim_small_patch16_stride8_224", "vim_base_patch16_224",
           "videomamba_tiny_image", "videomamba_small_image", "videomamba_middle_image", "videomamba_base_image"]
    deit = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]
    swin = ["swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224"]
    convnext = ["convnext_tiny", "convnext_small", "convnext_base"]
    vmamba = ["vmamba_tiny", "vmamba_small", "vmamba_base", "vmamba_tiny_s2l5", "vmamba_small_s1l20",
              "vmamba_base_s1l20", "vmamba_tiny_v0", "vmamba_small_v0", "vmamba_base_v0", "local_vmamba_tiny",
              "local_vmamba_small", "local_vim_tiny", "local_vim_tiny_midcls", "local_vim_small"]
    simba = ["simba_s", "simba_b", "simba_l", "simba_s_einfft", "simba_b_einfft", "simba_l_einfft", "simba_s_monarch",
             "simba_b_monarch", "simba_l_monarch"]
    plain = ["plainmamba_l1", "plainmamba_l2", "plainmamba_l3"]

    def joint_attention(vit: str, batch: int, frames: int) -> Case:
        return Case(vit, batch=batch, frames=frames, kwargs=dict(img_size=(frames * 224, 224)), stacked=True,
                    label=f"{vit} joint space-time")

    video = []
    for frames in (8, 16, 32, 64):
        for mamba, vit in (("videomamba_tiny", "vit_tiny_patch16_224"), ("videomamba_small", "vit_small_patch16_224")):
            video.append(Case(mamba, batch=4, frames=frames, kwargs=dict(num_frames=frames)))
            video.append(joint_attention(vit, 4, frames))
    video_ft = []  # the fine-tune recipes' clips per GPU step: batch x num_sample (2 augmented clips per video)
    for mamba, vit, batches in (("videomamba_tiny", "vit_tiny_patch16_224", {8: 128, 16: 128}),
                                ("videomamba_small", "vit_small_patch16_224", {8: 128, 16: 64})):
        for frames, batch in batches.items():
            video_ft.append(Case(mamba, batch=batch, frames=frames, kwargs=dict(num_frames=frames)))
            video_ft.append(joint_attention(vit, batch, frames))
    return {
        "vim": [Case(m) for m in vim + deit],
        "video_ft": video_ft,
        "vim_highres": [Case(m, batch=8, img_size=s, kwargs=dict(img_size=s)) for s in (512, 1024, 1248)
                        for m in ("vim_tiny_patch16_224", "deit_tiny_patch16_224")],
        "video": video,
        "vmamba": [Case(m) for m in vmamba + swin + convnext],
        "vmamba_res": [c for s in (224, 384, 512, 768) for c in (  # VMamba takes any size; Swin is built for one
            Case("vmamba_tiny", batch=32, img_size=s), Case("swin_tiny_patch4_window7_224", batch=32, img_size=s,
                                                            kwargs=dict(img_size=s)))],
        "simba": [Case(m) for m in simba + plain + swin + convnext + deit],
        "s4nd": [Case(m) for m in ("s4nd_convnext_tiny", "convnext_tiny", "s4nd_vit_base", "deit_base_patch16_224")]
        + [case for frames in (16, 32) for case in (
            Case("s4nd_convnext_tiny_3d", batch=8, frames=frames, kwargs=dict(num_frames=frames, num_classes=400)),
            joint_attention("vit_small_patch16_224", 8, frames))],
    }


def _inputs(case: Case, device: str):
    """A batch of random images (or clips) and labels for ``case``."""
    if case.stacked:
        shape = (case.batch, 3, case.frames * case.img_size, case.img_size)
    elif case.frames:
        shape = (case.batch, 3, case.frames, case.img_size, case.img_size)
    else:
        shape = (case.batch, 3, case.img_size, case.img_size)
    return torch.randn(shape, device=device), torch.randint(0, 400 if case.frames else 1000, (case.batch,),
                                                            device=device)


def _timed(step, warmup: int, iters: int, device: str = "cuda") -> float:
    """Milliseconds per step (CUDA events around ``iters`` steps after ``warmup`` steps; the host clock off CUDA)."""
    for _ in range(warmup):
        step()
    if device != "cuda":
        start = time.perf_counter()
        for _ in range(iters):
            step()
        return (time.perf_counter() - start) * 1000 / iters
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def graphed(step, before_capture=None, warmup: int = 3):
    """``step`` captured in a CUDA graph; returns the graph's replay. The warm-up steps run on a side stream, as
    capture requires (they also create the optimizer state that the captured step reuses); ``before_capture`` runs
    between them and the capture."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    if before_capture is not None:
        before_capture()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def warm_up_gpu(seconds: float = 3.0) -> None:
    """Run matmuls for a few seconds so the first case is timed at the clocks of the rest (without this, the first
    model of a run measured about 20% slower than an identical one later in the same run)."""
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    end = time.time() + seconds
    while time.time() < end:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


def measure(case: Case, args) -> dict:
    """Inference and training images (clips) per second, step time (ms), peak memory (GiB) and GFLOPs of one case."""
    row = dict(asdict(case), name=case.label or case.model)
    # autocast's cast cache would hold tensors across graph replays: off when capturing
    amp = dict(device_type="cuda", dtype=getattr(torch, args.amp), enabled=args.amp != "float32",
               cache_enabled=not args.cuda_graph)
    for mode in args.modes:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            model = timm.create_model(case.model, **case.kwargs).cuda()
            if getattr(args, "recompute", None) is not None:
                set_activation_recompute(model, args.recompute)
            x, target = _inputs(case, "cuda")
            if "gflops" not in row:
                row["gflops"] = count_flops(model, x[:1]).gflops
                torch.cuda.reset_peak_memory_stats()
            if args.compile:
                model = torch.compile(model, mode=None if args.compile == "default" else args.compile)
            row["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
            zero_grads = None
            if mode == "infer":
                model.eval()

                def step():
                    with torch.no_grad(), torch.autocast(**amp):
                        model(x)
            else:
                model.train()
                optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
                # captured, the backward allocates the gradients in the graph's pool and each replay writes them afresh
                zero_grads = lambda: optimizer.zero_grad(set_to_none=True)  # noqa: E731

                def step():
                    with torch.autocast(**amp):
                        loss = F.cross_entropy(model(x).float(), target)
                    loss.backward()
                    optimizer.step()
                    if not args.cuda_graph:
                        zero_grads()
            if args.cuda_graph:
                step = graphed(step, zero_grads)
            ms = _timed(step, args.warmup, args.iters)
            row[f"{mode}_per_s"], row[f"{mode}_ms"] = case.batch * 1000 / ms, ms
            row[f"{mode}_peak_GiB"] = torch.cuda.max_memory_allocated() / 2 ** 30
            if args.profile:
                gpu_ms, split, table = _profiled(step, args.profile)
                row[f"{mode}_gpu_ms"], row[f"{mode}_gpu_split_ms"] = gpu_ms, split
                shares = ", ".join(f"{kind} {value:.1f} ms ({value / gpu_ms:.0%})" for kind, value in split.items())
                print(f"{row['name']} {mode}: {ms:.1f} ms per step, GPU kernels {gpu_ms:.1f} ms "
                      f"({gpu_ms / ms:.0%}): {shares}\n{table}", flush=True)
        except torch.OutOfMemoryError:
            row[f"{mode}_per_s"] = "OOM"
        except Exception as exc:  # a peer that cannot take the size: record why, go on with the table
            row[f"{mode}_per_s"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        finally:  # free before the next mode or case (a captured graph holds its pool and, through ``step``, the model)
            model = x = target = optimizer = step = zero_grads = None  # noqa: F841
            gc.collect()
        print(f"{row['name']} {case.batch}x{case.frames or ''}{case.img_size}: {mode} {row[f'{mode}_per_s']}",
              flush=True)
    return row


# kernel classes of the profile split, first match wins: (class, pattern of the kernel name)
KERNEL_CLASSES = [
    ("ours (Triton)", re.compile(r"^_(scan|conv|layer_norm)\w*_kernel$")),
    ("FFT", re.compile(r"fft", re.I)),
    ("attention", re.compile(r"sdpa|flash|fmha|attention", re.I)),
    ("GEMM", re.compile(r"gemm|nvjet|cutlass|xmma|cublas", re.I)),
    ("convolution", re.compile(r"conv|dgrad|wgrad|cudnn", re.I)),
    ("norm", re.compile(r"layer_norm|group_norm|batch_norm|GammaBeta", re.I)),
    ("reduction", re.compile(r"reduce|softmax|scan_kernel", re.I)),
    ("element-wise and copies", re.compile(r"elementwise|vectorized|unrolled|copy|fill|index|cat|where|memcpy|"
                                           r"memset|triton_", re.I)),
]


def kernel_split(times: dict[str, float]) -> dict[str, float]:
    """Kernel time per class of ``KERNEL_CLASSES`` (plus 'other'), from {kernel name: time}; largest first."""
    split: dict[str, float] = {}
    for name, value in times.items():
        kind = next((kind for kind, pattern in KERNEL_CLASSES if pattern.search(name)), "other")
        split[kind] = split.get(kind, 0.0) + value
    return dict(sorted(split.items(), key=lambda item: -item[1]))


def _profiled(step, top: int) -> tuple[float, dict[str, float], str]:
    """GPU kernel milliseconds of one ``step``, their split by kernel class (ms) and a table of its ``top`` kernels by
    CUDA time (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = prof.key_averages()
    times = {k.key: k.self_device_time_total / 1e3 for k in kernels if k.self_device_time_total > 0}
    table = kernels.table(sort_by="self_cuda_time_total", row_limit=top, max_name_column_width=60)
    return sum(times.values()), kernel_split(times), table


def s4nd_stages(case: Case, args, device: str = "cuda") -> dict:
    """Where an S4ND model's training step goes, stage by stage (``--s4nd-stages``): the whole step (forward,
    cross-entropy, backward), then, for the inputs every ``S4ND`` layer met in one forward, the kernel generation
    alone (``vssm.layers.s4nd.generate_operators``: per-axis kernels and their spectra or Toeplitz matrices, whichever
    path the layer runs, forward and backward) and the convolution alone (``ssm_convolution`` with those operators:
    FFTs and spectral product, or the Toeplitz matrix products, and the D skip, forward and backward); the rest is the
    difference. Milliseconds per step, the number of layers on the Toeplitz path, and on a GPU each stage's kernel
    time and its split by kernel class (torch profiler)."""
    from vssm.layers.s4nd import S4ND, generate_operators, ssm_convolution

    def operator_tensors(operators: dict) -> list:
        return operators["matrices" if "matrices" in operators else "spectra"]

    model = timm.create_model(case.model, **case.kwargs).to(device).train()
    x, target = _inputs(case, device)
    amp = dict(device_type=device, dtype=getattr(torch, args.amp), enabled=args.amp != "float32")
    calls = []

    def record(layer, inputs, kwargs):
        u, rate = inputs[0], (inputs[1] if len(inputs) > 1 else kwargs.get("rate", 1.0))
        shape = tuple(u.shape) if layer.transposed else (u.shape[0], u.shape[-1], *u.shape[1:-1])
        calls.append((layer, shape, u.dtype, float(rate)))

    layers = [m for m in model.modules() if isinstance(m, S4ND)]
    if not layers:
        raise ValueError(f"{case.model} has no S4ND layer")
    hooks = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
    with torch.no_grad(), torch.autocast(**amp):
        model(x)
    for hook in hooks:
        hook.remove()
    inputs = []
    for layer, shape, dtype, rate in calls:
        operators = generate_operators(layer, shape[2:], rate)
        leaves = {name: value if name == "fft_sizes" else [t.detach().requires_grad_() for t in value]
                  for name, value in operators.items()}
        inputs.append((layer, torch.randn(shape, device=device, dtype=dtype, requires_grad=True), leaves))

    def step():
        with torch.autocast(**amp):
            loss = F.cross_entropy(model(x).float(), target)
        loss.backward()
        model.zero_grad(set_to_none=True)

    def generation():
        total = 0
        for layer, shape, _, rate in calls:
            operators = generate_operators(layer, shape[2:], rate)
            total = total + sum((torch.view_as_real(t) if t.is_complex() else t).sum()
                                for t in operator_tensors(operators))
        total.backward()
        model.zero_grad(set_to_none=True)

    def convolution():
        total = 0
        for layer, u, operators in inputs:
            total = total + ssm_convolution(layer, u, **operators).float().sum()
        total.backward()
        for _, u, operators in inputs:
            u.grad = None
            for t in operator_tensors(operators):
                t.grad = None

    row = dict(model=case.model, batch=case.batch, frames=case.frames, img_size=case.img_size, layers=len(calls),
               toeplitz_layers=sum("matrices" in operators for _, _, operators in inputs))
    for name, fn in (("step", step), ("generation", generation), ("convolution", convolution)):
        row[f"{name}_ms"] = _timed(fn, args.warmup, args.iters, device)
        if device == "cuda":
            row[f"{name}_gpu_ms"], row[f"{name}_gpu_split_ms"], _ = _profiled(fn, 0)
    row["rest_ms"] = row["step_ms"] - row["generation_ms"] - row["convolution_ms"]
    return row


def print_stages(row: dict) -> None:
    """One line per model: the step and its stages in ms and as shares of the step."""
    step = row["step_ms"]
    parts = ", ".join(f"{label} {row[f'{name}_ms']:.1f} ms ({row[f'{name}_ms'] / step:.0%})" for name, label in (
        ("generation", "kernel generation"), ("convolution", "convolution"), ("rest", "the rest")))
    gpu = "".join(f"; {name} GPU kernels {row[f'{name}_gpu_ms']:.1f} ms"
                  for name in ("step", "generation", "convolution") if f"{name}_gpu_ms" in row)
    print(f"{row['model']} {row['batch']}x{str(row['frames']) + 'x' if row['frames'] else ''}{row['img_size']} "
          f"training step {step:.1f} ms over {row['layers']} S4ND layers ({row['toeplitz_layers']} Toeplitz): "
          f"{parts}{gpu}", flush=True)


def _fmt(value, digits=0):
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_table(suite: str, rows: list[dict]) -> None:
    print(f"\n### {suite}\n\n| model | batch x [frames x] size | params (M) | GFLOPs | infer /s | infer ms | "
          f"train /s | train ms | infer peak GiB | train peak GiB |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        size = f"{r['batch']} x {str(r['frames']) + ' x ' if r['frames'] else ''}{r['img_size']}"
        cells = [_fmt(r.get(key, "-"), digits) for key, digits in (
            ("params_M", 1), ("gflops", 2), ("infer_per_s", 0), ("infer_ms", 1), ("train_per_s", 0), ("train_ms", 1),
            ("infer_peak_GiB", 2), ("train_peak_GiB", 2))]
        print(f"| {r['name']} | {size} | {' | '.join(cells)} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", nargs="*", default=[], choices=sorted(suites()), help="preset tables")
    parser.add_argument("--models", nargs="*", default=[], help="timm model names (with --batch, --img-size)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    parser.add_argument("--amp", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--compile", nargs="?", const="default", default=None,
                        choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                        help="torch.compile every model (optionally with this mode; 'reduce-overhead' adds CUDA graphs)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="time replays of each eager step captured in a CUDA graph (GPU-bound throughput)")
    parser.add_argument("--recompute", type=int, default=None, choices=[0, 1, 2, 3],
                        help="what the Mamba mixers' backward recomputes (vssm.ops.mamba_inner); default: the models'")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--profile", type=int, default=0, metavar="K",
                        help="profile one step per mode: GPU kernel time, its split by kernel class (FFT, GEMM, "
                             "element-wise, ...) and the K most expensive kernels")
    parser.add_argument("--s4nd-stages", action="store_true",
                        help="also split each S4ND model's training step into kernel generation, convolution "
                             "and the rest (s4nd_stages)")
    parser.add_argument("--out", default="benchmark.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmark.py needs a CUDA GPU")
    unknown = [m for m in args.models if not timm.is_model(m)]
    if unknown:
        sys.exit(f"unknown model name(s): {', '.join(unknown)}")
    tables = {name: suites()[name] for name in args.suite}
    if args.models:
        tables["models"] = [Case(m, batch=args.batch, img_size=args.img_size) for m in args.models]
    if not tables:
        sys.exit("nothing to measure: give --suite and/or --models")
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, timm=timm.__version__,
                python=platform.python_version(), date=str(date.today()), command=" ".join(sys.argv),
                compile=args.compile, cuda_graph=args.cuda_graph)
    print(meta, flush=True)
    warm_up_gpu()
    t0 = time.time()
    results = {}
    for suite, cases in tables.items():
        results[suite] = [measure(case, args) for case in cases]
        print_table(suite, results[suite])
        if args.s4nd_stages:
            results[f"{suite}_s4nd_stages"] = []
            for case in cases:
                if case.model.startswith("s4nd"):
                    results[f"{suite}_s4nd_stages"].append(s4nd_stages(case, args))
                    print_stages(results[f"{suite}_s4nd_stages"][-1])
        Path(args.out).write_text(json.dumps(dict(meta=meta, results=results), indent=1))
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
