"""Prediction of raw-format images with a trained segmentation net, as nnU-Net's ``nnUNetv2_predict`` does it.

Per case (``predict_case``):

1. the image, ``(C, *spatial)`` as ``vssm.data.nnunet_raw.read_image`` returns it, becomes a volume: a 2-D natural
   image one slice of spacing ``(999, 1, 1)`` as nnU-Net reads it (``vssm.seg.planner.read_case_as_volume``);
2. the training preprocessing (``vssm.seg.preprocess``): axes permuted by ``transpose_forward``, cropped to the
   non-zero region, normalised with the plan's schemes, masks and foreground intensity properties, resampled to the
   configuration's spacing (``vssm.data.medical_transforms.preprocess_case``);
3. nnU-Net's sliding window (``vssm.seg.sliding_window``: step 0.5 of the patch, Gaussian importance map; a 2-D
   configuration runs slice by slice) with mirror test-time augmentation over every axis of the patch;
4. back to the input grid (``revert_preprocessing``: logits resampled linearly to the cropped shape, argmax or
   ``regions_class_order``, un-cropped) and ``transpose_backward``.

``predict_folder`` runs it over every case of a folder of raw-format images (``{CASE}_{XXXX}{file_ending}``) and
writes ``{CASE}{file_ending}`` in the input's format and geometry (NIfTI: the input's affine), optionally with
``{CASE}.npz`` holding ``probabilities`` (float32 ``(K, *spatial)`` in the array axis order of
``vssm.data.nnunet_raw``: softmax, or sigmoid per region). Cases already written are skipped unless ``overwrite``.
The output folder also receives the ``dataset.json`` and ``plans.json`` used, as nnU-Net's does.

``evaluate_predictions`` scores such a folder against reference labels (Dice and normalised surface Dice per class
and case, ``summary.json`` as nnU-Net writes it) with the classes and ignore label of ``dataset.json``.
"""
import contextlib
import copy
import json
import logging
import os
import time
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vssm.data.errors import DataError
from vssm.data.medical_transforms import preprocess_case, resample_image, revert_preprocessing
from vssm.data.nnunet_raw import (
    DatasetJson, DatasetJsonError, DatasetValidationError, EmptyDatasetError, ImageGeometry, LabelSpec,
    MissingChannelError, MissingFileError, list_image_folder, parse_dataset_json, read_dataset_json, read_image,
    write_segmentation,
)
from vssm.engine.checkpoint import write_atomic

from .metrics import evaluate_folder
from .planner import NATURAL_IMAGE_SPACING, to_jsonable
from .plans import SegConfiguration, configuration as read_configuration, load_plans
from .sliding_window import sliding_window_predict

PathLike = Union[str, os.PathLike]
LOGGER = logging.getLogger("vssm.seg")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PredictionError(DataError):
    """An input the plan or the net cannot take (axes, channels, output heads); ``predict_folder`` names the file."""


# one case -----------------------------------------------------------------------------------------------------------


def preprocess_image(image: np.ndarray, spacing: Sequence[float], config: SegConfiguration
                     ) -> Tuple[np.ndarray, dict]:
    """The training preprocessing of a ``(C, Z, Y, X)`` volume without a label: (data float32 ``(C, *spatial)`` in
    the planned axis order, properties for ``revert_preprocessing``).

    Raises:
        PredictionError: the volume's axes or channels do not fit the plan.
    """
    forward = list(config.transpose_forward)
    if len(forward) != image.ndim - 1:
        raise PredictionError(f"the plans transpose {len(forward)}-D volumes (transpose_forward {forward}), the image "
                              f"has {image.ndim - 1} axes")
    if image.shape[0] != len(config.normalization_schemes):
        raise PredictionError(f"the image has {image.shape[0]} channel(s), the plan normalises "
                              f"{len(config.normalization_schemes)} ({list(config.normalization_schemes)})")
    image = image.transpose([0] + [a + 1 for a in forward])
    spacing_t = [float(spacing[a]) for a in forward]
    intensities = {"foreground_intensity_properties_per_channel": config.foreground_intensity_properties}
    data, _, properties = preprocess_case(image, None, spacing_t, config.spacing, config.normalization_schemes,
                                          intensities, use_mask=config.use_mask_for_norm)
    return data.astype(np.float32, copy=False), properties


@contextlib.contextmanager
def inference_mode(model: nn.Module):
    """Eval mode with deep supervision off (``decoder.deep_supervision``, nnU-Net's switch), restored afterwards."""
    net = getattr(model, "module", model)  # DDP
    decoder = getattr(net, "decoder", None)
    deep_supervision = getattr(decoder, "deep_supervision", None)
    was_training = model.training
    model.eval()
    if isinstance(deep_supervision, bool):
        decoder.deep_supervision = False
    try:
        with torch.no_grad():
            yield model
    finally:
        if isinstance(deep_supervision, bool):
            decoder.deep_supervision = deep_supervision
        model.train(was_training)


def _mirror_axes(mirror: Union[bool, Sequence[int]], dim: int) -> Tuple[int, ...]:
    if mirror is True:
        return tuple(range(dim))
    if mirror is False or mirror is None:
        return ()
    axes = tuple(int(a) for a in mirror)
    if any(a < 0 or a >= dim for a in axes):
        raise ValueError(f"mirror axes {axes} out of range for a {dim}-D patch")
    return axes


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def predict_logits(model: nn.Module, data: np.ndarray, config: SegConfiguration,
                   mirror: Union[bool, Sequence[int]] = True, step_size: float = 0.5, batch_size: int = 1,
                   amp: Optional[str] = None, accumulate_device: Optional[Union[str, torch.device]] = None
                   ) -> torch.Tensor:
    """Sliding-window logits ``(K, *spatial)`` (float32) of preprocessed ``data`` ``(C, *spatial)``; a 2-D
    configuration runs over the slices of the first axis.

    Args:
        mirror: Mirror test-time augmentation over every patch axis (True), none (False), or these axes.
        amp: 'bf16' or 'fp16' autocast on a CUDA model; None: the model's dtype.
        accumulate_device: Where the logits add up (default: the model's device), e.g. 'cpu' for a large volume.
    """
    device = _model_device(model)
    slices = config.dim == data.ndim - 2
    if not slices and config.dim != data.ndim - 1:
        raise PredictionError(f"a {config.dim}-D configuration cannot predict a {data.ndim - 1}-D volume")
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {list(AMP_DTYPES)} or None, got {amp!r}")
    autocast = torch.autocast("cuda", dtype=AMP_DTYPES[amp]) if amp and device.type == "cuda" else \
        contextlib.nullcontext()

    def predictor(patches: torch.Tensor) -> torch.Tensor:
        with autocast:
            output = model(patches)
        output = output[0] if isinstance(output, (list, tuple)) else output
        return output.float()

    with inference_mode(model):
        return sliding_window_predict(torch.from_numpy(np.ascontiguousarray(data)), predictor, config.patch_size,
                                      step_size=step_size, mirror_axes=_mirror_axes(mirror, config.dim),
                                      batch_size=batch_size, slices=slices,
                                      device=accumulate_device or device, predict_device=device)


def revert_probabilities(logits: np.ndarray, properties: dict, regions: bool = False) -> np.ndarray:
    """Probabilities ``(K, *shape before cropping)`` of ``(K, *spatial)`` logits on the planned axes: resampled as
    ``revert_preprocessing`` resamples them, softmax (sigmoid per region), un-cropped (background 1 outside the crop;
    regions 0)."""
    logits = resample_image(np.asarray(logits, dtype=np.float32), properties["target_spacing"],
                            properties["spacing"], order=1, order_z=0,
                            new_shape=properties["shape_after_cropping_and_before_resampling"])
    tensor = torch.from_numpy(logits)
    probabilities = (torch.sigmoid(tensor) if regions else torch.softmax(tensor, dim=0)).numpy()
    full = np.zeros((logits.shape[0], *properties["shape_before_cropping"]), dtype=np.float32)
    if not regions:
        full[0] = 1
    full[(slice(None),) + tuple(slice(a, b) for a, b in properties["bbox_used_for_cropping"])] = probabilities
    return full


def predict_case(model: nn.Module, image: np.ndarray, geometry: ImageGeometry, config: SegConfiguration,
                 labels: Optional[LabelSpec] = None, mirror: Union[bool, Sequence[int]] = True,
                 step_size: float = 0.5, batch_size: int = 1, amp: Optional[str] = None,
                 accumulate_device: Optional[Union[str, torch.device]] = None, return_probabilities: bool = False
                 ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """The label map of one image on its own grid (see the module docstring).

    Args:
        model: The net (``(N, C, *patch) -> (N, K, *patch)`` logits, or a deep-supervision list).
        image: ``(C, *spatial)``, 2-D (natural image) or 3-D, as ``read_image`` returns it.
        geometry: The image's geometry (``read_image``).
        config: The plans configuration the net was trained with (``vssm.seg.plans.configuration``).
        labels: ``dataset.json``'s labels: regions are painted by ``regions_class_order``, and the net's output
            channels are checked against them. None: argmax.
        mirror, step_size, batch_size, amp, accumulate_device: As ``predict_logits``.
        return_probabilities: Also return the probabilities ``(K, *spatial)`` (see ``revert_probabilities``).

    Returns:
        The segmentation (uint8 / uint16, ``geometry.shape``), or (segmentation, probabilities).
    """
    natural_2d = image.ndim == 3
    spacing = tuple(float(s) for s in geometry.spacing)
    volume = image[:, None] if natural_2d else image
    if natural_2d:
        spacing = (NATURAL_IMAGE_SPACING,) + spacing
    data, properties = preprocess_image(volume, spacing, config)
    logits = predict_logits(model, data, config, mirror, step_size, batch_size, amp, accumulate_device)
    logits = logits.cpu().numpy()
    regions = labels is not None and labels.has_regions
    if labels is not None and logits.shape[0] != labels.num_segmentation_heads:
        heads = "regions" if regions else "labels incl. background"
        raise PredictionError(f"the net predicts {logits.shape[0]} channel(s); dataset.json's labels need "
                              f"{labels.num_segmentation_heads} ({heads})")
    order = labels.regions_class_order if regions else None
    backward = list(config.transpose_backward)
    segmentation = revert_preprocessing(logits, properties, order).transpose(backward)
    probabilities = None
    if return_probabilities:
        probabilities = revert_probabilities(logits, properties, regions).transpose([0] + [a + 1 for a in backward])
    if natural_2d:
        segmentation = segmentation[0]
        probabilities = None if probabilities is None else probabilities[:, 0]
    if tuple(segmentation.shape) != tuple(geometry.shape):  # a failed round trip is a bug, never written silently
        raise RuntimeError(f"reverted segmentation {segmentation.shape} differs from the input's {geometry.shape}")
    segmentation = np.ascontiguousarray(segmentation)
    if return_probabilities:
        return segmentation, np.ascontiguousarray(probabilities)
    return segmentation


# a folder -----------------------------------------------------------------------------------------------------------


def _dataset_json(dataset_json: Union[PathLike, Mapping, DatasetJson]) -> DatasetJson:
    if isinstance(dataset_json, DatasetJson):
        return dataset_json
    if isinstance(dataset_json, Mapping):
        return parse_dataset_json(dict(dataset_json))
    return read_dataset_json(dataset_json)


def list_input_cases(input_folder: PathLike, meta: DatasetJson) -> dict:
    """The cases of a folder of raw-format images, ``{case_id: [channel files]}``, every naming problem reported at
    once.

    Raises:
        MissingFileError: no such folder. EmptyDatasetError: no image in it.
        DatasetValidationError: files not named ``{CASE}_{XXXX}{file_ending}``, or cases lacking channel files.
    """
    folder = Path(input_folder)
    if not folder.is_dir():
        raise MissingFileError("input folder not found", folder)
    problems: list = []
    cases = list_image_folder(folder, meta.file_ending, meta.num_channels, problems)
    if problems:
        raise DatasetValidationError(folder, problems)
    if not cases:
        raise EmptyDatasetError(f"no image named {{CASE}}_0000{meta.file_ending} in the input folder", folder)
    return {case_id: [f for f in case.images if f is not None] for case_id, case in cases.items()}


def _write_json(data, path: Path) -> None:
    text = json.dumps(to_jsonable(data), indent=2)
    write_atomic(str(path), lambda file: file.write(text), mode="w")


def predict_folder(model: nn.Module, input_folder: PathLike, output_folder: PathLike,
                   plans: Union[PathLike, Mapping], configuration: Union[str, SegConfiguration],
                   dataset_json: Union[PathLike, Mapping, DatasetJson], mirror: Union[bool, Sequence[int]] = True,
                   step_size: float = 0.5, device: Optional[Union[str, torch.device]] = None,
                   save_probabilities: bool = False, overwrite: bool = False, batch_size: int = 1,
                   amp: Optional[str] = None, cases: Optional[Sequence[str]] = None, progress: bool = True
                   ) -> List[Path]:
    """Predicts every case of ``input_folder`` and writes ``{CASE}{file_ending}`` (and ``{CASE}.npz``) into
    ``output_folder``.

    Args:
        model: The trained net (moved to ``device`` if given).
        input_folder: Raw-format images ``{CASE}_{XXXX}{file_ending}`` (an ``imagesTs``-like folder).
        output_folder: Created if missing.
        plans, configuration: The plans (file, folder or dict) and the configuration name the net was trained with
            (or its ``SegConfiguration``).
        dataset_json: The training dataset's ``dataset.json`` (file, folder or dict): channels, labels, file ending.
        mirror, step_size, batch_size, amp: As ``predict_logits``.
        save_probabilities: Also write ``{CASE}.npz`` with ``probabilities``.
        overwrite: Predict cases whose output exists too.
        cases: Only these case ids.

    Returns:
        The segmentation files written now (skipped ones not included).

    Raises:
        DatasetValidationError, EmptyDatasetError, MissingFileError: badly named or missing inputs (before any
            prediction).
        CorruptImageError: an unreadable image (named). MissingChannelError: a case whose channels do not match
            ``dataset.json``.
    """
    meta = _dataset_json(dataset_json)
    plans = load_plans(plans)
    config = configuration if isinstance(configuration, SegConfiguration) else \
        read_configuration(plans, configuration)
    found = list_input_cases(input_folder, meta)
    if cases is not None:
        unknown = sorted(set(cases) - set(found))
        if unknown:
            raise MissingFileError(f"case(s) {unknown} have no image in the input folder", input_folder)
        found = {c: found[c] for c in cases}
    if device is not None:
        model = model.to(device)
    output_folder = Path(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    _write_json(meta.raw, output_folder / "dataset.json")
    used = copy.deepcopy(dict(plans))
    if config.name in used["configurations"]:  # a patch size set apart from the plan (the net's training patch)
        used["configurations"][config.name]["patch_size"] = list(config.patch_size)
    _write_json(used, output_folder / "plans.json")
    written = []
    todo = {}
    for case_id, files in found.items():
        outputs = [output_folder / f"{case_id}{meta.file_ending}"]
        if save_probabilities:
            outputs.append(output_folder / f"{case_id}.npz")
        if overwrite or not all(p.is_file() for p in outputs):
            todo[case_id] = files
    LOGGER.info("predict %d case(s) of %s (%d already done) with configuration %s into %s", len(todo),
                input_folder, len(found) - len(todo), config.name, output_folder)
    for case_id, files in tqdm(todo.items(), desc="predict", unit="case", disable=not progress):
        start = time.perf_counter()
        image, geometry = read_image(files)
        if image.shape[0] != meta.num_channels:
            raise MissingChannelError(f"case {case_id!r}: {image.shape[0]} channel(s) read from "
                                      f"{[f.name for f in files]}, dataset.json declares {meta.num_channels} "
                                      f"({meta.channel_names})", files[0])
        try:
            result = predict_case(model, image, geometry, config, meta.labels, mirror, step_size, batch_size, amp,
                                  return_probabilities=save_probabilities)
        except PredictionError as error:
            raise PredictionError(f"{files[0]}: {error}") from None
        segmentation = result[0] if save_probabilities else result
        if save_probabilities:
            path = output_folder / f"{case_id}.npz"
            write_atomic(str(path), lambda file: np.savez_compressed(file, probabilities=result[1]))
        path = output_folder / f"{case_id}{meta.file_ending}"
        write_segmentation(segmentation, path, geometry)  # last: its presence marks the case done
        written.append(path)
        LOGGER.info("predicted %s %s in %.1f s -> %s", case_id, tuple(geometry.shape), time.perf_counter() - start,
                    path)
    return written


# evaluation ---------------------------------------------------------------------------------------------------------


def find_dataset_json(reference_folder: PathLike, prediction_folder: PathLike) -> Path:
    """The ``dataset.json`` of an evaluation: the prediction folder's (``predict_folder`` writes one), else the raw
    dataset's beside the reference folder (``labelsTr/..``), else the reference folder's own."""
    candidates = [Path(prediction_folder) / "dataset.json", Path(reference_folder).parent / "dataset.json",
                  Path(reference_folder) / "dataset.json"]
    for path in candidates:
        if path.is_file():
            return path
    raise DatasetJsonError(f"no dataset.json found (looked for {', '.join(str(p) for p in candidates)}); pass it "
                           f"explicitly (the labels and file ending come from it)")


def evaluate_predictions(reference_folder: PathLike, prediction_folder: PathLike,
                         dataset_json: Optional[Union[PathLike, Mapping, DatasetJson]] = None,
                         nsd_tolerance: Optional[float] = 2.0, output_file: Optional[PathLike] = None,
                         strict: bool = True) -> dict:
    """Dice and NSD per class and case of the predictions ``{CASE}{file_ending}`` against the reference labels,
    written as nnU-Net's ``summary.json`` (default: ``prediction_folder/summary.json``) and returned.

    Args:
        dataset_json: Classes (labels, or regions), ignore label and file ending; None: ``find_dataset_json``.
        nsd_tolerance: Normalised-surface-Dice tolerance in mm (the reference files' spacing); None: Dice only.
        strict: Every reference file must have a prediction.

    Raises:
        MissingFileError: a folder is missing. FileNotFoundError: predictions missing (strict) or without reference.
    """
    for folder in (reference_folder, prediction_folder):
        if not Path(folder).is_dir():
            raise MissingFileError("folder not found", folder)
    meta = _dataset_json(dataset_json if dataset_json is not None else
                         find_dataset_json(reference_folder, prediction_folder))
    return evaluate_folder(reference_folder, prediction_folder, meta.labels.evaluation_classes, meta.file_ending,
                           output_file, meta.labels.ignore_label, nsd_tolerance, strict)
