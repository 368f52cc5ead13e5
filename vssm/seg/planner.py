"""nnU-Net v2's experiment planning, re-written: a raw dataset's fingerprint -> an nnU-Net-style ``nnUNetPlans.json``
with the ``2d`` and ``3d_fullres`` configurations.

The rules follow nnU-Net's ``ExperimentPlanner`` (``default_experiment_planner.py``, ``network_topology.py``,
``DatasetFingerprintExtractor``):

* fingerprint: per training case the spacing and the shape after cropping to the non-zero region, and per channel the
  foreground (label > 0) intensity statistics (``vssm.data.medical_transforms.compute_fingerprint``). 2-D natural
  images (PNG, ...) count as volumes of one slice with spacing ``(999, 1, 1)``, as nnU-Net's ``NaturalImage2DIO``
  reads them, so that a plan for them equals nnU-Net's.
* target spacing: the median spacing; when one axis is much coarser than the others (its median spacing > 3x the
  finest of the others and its median size x 3 < the others' smallest size) that axis gets the 10th percentile of its
  spacings instead (never finer than the other axes).
* transpose: the coarsest axis of the target spacing goes first (``transpose_forward``), so that 2-D configurations
  slice along it.
* topology (``pool_and_conv_props``): pool (stride 2) every axis whose feature map is still >= 8 voxels and whose
  spacing is within a factor 2 of the finest remaining one (a lone axis needs >= 12 voxels); kernel size 3 on an axis
  once its spacing is within a factor 2 of the finest, 1 before; the patch is padded to a multiple of
  ``2 ** pools`` per axis.
* patch size: start from a patch of 256^3 (2-D: 2048^2) voxels with the target spacing's aspect ratio, clipped to the
  median image size, then shrink the axis largest relative to the median shape until the feature-map count model
  fits the memory budget.
* memory model (nnU-Net's reference-value approach): the number of feature-map voxels a plain conv U-Net holds for
  one sample (``feature_map_voxels``, the same count as ``PlainConvUNet.compute_conv_feature_map_size``) is compared
  with a reference count that nnU-Net calibrated on real GPUs: ``REFERENCE_FEATURE_MAP_VOXELS`` (560e6 in 3-D,
  85e6 in 2-D) fit ``REFERENCE_GPU_MEMORY_GB`` = 8 GB at ``REFERENCE_BATCH_SIZE`` (2 in 3-D, 12 in 2-D); the
  reference scales linearly with ``gpu_memory_gb``. The patch must fit at batch size 2; the batch then grows into
  the headroom, capped so that a batch covers at most 5% of the dataset's voxels, and is at least 2.
* network: features 32, doubling per stage, capped at 512 (2-D) / 320 (3-D); 2 convolutions per stage in the encoder
  and the decoder; instance norm, LeakyReLU, conv bias (nnU-Net's ``PlainConvUNet`` kwargs).
* normalisation: the scheme per channel name (``CT`` -> ``CTNormalization``, ...) and ``use_mask_for_norm`` when
  cropping shrank the median case below 3/4 of its size (``vssm.data.medical_transforms``).

NOTE: nnU-Net also plans a ``3d_lowres`` / cascade configuration for large images; it is not planned here.
"""
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from vssm.data.errors import DataError
from vssm.data.medical_transforms import (
    ANISO_THRESHOLD, compute_fingerprint, compute_new_shape, normalization_scheme, use_mask_for_norm,
)
from vssm.data.nnunet_raw import (
    NATURAL_2D_ENDINGS, Case, ImageGeometry, RawDataset, load_raw_dataset, read_image, read_label, validate_raw_dataset,
)
from vssm.engine.checkpoint import write_atomic

PathLike = Union[str, os.PathLike]

BASE_FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}
# nnU-Net's calibration: a PlainConvUNet whose feature maps hold this many voxels per sample trains at the reference
# batch size in REFERENCE_GPU_MEMORY_GB of GPU memory (UNet_reference_val_2d/3d, ..._corresp_GB, ..._corresp_bs_2d/3d)
REFERENCE_FEATURE_MAP_VOXELS = {2: 85_000_000, 3: 560_000_000}
REFERENCE_GPU_MEMORY_GB = 8
REFERENCE_BATCH_SIZE = {2: 12, 3: 2}
FEATURE_MAP_MIN_EDGE = 4  # the bottleneck's feature maps keep at least this many voxels per pooled axis
MIN_BATCH_SIZE = 2
MAX_DATASET_COVERED = 0.05  # a batch sees at most this fraction of the dataset's voxels
N_CONV_PER_STAGE = 2
INITIAL_PATCH_VOXELS = {2: 2048 ** 2, 3: 256 ** 3}
FOREGROUND_VOXELS_SAMPLED = 10e7  # nnU-Net's num_foreground_voxels_for_intensitystats
NATURAL_IMAGE_SPACING = 999.0  # nnU-Net's out-of-plane spacing for 2-D images read as one-slice volumes
PLANS_NAME = "nnUNetPlans"
PLANNER_NAME = "vssm.seg.planner (nnU-Net ExperimentPlanner rules)"
NETWORK_CLASS = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESAMPLING_FN = "resample_data_or_seg_to_shape"


class PlanningError(DataError):
    """A dataset or fingerprint the planner cannot plan for; ``path`` is the file or folder at fault."""

    def __init__(self, message: str, path: Optional[PathLike] = None):
        super().__init__(message if path is None else f"{path}: {message}")
        self.path = None if path is None else str(path)


# fingerprint --------------------------------------------------------------------------------------------------------


def is_natural_2d(dataset: RawDataset) -> bool:
    """True for datasets of 2-D natural images (PNG, BMP, TIFF), read as ``(C, H, W)``."""
    return dataset.file_ending.lower() in NATURAL_2D_ENDINGS


def read_case_as_volume(case: Case, natural_2d: bool
                        ) -> Tuple[np.ndarray, Optional[np.ndarray], Tuple[float, ...], ImageGeometry]:
    """(image (C, Z, Y, X) float32, label (Z, Y, X), spacing (3,), geometry) of a raw case; a 2-D image becomes one
    slice of spacing ``NATURAL_IMAGE_SPACING``, as nnU-Net reads it."""
    image, geometry = read_image([f for f in case.images if f is not None])
    label = None
    if case.label is not None:
        label, _ = read_label(case.label)
    spacing = tuple(float(s) for s in geometry.spacing)
    if natural_2d:
        image = image[:, None]
        label = None if label is None else label[None]
        spacing = (NATURAL_IMAGE_SPACING,) + spacing
    return image, label, spacing, geometry


def fingerprint_dataset(raw_root: PathLike, out_path: Optional[PathLike] = None, verify: bool = True,
                        num_foreground_voxels: float = FOREGROUND_VOXELS_SAMPLED) -> dict:
    """The dataset fingerprint of nnU-Net (``dataset_fingerprint.json``'s content), written to ``out_path`` if given.

    Args:
        raw_root: The raw dataset folder (``DatasetXXX_Name`` with ``dataset.json``, ``imagesTr``, ``labelsTr``).
        out_path: Where to write the fingerprint (atomically).
        verify: Check the whole dataset first (``validate_raw_dataset``): every problem is reported by file before any
            work starts.
        num_foreground_voxels: Foreground intensities sampled over the whole dataset for the statistics (nnU-Net:
            1e8, split evenly over the cases).

    Returns:
        ``{"spacings", "shapes_after_crop", "foreground_intensity_properties_per_channel",
        "median_relative_size_after_cropping"}``, spacings and shapes in the file's axis order, 3 entries per case.
    """
    dataset = validate_raw_dataset(raw_root) if verify else load_raw_dataset(raw_root)
    natural_2d = is_natural_2d(dataset)
    cases = list(dataset.training.values())
    if not cases:
        raise PlanningError("no training case to plan for", Path(raw_root) / "imagesTr")

    def volumes():
        for case in tqdm(cases, desc="fingerprint", unit="case", leave=False):
            image, label, spacing, _ = read_case_as_volume(case, natural_2d)
            yield image, label, spacing
    fingerprint = compute_fingerprint(volumes(), num_foreground_voxels=num_foreground_voxels, num_cases=len(cases))
    if out_path is not None:
        write_json(fingerprint, out_path)
    return fingerprint


# planning rules -----------------------------------------------------------------------------------------------------


def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]],
                   threshold: float = ANISO_THRESHOLD) -> np.ndarray:
    """The ``3d_fullres`` target spacing: the median spacing, or for a much coarser axis with few voxels the 10th
    percentile of its spacings (nnU-Net's ``determine_fullres_target_spacing``).

    Args:
        spacings: Per case, the spacing (file axis order).
        shapes: Per case, the shape after cropping to the non-zero region.
    """
    spacings = np.asarray(spacings, dtype=np.float64)
    target = np.percentile(spacings, 50, axis=0)
    median_size = np.percentile(np.asarray(shapes, dtype=np.float64), 50, axis=0)
    coarse = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != coarse]
    other_spacing = max(target[i] for i in others)
    aniso_spacing = target[coarse] > threshold * other_spacing
    aniso_voxels = median_size[coarse] * threshold < min(median_size[i] for i in others)
    if aniso_spacing and aniso_voxels:
        coarse_target = np.percentile(spacings[:, coarse], 10)
        if coarse_target < other_spacing:  # never finer than the other axes
            coarse_target = max(other_spacing, coarse_target) + 1e-5
        target[coarse] = coarse_target
    return target


def transpose_axes(spacing: Sequence[float]) -> Tuple[List[int], List[int]]:
    """(transpose_forward, transpose_backward): the coarsest axis first, the others in order."""
    coarse = int(np.argmax(spacing))
    forward = [coarse] + [i for i in range(len(spacing)) if i != coarse]
    backward = [forward.index(i) for i in range(len(spacing))]
    return forward, backward


def pad_to_multiple(shape: Sequence[int], multiple: Sequence[int]) -> Tuple[int, ...]:
    """Each entry rounded up to a multiple of ``multiple``."""
    return tuple(int(-(-s // m) * m) for s, m in zip(shape, multiple))


def pool_and_conv_props(spacing: Sequence[float], patch_size: Sequence[int],
                        min_edge: int = FEATURE_MAP_MIN_EDGE, max_pools: int = 999999
                        ) -> Tuple[List[int], List[List[int]], List[List[int]], Tuple[int, ...], Tuple[int, ...]]:
    """The network topology for a patch: nnU-Net's ``get_pool_and_conv_props``.

    Returns:
        (pools per axis, strides per stage (first [1, ...]), kernel sizes per stage, patch size padded to a multiple of
        the total stride, that total stride per axis).
    """
    dim = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(s) for s in patch_size]
    strides = [[1] * dim]
    kernels = []
    pools = [0] * dim
    kernel = [1] * dim
    while True:
        axes = [i for i in range(dim) if current_size[i] >= 2 * min_edge]
        if not axes:
            break
        finest = min(current_spacing[i] for i in axes)
        axes = [i for i in axes if current_spacing[i] / finest < 2 and pools[i] < max_pools]
        if len(axes) == 1 and current_size[axes[0]] < 3 * min_edge:
            break
        if not axes:
            break
        for d in range(dim):  # kernel 3 once an axis' spacing is within a factor 2 of the finest; it stays 3
            if kernel[d] != 3 and current_spacing[d] / min(current_spacing) < 2:
                kernel[d] = 3
        stride = [1] * dim
        for d in axes:
            stride[d] = 2
            pools[d] += 1
            current_spacing[d] *= 2
            current_size[d] = np.ceil(current_size[d] / 2)
        strides.append(stride)
        kernels.append(list(kernel))
    kernels.append([3] * dim)  # the bottleneck
    divisible_by = tuple(2 ** p for p in pools)
    return pools, strides, kernels, pad_to_multiple(patch_size, divisible_by), divisible_by


def features_per_stage(num_stages: int, dim: int) -> List[int]:
    """32, 64, ... capped at ``MAX_FEATURES[dim]``."""
    return [min(MAX_FEATURES[dim], BASE_FEATURES * 2 ** i) for i in range(num_stages)]


def feature_map_voxels(patch_size: Sequence[int], features: Sequence[int], strides: Sequence[Sequence[int]],
                       n_conv_per_stage: Sequence[int], n_conv_per_stage_decoder: Sequence[int], num_classes: int
                       ) -> int:
    """The memory model: voxels of every convolution output a plain conv U-Net holds for one sample of
    ``patch_size`` (encoder convolutions, decoder transposed convolutions and convolutions, the final segmentation
    layer), the count of ``PlainConvUNet.compute_conv_feature_map_size`` (no deep supervision)."""
    sizes, size, total = [], list(patch_size), 0
    for width, stride, n_conv in zip(features, strides, n_conv_per_stage):
        size = [s // k for s, k in zip(size, stride)]
        sizes.append(size)
        total += n_conv * width * int(np.prod(size, dtype=np.int64))
    num_stages = len(features)
    for level in range(num_stages - 2, -1, -1):  # decoder stage at the resolution of encoder stage ``level``
        n_conv = n_conv_per_stage_decoder[num_stages - 2 - level]
        total += (n_conv + 1) * features[level] * int(np.prod(sizes[level], dtype=np.int64))
    return total + num_classes * int(np.prod(sizes[0], dtype=np.int64))


def architecture(dim: int, strides, kernels) -> dict:
    """nnU-Net's ``architecture`` entry (>= 2.4 layout) of a ``PlainConvUNet`` with this topology."""
    num_stages = len(strides)
    conv = "torch.nn.modules.conv.Conv3d" if dim == 3 else "torch.nn.modules.conv.Conv2d"
    norm = "torch.nn.modules.instancenorm.InstanceNorm3d" if dim == 3 else \
        "torch.nn.modules.instancenorm.InstanceNorm2d"
    return {
        "network_class_name": NETWORK_CLASS,
        "arch_kwargs": {
            "n_stages": num_stages,
            "features_per_stage": features_per_stage(num_stages, dim),
            "conv_op": conv,
            "kernel_sizes": [list(k) for k in kernels],
            "strides": [list(s) for s in strides],
            "n_conv_per_stage": [N_CONV_PER_STAGE] * num_stages,
            "n_conv_per_stage_decoder": [N_CONV_PER_STAGE] * (num_stages - 1),
            "conv_bias": True,
            "norm_op": norm,
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _estimate(patch_size, arch: dict, num_classes: int) -> int:
    kw = arch["arch_kwargs"]
    return feature_map_voxels(patch_size, kw["features_per_stage"], kw["strides"], kw["n_conv_per_stage"],
                              kw["n_conv_per_stage_decoder"], num_classes)


def plan_topology(spacing: Sequence[float], median_shape: Sequence[float], num_classes: int,
                  approximate_dataset_voxels: float, gpu_memory_gb: float = REFERENCE_GPU_MEMORY_GB) -> dict:
    """Patch size, batch size and network of one configuration (nnU-Net's ``get_plans_for_configuration``).

    Args:
        spacing: The configuration's target spacing (after transposition), 2 or 3 entries.
        median_shape: The median image size at that spacing, same axes.
        num_classes: Output channels assumed by the memory model (nnU-Net: the number of ``labels`` entries).
        approximate_dataset_voxels: Voxels of the whole training set at the ``3d_fullres`` spacing (median size x
            number of cases), for the 5% batch cap.
        gpu_memory_gb: The memory budget.

    Returns:
        ``{"patch_size", "batch_size", "architecture", "feature_map_voxels"}``.
    """
    dim = len(spacing)
    if not gpu_memory_gb > 0:
        raise PlanningError(f"gpu_memory_gb must be positive, got {gpu_memory_gb}")
    if dim not in (2, 3):
        raise PlanningError(f"a configuration has 2 or 3 axes, got spacing {list(spacing)}")
    if any(s <= 0 for s in spacing):
        raise PlanningError(f"spacings must be positive, got {list(spacing)}")
    median_shape = [float(s) for s in median_shape[:dim]]
    aspect = 1 / np.asarray(spacing, dtype=np.float64)
    initial = [round(a) for a in aspect * (INITIAL_PATCH_VOXELS[dim] / np.prod(aspect)) ** (1 / dim)]
    initial = [min(i, m) for i, m in zip(initial, median_shape)]
    _, strides, kernels, patch, divisible_by = pool_and_conv_props(spacing, initial)
    arch = architecture(dim, strides, kernels)
    estimate = _estimate(patch, arch, num_classes)
    reference = REFERENCE_FEATURE_MAP_VOXELS[dim] * gpu_memory_gb / REFERENCE_GPU_MEMORY_GB
    reference_batch = REFERENCE_BATCH_SIZE[dim]
    while estimate / reference_batch * MIN_BATCH_SIZE > reference:
        axis = int(np.argsort([p / m for p, m in zip(patch, median_shape)])[-1])
        # shrink by the divisor of the shape one step smaller, so that no valid size is skipped
        smaller = list(patch)
        smaller[axis] -= divisible_by[axis]
        _, _, _, _, smaller_divisible_by = pool_and_conv_props(spacing, smaller)
        patch = list(patch)
        patch[axis] -= smaller_divisible_by[axis]
        _, strides, kernels, patch, divisible_by = pool_and_conv_props(spacing, patch)
        arch = architecture(dim, strides, kernels)
        estimate = _estimate(patch, arch, num_classes)
    batch = round(reference / estimate * reference_batch)
    batch_cap = round(approximate_dataset_voxels * MAX_DATASET_COVERED / np.prod(patch, dtype=np.float64))
    batch = max(min(batch, batch_cap), MIN_BATCH_SIZE)
    return {"patch_size": [int(p) for p in patch], "batch_size": int(batch), "architecture": arch,
            "feature_map_voxels": int(estimate)}


# the plans file -----------------------------------------------------------------------------------------------------


def _resampling_entries() -> dict:
    """nnU-Net's default resampling (the functions ``vssm.data.medical_transforms`` re-implements)."""
    def kwargs(is_seg, order):
        return {"is_seg": is_seg, "order": order, "order_z": 0, "force_separate_z": None}
    return {
        "resampling_fn_data": RESAMPLING_FN, "resampling_fn_seg": RESAMPLING_FN,
        "resampling_fn_data_kwargs": kwargs(False, 3), "resampling_fn_seg_kwargs": kwargs(True, 1),
        "resampling_fn_probabilities": RESAMPLING_FN, "resampling_fn_probabilities_kwargs": kwargs(False, 1),
    }


def plans_from_fingerprint(fingerprint: dict, dataset_json: dict, dataset_name: str,
                           gpu_memory_gb: float = REFERENCE_GPU_MEMORY_GB,
                           configurations: Sequence[str] = ("2d", "3d_fullres"), plans_name: str = PLANS_NAME,
                           image_reader_writer: str = "NibabelIO") -> dict:
    """The plans (nnU-Net >= 2.4 layout) of a fingerprint; see ``plan_dataset``.

    A configuration that does not apply is left out: ``3d_fullres`` for data of one slice (2-D images).
    """
    check_request(configurations, gpu_memory_gb)
    spacings = np.asarray(fingerprint["spacings"], dtype=np.float64)
    shapes = np.asarray(fingerprint["shapes_after_crop"], dtype=np.float64)
    if spacings.ndim != 2 or spacings.shape[1] != 3 or shapes.shape != spacings.shape:
        raise PlanningError(f"the fingerprint needs 3 spacing and shape entries per case, got spacings "
                            f"{spacings.shape} and shapes {shapes.shape}")
    channel_names = dataset_json.get("channel_names", dataset_json.get("modality"))
    names = [channel_names[k] for k in sorted(channel_names, key=int)]
    num_cases = int(dataset_json.get("numTraining", len(spacings)))
    num_classes = len(dataset_json["labels"])
    fullres = target_spacing(spacings, shapes)
    forward, backward = transpose_axes(fullres)
    new_shapes = [compute_new_shape(shape, spacing, fullres) for spacing, shape in zip(spacings, shapes)]
    median_shape = np.median(np.asarray(new_shapes, dtype=np.float64), axis=0)[forward]
    fullres_t = fullres[forward]
    dataset_voxels = float(np.prod(median_shape, dtype=np.float64) * num_cases)
    schemes = [normalization_scheme(n) for n in names]
    use_mask = use_mask_for_norm(names, fingerprint["median_relative_size_after_cropping"])

    def configuration(name, spacing, shape):
        topology = plan_topology(spacing, shape, num_classes, dataset_voxels, gpu_memory_gb)
        return {
            "data_identifier": f"{plans_name}_{name}",
            "preprocessor_name": "DefaultPreprocessor",
            "batch_size": topology["batch_size"],
            "patch_size": topology["patch_size"],
            "median_image_size_in_voxels": [float(s) for s in shape],
            "spacing": [float(s) for s in spacing],
            "normalization_schemes": schemes,
            "use_mask_for_norm": use_mask,
            **_resampling_entries(),
            "architecture": topology["architecture"],
            "batch_dice": name == "2d",  # nnU-Net: batch Dice for 2d; for 3d_fullres only with a cascade
        }
    planned = {}
    if "2d" in configurations:
        planned["2d"] = configuration("2d", fullres_t[1:], median_shape[1:])
    if "3d_fullres" in configurations and median_shape[0] != 1:
        planned["3d_fullres"] = configuration("3d_fullres", fullres_t, median_shape)
    if not planned:
        raise PlanningError(f"none of the configurations {list(configurations)} applies to {dataset_name} (data of "
                            f"one slice plans only '2d')")
    return {
        "dataset_name": dataset_name,
        "plans_name": plans_name,
        "original_median_spacing_after_transp": [float(s) for s in np.median(spacings, axis=0)[forward]],
        "original_median_shape_after_transp": [int(round(s)) for s in np.median(shapes, axis=0)[forward]],
        "image_reader_writer": image_reader_writer,
        "transpose_forward": forward,
        "transpose_backward": backward,
        "configurations": planned,
        "experiment_planner_used": PLANNER_NAME,
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": fingerprint["foreground_intensity_properties_per_channel"],
    }


def plan_dataset(raw_root: PathLike, out_path: Optional[PathLike] = None,
                 gpu_memory_gb: float = REFERENCE_GPU_MEMORY_GB,
                 configurations: Sequence[str] = ("2d", "3d_fullres"), plans_name: str = PLANS_NAME,
                 verify: bool = True, fingerprint: Optional[dict] = None,
                 num_foreground_voxels: float = FOREGROUND_VOXELS_SAMPLED) -> dict:
    """Fingerprints a raw dataset and plans its ``2d`` and ``3d_fullres`` configurations as nnU-Net v2 does.

    Args:
        raw_root: The raw dataset folder (``DatasetXXX_Name``).
        out_path: Where to write the plans (``.../nnUNetPlans.json``); ``dataset_fingerprint.json`` and a copy of
            ``dataset.json`` are written beside it, as nnU-Net lays out its preprocessed folder. None: nothing is
            written.
        gpu_memory_gb: GPU memory budget for one training process (nnU-Net's default: 8).
        configurations: Which of ``2d`` and ``3d_fullres`` to plan.
        plans_name: The plans identifier (prefix of each ``data_identifier``).
        verify: Validate the raw dataset first (every problem reported by file).
        fingerprint: A fingerprint already computed (``fingerprint_dataset``); None: computed here.
        num_foreground_voxels: See ``fingerprint_dataset``.

    Returns:
        The plans dict, as written.
    """
    check_request(configurations, gpu_memory_gb)
    raw_root = Path(raw_root)
    dataset = validate_raw_dataset(raw_root) if verify else load_raw_dataset(raw_root)
    folder = None if out_path is None else Path(out_path).parent
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    if fingerprint is None:
        fingerprint = fingerprint_dataset(raw_root, None if folder is None else folder / "dataset_fingerprint.json",
                                          False, num_foreground_voxels)
    reader = "NaturalImage2DIO" if is_natural_2d(dataset) else "NibabelIO"
    plans = plans_from_fingerprint(fingerprint, dataset.dataset_json.raw, raw_root.name, gpu_memory_gb,
                                   configurations, plans_name, reader)
    if out_path is not None:
        write_json(plans, out_path)
        if (raw_root / "dataset.json").resolve() != (folder / "dataset.json").resolve():
            content = (raw_root / "dataset.json").read_bytes()
            write_atomic(str(folder / "dataset.json"), lambda file: file.write(content))
    return plans


def check_request(configurations: Sequence[str], gpu_memory_gb: float) -> None:
    """Raises ``PlanningError`` for a configuration this planner does not plan or a non-positive budget."""
    unknown = [c for c in configurations if c not in ("2d", "3d_fullres")]
    if unknown or not configurations:
        raise PlanningError(f"unknown configuration(s) {unknown} (of {list(configurations)}); this planner plans "
                            f"'2d' and '3d_fullres'")
    if not gpu_memory_gb > 0:
        raise PlanningError(f"gpu_memory_gb must be positive, got {gpu_memory_gb}")


def write_json(data: dict, path: PathLike) -> None:
    """``data`` as indented JSON (numpy values converted), written atomically, key order kept."""
    text = json.dumps(to_jsonable(data), indent=4, sort_keys=False)
    write_atomic(str(path), lambda file: file.write(text + "\n"), mode="w")


def to_jsonable(value):
    """Nested dicts / lists / tuples / numpy scalars and arrays -> JSON types (tuples become lists)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def configuration_summary(plans: dict) -> Dict[str, str]:
    """One line per configuration: patch, batch, spacing and stages, for logs."""
    out = {}
    for name, config in plans["configurations"].items():
        kw = config["architecture"]["arch_kwargs"]
        out[name] = (f"patch {config['patch_size']}, batch {config['batch_size']}, spacing "
                     f"{[round(s, 4) for s in config['spacing']]}, {kw['n_stages']} stages, features "
                     f"{kw['features_per_stage']}")
    return out
