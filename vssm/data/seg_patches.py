"""Training patches from a preprocessed segmentation dataset, as nnU-Net's data loader and augmentation draw them,
and the 5-fold ``splits_final.json``.

A preprocessed folder holds ``<case>.npz`` (``data`` float32 ``(C, *spatial)``, ``seg`` int16 ``(1, *spatial)``, -1
outside the non-zero mask) and ``<case>.json`` (``class_locations``: sampled voxel coordinates per class key) per case
(``vssm.seg.preprocess``). ``SegPatchDataset`` samples one patch per call:

* where: a random position (the patch may reach past the border by the padding the spatial augmentation needs), or,
  for a sample forced to contain foreground (nnU-Net: 33% of the samples), centred on a sampled voxel of a random
  class present in the case. With an ignore label, unforced samples centre on an annotated voxel. A case smaller than
  the patch is padded (image 0, label -1). A 2-D patch size on 3-D data takes an axial slice (the first axis).
* augmentation (MONAI transforms, nnU-Net's defaults): rotation (p 0.2; 3-D +-30 deg per axis, 2-D +-180 deg or +-15
  deg for elongated patches, in-plane +-180 deg for anisotropic 3-D patches, whose first axis is then left alone by
  rotation, scaling and low-resolution simulation) and scaling 0.7-1.4 (p 0.2, one factor for all axes) from a larger
  sampled region, Gaussian noise (p 0.1, sigma up to 0.1), Gaussian blur (p 0.2, sigma 0.5-1 per axis), brightness
  x0.75-1.25 (p 0.15, per channel), contrast x0.75-1.25 around the mean, range kept (p 0.15, per channel), low
  resolution x0.5-1 (p 0.25), gamma 0.7-1.5 on the inverted (p 0.1) and the plain image (p 0.3) with mean and std
  kept, mirroring on every axis (p 0.5 each). Differences from batchgenerators: blur and low-resolution act on all
  channels at once (nnU-Net: each channel with p 0.5), the interpolation is MONAI's (bilinear / trilinear).
* output: ``image`` float32 ``(C, *patch)``, ``label`` int64 ``(1, *patch)`` with -1 turned into background (0), as
  nnU-Net's ``RemoveLabelTansform(-1, 0)``; channels normalised inside the non-zero mask are zero outside it.

Determinism: ``sample(case_index, seed, force_foreground)`` depends on its arguments only (MONAI's random states are
re-seeded from ``seed`` on every call; global random generators are not used). ``dataset[i]`` draws the seed and the
oversampling decision from ``(seed, epoch, i)``; ``dataset[(case_index, seed, force_foreground)]`` calls ``sample``,
so a sampler that yields such tuples decides every draw itself.

NOTE: during the augmentation MONAI's global ``set_track_meta`` switch is off (plain tensors, several times faster)
and restored afterwards; other threads of the same process that run MONAI transforms at that moment see it off too.
"""
import json
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .errors import DataError
from .medical_transforms import ANISO_THRESHOLD

try:
    from monai import transforms as mt
    from monai.data import get_track_meta, set_track_meta
    from monai.utils import convert_to_tensor
except ImportError as _error:  # the 'seg' extra
    raise ImportError("vssm.data.seg_patches needs MONAI: pip install 'vssm[seg]' (or pip install monai)") from _error

PathLike = Union[str, os.PathLike]
OVERSAMPLE_FOREGROUND = 0.33
SPLITS_FILE = "splits_final.json"
SPLITS_SEED = 12345
MAX_SEED = 2 ** 32 - 1


class SegDataError(DataError):
    """A preprocessed case or a splits file that cannot be used; ``path`` is the file at fault."""

    def __init__(self, message: str, path: Optional[PathLike] = None):
        super().__init__(message if path is None else f"{path}: {message}")
        self.path = None if path is None else str(path)


class SplitsFileError(SegDataError):
    """``splits_final.json`` is not valid JSON, not a list of ``{"train": [...], "val": [...]}``, or names cases that
    are not in the dataset."""


# files --------------------------------------------------------------------------------------------------------------


def _write_atomic(path: Path, write, binary: bool) -> None:
    """``write(file)`` into a temporary file beside ``path``, then renamed over it."""
    descriptor, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb" if binary else "w") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_properties(folder: Path, case: str) -> dict:
    path = folder / f"{case}.json"
    if not path.is_file():
        raise SegDataError(f"preprocessed case {case!r} not found; preprocess the dataset for this configuration "
                           f"first (tools/preprocess_seg.py)", path)
    try:
        properties = json.loads(path.read_text())
        ndim = len(properties["shape_before_cropping"])
        properties["class_locations"] = {
            key: np.asarray(value, dtype=np.int64).reshape(-1, ndim)
            for key, value in properties.get("class_locations", {}).items()}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, ValueError, TypeError) as error:
        raise SegDataError(f"unreadable case properties ({type(error).__name__}: {error}); delete the case's "
                           f".json and .npz and preprocess it again", path) from None
    return properties


def unpack_case(folder: PathLike, case: str) -> Tuple[Path, Path]:
    """Writes ``<case>.npy`` and ``<case>_seg.npy`` from ``<case>.npz`` (once; again when the npz is newer), so that
    patches are read from memory-mapped arrays instead of decompressing the whole case per sample (as nnU-Net
    unpacks its npz files)."""
    folder = Path(folder)
    npz, data_path, seg_path = folder / f"{case}.npz", folder / f"{case}.npy", folder / f"{case}_seg.npy"
    if not npz.is_file():
        raise SegDataError(f"preprocessed case {case!r} not found", npz)
    stamp = npz.stat().st_mtime
    if all(p.is_file() and p.stat().st_mtime >= stamp for p in (data_path, seg_path)):
        return data_path, seg_path
    try:
        with np.load(npz) as arrays:
            data, seg = arrays["data"], arrays["seg"]
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise SegDataError(f"cannot be read ({type(error).__name__}: {error}); delete it and its .json and "
                           f"preprocess the case again", npz) from None
    if data.ndim != seg.ndim or data.shape[1:] != seg.shape[1:] or seg.shape[0] != 1:
        raise SegDataError(f"data {data.shape} and seg {seg.shape} do not match ((C, *spatial) and (1, *spatial))",
                           npz)
    _write_atomic(data_path, lambda f: np.save(f, data), binary=True)
    _write_atomic(seg_path, lambda f: np.save(f, seg), binary=True)
    return data_path, seg_path


# patch geometry -----------------------------------------------------------------------------------------------------


def _rotation_matrices(angle: float, dim: int) -> List[np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    if dim == 2:
        return [np.array([[c, -s], [s, c]])]
    return [np.array([[1, 0, 0], [0, c, -s], [0, s, c]]), np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])]


def sampling_patch_size(patch_size: Sequence[int], max_rotation: float, dummy_2d: bool = False) -> Tuple[int, ...]:
    """The region sampled before the spatial augmentation cuts the final patch out of it: nnU-Net's
    ``get_patch_size`` (the patch-size vector rotated by the largest angle, capped at 90 deg, about each axis, the
    largest extent per axis, divided by 0.85); the first axis of a dummy-2-D patch is not enlarged."""
    angle = min(abs(max_rotation), np.pi / 2)
    vector = np.asarray(patch_size, dtype=np.float64)
    extent = vector.copy()
    for rotation in _rotation_matrices(angle, len(vector)):
        extent = np.maximum(extent, np.abs(vector @ rotation))
    size = (extent / 0.85).astype(int)
    if dummy_2d:
        size[0] = patch_size[0]
    return tuple(int(max(s, p)) for s, p in zip(size, patch_size))


def oversample_positions(batch_size: int, fraction: float = OVERSAMPLE_FOREGROUND) -> List[bool]:
    """Which positions of a batch nnU-Net forces to contain foreground: the last ones, all from
    ``round(batch_size * (1 - fraction))`` on."""
    first = round(batch_size * (1 - fraction))
    return [position >= first for position in range(batch_size)]


def crop_and_pad(array: np.ndarray, starts: Sequence[int], size: Sequence[int], pad_value) -> np.ndarray:
    """``array[:, starts:starts + size]`` per spatial axis; parts outside the array are ``pad_value``."""
    out = np.full((array.shape[0], *size), pad_value, dtype=array.dtype)
    src, dst = [slice(None)], [slice(None)]
    for start, length, extent in zip(starts, size, array.shape[1:]):
        lo, hi = max(start, 0), min(start + length, extent)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = array[tuple(src)]
    return out


def choose_patch_start(shape: Sequence[int], size: Sequence[int], need_to_pad: Sequence[int], force_foreground: bool,
                       class_locations: Dict[str, np.ndarray], rng: np.random.Generator) -> List[int]:
    """The first voxel of a patch of ``size`` in an image of ``shape``, as nnU-Net's ``get_bbox``.

    Random starts lie in ``[-pad // 2, shape - size + pad // 2 + pad % 2]`` per axis, where ``pad`` is
    ``need_to_pad`` raised so that the patch fits. A forced sample centres the patch on a sampled voxel of a random
    class present (the all-annotated key of an ignore label only when no class is); with an ignore label (a key holding
    -1), unforced samples centre on an annotated voxel; without any such voxel the start is random.
    """
    dim = len(shape)
    pad = [s - d if n + d < s else n for n, d, s in zip(need_to_pad, shape, size)]
    lower = [-p // 2 for p in pad]
    upper = [d + p // 2 + p % 2 - s for d, p, s in zip(shape, pad, size)]
    annotated = [k for k in class_locations if -1 in [int(v) for v in k.split(",")]]
    if force_foreground:
        eligible = [k for k in class_locations if len(class_locations[k])]
        if len(eligible) > 1:
            eligible = [k for k in eligible if k not in annotated] or eligible
    else:
        eligible = [k for k in annotated if len(class_locations[k])]
    if not eligible:
        return [int(rng.integers(lo, hi + 1)) for lo, hi in zip(lower, upper)]
    locations = class_locations[eligible[int(rng.integers(len(eligible)))]]
    voxel = locations[int(rng.integers(len(locations)))]
    return [max(lower[i], int(voxel[i]) - size[i] // 2) for i in range(dim)]


# augmentation -------------------------------------------------------------------------------------------------------


def _plain(tensor) -> torch.Tensor:
    """A plain tensor without MONAI's metadata (whose affine would fix the number of spatial axes)."""
    return convert_to_tensor(tensor, track_meta=False)


class FoldFirstAxisd(mt.MapTransform):
    """``(C, Z, Y, X)`` -> ``(C * Z, Y, X)``: a 3-D patch as a stack of 2-D slices (nnU-Net's
    ``Convert3DTo2DTransform``); the channel count is kept in ``<key>_channels``."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}_channels"] = d[key].shape[0]
            d[key] = _plain(d[key]).reshape(-1, *d[key].shape[2:])
        return d


class UnfoldFirstAxisd(mt.MapTransform):
    """The inverse of ``FoldFirstAxisd``."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            channels = d.pop(f"{key}_channels")
            d[key] = _plain(d[key]).reshape(channels, -1, *d[key].shape[1:])
        return d


class RandSpatialAugmentd(mt.RandomizableTransform, mt.MapTransform):
    """nnU-Net's spatial transform without elastic deformation: with ``p_rotation`` a rotation by angles drawn from
    ``[-max_rotation, max_rotation]`` (one per axis in 3-D), with ``p_scaling`` a zoom by one factor from ``scaling``
    for all axes (above 1: the content shrinks), each through MONAI's ``Affine``; then the centre ``patch_size`` is
    cut out. Images are interpolated bilinearly, labels by nearest neighbour; outside the input the image is 0 and the
    label -1."""

    def __init__(self, keys=("image", "label"), patch_size: Sequence[int] = (), max_rotation: float = np.pi,
                 p_rotation: float = 0.2, p_scaling: float = 0.2, scaling: Tuple[float, float] = (0.7, 1.4),
                 label_key: str = "label"):
        mt.RandomizableTransform.__init__(self, prob=1.0)
        mt.MapTransform.__init__(self, keys)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.max_rotation, self.p_rotation, self.p_scaling, self.scaling = max_rotation, p_rotation, p_scaling, scaling
        self.label_key = label_key
        self.crop = mt.CenterSpatialCrop(self.patch_size)
        self.angles, self.scale = None, None

    def randomize(self, data=None) -> None:
        dim = len(self.patch_size)
        rotate = self.R.uniform() < self.p_rotation
        scale = self.R.uniform() < self.p_scaling
        num_angles = 1 if dim == 2 else 3
        self.angles = [self.R.uniform(-self.max_rotation, self.max_rotation) for _ in range(num_angles)] \
            if rotate else None
        self.scale = self.R.uniform(*self.scaling) if scale else None

    def __call__(self, data):
        self.randomize()
        d = dict(data)
        if self.angles is None and self.scale is None:
            for key in self.key_iterator(d):
                d[key] = _plain(self.crop(d[key]))
            return d
        dim = len(self.patch_size)
        affine = mt.Affine(rotate_params=self.angles if self.angles is not None else [0.0] * (1 if dim == 2 else 3),
                           scale_params=[self.scale or 1.0] * dim, padding_mode="zeros", image_only=True)
        for key in self.key_iterator(d):
            if key == self.label_key:  # shifted by one so that the zero padding reads as -1
                d[key] = _plain(affine(d[key] + 1, spatial_size=self.patch_size, mode="nearest")) - 1
            else:
                d[key] = _plain(affine(d[key], spatial_size=self.patch_size, mode="bilinear"))
        return d


class RandGammad(mt.RandomizableTransform, mt.MapTransform):
    """With probability ``prob``, each channel through MONAI's ``AdjustContrast`` (gamma, mean and std kept) with its
    own gamma, drawn as nnU-Net's ``BGContrast``: below 1 or above 1 with equal odds, uniformly within
    ``gamma_range``; ``invert_image`` applies it to the negated image."""

    def __init__(self, keys=("image",), prob: float = 0.3, gamma_range: Tuple[float, float] = (0.7, 1.5),
                 invert_image: bool = False):
        mt.RandomizableTransform.__init__(self, prob)
        mt.MapTransform.__init__(self, keys)
        self.gamma_range, self.invert_image = gamma_range, invert_image
        self.gammas: List[float] = []

    def randomize(self, num_channels: int) -> None:
        super().randomize(None)
        low, high = self.gamma_range
        self.gammas = [self.R.uniform(low, 1.0) if self.R.uniform() < 0.5 and low < 1 else
                       self.R.uniform(max(low, 1.0), high) for _ in range(num_channels)]

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            self.randomize(d[key].shape[0])
            if not self._do_transform:
                continue
            channels = [mt.AdjustContrast(g, invert_image=self.invert_image, retain_stats=True)(d[key][c])
                        for c, g in enumerate(self.gammas)]
            d[key] = torch.stack([_plain(c) for c in channels])
        return d


def nnunet_augmentation(patch_size: Sequence[int], mirror_axes: Optional[Sequence[int]] = None) -> mt.Compose:
    """nnU-Net's training augmentation for ``patch_size`` as a MONAI ``Compose`` on ``{"image", "label"}`` tensors
    ``(C, *sampled)`` (labels as float, -1 outside the non-zero mask), cutting out ``patch_size``.

    The rotation range and the dummy-2-D mode follow nnU-Net's
    ``configure_rotation_dummyDA_mirroring_and_inital_patch_size``: see ``rotation_settings``.
    """
    dim = len(patch_size)
    max_rotation, dummy_2d = rotation_settings(patch_size)
    mirror_axes = tuple(range(dim)) if mirror_axes is None else tuple(mirror_axes)
    image_label = ("image", "label")
    spatial = RandSpatialAugmentd(image_label, patch_size[1:] if dummy_2d else patch_size, max_rotation)
    low_res = mt.RandSimulateLowResolutiond("image", prob=0.25, zoom_range=(0.5, 1.0), downsample_mode="nearest",
                                            upsample_mode="bilinear" if dim == 2 or dummy_2d else "trilinear")
    sigma = (0.5, 1.0)
    transforms = (
        [FoldFirstAxisd(image_label), spatial, UnfoldFirstAxisd(image_label)] if dummy_2d else [spatial]) + [
        mt.RandGaussianNoised("image", prob=0.1, mean=0.0, std=0.1, sample_std=True),
        mt.RandGaussianSmoothd("image", sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=0.2),
        mt.RandScaleIntensityd("image", factors=0.25, prob=0.15, channel_wise=True),
        mt.RandScaleIntensityFixedMeand("image", factors=0.25, prob=0.15, fixed_mean=True, preserve_range=True,
                                        channel_wise=True),
    ] + ([FoldFirstAxisd("image"), low_res, UnfoldFirstAxisd("image")] if dummy_2d else [low_res]) + [
        RandGammad("image", prob=0.1, invert_image=True),
        RandGammad("image", prob=0.3),
    ] + [mt.RandFlipd(image_label, prob=0.5, spatial_axis=axis) for axis in mirror_axes]
    return mt.Compose(transforms)


def rotation_settings(patch_size: Sequence[int]) -> Tuple[float, bool]:
    """(largest rotation angle in radians, dummy 2-D): 2-D +-180 deg (+-15 deg when the patch's sides differ by more
    than 1.5x); 3-D +-30 deg, or for patches whose first axis is more than 3x shorter than the longest (anisotropic
    data) in-plane rotation by +-180 deg with the first axis left alone."""
    if len(patch_size) == 2:
        return (np.radians(15.0) if max(patch_size) / min(patch_size) > 1.5 else np.pi), False
    if max(patch_size) / patch_size[0] > ANISO_THRESHOLD:
        return np.pi, True
    return np.radians(30.0), False


# the dataset --------------------------------------------------------------------------------------------------------


class SegPatchDataset(Dataset):
    """Patches of preprocessed cases for training a segmentation net, drawn as nnU-Net's data loader does.

    Args:
        folder: The preprocessed configuration folder (``<case>.npz`` + ``<case>.json``).
        cases: The case ids to draw from (a fold's training or validation cases); ``dataset.cases`` keeps the order.
        patch_size: The configuration's patch size (2 or 3 axes); 2 axes on 3-D data sample axial slices.
        oversample_foreground: For ``dataset[i]``, the chance that a sample is forced to contain foreground.
        augment: Apply nnU-Net's training augmentation (MONAI); False: plain patches (validation).
        seed: The seed of ``dataset[i]``'s draws.
        mirror_axes: Axes mirrored by the augmentation (default: all).
        use_mask_for_norm: Per channel, as in the plans: such channels are set to 0 outside the non-zero mask.
        unpack: Unpack every npz to memory-mappable ``.npy`` files once (recommended; see ``unpack_case``).

    ``len(dataset)`` is the number of cases; ``dataset[i]`` samples case ``i``.
    """

    def __init__(self, folder: PathLike, cases: Sequence[str], patch_size: Sequence[int],
                 oversample_foreground: float = OVERSAMPLE_FOREGROUND, augment: bool = True, seed: int = 0,
                 mirror_axes: Optional[Sequence[int]] = None, use_mask_for_norm: Optional[Sequence[bool]] = None,
                 unpack: bool = True):
        self.folder = Path(folder)
        self.cases = list(cases)
        if not self.cases:
            raise SegDataError("no case to sample patches from", self.folder)
        if not self.folder.is_dir():
            raise SegDataError("preprocessed folder not found; preprocess the dataset first", self.folder)
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) not in (2, 3) or min(self.patch_size) < 1:
            raise ValueError(f"patch_size needs 2 or 3 positive entries, got {list(patch_size)}")
        if not 0 <= oversample_foreground <= 1:
            raise ValueError(f"oversample_foreground must lie in [0, 1], got {oversample_foreground}")
        self.oversample_foreground = float(oversample_foreground)
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self.use_mask_for_norm = None if use_mask_for_norm is None else [bool(m) for m in use_mask_for_norm]
        max_rotation, dummy_2d = rotation_settings(self.patch_size)
        self.sampled_size = sampling_patch_size(self.patch_size, max_rotation, dummy_2d) if augment \
            else self.patch_size
        self.transforms = nnunet_augmentation(self.patch_size, mirror_axes) if augment else None
        self.unpack = unpack
        if unpack:
            for case in tqdm(self.cases, desc="unpack", unit="case", leave=False):
                unpack_case(self.folder, case)
        self._properties: Dict[str, dict] = {}

    def __len__(self) -> int:
        return len(self.cases)

    def set_epoch(self, epoch: int) -> None:
        """The epoch that ``dataset[i]``'s draws depend on."""
        self.epoch = int(epoch)

    def __getitem__(self, index):
        if isinstance(index, tuple):
            return self.sample(*index)
        sequence = np.random.SeedSequence([self.seed, self.epoch, int(index)])
        rng = np.random.default_rng(sequence)
        force = bool(rng.random() < self.oversample_foreground)
        return self.sample(int(index) % len(self.cases), int(rng.integers(MAX_SEED)), force)

    def properties(self, case_index: int) -> dict:
        """The ``<case>.json`` properties (class locations as arrays), cached."""
        case = self.cases[case_index]
        if case not in self._properties:
            self._properties[case] = _read_properties(self.folder, case)
        return self._properties[case]

    def load_case(self, case_index: int) -> Tuple[np.ndarray, np.ndarray]:
        """(data (C, *spatial), seg (1, *spatial)) of a case: memory-mapped when unpacked."""
        case = self.cases[case_index]
        if self.unpack:
            data_path, seg_path = unpack_case(self.folder, case)
            return np.load(data_path, mmap_mode="r"), np.load(seg_path, mmap_mode="r")
        npz = self.folder / f"{case}.npz"
        try:
            with np.load(npz) as arrays:
                return arrays["data"], arrays["seg"]
        except (OSError, ValueError, KeyError, EOFError) as error:
            raise SegDataError(f"cannot be read ({type(error).__name__}: {error})", npz) from None

    def sample(self, case_index: int, seed: int, force_foreground: bool) -> dict:
        """One patch of case ``case_index``: ``{"image": (C, *patch) float32, "label": (1, *patch) int64, "case":
        id}``, a function of the arguments only."""
        rng = np.random.default_rng(int(seed))
        data, seg = self.load_case(case_index)
        properties = self.properties(case_index)
        spatial = data.shape[1:]
        slices = len(spatial) == len(self.patch_size) + 1
        if not slices and len(spatial) != len(self.patch_size):
            raise SegDataError(f"a {len(self.patch_size)}-D patch size cannot be sampled from {len(spatial)}-D data "
                               f"{tuple(data.shape)}", self.folder / f"{self.cases[case_index]}.npz")
        size = (1,) + self.sampled_size if slices else self.sampled_size
        final = (1,) + self.patch_size if slices else self.patch_size
        need_to_pad = [s - f for s, f in zip(size, final)]
        start = choose_patch_start(spatial, size, need_to_pad, force_foreground, properties["class_locations"], rng)
        image = crop_and_pad(data, start, size, 0).astype(np.float32)
        label = crop_and_pad(seg, start, size, -1).astype(np.float32)
        if slices:
            image, label = image[:, 0], label[:, 0]
        image, label = torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(label))
        if self.transforms is not None:
            # one random stream for every transform, drawn in pipeline order (one RandomState: cheap to create)
            state = np.random.RandomState(int(rng.integers(MAX_SEED)))
            for transform in self.transforms.transforms:
                if isinstance(transform, mt.Randomizable):
                    transform.set_random_state(state=state)
            previous = get_track_meta()
            set_track_meta(False)  # plain tensors through MONAI: no metadata bookkeeping per operation
            try:
                out = self.transforms({"image": image, "label": label})
            finally:
                set_track_meta(previous)
            image = convert_to_tensor(out["image"], track_meta=False).float()
            label = convert_to_tensor(out["label"], track_meta=False)
        label = torch.round(label).long()
        if self.use_mask_for_norm is not None and any(self.use_mask_for_norm):
            outside = label[0] < 0
            for channel, masked in enumerate(self.use_mask_for_norm):
                if masked:
                    image[channel][outside] = 0
        label[label < 0] = 0
        return {"image": image.contiguous(), "label": label.contiguous(), "case": self.cases[case_index]}


# cross-validation splits --------------------------------------------------------------------------------------------


def crossval_splits(cases: Sequence[str], folds: int = 5, seed: int = SPLITS_SEED) -> List[Dict[str, List[str]]]:
    """nnU-Net's split: scikit-learn's ``KFold(folds, shuffle=True, random_state=seed)`` over the sorted case ids."""
    from sklearn.model_selection import KFold
    keys = sorted(cases)
    if len(keys) < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} cases, got {len(keys)}; use fewer "
                         f"folds or train on all cases")
    splits = []
    for train, val in KFold(n_splits=folds, shuffle=True, random_state=seed).split(keys):
        splits.append({"train": [keys[i] for i in train], "val": [keys[i] for i in val]})
    return splits


def read_splits(path: PathLike, cases: Optional[Sequence[str]] = None) -> List[Dict[str, List[str]]]:
    """Reads and checks a ``splits_final.json``: a list of ``{"train": [...], "val": [...]}`` with case ids (all
    among ``cases`` if given)."""
    path = Path(path)
    try:
        splits = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SplitsFileError(f"not valid JSON ({error}); fix it or delete it to have the default 5 folds written",
                              path) from None
    if not isinstance(splits, list) or not splits:
        raise SplitsFileError(f"must hold a non-empty list of folds, each {{\"train\": [...], \"val\": [...]}}, got "
                              f"{type(splits).__name__}", path)
    known = None if cases is None else set(cases)
    for fold, split in enumerate(splits):
        if not isinstance(split, dict) or not {"train", "val"} <= set(split) or not all(
                isinstance(split[k], list) and all(isinstance(c, str) for c in split[k]) for k in ("train", "val")):
            raise SplitsFileError(f"fold {fold} must be {{\"train\": [case ids], \"val\": [case ids]}}, got "
                                  f"{json.dumps(split)[:200]}", path)
        if known is not None:
            unknown = sorted(set(split["train"] + split["val"]) - known)
            if unknown:
                raise SplitsFileError(f"fold {fold} names case(s) {unknown[:10]} that are not in the dataset; fix the "
                                      f"file or delete it to have the default folds written", path)
    return splits


def read_or_write_splits(preprocessed_root: PathLike, cases: Sequence[str], folds: int = 5, seed: int = SPLITS_SEED
                         ) -> List[Dict[str, List[str]]]:
    """``<preprocessed_root>/splits_final.json``: read (and checked) if present, else nnU-Net's ``folds``-fold split of
    ``cases`` written there (atomically) and returned."""
    path = Path(preprocessed_root) / SPLITS_FILE
    if path.is_file():
        return read_splits(path, cases)
    splits = crossval_splits(cases, folds, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(splits, indent=4)
    _write_atomic(path, lambda f: f.write(text + "\n"), binary=False)
    return splits
