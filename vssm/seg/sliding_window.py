"""Sliding-window inference with nnU-Net v2's rules, for any predictor ``f(patches) -> logits`` in 2-D and 3-D.

nnU-Net's rules (``inference/sliding_window_prediction.py`` and ``predict_from_raw_data.py``), re-written here:

* An image smaller than the patch along an axis is padded with zeros up to the patch (the padding split evenly, the odd
  voxel after) and the prediction cropped back.
* Steps per axis: ``n = ceil((size - patch) / (patch * step_size)) + 1``, positions ``round(i * (size - patch) / (n -
  1))`` for i < n (numpy's round, half to even), the first at 0 and the last at ``size - patch``; one step at 0 when
  the patch fits once.
* Importance map: a delta at ``patch // 2`` blurred by ``scipy.ndimage.gaussian_filter`` with sigma ``patch / 8``
  (constant zero border), scaled to a maximum of ``value_scaling_factor`` (10), cast to ``dtype`` (float16 as in
  nnU-Net), its zeros replaced by its smallest non-zero value.
* Each window's logits are multiplied by the map and added up, the maps too; the sum is divided by the summed maps.
* Test-time mirroring: the mean of the prediction and of the un-flipped predictions of every non-empty combination of
  the chosen spatial axes.

NOTE: nnU-Net accumulates in float16 on the GPU; the accumulators here are float32 by default (``accumulate_dtype``).
MONAI's ``sliding_window_inference`` places windows and weights differently (interval ``int(roi * (1 - overlap))``,
weights clamped at 1e-3); ``sliding_window_inference`` below takes MONAI's argument names but runs nnU-Net's rules.
"""
import itertools
from functools import lru_cache
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

Predictor = Callable[[torch.Tensor], torch.Tensor]


def compute_steps(image_size: Sequence[int], patch_size: Sequence[int], step_size: float = 0.5) -> List[List[int]]:
    """Window start positions per axis, nnU-Net's ``compute_steps_for_sliding_window``.

    Example: image 110, patch 64, step 0.5 -> 3 steps at [0, 23, 46].
    """
    if len(image_size) != len(patch_size):
        raise ValueError(f"image size {tuple(image_size)} and patch size {tuple(patch_size)} differ in dimensions")
    if any(i < p for i, p in zip(image_size, patch_size)):
        raise ValueError(f"image size {tuple(image_size)} must be at least the patch size {tuple(patch_size)} "
                         f"(pad first: pad_to_patch)")
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    steps = []
    for size, patch in zip(image_size, patch_size):
        num = int(np.ceil((size - patch) / (patch * step_size))) + 1
        actual = (size - patch) / (num - 1) if num > 1 else 0.0
        steps.append([int(np.round(actual * i)) for i in range(num)])
    return steps


@lru_cache(maxsize=4)
def _gaussian_numpy(patch_size: Tuple[int, ...], sigma_scale: float, value_scaling_factor: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    delta = np.zeros(patch_size)
    delta[tuple(p // 2 for p in patch_size)] = 1
    gaussian = gaussian_filter(delta, [p * sigma_scale for p in patch_size], 0, mode="constant", cval=0)
    return gaussian / (gaussian.max() / value_scaling_factor)


def compute_gaussian(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8, value_scaling_factor: float = 10,
                     dtype: torch.dtype = torch.float16, device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """nnU-Net's Gaussian importance map of shape ``patch_size`` (see the module docstring)."""
    gaussian = torch.tensor(_gaussian_numpy(tuple(int(p) for p in patch_size), float(sigma_scale),
                                            float(value_scaling_factor)), dtype=dtype, device=device)  # a copy
    zero = gaussian == 0
    if zero.any():
        gaussian[zero] = gaussian[~zero].min()
    return gaussian


def pad_to_patch(image: torch.Tensor, patch_size: Sequence[int], value: float = 0.0
                 ) -> Tuple[torch.Tensor, Tuple[slice, ...]]:
    """Pads the last ``len(patch_size)`` axes of ``image`` up to ``patch_size`` where smaller (evenly, the odd voxel
    after; acvl_utils' ``pad_nd_image``), and returns the slices of the original region in the padded tensor."""
    spatial = image.shape[-len(patch_size):]
    lead = image.ndim - len(patch_size)
    pads, region = [], [slice(None)] * lead
    for size, patch in zip(spatial, patch_size):
        extra = max(int(patch) - int(size), 0)
        before = extra // 2
        pads.append((before, extra - before))
        region.append(slice(before, before + int(size)))
    if any(a or b for a, b in pads):
        flat = [v for a, b in reversed(pads) for v in (a, b)]  # F.pad wants the last axis first
        image = torch.nn.functional.pad(image, flat, mode="constant", value=value)
    return image, tuple(region)


def mirror_combinations(axes: Sequence[int]) -> List[Tuple[int, ...]]:
    """Every non-empty combination of the mirror axes, smallest first (nnU-Net's order)."""
    return [c for k in range(1, len(axes) + 1) for c in itertools.combinations(axes, k)]


def _full_resolution(prediction) -> torch.Tensor:
    """The logits of a predictor; from a deep-supervision list (highest resolution first), the first."""
    return prediction[0] if isinstance(prediction, (list, tuple)) else prediction


def predict_with_mirroring(predictor: Predictor, patches: torch.Tensor, mirror_axes: Optional[Sequence[int]] = None
                           ) -> torch.Tensor:
    """``predictor(patches)`` averaged with the un-flipped predictions of every combination of flipped spatial axes
    (``mirror_axes`` count spatial axes from 0: 0, 1, 2 for (D, H, W)). A predictor returning a deep-supervision
    list contributes its first (full-resolution) output."""
    prediction = _full_resolution(predictor(patches))
    if not mirror_axes:
        return prediction
    spatial = patches.ndim - 2
    if max(mirror_axes) >= spatial or min(mirror_axes) < 0:
        raise ValueError(f"mirror_axes {tuple(mirror_axes)} out of range for {spatial} spatial axes")
    combos = mirror_combinations([a + 2 for a in mirror_axes])
    prediction = prediction.clone()
    for dims in combos:
        prediction += torch.flip(_full_resolution(predictor(torch.flip(patches, dims))), dims)
    return prediction / (len(combos) + 1)


def window_slices(image_size: Sequence[int], patch_size: Sequence[int], step_size: float = 0.5
                  ) -> List[Tuple[slice, ...]]:
    """The spatial slices of every window, in nnU-Net's order (last axis fastest). With one more image axis than
    patch axes (a 2-D patch on a 3-D volume), windows run over every slice of the first axis."""
    if len(image_size) == len(patch_size) + 1:
        steps = compute_steps(image_size[1:], patch_size, step_size)
        return [(slice(d, d + 1),) + tuple(slice(s, s + p) for s, p in zip(starts, patch_size))
                for d in range(image_size[0]) for starts in itertools.product(*steps)]
    steps = compute_steps(image_size, patch_size, step_size)
    return [tuple(slice(s, s + p) for s, p in zip(starts, patch_size)) for starts in itertools.product(*steps)]


@torch.no_grad()
def sliding_window_predict(
        image: Union[torch.Tensor, np.ndarray],
        predictor: Predictor,
        patch_size: Sequence[int],
        step_size: float = 0.5,
        use_gaussian: bool = True,
        mirror_axes: Optional[Sequence[int]] = None,
        batch_size: int = 1,
        slices: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        predict_device: Optional[Union[str, torch.device]] = None,
        accumulate_dtype: torch.dtype = torch.float32,
        gaussian_dtype: torch.dtype = torch.float16,
        sigma_scale: float = 1.0 / 8,
        value_scaling_factor: float = 10,
) -> torch.Tensor:
    """Logits of a whole image from a patch predictor, by nnU-Net's sliding window.

    Args:
        image: ``(C, *spatial)`` with ``len(patch_size)`` spatial axes (one image, not a batch: see
            ``sliding_window_inference`` for ``(B, C, *spatial)``), or one more spatial axis with ``slices=True``.
        predictor: ``(N, C, *patch_size) -> (N, K, *patch_size)`` logits (a network in eval mode, or any callable).
        patch_size: The window.
        step_size: Window step as a fraction of the patch (nnU-Net: 0.5).
        use_gaussian: Weight windows with the Gaussian importance map; else uniformly.
        mirror_axes: Spatial axes of the patch (0-based) for mirror test-time augmentation; None or () for none.
        batch_size: Windows per predictor call.
        slices: Run a 2-D patch predictor over every slice of the first spatial axis of a ``(C, D, H, W)`` volume
            (nnU-Net's ``2d`` configuration on 3-D data).
        device: Where the logits accumulate and are returned (default: the image's device).
        predict_device: Where windows are predicted (default: ``device``), e.g. the GPU while results stay on the
            CPU for a large volume.
        accumulate_dtype: dtype of the accumulators and of the result.
        gaussian_dtype: dtype the importance map is computed in before use (nnU-Net: float16).

    Returns:
        ``(K, *spatial)`` logits in ``accumulate_dtype`` on ``device``.
    """
    image = torch.as_tensor(image)
    patch_size = tuple(int(p) for p in patch_size)
    n = len(patch_size)
    if image.ndim != n + 1 + int(slices):
        raise ValueError(f"image of shape {tuple(image.shape)} does not fit a {n}-D patch {patch_size}: expected "
                         f"(C, *spatial) with {n + int(slices)} spatial axes{' (slices=True)' if slices else ''}; "
                         f"a batch goes through sliding_window_inference, a 2-D predictor over the slices of a "
                         f"(C, D, H, W) volume needs slices=True")
    device = torch.device(device) if device is not None else image.device
    predict_device = torch.device(predict_device) if predict_device is not None else device
    padded, region = pad_to_patch(image, patch_size)  # every patch axis now >= the patch
    spatial = tuple(padded.shape[1:])
    windows = window_slices(spatial, patch_size, step_size)
    if use_gaussian:
        weight = compute_gaussian(patch_size, sigma_scale, value_scaling_factor, gaussian_dtype, device)
        weight = weight.to(accumulate_dtype)
    else:
        weight = torch.ones(patch_size, dtype=accumulate_dtype, device=device)
    logits = counts = None
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        # over slices a window is (slice(d, d + 1), *plane slices): index the slice away with an int
        keys = [(w[0].start,) + w[1:] if slices else w for w in chunk]
        patches = torch.stack([padded[(slice(None),) + k] for k in keys]).to(predict_device)  # (N, C, *patch)
        prediction = predict_with_mirroring(predictor, patches, mirror_axes)  # (N, K, *patch)
        if prediction.ndim != n + 2 or tuple(prediction.shape[2:]) != patch_size or prediction.shape[0] != len(chunk):
            raise ValueError(f"the predictor returned {tuple(prediction.shape)} for patches {tuple(patches.shape)}; "
                             f"expected (N, K, *{patch_size})")
        if logits is None:
            logits = torch.zeros((prediction.shape[1], *spatial), dtype=accumulate_dtype, device=device)
            counts = torch.zeros(spatial, dtype=accumulate_dtype, device=device)
        prediction = prediction.to(device=device, dtype=accumulate_dtype) * weight
        for key, p in zip(keys, prediction):
            logits[(slice(None),) + key] += p
            counts[key] += weight
    logits /= counts
    if not torch.isfinite(logits).all():
        raise RuntimeError("non-finite values in the predicted logits (the predictor returned inf / NaN, or the "
                           "accumulator dtype overflowed)")
    return logits[(slice(None),) + region[1:]]


def sliding_window_inference(
        inputs: Union[torch.Tensor, np.ndarray],
        roi_size: Union[int, Sequence[int]],
        sw_batch_size: int,
        predictor: Predictor,
        overlap: float = 0.5,
        mode: str = "gaussian",
        sigma_scale: float = 0.125,
        padding_mode: str = "constant",
        cval: float = 0.0,
        sw_device: Optional[Union[str, torch.device]] = None,
        device: Optional[Union[str, torch.device]] = None,
        mirror_axes: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """MONAI-style call (``roi_size``, ``sw_batch_size``, ``predictor``, ``overlap``, ``mode``) on nnU-Net's rules:
    ``step_size = 1 - overlap``; ``mode`` 'gaussian' (nnU-Net's importance map) or 'constant' (uniform weights).
    NOTE: the defaults are nnU-Net's (overlap 0.5, Gaussian), not MONAI's (0.25, constant).

    Args:
        inputs: ``(B, C, *spatial)``.
        roi_size: The window; an int is used for every spatial axis (MONAI's -1 / non-positive entries mean the
            whole image extent along that axis).
        padding_mode: Only 'constant' (with ``cval`` 0) as nnU-Net pads.
        sw_device: Where windows are predicted (default: ``device``).
        device: Where the output is stitched (default: the input's device).
        mirror_axes: Spatial axes for mirror test-time augmentation (not in MONAI).
    """
    inputs = torch.as_tensor(inputs)
    spatial = inputs.shape[2:]
    if isinstance(roi_size, int):
        roi_size = [roi_size] * len(spatial)
    if inputs.ndim != len(roi_size) + 2:
        raise ValueError(f"inputs must be (B, C, *spatial) with {len(roi_size)} spatial axes, got "
                         f"{tuple(inputs.shape)}")
    roi_size = [int(s) if r is None or int(r) <= 0 else int(r) for r, s in zip(roi_size, spatial)]
    if mode not in ("gaussian", "constant"):
        raise ValueError(f"mode must be 'gaussian' or 'constant', got {mode!r}")
    if padding_mode != "constant" or cval != 0:
        raise ValueError("only zero constant padding is supported (nnU-Net's rule)")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return torch.stack([sliding_window_predict(item, predictor, roi_size, 1.0 - overlap, mode == "gaussian",
                                               mirror_axes, sw_batch_size, device=device, predict_device=sw_device,
                                               sigma_scale=sigma_scale)
                        for item in inputs])
