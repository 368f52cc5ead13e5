"""Video evaluation speed: who sets the pace, the decoder or the model.

    python tools/benchmark_video.py --make-videos data/bench_videos            # once: K400-like H.264 files
    python tools/benchmark_video.py --videos data/bench_videos --models videomamba_tiny videomamba_small \\
        --workers 4 8 12 [--out results.json]

Three figures per model under one protocol (default: VideoMamba's K400 test, 16 frames x 4 clips x 3 crops):
- decode: the evaluation's decoder pool alone (``vssm.data.video.DecodePool`` over ``decode_views``) with N worker
  processes, videos and views (clips) per second: the input pipeline's ceiling;
- model: the views of one decoded video copied to fill a batch, kept on the device, forward passes under bf16
  autocast: clips per second with decoding out of the way (CUDA-event timing after warm-up);
- end to end: ``vssm.engine.video_eval.evaluate_video``, the code ``tools/eval_video.py`` runs, over the same files
  with N decoders: clips per second of wall time (model built, weights loaded from a checkpoint written once, every
  video decoded, scored and merged).

The videos are generated (moving shapes with grain, 10 s at 30 fps, 340x256, H.264 through PyAV's libx264 at CRF 23,
about a resized Kinetics file's bit rate): ``--make-videos DIR`` writes them and a ``list.txt`` of ``path label`` lines. Fine-tuning clips/s and
peak memory at the recipes' batch sizes are ``tools/benchmark.py --suite video_ft``.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vssm  # noqa: E402,F401  (registers the zoo)
from vssm.data.moving_shapes import CLASSES, render_clip, write_video  # noqa: E402
from vssm.data.video import DecodePool, decode_views, normalise_views, video_protocol  # noqa: E402


def make_videos(root: str, count: int, seconds: float = 10.0, fps: int = 30, width: int = 340, height: int = 256,
                grain_std: float = 10.0, seed: int = 0) -> str:
    """Write ``count`` H.264 videos of moving shapes with Gaussian grain (``grain_std`` grey levels) under ``root``
    and ``root/list.txt``; returns the list's path."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    lines = []
    frames_per_video = int(seconds * fps)
    for i in range(count):
        label = i % len(CLASSES)
        square = render_clip(CLASSES[label], rng, frames_per_video, size=height)  # (T, H, H, 3)
        frames = np.concatenate([square, square[:, :, : width - height]], axis=2)  # widen to (T, H, W, 3)
        grain = rng.normal(0, grain_std, frames.shape)  # film grain: a camera video's bit rate, not a cartoon's
        frames = np.clip(frames + grain, 0, 255).astype(np.uint8)
        name = f"video_{i:04d}.mp4"
        write_video(os.path.join(root, name), frames, fps=fps, codec="libx264", options={"crf": "23"})
        lines.append(f"{name} {label}\n")
        print(f"wrote {name} ({i + 1}/{count})", flush=True)
    path = os.path.join(root, "list.txt")
    with open(path, "w") as file:
        file.writelines(lines)
    return path


def read_list(root: str) -> list:
    """``(path, label)`` of every line of ``root/list.txt``."""
    with open(os.path.join(root, "list.txt")) as file:
        return [(os.path.join(root, p), int(label)) for p, label in (line.split() for line in file if line.strip())]


def decode_rate(paths: list, protocol, workers: int) -> dict:
    """Videos and views per second of the decoder pool alone."""
    pool = DecodePool(decode_views, dict(protocol=protocol, num_threads=1, short_video="pad"), workers, 600.0)
    start = time.perf_counter()
    views = 0
    results = pool.map(list(enumerate(paths)))
    try:
        for result in results:
            if result.error is not None:
                raise RuntimeError(f"{result.path}: {result.error}")
            views += len(result.value.keys)
    finally:
        results.close()
    seconds = time.perf_counter() - start
    return dict(videos_per_s=len(paths) / seconds, clips_per_s=views / seconds)


def model_rate(model: torch.nn.Module, views: torch.Tensor, batch: int, warmup: int, iters: int) -> float:
    """Clips per second of eval forward passes over a device-resident batch of views (bf16 autocast)."""
    x = views.repeat((batch + len(views) - 1) // len(views), 1, 1, 1, 1)[:batch].cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(warmup):
            model(x)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(iters):
            model(x)
        end.record()
        torch.cuda.synchronize()
    return batch * iters * 1000 / start.elapsed_time(end)


def end_to_end_rate(name: str, root: str, protocol_name: str, workers: int, batch: int, work: str) -> dict:
    """Clips per second of wall time of ``evaluate_video`` over the generated files."""
    from vssm.engine.video_eval import evaluate_video, video_eval_config_from_dict

    checkpoint = os.path.join(work, f"{name}.pth")
    if not os.path.isfile(checkpoint):
        model = timm.create_model(name, num_classes=len(CLASSES), num_frames=video_protocol(protocol_name).num_frames)
        torch.save(model.state_dict(), checkpoint)
    cfg = video_eval_config_from_dict(dict(
        model=dict(name=name, num_frames=video_protocol(protocol_name).num_frames), protocol=dict(name=protocol_name), batch_size=batch, workers=workers, amp="bf16",
        data=dict(root=root, annotation=os.path.join(root, "list.txt"), format="list", num_classes=len(CLASSES)),
        views_file=os.path.join(work, f"views_{name}_{workers}.pt")))
    start = time.perf_counter()
    outcome = evaluate_video(cfg, checkpoint, progress=False)
    seconds = time.perf_counter() - start
    return dict(clips_per_s=outcome["views"] / seconds, seconds=seconds, decoded=outcome.get("decoded"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--make-videos", metavar="DIR", help="write the generated videos here and stop")
    parser.add_argument("--count", type=int, default=32, help="videos to write with --make-videos")
    parser.add_argument("--videos", metavar="DIR", help="a folder written by --make-videos")
    parser.add_argument("--models", nargs="*", default=["videomamba_tiny", "videomamba_small"])
    parser.add_argument("--protocol", default="videomamba_k400", help="a preset of vssm.data.video.PROTOCOL_NAMES")
    parser.add_argument("--workers", nargs="*", type=int, default=[4, 8, 12], help="decoder processes to try")
    parser.add_argument("--batch", type=int, default=48, help="views per forward pass")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    if args.make_videos:
        print(make_videos(args.make_videos, args.count))
        return
    if not args.videos:
        parser.error("give --videos DIR (written once by --make-videos DIR)")
    if not torch.cuda.is_available():
        sys.exit("benchmark_video.py measures a CUDA device; none is available")
    records = read_list(args.videos)
    paths = [p for p, _ in records]
    protocol = video_protocol(args.protocol)
    print(f"{len(paths)} videos; protocol {protocol.describe()}", flush=True)
    rows = []
    decode = {w: decode_rate(paths, protocol, w) for w in args.workers}
    for w, rate in decode.items():
        print(f"decode, {w} workers: {rate['videos_per_s']:.1f} videos/s, {rate['clips_per_s']:.0f} clips/s",
              flush=True)
    views = normalise_views(decode_views(paths[0], protocol).views, protocol)
    with tempfile.TemporaryDirectory() as work:
        for name in args.models:
            model = timm.create_model(name, num_classes=len(CLASSES), num_frames=protocol.num_frames).cuda().eval()
            row = dict(model=name, frames=protocol.num_frames, views_per_video=len(views), batch=args.batch,
                       model_clips_per_s=model_rate(model, views, args.batch, args.warmup, args.iters))
            del model
            torch.cuda.empty_cache()
            for w in args.workers:
                row[f"end_to_end_{w}w"] = end_to_end_rate(name, args.videos, args.protocol, w, args.batch,
                                                          work)["clips_per_s"]
                row[f"decode_{w}w"] = decode[w]["clips_per_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, {os.cpu_count()} CPU cores, {date.today()}")
    head = "| model | model-bound clips/s | " + " | ".join(
        f"decode {w}w / end to end {w}w" for w in args.workers) + " |"
    print(head + "\n|" + "---|" * (2 + len(args.workers)))
    for row in rows:
        cells = " | ".join(f"{row[f'decode_{w}w']:.0f} / {row[f'end_to_end_{w}w']:.0f}" for w in args.workers)
        print(f"| {row['model']} | {row['model_clips_per_s']:.0f} | {cells} |")
    if args.out:
        with open(args.out, "w") as file:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, python=platform.python_version(),
                           date=str(date.today()), rows=rows), file, indent=1)


if __name__ == "__main__":
    main()
