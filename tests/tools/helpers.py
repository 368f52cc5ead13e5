"""Helpers of the tool tests: a tiny generated image folder, config files, the CLIs loaded as modules."""
import csv
import importlib.util
import os
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("circle", "square", "triangle")
TRAIN_PER_CLASS = 8  # 24 training images: 6 steps of 4
VAL_PER_CLASS = 3  # 9 validation images: uneven shards on 2 ranks


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"vssm_tools_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_image_folder(root: Path) -> Path:
    """``root/{train,val}/<class>/<i>.png``: 20x20 RGB images, one learnable colour per class plus noise."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(len(CLASSES), 3))
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for colour, name in zip(colours, CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(colour + rng.normal(0, 40, size=(20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def tiny_config(root: Path, **sections) -> str:
    """The text of a fast config on ``root``: test_vmamba at 16 px, batch 4, one epoch, on the CPU also where a GPU
    is present (the tests compare CPU numbers and logs); ``sections`` add (or override) lines."""
    text = textwrap.dedent(f"""\
        model = dict(name='test_vmamba')
        device = 'cpu'
        data = dict(dataset='imagefolder', root={str(root)!r}, img_size=16, crop_pct=1.0, workers=0)
        augment = dict(scale=(0.5, 1.0), color_jitter=0.0)
        epochs = 1
        batch_size = 4
        optimizer = dict(opt='adamw', lr=1e-3, weight_decay=0.05)
        scheduler = dict(warmup_epochs=0, min_lr=1e-5)
        smoothing = 0.0
        log_interval = 2
        """)
    return text + "".join(f"{key} = {value}\n" for key, value in sections.items())


def write_config(folder: Path, text: str, name: str = "tiny.py") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def subprocess_env() -> dict:
    """Environment for tools run as separate processes: the checkout importable, one thread per process."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                OMP_NUM_THREADS="1")


def read_rows(path) -> list[dict]:
    """The rows of a summary.csv."""
    with open(path, newline="") as file:
        return list(csv.DictReader(file))
