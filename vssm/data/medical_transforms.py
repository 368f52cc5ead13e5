"""nnU-Net's preprocessing pieces as plain functions on numpy arrays: normalisation by channel name, cropping to the
non-zero region, resampling of images and label maps to a target spacing, and the dataset fingerprint.

Arrays are ``(C, *spatial)`` (images) and ``(*spatial)`` (label maps), spacings in the same axis order (see
``vssm.data.nnunet_raw``). Each function follows nnU-Net v2 (``preprocessing/normalization``,
``preprocessing/cropping``, ``preprocessing/resampling/default_resampling.py``,
``experiment_planning/dataset_fingerprint``), re-written here on scipy:

* channel name -> scheme, case-insensitive: ``CT`` -> clip to the dataset's foreground 0.5 / 99.5 percentiles, then
  subtract the foreground mean and divide by the foreground std (from the fingerprint); ``noNorm`` -> unchanged;
  ``zscore`` and any other name (MR, T2, R, G, B, ...) -> z-score per image; ``rescale_to_0_1``; ``rgb_to_0_1``.
  The z-score runs inside the non-zero mask only when the planner's rule says so: cropping to the non-zero region
  shrank the median case below 3/4 of its size (``use_mask_for_norm``).
* resampling: images with 3rd-order splines, label maps one-hot with linear interpolation (each label's mask resized
  and thresholded at 0.5); when the spacing is anisotropic (max / min > 3) the in-plane axes are resampled per slice
  and the low-resolution axis with nearest neighbour (order 0), as nnU-Net does. skimage's ``resize`` (which nnU-Net
  calls) is ``scipy.ndimage.zoom(grid_mode=True, mode='nearest')`` plus clipping to the input range; that is what runs.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

ANISO_THRESHOLD = 3.0  # nnU-Net's configuration.ANISO_THRESHOLD
NORMALIZATION_SCHEMES = {  # channel name (case-folded) -> nnU-Net scheme; anything else: ZScoreNormalization
    "ct": "CTNormalization",
    "nonorm": "NoNormalization",
    "zscore": "ZScoreNormalization",
    "rescale_to_0_1": "RescaleTo01Normalization",
    "rgb_to_0_1": "RGBTo01Normalization",
}
# the schemes whose masked variant keeps the outside at zero: only these use the non-zero mask (nnU-Net's
# ``leaves_pixels_outside_mask_at_zero_if_use_mask_for_norm_is_true``)
MASKABLE_SCHEMES = ("ZScoreNormalization",)


# normalisation ------------------------------------------------------------------------------------------------------


def normalization_scheme(channel_name: str) -> str:
    """nnU-Net's scheme for a channel name (``CTNormalization``, ``ZScoreNormalization``, ...)."""
    return NORMALIZATION_SCHEMES.get(str(channel_name).casefold(), "ZScoreNormalization")


def use_mask_for_norm(channel_names: Sequence[str], median_relative_size_after_cropping: float) -> List[bool]:
    """Per channel: normalise inside the non-zero mask only? True for z-score channels when cropping to the non-zero
    region reduced the median case below 3/4 of its size (brain-extracted MR and the like), as nnU-Net's planner
    decides."""
    shrunk = median_relative_size_after_cropping < 3 / 4
    return [shrunk and normalization_scheme(name) in MASKABLE_SCHEMES for name in channel_names]


def normalize_channel(image: np.ndarray, scheme: str, intensity_properties: Optional[dict] = None,
                      mask: Optional[np.ndarray] = None, dtype=np.float32) -> np.ndarray:
    """Normalises one channel ``(*spatial)`` with a scheme name (or a channel name, mapped by
    ``normalization_scheme``).

    Args:
        image: One channel.
        scheme: ``CTNormalization``, ``NoNormalization``, ``ZScoreNormalization``, ``RescaleTo01Normalization``,
            ``RGBTo01Normalization``, or a channel name.
        intensity_properties: CT only: the fingerprint's ``mean``, ``std``, ``percentile_00_5``, ``percentile_99_5``
            of this channel's foreground.
        mask: Z-score only: normalise inside this boolean mask (the non-zero region), leave the outside as it is
            (zero). None: the whole image.
    """
    if not scheme.endswith("Normalization"):
        scheme = normalization_scheme(scheme)
    eps = 1e-4 if np.dtype(dtype) == np.float16 else 1e-8
    image = np.array(image, dtype=dtype, copy=True)
    if scheme == "CTNormalization":
        if intensity_properties is None:
            raise ValueError("CT normalisation needs the dataset fingerprint's foreground intensity properties "
                             "(mean, std, percentile_00_5, percentile_99_5); see compute_fingerprint")
        p = intensity_properties
        np.clip(image, p["percentile_00_5"], p["percentile_99_5"], out=image)
        image -= p["mean"]
        image /= max(p["std"], eps)
    elif scheme == "ZScoreNormalization":
        if mask is not None:
            values = image[mask]
            image[mask] = (values - values.mean()) / max(values.std(), eps)
        else:
            mean, std = image.mean(), image.std()
            image -= mean
            image /= max(std, eps)
    elif scheme == "RescaleTo01Normalization":
        image -= image.min()
        image /= np.clip(image.max(), a_min=eps, a_max=None)
    elif scheme == "RGBTo01Normalization":
        if image.min() < 0 or image.max() > 255:
            raise ValueError(f"rgb_to_0_1 expects 8-bit values in [0, 255], got [{image.min()}, {image.max()}]; "
                             f"name the channel differently (e.g. 'R') for a z-score")
        image /= 255.0
    elif scheme != "NoNormalization":
        raise ValueError(f"unknown normalisation scheme {scheme!r}")
    return image


def normalize(image: np.ndarray, channel_names: Union[Sequence[str], Dict[str, str]],
              fingerprint: Optional[dict] = None, use_mask: Optional[Sequence[bool]] = None,
              nonzero_mask: Optional[np.ndarray] = None, dtype=np.float32) -> np.ndarray:
    """Normalises a ``(C, *spatial)`` image channel by channel as nnU-Net does for these channel names.

    Args:
        image: The image (after cropping to the non-zero region, as nnU-Net normalises).
        channel_names: ``dataset.json``'s ``channel_names`` (dict index -> name) or a list in channel order.
        fingerprint: ``compute_fingerprint``'s result; needed for CT channels, and (with ``use_mask`` None) to apply
            the use-mask-for-norm rule.
        use_mask: Per channel, normalise inside ``nonzero_mask`` only; None: nnU-Net's rule from the fingerprint's
            ``median_relative_size_after_cropping`` (no mask without a fingerprint).
        nonzero_mask: The region a masked z-score uses; nnU-Net's is ``label >= 0`` of ``crop_to_nonzero`` (the
            non-zero mask plus any labelled voxel); computed with ``create_nonzero_mask`` when needed and None.
    """
    if isinstance(channel_names, dict):
        channel_names = [channel_names[k] for k in sorted(channel_names, key=int)]
    if len(channel_names) != image.shape[0]:
        raise ValueError(f"{image.shape[0]} channels but {len(channel_names)} channel names")
    if use_mask is None:
        use_mask = [False] * len(channel_names) if fingerprint is None else \
            use_mask_for_norm(channel_names, fingerprint["median_relative_size_after_cropping"])
    if any(use_mask) and nonzero_mask is None:
        nonzero_mask = create_nonzero_mask(image)
    out = np.empty(image.shape, dtype=dtype)
    for c, name in enumerate(channel_names):
        props = None
        if fingerprint is not None:
            per_channel = fingerprint["foreground_intensity_properties_per_channel"]
            props = per_channel.get(str(c), per_channel.get(c))
        out[c] = normalize_channel(image[c], name, props, nonzero_mask if use_mask[c] else None, dtype)
    return out


# cropping -----------------------------------------------------------------------------------------------------------


def create_nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Voxels where any channel of a ``(C, *spatial)`` image is non-zero, holes filled."""
    return ndimage.binary_fill_holes(np.any(image != 0, axis=0))


def crop_to_nonzero(image: np.ndarray, label: Optional[np.ndarray] = None, nonzero_label: int = -1
                    ) -> Tuple[np.ndarray, np.ndarray, List[Tuple[int, int]]]:
    """Crops a ``(C, *spatial)`` image (and its ``(*spatial)`` label map) to the bounding box of the non-zero mask.

    Returns:
        (image, label, bbox): inside the box, background voxels of the label outside the non-zero mask are set to
        ``nonzero_label``; without a label, the returned map is 0 inside the mask and ``nonzero_label`` outside (int8).
        ``bbox`` is [start, stop) per axis.
    """
    mask = create_nonzero_mask(image)
    if mask.any():
        where = np.nonzero(mask)
        bbox = [(int(w.min()), int(w.max()) + 1) for w in where]
    else:
        bbox = [(0, n) for n in mask.shape]
    box = tuple(slice(a, b) for a, b in bbox)
    mask = mask[box]
    image = image[(slice(None),) + box]
    if label is not None:
        label = label[box].astype(np.result_type(label.dtype, np.int8))  # signed, to hold nonzero_label
        label[(label == 0) & ~mask] = nonzero_label
    else:
        label = np.where(mask, np.int8(0), np.int8(nonzero_label))
    return image, label, bbox


# resampling ---------------------------------------------------------------------------------------------------------


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> Tuple[int, ...]:
    """``round(shape * spacing / new_spacing)`` per axis."""
    return tuple(int(round(s / n * k)) for s, n, k in zip(spacing, new_spacing, shape))


def _lowres_axes(spacing: Sequence[float]) -> np.ndarray:
    return np.where(max(spacing) / np.asarray(spacing, dtype=float) == 1)[0]


def separate_z_axis(spacing: Sequence[float], new_spacing: Sequence[float], force_separate_z: Optional[bool] = None,
                    threshold: float = ANISO_THRESHOLD) -> Optional[int]:
    """The low-resolution axis to resample separately (order ``order_z``), or None: nnU-Net's rule. The current
    spacing decides first, then the target; an anisotropy of two or three equally coarse axes means none."""
    if force_separate_z is not None:
        axes = _lowres_axes(spacing) if force_separate_z else None
    elif max(spacing) / min(spacing) > threshold:
        axes = _lowres_axes(spacing)
    elif max(new_spacing) / min(new_spacing) > threshold:
        axes = _lowres_axes(new_spacing)
    else:
        axes = None
    if axes is None or len(axes) != 1:
        return None
    return int(axes[0])


def resize(array: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    """skimage's ``resize(array, new_shape, order, mode='edge', anti_aliasing=False)`` (float64, clipped to the input
    range), through ``scipy.ndimage.zoom`` with the pixel-area grid it uses."""
    array = np.asarray(array, dtype=np.float64)
    if tuple(array.shape) == tuple(new_shape):
        return array.copy()
    zoom = [n / s for n, s in zip(new_shape, array.shape)]
    out = ndimage.zoom(array, zoom, order=order, mode="nearest", grid_mode=True)
    if order > 1:
        np.clip(out, array.min(), array.max(), out=out)
    return out


def resize_label(label: np.ndarray, new_shape: Sequence[int], order: int = 1) -> np.ndarray:
    """A label map resized one-hot: each label's mask interpolated with ``order`` and kept where >= 0.5 (later labels
    win), or nearest neighbour for order 0 (batchgenerators' ``resize_segmentation``)."""
    if order == 0:
        return resize(label.astype(float), new_shape, 0).astype(label.dtype)
    out = np.zeros(new_shape, dtype=label.dtype)
    for value in np.unique(label):
        out[resize((label == value).astype(float), new_shape, order) >= 0.5] = value
    return out


def _nearest_along(array: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    """Resamples ``array`` to ``new_shape`` with map_coordinates on the pixel-centre grid (nnU-Net's z step)."""
    scales = [s / n for s, n in zip(array.shape, new_shape)]
    grid = np.mgrid[tuple(slice(0, n) for n in new_shape)].astype(float)
    coords = np.stack([scale * (g + 0.5) - 0.5 for scale, g in zip(scales, grid)])
    return ndimage.map_coordinates(array, coords, order=order, mode="nearest")


def _resample(data: np.ndarray, new_shape: Sequence[int], is_label: bool, axis: Optional[int], order: int,
              order_z: int) -> np.ndarray:
    """nnU-Net's ``resample_data_or_seg`` for ``(C, *spatial)`` data."""
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(data.shape[1:]) == new_shape:
        return data
    fn = resize_label if is_label else resize
    out = np.zeros((data.shape[0], *new_shape), dtype=data.dtype)
    for c in range(data.shape[0]):
        if axis is None:
            out[c] = fn(data[c], new_shape, order)
            continue
        inplane = [n for i, n in enumerate(new_shape) if i != axis]
        tmp_shape = list(new_shape)
        tmp_shape[axis] = data.shape[1 + axis]
        tmp = np.zeros(tmp_shape)
        for s in range(data.shape[1 + axis]):
            index = [slice(None)] * len(new_shape)
            index[axis] = s
            tmp[tuple(index)] = fn(data[c][tuple(index)], inplane, order)
        if tmp.shape[axis] == new_shape[axis]:
            out[c] = tmp
        elif not is_label or order_z == 0:
            out[c] = _nearest_along(tmp, new_shape, order_z)
        else:
            for value in np.unique(tmp):
                out[c][np.round(_nearest_along((tmp == value).astype(float), new_shape, order_z)) > 0.5] = value
    return out


def resample_image(image: np.ndarray, spacing: Sequence[float], new_spacing: Sequence[float], order: int = 3,
                   order_z: int = 0, force_separate_z: Optional[bool] = None, new_shape: Optional[Sequence[int]] = None
                   ) -> np.ndarray:
    """Resamples a ``(C, *spatial)`` image to ``new_spacing`` (or to ``new_shape``), cubic by default, the
    low-resolution axis of anisotropic data separately with ``order_z``; float32 out for float input."""
    if new_shape is None:
        new_shape = compute_new_shape(image.shape[1:], spacing, new_spacing)
    axis = separate_z_axis(spacing, new_spacing, force_separate_z)
    data = image if np.issubdtype(image.dtype, np.floating) else image.astype(np.float32)
    return _resample(data, new_shape, False, axis, order, order_z)


def resample_label(label: np.ndarray, spacing: Sequence[float], new_spacing: Sequence[float], order: int = 1,
                   order_z: int = 0, force_separate_z: Optional[bool] = None, new_shape: Optional[Sequence[int]] = None
                   ) -> np.ndarray:
    """Resamples a ``(*spatial)`` label map to ``new_spacing`` (or ``new_shape``): one-hot, linear, thresholded at 0.5
    (nnU-Net's segmentation resampling); the low-resolution axis of anisotropic data by nearest neighbour."""
    if new_shape is None:
        new_shape = compute_new_shape(label.shape, spacing, new_spacing)
    axis = separate_z_axis(spacing, new_spacing, force_separate_z)
    return _resample(label[None], new_shape, True, axis, order, order_z)[0]


# fingerprint --------------------------------------------------------------------------------------------------------


def foreground_intensities(image: np.ndarray, label: np.ndarray, num_samples: int = 10000, seed: int = 1234
                           ) -> Tuple[List[np.ndarray], List[dict]]:
    """Per channel: ``num_samples`` foreground (label > 0) intensities drawn with replacement (seeded as nnU-Net, the
    same seed for every case), and the case's own statistics (mean, median, min, max, 0.5 / 99.5 percentiles; NaN
    without foreground)."""
    if np.isnan(image).any() or np.isnan(label).any():
        raise ValueError("NaN in the image or the label map")
    rng = np.random.RandomState(seed)
    foreground = label > 0
    samples, stats = [], []
    for c in range(image.shape[0]):
        values = image[c][foreground]
        samples.append(rng.choice(values, num_samples, replace=True) if values.size else np.zeros(0, image.dtype))
        entry = dict.fromkeys(("mean", "median", "min", "max", "percentile_99_5", "percentile_00_5"), np.nan)
        if values.size:
            p005, median, p995 = np.percentile(values, (0.5, 50.0, 99.5))
            entry.update(mean=float(values.mean()), median=float(median), min=float(values.min()),
                         max=float(values.max()), percentile_99_5=float(p995), percentile_00_5=float(p005))
        stats.append(entry)
    return samples, stats


def fingerprint_case(image: np.ndarray, label: np.ndarray, spacing: Sequence[float], num_samples: int = 10000
                     ) -> dict:
    """One case's share of the fingerprint: cropped to the non-zero region first, as nnU-Net analyses it."""
    cropped, cropped_label, _ = crop_to_nonzero(image, label)
    samples, stats = foreground_intensities(cropped, cropped_label, num_samples)
    return {"shape_after_crop": tuple(int(s) for s in cropped.shape[1:]), "spacing": [float(s) for s in spacing],
            "samples": samples, "stats": stats,
            "relative_size_after_cropping": float(np.prod(cropped.shape[1:]) / np.prod(image.shape[1:]))}


def compute_fingerprint(cases, num_channels: Optional[int] = None, num_foreground_voxels: float = 10e7,
                        num_cases: Optional[int] = None) -> dict:
    """The dataset fingerprint as nnU-Net's ``DatasetFingerprintExtractor`` computes it.

    Args:
        cases: A ``RawDataset`` (its training cases are read), or an iterable of ``(image, label, spacing)``
            (``(C, *spatial)``, ``(*spatial)``, per-axis spacing); a list is needed to know the per-case sample count.
        num_channels: Needed only for an empty iterable.
        num_foreground_voxels: Total foreground intensities sampled, split evenly over the cases (nnU-Net: 1e8).
        num_cases: The number of cases of an iterator, so that it is read one case at a time; None: ``cases`` is
            listed first.

    Returns:
        ``{"spacings", "shapes_after_crop", "foreground_intensity_properties_per_channel": {"0": {mean, median, std,
        min, max, percentile_99_5, percentile_00_5}, ...}, "median_relative_size_after_cropping"}``.
    """
    if hasattr(cases, "training"):  # a RawDataset: read lazily, one case at a time
        from .nnunet_raw import read_image, read_label
        dataset = cases
        num_channels = dataset.dataset_json.num_channels
        items = list(dataset.training.values())
        num_cases = len(items)

        def reader():
            for case in items:
                image, geometry = read_image([f for f in case.images if f is not None])
                label, _ = read_label(case.label)
                yield image, label, geometry.spacing
        iterator = reader()
    else:
        if num_cases is None:
            cases = list(cases)
            num_cases = len(cases)
        iterator = iter(cases)
    if num_cases == 0:
        raise ValueError("a fingerprint needs at least one case")
    per_case = int(num_foreground_voxels // num_cases)
    results = [fingerprint_case(image, label, spacing, per_case) for image, label, spacing in iterator]
    num_channels = len(results[0]["samples"])
    properties = {}
    for c in range(num_channels):
        values = np.concatenate([r["samples"][c] for r in results])
        if values.size == 0:
            properties[str(c)] = dict.fromkeys(("mean", "median", "std", "min", "max", "percentile_99_5",
                                                "percentile_00_5"), float("nan"))
            continue
        p005, median, p995 = np.percentile(values, (0.5, 50.0, 99.5))
        properties[str(c)] = {"mean": float(values.mean()), "median": float(median), "std": float(values.std()),
                              "min": float(values.min()), "max": float(values.max()),
                              "percentile_99_5": float(p995), "percentile_00_5": float(p005)}
    return {
        "spacings": [r["spacing"] for r in results],
        "shapes_after_crop": [list(r["shape_after_crop"]) for r in results],
        "foreground_intensity_properties_per_channel": properties,
        "median_relative_size_after_cropping": float(np.median([r["relative_size_after_cropping"] for r in results])),
    }


# the preprocessing chain and its inverse ----------------------------------------------------------------------------


def preprocess_case(image: np.ndarray, label: Optional[np.ndarray], spacing: Sequence[float],
                    target_spacing: Sequence[float], channel_names: Union[Sequence[str], Dict[str, str]],
                    fingerprint: Optional[dict] = None, use_mask: Optional[Sequence[bool]] = None,
                    force_separate_z: Optional[bool] = None) -> Tuple[np.ndarray, Optional[np.ndarray], dict]:
    """nnU-Net's default preprocessing of one case: crop to the non-zero region, normalise, resample.

    Args:
        image: ``(C, *spatial)``.
        label: ``(*spatial)``, or None at inference.
        spacing: The image's spacing.
        target_spacing: The configuration's spacing; a 2-D configuration's two entries apply to the last two axes of
            a volume (the first axis keeps its spacing).
        channel_names: ``dataset.json``'s channel names.
        fingerprint: ``compute_fingerprint``'s result (CT channels, the use-mask-for-norm rule).
        use_mask: Overrides the use-mask-for-norm rule per channel.

    Returns:
        (image float32, label or None, properties): the label holds -1 for background outside the non-zero mask, as
        nnU-Net's; ``properties`` (spacing, shape_before_cropping, bbox_used_for_cropping,
        shape_after_cropping_and_before_resampling, target_spacing) is what ``revert_preprocessing`` needs.
    """
    spacing = [float(s) for s in spacing]
    target = [float(s) for s in target_spacing]
    if len(target) < len(spacing):
        target = spacing[:len(spacing) - len(target)] + target
    shape_before = tuple(image.shape[1:])
    has_label = label is not None
    image, seg, bbox = crop_to_nonzero(image, label)
    if isinstance(channel_names, dict):
        channel_names = [channel_names[k] for k in sorted(channel_names, key=int)]
    if use_mask is None:
        use_mask = [False] * image.shape[0] if fingerprint is None else \
            use_mask_for_norm(channel_names, fingerprint["median_relative_size_after_cropping"])
    image = normalize(image, channel_names, fingerprint, use_mask, nonzero_mask=seg >= 0)
    shape_after_crop = tuple(image.shape[1:])
    new_shape = compute_new_shape(shape_after_crop, spacing, target)
    image = resample_image(image, spacing, target, force_separate_z=force_separate_z, new_shape=new_shape)
    if has_label:
        seg = resample_label(seg, spacing, target, force_separate_z=force_separate_z, new_shape=new_shape)
    properties = {"spacing": spacing, "target_spacing": target, "shape_before_cropping": shape_before,
                  "bbox_used_for_cropping": bbox, "shape_after_cropping_and_before_resampling": shape_after_crop}
    return image, seg if has_label else None, properties


def logits_to_segmentation(logits: np.ndarray, regions_class_order: Optional[Sequence[int]] = None) -> np.ndarray:
    """``(K, *spatial)`` logits -> label map: argmax over labels, or for region outputs (sigmoid) each region's
    label painted where its probability exceeds 0.5, in ``regions_class_order`` (later entries overwrite)."""
    logits = np.asarray(logits)
    if regions_class_order is None:
        return np.argmax(logits, axis=0).astype(np.uint8 if logits.shape[0] <= 255 else np.uint16)
    if len(regions_class_order) != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} region outputs but {len(regions_class_order)} regions_class_order entries")
    segmentation = np.zeros(logits.shape[1:], dtype=np.uint8 if max(regions_class_order) < 255 else np.uint16)
    for channel, value in enumerate(regions_class_order):
        segmentation[logits[channel] > 0] = value  # sigmoid(x) > 0.5  <=>  x > 0
    return segmentation


def revert_preprocessing(logits: np.ndarray, properties: dict, regions_class_order: Optional[Sequence[int]] = None
                         ) -> np.ndarray:
    """The label map of predicted ``(K, *spatial)`` logits on the input's voxel grid: logits resampled back to the
    original spacing (linear, the low-resolution axis of anisotropic data by nearest), turned into labels, and put
    back into the uncropped volume (background elsewhere), as nnU-Net exports a prediction."""
    logits = np.asarray(logits, dtype=np.float32)
    logits = resample_image(logits, properties["target_spacing"], properties["spacing"], order=1, order_z=0,
                            new_shape=properties["shape_after_cropping_and_before_resampling"])
    cropped = logits_to_segmentation(logits, regions_class_order)
    segmentation = np.zeros(properties["shape_before_cropping"], dtype=cropped.dtype)
    segmentation[tuple(slice(a, b) for a, b in properties["bbox_used_for_cropping"])] = cropped
    return segmentation
