"""nnU-Net's preprocessing of a raw dataset for one plans configuration: every training case transposed, cropped to
its non-zero region, normalised and resampled (``vssm.data.medical_transforms.preprocess_case``), with foreground
voxel locations sampled per class for the patch sampler's oversampling.

Per case, ``out_dir`` receives (each file written atomically, the ``.json`` last, so that a case with a ``.json`` is
complete):

* ``<case>.npz``: ``data`` float32 ``(C, *spatial)`` and ``seg`` int16 ``(1, *spatial)`` in the planned axis order
  (``transpose_forward`` applied). 2-D natural images are stored as volumes of one slice, ``(C, 1, H, W)``, as
  nnU-Net stores them. ``seg`` holds -1 for background outside the non-zero mask.
* ``<case>.json``: ``preprocess_case``'s properties (``spacing``, ``target_spacing``, ``shape_before_cropping``,
  ``bbox_used_for_cropping``, ``shape_after_cropping_and_before_resampling``: all in the planned axis order, so that
  ``revert_preprocessing`` applies directly), ``transpose_forward``, the file's ``geometry`` (shape, spacing, affine in
  the file's axis order), ``class_locations`` (per class - or region - key ``"1"``, ``"1,2"``, up to 10000 sampled
  voxel coordinates ``[z, y, x]``, at least 1% of the class; with an ignore label also the key of all annotated
  voxels ``"-1,0,1,..."``), and ``plan_key``, a digest of the settings the data depend on: a case is done again when
  it differs.

``SegPatchDataset`` (``vssm.data.seg_patches``) samples training patches from this folder.
"""
import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from vssm.data.errors import DataError
from vssm.data.medical_transforms import preprocess_case
from vssm.data.nnunet_raw import Case, LabelSpec, RawDataset, load_raw_dataset, validate_raw_dataset
from vssm.engine.checkpoint import write_atomic

from .planner import RESAMPLING_FN, is_natural_2d, read_case_as_volume, to_jsonable
from .plans import SegConfiguration, configuration as read_configuration

PathLike = Union[str, os.PathLike]
LOGGER = logging.getLogger("vssm.seg")
CLASS_LOCATION_SAMPLES = 10000  # nnU-Net's per-class sample count ...
CLASS_LOCATION_MIN_COVERAGE = 0.01  # ... raised to at least this fraction of the class' voxels
CLASS_LOCATION_SEED = 1234
FORMAT_VERSION = 1


class PreprocessingError(DataError):
    """A case that cannot be preprocessed; the message names the case and its files."""


# class locations ----------------------------------------------------------------------------------------------------


def class_key(labels: Union[int, Sequence[int]]) -> str:
    """The ``class_locations`` key of a label (``"1"``) or a region / label set (``"1,2"``)."""
    values = [labels] if isinstance(labels, (int, np.integer)) else list(labels)
    return ",".join(str(int(v)) for v in values)


def key_labels(key: str) -> Tuple[int, ...]:
    """The label values of a ``class_locations`` key."""
    return tuple(int(v) for v in key.split(","))


def sampling_classes(labels: LabelSpec) -> List[Tuple[int, ...]]:
    """What nnU-Net samples locations for: each foreground label (or region), and with an ignore label every
    annotated voxel (-1 and all labels)."""
    classes = [tuple(r) for r in labels.foreground_regions] if labels.has_regions else \
        [(v,) for v in labels.foreground_labels]
    if labels.has_ignore_label:
        classes.append((-1,) + tuple(labels.all_labels))
    return classes


def sample_class_locations(seg: np.ndarray, classes: Sequence[Sequence[int]], seed: int = CLASS_LOCATION_SEED,
                           num_samples: int = CLASS_LOCATION_SAMPLES,
                           min_coverage: float = CLASS_LOCATION_MIN_COVERAGE) -> Dict[str, np.ndarray]:
    """Per class (a tuple of label values), up to ``num_samples`` voxel coordinates of ``seg`` holding one of its
    values, drawn without replacement, at least ``ceil(min_coverage * count)``; ``(0, ndim)`` when absent.

    Args:
        seg: ``(*spatial)`` label map.
        classes: The label sets to sample (see ``sampling_classes``).
    """
    rng = np.random.RandomState(seed)
    locations = {}
    for values in classes:
        mask = seg == values[0] if len(values) == 1 else np.isin(seg, np.asarray(values))
        flat = np.flatnonzero(mask)  # C order, as np.argwhere
        count = len(flat)
        if count == 0:
            locations[class_key(values)] = np.zeros((0, seg.ndim), dtype=np.int64)
            continue
        take = max(min(num_samples, count), int(np.ceil(count * min_coverage)))
        picked = flat[rng.choice(count, take, replace=False)]
        locations[class_key(values)] = np.stack(np.unravel_index(picked, seg.shape), axis=1).astype(np.int64)
    return locations


# one case -----------------------------------------------------------------------------------------------------------


def plan_key(config: SegConfiguration) -> str:
    """A digest of everything the preprocessed data depend on."""
    settings = {
        "version": FORMAT_VERSION, "spacing": list(config.spacing),
        "transpose_forward": list(config.transpose_forward),
        "normalization_schemes": list(config.normalization_schemes),
        "use_mask_for_norm": list(config.use_mask_for_norm),
        "foreground_intensity_properties": config.foreground_intensity_properties, "resampling": config.resampling,
    }
    return hashlib.sha256(json.dumps(to_jsonable(settings), sort_keys=True).encode()).hexdigest()[:16]


def preprocess_training_case(case: Case, config: SegConfiguration, labels: LabelSpec, natural_2d: bool
                             ) -> Tuple[np.ndarray, np.ndarray, dict]:
    """(data float32 (C, *spatial), seg int16 (1, *spatial), properties) of one raw training case; see the module
    docstring for the properties."""
    image, label, spacing, geometry = read_case_as_volume(case, natural_2d)
    if label is None:
        raise PreprocessingError(f"case {case.case_id!r} has no label file; training cases need one")
    forward = list(config.transpose_forward)
    if len(forward) != image.ndim - 1:
        raise PreprocessingError(f"case {case.case_id!r}: the plans transpose {image.ndim - 1}-D volumes with "
                                 f"transpose_forward {forward}, the image has {image.ndim - 1} axes")
    image = image.transpose([0] + [a + 1 for a in forward])
    label = label.transpose(forward)
    spacing_t = [spacing[a] for a in forward]
    intensities = {"foreground_intensity_properties_per_channel": config.foreground_intensity_properties}
    data, seg, properties = preprocess_case(image, label, spacing_t, config.spacing, config.normalization_schemes,
                                            intensities, use_mask=config.use_mask_for_norm)
    if seg.min() < -32768 or seg.max() > 32767:
        raise PreprocessingError(f"case {case.case_id!r}: label values {seg.min()}..{seg.max()} do not fit int16")
    seg = seg.astype(np.int16)
    properties.update(
        transpose_forward=forward,
        geometry={"shape": list(geometry.shape), "spacing": list(geometry.spacing),
                  "affine": None if geometry.affine is None else geometry.affine.tolist()},
        class_locations=sample_class_locations(seg, sampling_classes(labels)),
    )
    return data.astype(np.float32, copy=False), seg[None], properties


def case_files(folder: PathLike, case: str) -> Tuple[Path, Path]:
    """(``<case>.npz``, ``<case>.json``) in ``folder``."""
    folder = Path(folder)
    return folder / f"{case}.npz", folder / f"{case}.json"


def is_case_done(folder: PathLike, case: str, key: Optional[str] = None) -> bool:
    """Both files exist and (if ``key`` is given) the case was preprocessed with that ``plan_key``."""
    npz, meta = case_files(folder, case)
    if not (npz.is_file() and meta.is_file()):
        return False
    if key is None:
        return True
    try:
        return json.loads(meta.read_text()).get("plan_key") == key
    except (OSError, json.JSONDecodeError):
        return False


def save_preprocessed_case(folder: PathLike, case: str, data: np.ndarray, seg: np.ndarray, properties: dict) -> None:
    """Writes ``<case>.npz`` then ``<case>.json``, each atomically."""
    npz, meta = case_files(folder, case)
    write_atomic(str(npz), lambda file: np.savez_compressed(file, data=data, seg=seg))
    text = json.dumps(to_jsonable(properties))
    write_atomic(str(meta), lambda file: file.write(text), mode="w")


def _run_case(case: Case, config: SegConfiguration, labels: LabelSpec, natural_2d: bool, out_dir: str,
              key: str) -> str:
    try:
        data, seg, properties = preprocess_training_case(case, config, labels, natural_2d)
    except DataError:
        raise
    except Exception as error:  # resampling / normalisation failures: say which case and files
        files = [str(f) for f in case.images if f is not None] + [str(case.label)]
        raise PreprocessingError(f"case {case.case_id!r} ({', '.join(files)}) failed: {type(error).__name__}: "
                                 f"{error}") from error
    properties["plan_key"] = key
    save_preprocessed_case(out_dir, case.case_id, data, seg, properties)
    return case.case_id


def warn_on_other_resampling(config: SegConfiguration) -> None:
    """Logs a warning when the plans ask for other resampling than nnU-Net's default, the one implemented here."""
    asked = {key: config.resampling.get(key) for key in ("resampling_fn_data", "resampling_fn_seg")}
    orders = (config.resampling.get("resampling_fn_data_kwargs", {}).get("order", 3),
              config.resampling.get("resampling_fn_seg_kwargs", {}).get("order", 1))
    if any(name not in (None, RESAMPLING_FN) for name in asked.values()) or orders != (3, 1):
        LOGGER.warning("the plans of %s ask for resampling %s with orders %s; vssm resamples with nnU-Net's default "
                       "(%s, images order 3, labels order 1)", config.name, asked, orders, RESAMPLING_FN)


def preprocess_dataset(raw_root: PathLike, plans: Union[PathLike, Mapping], configuration: str, out_dir: PathLike,
                       num_workers: int = 0, cases: Optional[Sequence[str]] = None, verify: bool = False
                       ) -> List[str]:
    """Preprocesses the training cases of a raw dataset for one configuration of the plans.

    Cases already done with the same settings are skipped, so an interrupted run resumes where it stopped.

    Args:
        raw_root: The raw dataset folder.
        plans: The plans (file or dict; ours or nnU-Net's, either layout).
        configuration: '2d', '3d_fullres', ...
        out_dir: The folder for ``<case>.npz`` / ``<case>.json`` (nnU-Net: ``nnUNet_preprocessed/<dataset>/
            <data_identifier>``); created if missing.
        num_workers: Processes working in parallel; 0: this process.
        cases: Only these case ids; None: every training case.
        verify: Validate the raw dataset first (every problem reported by file).

    Returns:
        The case ids preprocessed now (skipped ones not included).
    """
    config = read_configuration(plans, configuration)
    warn_on_other_resampling(config)
    dataset: RawDataset = validate_raw_dataset(raw_root) if verify else load_raw_dataset(raw_root)
    labels = dataset.labels
    natural_2d = is_natural_2d(dataset)
    selected = list(dataset.training) if cases is None else list(cases)
    missing = [c for c in selected if c not in dataset.training]
    if missing:
        raise PreprocessingError(f"{Path(raw_root)}: case(s) {missing} are not training cases of this dataset")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = plan_key(config)
    todo = [c for c in selected if not is_case_done(out_dir, c, key)]
    LOGGER.info("preprocess %s for %s: %d case(s) to do, %d already done, into %s", Path(raw_root).name,
                configuration, len(todo), len(selected) - len(todo), out_dir)
    done = []
    progress = tqdm(total=len(todo), desc=f"preprocess {configuration}", unit="case")
    try:
        if num_workers <= 0:
            for case_id in todo:
                done.append(_run_case(dataset.training[case_id], config, labels, natural_2d, str(out_dir), key))
                progress.update()
        else:
            with ProcessPoolExecutor(max_workers=num_workers) as pool:
                futures = [pool.submit(_run_case, dataset.training[c], config, labels, natural_2d, str(out_dir), key)
                           for c in todo]
                for future in as_completed(futures):
                    done.append(future.result())
                    progress.update()
    finally:
        progress.close()
    return sorted(done)


# reading back -------------------------------------------------------------------------------------------------------


def load_case_properties(folder: PathLike, case: str) -> dict:
    """The ``<case>.json`` properties, with ``class_locations`` as int64 ``(N, ndim)`` arrays."""
    _, meta = case_files(folder, case)
    if not meta.is_file():
        raise PreprocessingError(f"{meta}: preprocessed case {case!r} not found; run the preprocessing "
                                 f"(tools/preprocess_seg.py) for this configuration first")
    try:
        properties = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PreprocessingError(f"{meta}: not valid JSON ({error}); delete it and preprocess the case again") \
            from None
    locations = properties.get("class_locations", {})
    properties["class_locations"] = {k: np.asarray(v, dtype=np.int64).reshape(-1, len(properties[
        "shape_before_cropping"])) for k, v in locations.items()}
    return properties


def load_preprocessed_case(folder: PathLike, case: str) -> Tuple[np.ndarray, np.ndarray, dict]:
    """(data float32 (C, *spatial), seg int16 (1, *spatial), properties) of a preprocessed case."""
    properties = load_case_properties(folder, case)
    npz, _ = case_files(folder, case)
    try:
        with np.load(npz) as arrays:
            data, seg = arrays["data"], arrays["seg"]
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise PreprocessingError(f"{npz}: cannot be read ({type(error).__name__}: {error}); delete it and its .json "
                                 f"and preprocess the case again") from None
    if data.shape[1:] != seg.shape[1:]:
        raise PreprocessingError(f"{npz}: data {data.shape} and seg {seg.shape} differ in their spatial shape")
    return data, seg, properties
