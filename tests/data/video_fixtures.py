"""Tiny generated videos for the video tests (a few KB each, written with PyAV): counter videos whose frame i is
grey level ``step * i`` (so a decoded frame tells its index), moving-shapes clips, and broken files."""
import os
import time
from pathlib import Path

import numpy as np
import pytest

from vssm.data.moving_shapes import render_clip, write_video
from vssm.data.video import decode_views

COUNTER_STEP = 5  # grey level per frame index (lossless H.264): up to 51 frames


def write_counter_video(path: Path, num_frames: int, height: int = 32, width: int = 64, fps: int = 8) -> Path:
    """Frame i is a flat grey image of level COUNTER_STEP * i (sides multiples of 32: decord 0.6.0 mis-sizes the
    frames of some tiny MPEG-4 videos otherwise)."""
    levels = (np.arange(num_frames) * COUNTER_STEP).clip(0, 255).astype(np.uint8)
    frames = np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3))
    write_video(str(path), np.ascontiguousarray(frames), fps=fps, codec="libx264", options={"qp": "0"})
    return path


def frame_index(frame: np.ndarray) -> int:
    """The index a counter video's decoded frame shows."""
    return int(round(float(frame.mean()) / COUNTER_STEP))


def write_shapes_list(root: Path, directions: list[str], name: str = "val.txt", size: int = 64, num_frames: int = 8,
                      seed: int = 0) -> Path:
    """``root/<i>_<direction>.mp4`` moving-shapes clips and a ``path label`` list (labels: left 0, right 1, up 2,
    down 3), paths relative to ``root``."""
    rng = np.random.default_rng(seed)
    classes = ("left", "right", "up", "down")
    lines = []
    for i, direction in enumerate(directions):
        relative = f"{i}_{direction}.mp4"
        write_video(str(root / relative), render_clip(direction, rng, num_frames, size))
        lines.append(f"{relative} {classes.index(direction)}\n")
    (root / name).write_text("".join(lines))
    return root / name


def write_corrupt(path: Path) -> Path:
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    return path


def write_truncated(source: Path, path: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def sleepy_decode(path: str, **kwargs):
    """A decode function that hangs on files whose name holds 'hang' (a stuck decord call, simulated)."""
    if "hang" in os.path.basename(path):
        time.sleep(600)
    return decode_views(path, **kwargs)


def crashing_decode(path: str, **kwargs):
    """A decode function whose process dies on files whose name holds 'crash' (a crash in native code)."""
    if "crash" in os.path.basename(path):
        os._exit(3)
    return decode_views(path, **kwargs)


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    """Counter videos (300 frames is too long to keep tiny: 48, 10 and 20 frames), a portrait one, a corrupt and a
    truncated file."""
    root = tmp_path_factory.mktemp("videos")
    write_counter_video(root / "counter48.mp4", 48)
    write_counter_video(root / "counter10.mp4", 10)
    write_counter_video(root / "counter20_portrait.mp4", 20, height=64, width=32)
    write_corrupt(root / "corrupt.mp4")
    write_truncated(root / "counter48.mp4", root / "truncated.mp4")
    return root
