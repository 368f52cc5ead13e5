"""Benchmark the selective scan and the fused multi-direction scan on a CUDA GPU.

    python tools/benchmark_scan.py [--out results.json] [--sweep] [--skip-slow]
    python tools/benchmark_scan.py --sweep-only --sweep-layout channels_last --sweep-shapes 128,128,3136,64

First checks the Triton kernels against the float64 PyTorch path on fresh random inputs (forward and every gradient),
then times the issue's cases (bf16 u/delta/B/C, fp32 A/D/delta_bias, softplus, B/C as (batch, 1, N, L)):
forward and forward+backward medians (triton.testing.do_bench), the forward+backward's summed kernel time (torch
profiler: without the host-side gaps that small cases show), forward effective GB/s (u, delta, B, C read once, y
written once) against the copy bandwidth measured in the same run, and the speed-up over the chunked PyTorch path and
the sequential reference timed in the same run. mamba_ssm's CUDA scan (``selective_scan_cuda``) is timed on the same
inputs in the same run when it is importable, or built from a mamba-ssm source tree or sdist given by ``--mamba-src``
(its ``csrc/selective_scan`` compiled for this GPU with torch's C++ extension loader, cached in ``--mamba-build``;
about two minutes on an H100 host the first time) and checked against our output first. Then the fused
4-direction cross-scan (``multi_scan``) against gather + scan + scatter in PyTorch. Prints markdown tables; writes
everything as JSON. ``--sweep`` / ``--sweep-only`` time the launch configurations of ``sweep_configs`` (forward and
backward tiles, chunk lengths, tile layouts, the length split) against the default plan on given shapes and layouts.
"""
import argparse
import json
import platform
import sys
import tarfile
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vssm.ops import multi_scan, scan_paths, selective_scan, selective_scan_chunked  # noqa: E402
from vssm.ops.triton import scan_plan  # noqa: E402

CASES = [(64, 768, 3136, 16), (64, 384, 3136, 1), (64, 768, 197, 16), (8, 768, 3137, 16), (2, 768, 12545, 16)]
MAMBA_SOURCES = ["selective_scan.cpp", "selective_scan_fwd_fp32.cu", "selective_scan_fwd_fp16.cu",
                 "selective_scan_fwd_bf16.cu"] + [f"selective_scan_bwd_{t}_{k}.cu" for t in ("fp32", "fp16", "bf16")
                                                  for k in ("real", "complex")]
MAMBA_NVCC_FLAGS = ["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                    "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                    "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
                    "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math"]
CROSS_CASES = [(64, 192, 56, 56, 1), (64, 192, 56, 56, 16)]


def scan_inputs(batch, dim, length, d_state, dtype=torch.bfloat16, device="cuda", requires_grad=False,
                channels_last=False):
    """selective_scan's inputs: u, delta (batch, dim, L) and B, C (batch, 1, N, L), each sequence contiguous; with
    ``channels_last`` u, delta as (batch, dim, L) views of (batch, L, dim) maps and B, C as (batch, N, L) views of one
    (batch, L, 2N) tensor (the 2-D models' and SiMBA's layout)."""
    g = torch.Generator(device=device).manual_seed(batch * 131 + length)

    def rnd(*shape, dt=dtype, scale=1.0):
        return (torch.randn(*shape, device=device, generator=g) * scale).to(dt).requires_grad_(requires_grad)

    A = (-(torch.rand(dim, d_state, device=device, generator=g) * 4 + 0.5)).requires_grad_(requires_grad)
    params = dict(A=A, D=rnd(dim, dt=torch.float32), delta_bias=rnd(dim, dt=torch.float32, scale=0.5))
    if channels_last:
        bc = rnd(batch, length, 2 * d_state)
        return dict(u=rnd(batch, length, dim).transpose(1, 2), delta=rnd(batch, length, dim, scale=0.5).transpose(1, 2),
                    B=bc[..., :d_state].transpose(1, 2), C=bc[..., d_state:].transpose(1, 2), **params)
    return dict(u=rnd(batch, dim, length), delta=rnd(batch, dim, length, scale=0.5),
                B=rnd(batch, 1, d_state, length), C=rnd(batch, 1, d_state, length), **params)


def with_backend(name, fn):
    import os

    def run():
        old = os.environ.get("VSSM_SCAN_BACKEND")
        os.environ["VSSM_SCAN_BACKEND"] = name
        try:
            return fn()
        finally:
            os.environ.pop("VSSM_SCAN_BACKEND") if old is None else os.environ.__setitem__("VSSM_SCAN_BACKEND", old)
    return run


def rel_err(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check_correctness():
    """Triton vs the float64 chunked PyTorch path: selective scan (fp32 and bf16) and multi_scan, fwd + grads."""
    rows = []
    for batch, dim, length, d_state, dtype in [(2, 64, 197, 16, torch.float32), (2, 96, 1000, 1, torch.float32),
                                               (1, 48, 3137, 16, torch.bfloat16), (3, 40, 77, 64, torch.float32)]:
        x = scan_inputs(batch, dim, length, d_state, dtype, requires_grad=True)
        z = torch.randn(batch, dim, length, device="cuda").to(dtype).requires_grad_(True)
        x["z"] = z
        w = torch.randn(batch, dim, length, device="cuda", dtype=torch.float64)
        y = with_backend("triton", lambda: selective_scan(**x, delta_softplus=True, a_nonpositive=True))()
        grads = torch.autograd.grad((y.double() * w).sum(), list(x.values()))
        x64 = {k: v.detach().double().requires_grad_(True) for k, v in x.items()}
        y64 = selective_scan_chunked(**x64, delta_softplus=True)
        grads64 = torch.autograd.grad((y64 * w).sum(), list(x64.values()))
        errs = {"y": rel_err(y, y64)} | {k: rel_err(g, g64) for k, g, g64 in zip(x, grads, grads64)}
        rows.append((f"selective_scan {batch}x{dim}x{length} N={d_state} {str(dtype)[6:]}", max(errs.values()), errs))
    for kind, shape, opts in [("cross", (23, 17), {}), ("local", (14, 11), dict(directions=("h", "v_flip", "w7",
                                                                                             "w2_flip"))),
                              ("zigzag", (9, 12), {}), ("spatiotemporal", (3, 7, 5), {})]:
        paths = scan_paths.build(kind, shape, device="cuda")
        num_directions, steps = paths.shape
        length = int(torch.tensor(shape).prod())
        batch, dim, d_state = 2, 32, 16
        g = torch.Generator(device="cuda").manual_seed(7)
        x = dict(x=torch.randn(batch, dim, length, device="cuda", generator=g),
                 delta=torch.randn(batch, num_directions, dim, length, device="cuda", generator=g) * 0.5,
                 A=-torch.rand(num_directions, dim, d_state, device="cuda", generator=g) - 0.3,
                 B=torch.randn(batch, num_directions, d_state, length, device="cuda", generator=g),
                 C=torch.randn(batch, num_directions, d_state, length, device="cuda", generator=g),
                 D=torch.randn(num_directions, dim, device="cuda", generator=g),
                 z=torch.randn(batch, dim, length, device="cuda", generator=g),
                 delta_bias=torch.randn(num_directions, dim, device="cuda", generator=g))
        if kind in ("cross", "local"):  # channels-last views, as models hand them over
            x["x"] = x["x"].transpose(1, 2).contiguous().transpose(1, 2)
            for key in ("delta", "B", "C"):
                x[key] = x[key].permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
        x = {k: v.requires_grad_(True) for k, v in x.items()}
        w = torch.randn(batch, dim, length, device="cuda", dtype=torch.float64)
        y = with_backend("triton", lambda: multi_scan(**x, paths=paths, delta_softplus=True, a_nonpositive=True))()
        grads = torch.autograd.grad((y.double() * w).sum(), list(x.values()))
        x64 = {k: v.detach().double().requires_grad_(True) for k, v in x.items()}
        y64 = with_backend("torch", lambda: multi_scan(**x64, paths=paths, delta_softplus=True, a_nonpositive=True))()
        grads64 = torch.autograd.grad((y64 * w).sum(), list(x64.values()))
        errs = {"y": rel_err(y, y64)} | {k: rel_err(g_, g64) for k, g_, g64 in zip(x, grads, grads64)}
        rows.append((f"multi_scan {kind} {shape}", max(errs.values()), errs))
    return rows


def copy_bandwidth():
    """Device-to-device copy of 2 GiB: GB/s counting bytes read plus written."""
    src = torch.randn(2 ** 29, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * 4 / ms / 1e6


def time_once(fn, reps=3):
    """Median of a few runs with CUDA events (for slow baselines), after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def fwd_bwd(fn, inputs):
    leaves = [v for v in inputs.values() if v is not None and v.requires_grad]

    def step():
        y = fn()
        torch.autograd.grad(y, leaves, torch.ones_like(y))
    return step


def bench_case(batch, dim, length, d_state):
    """Triton forward (no grad) and forward+backward medians, forward GB/s."""
    x = scan_inputs(batch, dim, length, d_state, requires_grad=True)
    fwd = lambda: selective_scan(**x, delta_softplus=True, a_nonpositive=True)  # noqa: E731
    row = dict(case=(batch, dim, length, d_state))
    with torch.no_grad():
        row["triton_fwd_ms"] = do_bench(with_backend("triton", fwd), warmup=25, rep=200, return_mode="median")
    row["triton_fwdbwd_ms"] = do_bench(with_backend("triton", fwd_bwd(fwd, x)), warmup=25, rep=200,
                                       return_mode="median")
    nbytes = 2 * (3 * batch * dim * length + 2 * batch * d_state * length)
    row["fwd_GBps"] = nbytes / row["triton_fwd_ms"] / 1e6
    return row


def device_time(row, iters=10):
    """Add the summed CUDA kernel time of one forward+backward (torch profiler, host launch gaps excluded) to a
    ``bench_case`` row: for the small cases the end-to-end median also holds the op's host-side cost."""
    from torch.profiler import ProfilerActivity, profile

    x = scan_inputs(*row["case"], requires_grad=True)
    step = with_backend("triton", fwd_bwd(lambda: selective_scan(**x, delta_softplus=True, a_nonpositive=True), x))
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
    row["device_fwdbwd_ms"] = sum(e.self_device_time_total for e in prof.key_averages()) / iters / 1e3


def mamba_scan_module(source: str | None, build_dir: str):
    """mamba_ssm's ``selective_scan_cuda`` extension: imported, else compiled from ``source`` (a mamba-ssm source
    tree or its .tar.gz sdist) for this GPU's architecture; None when neither is possible (the reason is printed)."""
    try:
        import selective_scan_cuda
        return selective_scan_cuda
    except ImportError:
        if source is None:
            print("mamba_ssm's selective_scan_cuda is not importable and --mamba-src is not given: no mamba column")
            return None
    from torch.utils.cpp_extension import load

    root = Path(source)
    if root.is_file():  # an sdist: unpack its csrc once
        unpacked = Path(tempfile.mkdtemp(prefix="mamba_src_"))
        with tarfile.open(root) as archive:
            archive.extractall(unpacked, filter="data")
        root = next(unpacked.iterdir())
    csrc = root / "csrc" / "selective_scan"
    if not (csrc / "selective_scan.cpp").exists():
        sys.exit(f"--mamba-src {source}: no csrc/selective_scan/selective_scan.cpp in it (mamba-ssm >= 2.2.6 sdists "
                 "and the git tree have it)")
    major, minor = torch.cuda.get_device_capability()
    arch = [f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}"]
    Path(build_dir).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    module = load(name="selective_scan_cuda", sources=[str(csrc / f) for f in MAMBA_SOURCES],
                  extra_cflags=["-O3", "-std=c++17"], extra_cuda_cflags=MAMBA_NVCC_FLAGS + arch,
                  extra_include_paths=[str(csrc)], build_directory=build_dir, verbose=False)
    print(f"built mamba_ssm's selective_scan_cuda from {source} in {time.time() - t0:.0f} s", flush=True)
    return module


def bench_mamba(row, module):
    """Add mamba_ssm's CUDA scan forward and forward+backward medians on the same inputs to a ``bench_case`` row,
    after checking its output against ours."""
    x = scan_inputs(*row["case"])
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], None, x["delta_bias"], True)
    out, states, *_ = module.fwd(*args)
    ours = with_backend("triton", lambda: selective_scan(**x, delta_softplus=True, a_nonpositive=True))()
    row["mamba_vs_ours_rel_err"] = rel_err(out.float(), ours.float())
    dout = torch.ones_like(out)

    def fwd_bwd_step():
        y, saved, *_ = module.fwd(*args)
        module.bwd(*args[:8], dout, saved, None, None, True, False)

    row["mamba_fwd_ms"] = do_bench(lambda: module.fwd(*args), warmup=25, rep=200, return_mode="median")
    row["mamba_fwdbwd_ms"] = do_bench(fwd_bwd_step, warmup=25, rep=200, return_mode="median")


def bench_baselines(row):
    """Add the chunked PyTorch and reference forward times to a ``bench_case`` row (run after every Triton timing,
    so that their large allocations do not disturb those)."""
    batch, dim, length, d_state = row["case"]
    x = scan_inputs(batch, dim, length, d_state)
    fwd = lambda: selective_scan(**x, delta_softplus=True, a_nonpositive=True)  # noqa: E731
    torch_mem = batch * dim * 16 * 16 * d_state * 4 * 6  # decay tensors of one chunk, fp32
    with torch.no_grad():
        if torch_mem < 20e9:
            row["torch_fwd_ms"] = time_once(with_backend("torch", fwd))
        if batch * dim * length * d_state * 4 * 3 < 40e9:
            row["ref_fwd_ms"] = time_once(with_backend("ref", fwd), reps=1)
    torch.cuda.empty_cache()


def cross_inputs(batch, dim, height, width, d_state, requires_grad=True):
    """Inputs in the layout a model produces them (token-major, channels-last): x from (batch, L, dim), delta, B and C
    from per-direction projections (batch, L, K, .), viewed as the (batch, [K,] channels, L) the op expects."""
    num_directions, length = 4, height * width
    g = torch.Generator(device="cuda").manual_seed(height)
    bf = dict(device="cuda", dtype=torch.bfloat16)
    leaves = dict(x=torch.randn(batch, length, dim, **bf),
                  delta=torch.randn(batch, length, num_directions, dim, **bf) * 0.5,
                  A=-torch.rand(num_directions, dim, d_state, device="cuda", generator=g) - 0.5,
                  B=torch.randn(batch, length, num_directions, d_state, **bf),
                  C=torch.randn(batch, length, num_directions, d_state, **bf),
                  D=torch.randn(num_directions, dim, device="cuda"),
                  delta_bias=torch.randn(num_directions, dim, device="cuda"))
    leaves = {k: v.requires_grad_(requires_grad) for k, v in leaves.items()}
    views = dict(leaves, x=leaves["x"].transpose(1, 2), delta=leaves["delta"].permute(0, 2, 3, 1),
                 B=leaves["B"].permute(0, 2, 3, 1), C=leaves["C"].permute(0, 2, 3, 1))
    return leaves, views


def bench_cross(batch, dim, height, width, d_state):
    leaves, x = cross_inputs(batch, dim, height, width, d_state)
    paths = scan_paths.build("cross", (height, width), device="cuda")
    fused = lambda: multi_scan(**x, paths=paths, delta_softplus=True, a_nonpositive=True)  # noqa: E731

    def unfused():  # gather K copies, one grouped scan on (batch, K*dim, L), scatter back and sum, in PyTorch
        num_directions, length = paths.shape
        xs = x["x"][..., paths].transpose(1, 2)  # (batch, K, dim, L)
        ds = torch.gather(x["delta"], -1, paths[None, :, None, :].expand_as(x["delta"]))
        Bs = torch.gather(x["B"], -1, paths[None, :, None, :].expand_as(x["B"]))
        Cs = torch.gather(x["C"], -1, paths[None, :, None, :].expand_as(x["C"]))
        y = selective_scan(xs.reshape(batch, num_directions * dim, length),
                           ds.reshape(batch, num_directions * dim, length), x["A"].reshape(-1, d_state), Bs, Cs,
                           x["D"].reshape(-1), None, x["delta_bias"].reshape(-1), delta_softplus=True,
                           return_last_state=False, a_nonpositive=True)
        inv = torch.argsort(paths, dim=1)
        y = torch.gather(y.view(batch, num_directions, dim, length), -1,
                         inv[None, :, None, :].expand(batch, num_directions, dim, length))
        return y.sum(1)

    err = rel_err(fused(), unfused())
    if not err < 1e-2:
        raise AssertionError(f"fused and unfused cross-scan differ: relative error {err:.2e}")
    row = dict(case=(batch, dim, height, width, d_state))
    for name, fn in (("fused", fused), ("unfused", unfused)):
        with torch.no_grad():
            row[f"{name}_fwd_ms"] = do_bench(fn, warmup=25, rep=200, return_mode="median")
        row[f"{name}_fwdbwd_ms"] = do_bench(fwd_bwd(fn, leaves), warmup=25, rep=200, return_mode="median")
    return row


def sweep_configs(d_state):
    """Launch configurations to compare (``scan_plan.TILE_OVERRIDES``): the forward kernel kind, chunk length and
    (BLOCK_D, warps) tile; the backward's chunk length (4, 8 or 16 steps), tile (32, 64 or 128 state elements per lane
    over 1, 2 or 4 warps) and chunk-tile layout (``states_middle``); and the length split (``segments``)."""
    bn = triton.next_power_of_2(d_state)
    tiles = [(max(1, 32 * w // bn), w) for w in (1, 2, 4)]
    fwd = [dict(sequential=False, fwd_chunk=c, fwd=t) for c in (16, 32) for t in tiles[:2]]
    if d_state > 4:
        fwd += [dict(sequential=True, chunk=16, fwd=(bd, 1)) for bd in (8, 16, 32)]
    bwd_tiles = sorted({(max(1, per_lane * w // bn), w) for w in (1, 2, 4) for per_lane in (32, 64, 128)},
                       key=lambda t: (t[1], t[0]))
    bwd = [dict(chunk=c, bwd=t, states_middle=middle) for c in (4, 8, 16) for t in bwd_tiles
           for middle in (False, True)]
    split = [dict(segments=n) for n in (1, 2, 4, 8, 16)]
    return fwd + bwd + split


def sweep(cases, channels_last=False):
    """Time forward and fwd+bwd for each launch configuration of ``sweep_configs`` (and the default plan first);
    returns rows."""
    rows = []
    for case in cases:
        x = scan_inputs(*case, requires_grad=True, channels_last=channels_last)
        fwd = lambda: selective_scan(**x, delta_softplus=True, a_nonpositive=True)  # noqa: E731
        for config in [{}] + sweep_configs(case[3]):
            scan_plan.TILE_OVERRIDES.clear()
            scan_plan.TILE_OVERRIDES.update(config)
            try:
                with torch.no_grad():
                    f = do_bench(with_backend("triton", fwd), warmup=10, rep=50, return_mode="median")
                fb = do_bench(with_backend("triton", fwd_bwd(fwd, x)), warmup=10, rep=50, return_mode="median")
            except Exception as exc:  # out of resources for a tile: record and go on
                f = fb = float("nan")
                print(f"sweep {case} {config or 'default plan'}: {type(exc).__name__}", flush=True)
            rows.append(dict(case=case, channels_last=channels_last, config=config, fwd_ms=f, fwdbwd_ms=fb))
            print(f"sweep {case} {config or 'default plan'}: fwd {f:.3f} ms fwd+bwd {fb:.3f} ms", flush=True)
        scan_plan.TILE_OVERRIDES.clear()
    return rows


def parse_shape(text: str) -> tuple:
    """'batch,dim,L,N' -> (batch, dim, L, N)."""
    shape = tuple(int(v) for v in text.split(","))
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a scan shape is 4 positive integers batch,dim,L,N; got {text!r}")
    return shape


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="scan_benchmark.json")
    parser.add_argument("--sweep", action="store_true", help="also sweep kernel kinds, tile sizes and warps")
    parser.add_argument("--sweep-only", action="store_true", help="sweep, then stop")
    parser.add_argument("--sweep-cases", default="2,1,3", help="indices into CASES to sweep (default: %(default)s)")
    parser.add_argument("--sweep-shapes", nargs="+", type=parse_shape, default=None, metavar="B,D,L,N",
                        help="sweep these scan shapes instead of --sweep-cases")
    parser.add_argument("--sweep-layout", choices=["dim_major", "channels_last"], default="dim_major",
                        help="the swept inputs' layout (scan_inputs)")
    parser.add_argument("--skip-slow", action="store_true", help="skip the PyTorch and reference baselines")
    parser.add_argument("--mamba-src", default=None,
                        help="mamba-ssm source tree or sdist (.tar.gz) to build selective_scan_cuda from when it is "
                             "not importable")
    parser.add_argument("--mamba-build", default=str(Path.home() / ".cache" / "vssm" / "mamba_scan_build"),
                        help="build folder of that extension (reused by later runs)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmark_scan.py needs a CUDA GPU")
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                python=platform.python_version(), date=str(date.today()), command=" ".join(sys.argv))
    print(meta, flush=True)
    t0 = time.time()
    checks = check_correctness()
    print("\n| correctness check (Triton vs float64 PyTorch) | max rel. error |\n|---|---|")
    for name, worst, _ in checks:
        print(f"| {name} | {worst:.2e} |")
    bad = [c for c in checks if not c[1] < 2e-2]
    if bad:
        sys.exit(f"correctness check failed: {bad}")
    sweep_cases = args.sweep_shapes or [CASES[int(i)] for i in args.sweep_cases.split(",")]
    sweep_rows = (sweep(sweep_cases, args.sweep_layout == "channels_last") if args.sweep or args.sweep_only
                  else [])
    if args.sweep_only:
        Path(args.out).write_text(json.dumps(dict(meta=meta, checks=checks, sweep=sweep_rows), indent=1, default=str))
        return
    mamba = mamba_scan_module(args.mamba_src, args.mamba_build)
    meta["mamba_ssm_scan"] = "measured in this run" if mamba is not None else "not available"
    copy_gbps = copy_bandwidth()
    rows = [bench_case(*case) for case in CASES]
    cross_rows = [bench_cross(*case) for case in CROSS_CASES]
    for row in rows:
        device_time(row)
        if mamba is not None:
            bench_mamba(row, mamba)
        if not args.skip_slow:
            bench_baselines(row)
    print(f"\ncopy bandwidth: {copy_gbps:.0f} GB/s; total {time.time() - t0:.0f} s\n")
    print("| (batch, dim, L, N) | fwd ms | fwd+bwd ms | fwd+bwd kernels ms | mamba CUDA fwd / fwd+bwd ms | vs mamba "
          "fwd / fwd+bwd | fwd GB/s (% copy) | torch fwd ms (speed-up) | ref fwd ms (speed-up) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "mamba_fwd_ms" in r:
            mf, mfb = r["mamba_fwd_ms"], r["mamba_fwdbwd_ms"]
            mamba_cells = (f"{mf:.3f} / {mfb:.3f} | {mf / r['triton_fwd_ms']:.2f}x / "
                           f"{mfb / r['triton_fwdbwd_ms']:.2f}x (rel. err. {r['mamba_vs_ours_rel_err']:.1e})")
        else:
            mamba_cells = "- | -"
        tf = f"{r['torch_fwd_ms']:.1f} ({r['torch_fwd_ms'] / r['triton_fwd_ms']:.0f}x)" if "torch_fwd_ms" in r else "-"
        rf = f"{r['ref_fwd_ms']:.0f} ({r['ref_fwd_ms'] / r['triton_fwd_ms']:.0f}x)" if "ref_fwd_ms" in r else "-"
        print(f"| {r['case']} | {r['triton_fwd_ms']:.3f} | {r['triton_fwdbwd_ms']:.3f} | "
              f"{r['device_fwdbwd_ms']:.3f} | {mamba_cells} | {r['fwd_GBps']:.0f} ({100 * r['fwd_GBps'] / copy_gbps:.0f}%) | "
              f"{tf} | {rf} |")
    print("\n| cross-scan (batch, dim, H, W, N) | fused fwd ms | unfused fwd ms | fused fwd+bwd ms | unfused fwd+bwd ms "
          "| speed-up fwd / fwd+bwd |\n|---|---|---|---|---|---|")
    for r in cross_rows:
        print(f"| {r['case']} | {r['fused_fwd_ms']:.3f} | {r['unfused_fwd_ms']:.3f} | {r['fused_fwdbwd_ms']:.3f} | "
              f"{r['unfused_fwdbwd_ms']:.3f} | {r['unfused_fwd_ms'] / r['fused_fwd_ms']:.2f}x / "
              f"{r['unfused_fwdbwd_ms'] / r['fused_fwdbwd_ms']:.2f}x |")
    Path(args.out).write_text(json.dumps(dict(meta=meta, copy_GBps=copy_gbps, checks=checks, cases=rows,
                                              cross=cross_rows, sweep=sweep_rows), indent=1, default=str))


if __name__ == "__main__":
    main()
