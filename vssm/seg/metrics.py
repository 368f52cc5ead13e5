"""Segmentation metrics with nnU-Net's conventions, the normalised surface Dice, and nnU-Net's ``summary.json``.

* Dice per class (label or region) and case: ``2 TP / (2 TP + FP + FN)``, counted outside the ignore label; NaN when
  reference and prediction are both empty (nnU-Net reports NaN and skips it in the means); 0 when only one is empty.
  IoU, TP, FP, FN, TN, n_pred, n_ref come along, as in nnU-Net's ``compute_metrics``.
* Normalised surface Dice at a tolerance in mm: surface voxels are the mask minus its erosion (6- / 4-connected, the
  image border counts as outside); distances are Euclidean in mm (``scipy.ndimage.distance_transform_edt`` with the
  voxel spacing); NSD = (pred surface voxels within tolerance of the reference surface + reference surface voxels
  within tolerance of the predicted surface) / (all surface voxels of both). This is MONAI's
  ``compute_surface_dice`` (``use_subvoxels=False``), NaN when both are empty and 0 when one is. NOTE: DeepMind's
  surface-distance code (used by U-Mamba's evaluation) weighs surface elements by area, and scores both-empty as 1.
* ``summary.json``: ``{"metric_per_case": [{"reference_file", "prediction_file", "metrics": {class: {...}}}],
  "mean": {class: {...}}, "foreground_mean": {...}}``; class keys are ``str(label)`` or ``str(region tuple)``; means
  over cases ignore NaN, ``foreground_mean`` averages the per-class means (label 0 excluded). Written atomically.
"""
import json
import math
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

Class = Union[int, Tuple[int, ...]]


def class_mask(segmentation: np.ndarray, label_or_region: Class) -> np.ndarray:
    """Boolean mask of a label, or of the union of a region's labels."""
    if np.isscalar(label_or_region):
        return segmentation == label_or_region
    return np.isin(segmentation, list(label_or_region))


def confusion_counts(reference: np.ndarray, prediction: np.ndarray, ignore_mask: Optional[np.ndarray] = None
                     ) -> Tuple[int, int, int, int]:
    """(TP, FP, FN, TN) of two boolean masks, outside ``ignore_mask``."""
    use = np.ones_like(reference, dtype=bool) if ignore_mask is None else ~ignore_mask
    tp = int(np.sum(reference & prediction & use))
    fp = int(np.sum(~reference & prediction & use))
    fn = int(np.sum(reference & ~prediction & use))
    tn = int(np.sum(~reference & ~prediction & use))
    return tp, fp, fn, tn


def dice(prediction: np.ndarray, reference: np.ndarray, ignore_mask: Optional[np.ndarray] = None) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    tp, fp, fn, _ = confusion_counts(np.asarray(reference, bool), np.asarray(prediction, bool), ignore_mask)
    return float("nan") if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask ^ ndimage.binary_erosion(mask, border_value=0)


def surface_distances(prediction: np.ndarray, reference: np.ndarray, spacing: Optional[Sequence[float]] = None
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each predicted surface voxel to the reference surface, and back; ``inf`` where the other
    surface is empty."""
    prediction, reference = np.asarray(prediction, bool), np.asarray(reference, bool)
    spacing = None if spacing is None else [float(s) for s in spacing]
    surf_pred, surf_ref = _surface(prediction), _surface(reference)

    def distances(source: np.ndarray, target: np.ndarray) -> np.ndarray:
        if not source.any():
            return np.zeros(0)
        if not target.any():
            return np.full(int(source.sum()), np.inf)
        return ndimage.distance_transform_edt(~target, sampling=spacing)[source]

    return distances(surf_pred, surf_ref), distances(surf_ref, surf_pred)


def normalized_surface_dice(prediction: np.ndarray, reference: np.ndarray, tolerance: float,
                            spacing: Optional[Sequence[float]] = None) -> float:
    """Normalised surface Dice of two boolean masks at ``tolerance`` (mm, with ``spacing`` in mm per axis; voxels
    without a spacing). NaN when both are empty, 0 when only one is."""
    if tolerance < 0 or not math.isfinite(tolerance):
        raise ValueError(f"tolerance must be finite and >= 0, got {tolerance}")
    pred_to_ref, ref_to_pred = surface_distances(prediction, reference, spacing)
    total = pred_to_ref.size + ref_to_pred.size
    if total == 0:
        return float("nan")
    return float((np.sum(pred_to_ref <= tolerance) + np.sum(ref_to_pred <= tolerance)) / total)


def compute_metrics(prediction: np.ndarray, reference: np.ndarray, classes: Sequence[Class],
                    ignore_label: Optional[int] = None, spacing: Optional[Sequence[float]] = None,
                    nsd_tolerance: Optional[Union[float, Mapping[Class, float]]] = None) -> Dict[Class, dict]:
    """Per class: Dice, IoU, TP, FP, FN, TN, n_pred, n_ref (nnU-Net's ``compute_metrics``), and NSD when
    ``nsd_tolerance`` (mm; one value, or one per class) is given.

    Args:
        prediction: Predicted label map (*spatial).
        reference: Reference label map, same shape.
        classes: Labels (ints) or regions (tuples of ints) to score, e.g. ``LabelSpec.evaluation_classes``.
        ignore_label: Reference voxels with this value are left out of every count (and of the NSD masks).
        spacing: Voxel spacing per axis, for the NSD.
    """
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape")
    ignore_mask = reference == ignore_label if ignore_label is not None else None
    results = {}
    for cls in classes:
        ref, pred = class_mask(reference, cls), class_mask(prediction, cls)
        tp, fp, fn, tn = confusion_counts(ref, pred, ignore_mask)
        entry = {"Dice": float("nan") if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn),
                 "IoU": float("nan") if tp + fp + fn == 0 else tp / (tp + fp + fn),
                 "FP": fp, "TP": tp, "FN": fn, "TN": tn, "n_pred": fp + tp, "n_ref": fn + tp}
        if nsd_tolerance is not None:
            tol = nsd_tolerance[cls] if isinstance(nsd_tolerance, Mapping) else nsd_tolerance
            if ignore_mask is not None:
                ref, pred = ref & ~ignore_mask, pred & ~ignore_mask
            entry["NSD"] = normalized_surface_dice(pred, ref, float(tol), spacing)
        results[cls] = entry
    return results


def class_key(cls: Class) -> str:
    """nnU-Net's key of a label or region in ``summary.json``: ``'1'``, ``'(1, 2)'``."""
    return str(tuple(int(c) for c in cls)) if isinstance(cls, (tuple, list)) else str(int(cls))


def key_to_class(key: str) -> Class:
    try:
        return int(key)
    except ValueError:
        return tuple(int(i) for i in key.strip("()").split(",") if i.strip())


def summarize(metric_per_case: List[dict]) -> dict:
    """nnU-Net's summary of per-case results (``[{"reference_file", "prediction_file", "metrics": {class: {metric:
    value}}}]``): the NaN-ignoring mean per class and metric, and ``foreground_mean`` over the non-background
    classes' means."""
    if not metric_per_case:
        raise ValueError("no case to summarise")
    classes = list(metric_per_case[0]["metrics"])
    names = list(metric_per_case[0]["metrics"][classes[0]])
    means = {}
    for cls in classes:
        means[cls] = {}
        for name in names:
            values = np.array([case["metrics"][cls][name] for case in metric_per_case], dtype=float)
            means[cls][name] = float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")
    foreground = [c for c in classes if not (c == 0 or c == "0")]
    foreground_mean = {name: float(np.mean([means[c][name] for c in foreground])) if foreground else float("nan")
                       for name in names}
    return {"metric_per_case": metric_per_case, "mean": means, "foreground_mean": foreground_mean}


def _jsonable(value):
    if isinstance(value, dict):
        return {class_key(k) if not isinstance(k, str) else k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def write_summary_json(summary: dict, path: Union[str, os.PathLike]) -> None:
    """Writes a ``summarize`` result as nnU-Net's ``summary.json`` (class keys as strings, sorted keys, NaN as
    ``NaN``), atomically: a temporary file in the same folder, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(_jsonable(summary), f, sort_keys=True, indent=4)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_summary_json(path: Union[str, os.PathLike]) -> dict:
    """Reads ``summary.json`` back with label / region keys (ints / tuples)."""
    summary = json.loads(Path(path).read_text())
    summary["mean"] = {key_to_class(k): v for k, v in summary["mean"].items()}
    for case in summary["metric_per_case"]:
        case["metrics"] = {key_to_class(k): v for k, v in case["metrics"].items()}
    return summary


def evaluate_folder(reference_folder: Union[str, os.PathLike], prediction_folder: Union[str, os.PathLike],
                    classes: Sequence[Class], file_ending: str, output_file: Optional[Union[str, os.PathLike]] = None,
                    ignore_label: Optional[int] = None,
                    nsd_tolerance: Optional[Union[float, Mapping[Class, float]]] = None, strict: bool = True) -> dict:
    """Scores every prediction ``{CASE}{file_ending}`` of a folder against the reference folder and writes
    ``summary.json`` (default: ``prediction_folder/summary.json``); NSD uses each reference file's spacing.

    Args:
        strict: Every reference file must have a prediction (nnU-Net's ``chill=False``).
    """
    from vssm.data.nnunet_raw import read_label
    reference_folder, prediction_folder = Path(reference_folder), Path(prediction_folder)
    predictions = sorted(p.name for p in prediction_folder.iterdir() if p.name.endswith(file_ending))
    references = sorted(p.name for p in reference_folder.iterdir() if p.name.endswith(file_ending))
    missing = sorted(set(references) - set(predictions))
    if strict and missing:
        raise FileNotFoundError(f"{len(missing)} reference case(s) have no prediction in {prediction_folder}: "
                                f"{missing[:5]}")
    per_case = []
    for name in predictions:
        if name not in references:
            raise FileNotFoundError(f"prediction {name} has no reference in {reference_folder}")
        reference, geometry = read_label(reference_folder / name)
        prediction, _ = read_label(prediction_folder / name)
        metrics = compute_metrics(prediction, reference, classes, ignore_label, geometry.spacing, nsd_tolerance)
        per_case.append({"reference_file": str(reference_folder / name),
                         "prediction_file": str(prediction_folder / name), "metrics": metrics})
    summary = summarize(per_case)
    write_summary_json(summary, output_file or prediction_folder / "summary.json")
    return summary
