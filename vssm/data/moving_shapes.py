"""Moving shapes: a generated video classification dataset whose labels need time to tell apart.

Each video shows one shape (disc or square, random colours and size) crossing a plain background in a straight line;
the label is the direction of motion: ``left``, ``right``, ``up``, ``down``. A video of one class played backwards is
a video of the opposite class, so the frames as a set say nothing about the label: a model that ignores frame order
stays at chance on the left/right and up/down pairs. The files are real mp4s (MPEG-4 Part 2, written with PyAV),
decoded with decord like any dataset, listed in ``train.txt`` / ``val.txt`` (``path label``, paths relative to the
root) with ``classes.txt``.

    from vssm.data.moving_shapes import write_moving_shapes
    lists = write_moving_shapes('data/moving_shapes')   # {'train': .../train.txt, 'val': .../val.txt, ...}
"""
import json
import os
from typing import Optional

import numpy as np

CLASSES = ("left", "right", "up", "down")
_DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (row, column) unit steps


def render_clip(direction: str, rng: np.random.Generator, num_frames: int = 16, size: int = 64) -> np.ndarray:
    """One clip, uint8 (T, size, size, 3): a shape moving in ``direction`` (a name of CLASSES)."""
    d_row, d_col = _DIRECTIONS[direction]
    background = rng.integers(0, 90, size=3)
    colour = rng.integers(150, 256, size=3)
    radius = int(rng.integers(size // 10, size // 6 + 1))
    travel = size - 2 * radius - 4  # the whole path stays inside the frame
    along = np.linspace(radius + 2, radius + 2 + travel, num_frames)
    if d_row + d_col < 0:  # left / up: from the far side
        along = along[::-1]
    across = float(rng.integers(radius + 2, size - radius - 2))
    square = bool(rng.integers(2))
    rows, cols = np.mgrid[0:size, 0:size]
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        centre_row, centre_col = (along[t], across) if d_row else (across, along[t])
        if square:
            inside = (np.abs(rows - centre_row) <= radius) & (np.abs(cols - centre_col) <= radius)
        else:
            inside = (rows - centre_row) ** 2 + (cols - centre_col) ** 2 <= radius ** 2
        frames[t] = background
        frames[t][inside] = colour
    return frames


def write_video(path: str, frames: np.ndarray, fps: int = 8, codec: str = "mpeg4",
                options: Optional[dict] = None) -> None:
    """Write uint8 RGB frames (T, H, W, 3), H and W even, as a video file with PyAV (``pip install av``).

    ``options`` are the encoder's (default for mpeg4: ``qscale=3``); e.g. ``codec='libx264', options={'qp': '0'}``
    is lossless up to the YUV conversion.
    """
    import av

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = options if options is not None else ({"qscale": "3"} if codec == "mpeg4" else {})
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_moving_shapes(root: str, train_per_class: int = 32, val_per_class: int = 8, num_frames: int = 16,
                        size: int = 64, fps: int = 8, seed: int = 0, classes: Optional[tuple] = None) -> dict:
    """Write the dataset under ``root`` (skipped when ``root`` already holds it with the same settings).

    Returns:
        ``{'train': path, 'val': path, 'classes': path, 'root': root}``; the lists hold ``videos/<split>/<class>/
        <i>.mp4 <label>`` lines, labels in CLASSES order.
    """
    classes = tuple(classes or CLASSES)
    unknown = set(classes) - set(CLASSES)
    if unknown:
        raise ValueError(f"moving shapes has no class {sorted(unknown)[0]!r} (classes: {', '.join(CLASSES)})")
    settings = dict(train_per_class=train_per_class, val_per_class=val_per_class, num_frames=num_frames, size=size,
                    fps=fps, seed=seed, classes=list(classes))
    out = {"train": os.path.join(root, "train.txt"), "val": os.path.join(root, "val.txt"),
           "classes": os.path.join(root, "classes.txt"), "root": root}
    manifest = os.path.join(root, "moving_shapes.json")
    if os.path.isfile(manifest) and all(os.path.isfile(out[k]) for k in ("train", "val", "classes")):
        with open(manifest) as file:
            if json.load(file) == settings:
                return out
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        lines = []
        for label, name in enumerate(classes):
            for i in range(count):
                relative = f"videos/{split}/{name}/{i:04d}.mp4"
                write_video(os.path.join(root, relative), render_clip(name, rng, num_frames, size), fps)
                lines.append(f"{relative} {label}\n")
        with open(out[split], "w") as file:
            file.writelines(lines)
    with open(out["classes"], "w") as file:
        file.writelines(f"{name}\n" for name in classes)
    with open(manifest, "w") as file:  # last: a half-written dataset is regenerated
        json.dump(settings, file)
    return out
