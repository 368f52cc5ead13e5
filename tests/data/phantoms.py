"""Generated phantoms with known shapes and labels (spheres and boxes in small 3-D volumes, discs in 2-D images) and a
writer of small nnU-Net raw datasets, valid or broken in one named rule, for the data, inference and metric tests."""
import json
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import nibabel
import numpy as np
from PIL import Image

SHAPE_3D = (10, 14, 16)  # array axes (z, y, x) in nnU-Net's order
SPACING_3D = (2.5, 0.8, 0.7)  # the same order; the NIfTI header holds it reversed
SHAPE_2D = (20, 24)


def ball(shape: Sequence[int], center: Sequence[float], radius: float,
         spacing: Optional[Sequence[float]] = None) -> np.ndarray:
    """Boolean mask of the voxels within ``radius`` (in spacing units) of ``center`` (voxel coordinates): a sphere in
    3-D, a disc in 2-D."""
    spacing = np.ones(len(shape)) if spacing is None else np.asarray(spacing, dtype=float)
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, center, spacing))
    return dist2 <= radius ** 2


def box(shape: Sequence[int], start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(start, stop))] = True
    return mask


def phantom_3d(seed: int = 0, shape: Tuple[int, ...] = SHAPE_3D) -> Tuple[np.ndarray, np.ndarray]:
    """(image float32, label uint8): a sphere (label 1) and a box (label 2) on a noisy background, CT-like values."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, dtype=np.uint8)
    label[ball(shape, (shape[0] / 2 + rng.uniform(-1, 1), shape[1] / 2, shape[2] / 3), 4.0, (1.0, 1.0, 1.0))] = 1
    label[box(shape, (2, 2, shape[2] - 6), (shape[0] - 2, 6, shape[2] - 2))] = 2
    image = rng.normal(-100, 20, shape).astype(np.float32)
    image[label == 1] += 200
    image[label == 2] += 500
    return image, label


def phantom_2d(seed: int = 0, shape: Tuple[int, ...] = SHAPE_2D) -> Tuple[np.ndarray, np.ndarray]:
    """(RGB image uint8 (3, H, W), label uint8): a disc (label 1) on a noisy background."""
    rng = np.random.default_rng(seed)
    label = ball(shape, (shape[0] / 2, shape[1] / 2 + rng.uniform(-2, 2)), 5.0).astype(np.uint8)
    image = rng.integers(0, 60, (3, *shape)).astype(np.uint8)
    image[:, label == 1] += np.array([150, 100, 50], dtype=np.uint8)[:, None]
    return image, label


def nifti_affine(spacing: Sequence[float] = SPACING_3D, origin=(10.0, -20.0, 5.0), flip_x: bool = True) -> np.ndarray:
    """An affine for arrays in nnU-Net order: voxel sizes reversed onto (i, j, k), an origin, optionally LPS-like."""
    affine = np.diag(list(spacing[::-1]) + [1.0])
    if flip_x:
        affine[0, 0] *= -1
    affine[:3, 3] = origin
    return affine


def save_nifti(array: np.ndarray, path: Path, affine: np.ndarray) -> None:
    """Saves an nnU-Net-ordered (z, y, x) array as NIfTI (file axes (i, j, k) = (x, y, z))."""
    nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine), str(path))


BROKEN_RULES = (
    "invalid_json", "missing_keys", "no_background", "nonconsecutive", "ignore_not_last", "regions_without_order",
    "missing_channel", "unexpected_label", "shape_mismatch", "spacing_mismatch", "affine_mismatch", "empty_labels",
    "corrupt_nifti", "num_training", "file_ending", "no_channel_index", "nan_image",
)


def write_raw_dataset(root: Path, dim: int = 3, num_cases: int = 3, channel_names: Optional[Dict[str, str]] = None,
                      labels: Optional[dict] = None, broken: Optional[str] = None, with_test: bool = True,
                      extra: Optional[dict] = None, spacing=None, shape: Optional[Tuple[int, ...]] = None) -> Path:
    """Writes ``root/Dataset001_Phantom`` in the nnU-Net raw format and returns its path.

    3-D: NIfTI ``.nii.gz``, channels ``{"0": "CT", "1": "T2"}`` by default, labels background/sphere/box. 2-D: one RGB
    ``_0000.png`` per case, channels R/G/B, labels background/disc. ``broken`` names one rule of ``BROKEN_RULES`` to
    violate (on case ``case_001`` where a case is needed). 3-D only: ``spacing`` (array axis order; one tuple for
    every case, or a list of one tuple per case; default ``SPACING_3D``) and ``shape`` (default ``SHAPE_3D``).
    """
    assert broken is None or broken in BROKEN_RULES, broken
    folder = Path(root) / "Dataset001_Phantom"
    for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if with_test else ()):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    ending = ".nii.gz" if dim == 3 else ".png"
    if channel_names is None:
        channel_names = {"0": "CT", "1": "T2"} if dim == 3 else {"0": "R", "1": "G", "2": "B"}
    if labels is None:
        labels = {"background": 0, "sphere": 1, "box": 2} if dim == 3 else {"background": 0, "disc": 1}
    meta = {"channel_names": channel_names, "labels": dict(labels), "numTraining": num_cases, "file_ending": ending,
            "name": "Phantom", "licence": "CC0"}
    meta.update(extra or {})
    spacing = SPACING_3D if spacing is None else spacing
    per_case = [tuple(spacing[i]) for i in range(num_cases)] if np.ndim(spacing) == 2 else [tuple(spacing)] * num_cases
    for i in range(num_cases):
        case = f"case_{i:03d}"
        bad = i == 1
        affine = nifti_affine(per_case[i])
        if dim == 3:
            image, label = phantom_3d(i, SHAPE_3D if shape is None else shape)
            for c in range(len(channel_names)):
                if broken == "missing_channel" and bad and c == 1:
                    continue
                data = image if c == 0 else (image * 0.5 + 3).astype(np.float32)
                if broken == "nan_image" and bad:
                    data = data.copy()
                    data[0, 0, 0] = np.nan
                save_nifti(data, folder / "imagesTr" / f"{case}_{c:04d}{ending}", affine)
            label_affine = affine
            if bad and broken == "shape_mismatch":
                label = label[:, :-1]
            if bad and broken == "spacing_mismatch":
                label_affine = nifti_affine((2.0, 0.8, 0.7))
            if bad and broken == "affine_mismatch":
                label_affine = nifti_affine(origin=(12.0, -20.0, 5.0))
            if bad and broken == "unexpected_label":
                label = label.copy()
                label[0, 0, 0] = 7
            save_nifti(label, folder / "labelsTr" / f"{case}{ending}", label_affine)
            if with_test and i == 0:
                for c in range(len(channel_names)):
                    save_nifti(image, folder / "imagesTs" / f"test_000_{c:04d}{ending}", affine)
        else:
            image, label = phantom_2d(i)
            Image.fromarray(image.transpose(1, 2, 0)).save(folder / "imagesTr" / f"{case}_0000{ending}")
            if bad and broken == "unexpected_label":
                label = label.copy()
                label[0, 0] = 5
            if bad and broken == "shape_mismatch":
                label = label[:-2]
            Image.fromarray(label).save(folder / "labelsTr" / f"{case}{ending}")
            if with_test and i == 0:
                Image.fromarray(image.transpose(1, 2, 0)).save(folder / "imagesTs" / f"test_000_0000{ending}")
    if broken == "no_background":
        meta["labels"] = {"sphere": 1, "box": 2}
    if broken == "nonconsecutive":
        meta["labels"] = {"background": 0, "sphere": 1, "box": 3}
    if broken == "ignore_not_last":
        meta["labels"] = {"background": 0, "sphere": 1, "box": 2, "ignore": 5}
    if broken == "regions_without_order":
        meta["labels"] = {"background": 0, "whole": [1, 2], "box": 2}
    if broken == "missing_keys":
        del meta["numTraining"], meta["file_ending"]
    if broken == "num_training":
        meta["numTraining"] = num_cases + 2
    if broken == "empty_labels":
        for path in (folder / "labelsTr").iterdir():
            path.unlink()
    if broken == "corrupt_nifti":
        path = folder / "imagesTr" / f"case_001_0000{ending}"
        path.write_bytes(path.read_bytes()[:40])
    if broken == "file_ending":
        (folder / "imagesTr" / "case_002_0000.nii").write_bytes(b"not used")
    if broken == "no_channel_index":
        (folder / "imagesTr" / f"case_001_0000{ending}").rename(folder / "imagesTr" / f"case_001{ending}")
    text = json.dumps(meta, indent=2)
    if broken == "invalid_json":
        text = text.rstrip("}\n") + ",\n}"
    (folder / "dataset.json").write_text(text)
    return folder
