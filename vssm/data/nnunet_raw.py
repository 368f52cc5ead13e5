"""The nnU-Net v2 raw dataset format: ``dataset.json``, case listing, validation, and image I/O that keeps geometry.

A raw dataset is a folder ``DatasetXXX_Name/`` holding ``dataset.json``, ``imagesTr/`` (``{CASE}_{XXXX}{ext}``, one
file per channel with a four-digit channel index), ``labelsTr/`` (``{CASE}{ext}``) and optionally ``imagesTs/``.
``validate_raw_dataset(path)`` checks what nnU-Net's ``verify_dataset_integrity`` checks (and a little more) before a
run starts and reports every problem it finds (up to a cap), each a named ``DataError`` subclass that says which file
and what to fix; ``load_raw_dataset(path)`` only parses ``dataset.json`` and lists the cases.

Arrays follow nnU-Net's axis convention so that its plans (spacings, patch sizes) apply unchanged:
* NIfTI (nibabel): the voxel array is read with its axes reversed, ``(C, k, j, i)`` for a file indexed ``(i, j, k)``,
  and the spacing is the voxel size in the same (reversed) order; the file's affine is kept in ``ImageGeometry`` and
  written back unchanged.
* 2-D natural images (``.png``, ``.bmp``, ``.tif``/``.tiff``, through PIL): ``(C, H, W)`` with spacing ``(1, 1)``; an
  RGB(A) file is one ``_0000`` file holding 3 (4) channels. NOTE: nnU-Net stores these as ``(C, 1, H, W)`` with spacing
  ``(999, 1, 1)``; here a 2-D image stays 2-D.
Label maps are returned without a channel axis: ``(*spatial)`` integers.
"""
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import DataError

PathLike = Union[str, os.PathLike]
REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
NIFTI_ENDINGS = (".nii.gz", ".nii")
NATURAL_2D_ENDINGS = (".png", ".bmp", ".tif", ".tiff")
SUPPORTED_ENDINGS = NIFTI_ENDINGS + NATURAL_2D_ENDINGS
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


# errors -------------------------------------------------------------------------------------------------------------


class RawDatasetError(DataError):
    """A problem in an nnU-Net raw dataset; ``path`` is the file or folder at fault."""

    def __init__(self, message: str, path: Optional[PathLike] = None):
        super().__init__(message if path is None else f"{path}: {message}")
        self.path = None if path is None else str(path)


class DatasetJsonError(RawDatasetError):
    """``dataset.json`` is missing, not valid JSON, lacks a required key or declares something nnU-Net rejects."""


class LabelDefinitionError(DatasetJsonError):
    """The ``labels`` of ``dataset.json``: no background 0, a bad ``ignore`` label, regions without
    ``regions_class_order``."""


class NonConsecutiveLabelsError(LabelDefinitionError):
    """The label values of ``dataset.json`` are not 0, 1, 2, ... (the ignore label, if any, last)."""


class MissingFileError(RawDatasetError):
    """A folder, a label file or the images of a label are missing."""


class MissingChannelError(MissingFileError):
    """A case lacks one of the channel files ``{CASE}_{XXXX}`` that ``channel_names`` declares."""


class FileNamingError(RawDatasetError):
    """A file whose name does not follow the format: wrong ending, no ``_XXXX`` channel index, unknown channel."""


class EmptyDatasetError(RawDatasetError):
    """``labelsTr`` (or ``imagesTr``) holds no case."""


class CaseCountError(RawDatasetError):
    """``numTraining`` differs from the number of training cases found."""


class CorruptImageError(RawDatasetError):
    """A file cannot be read (truncated, not an image, wrong dimensionality)."""


class GeometryMismatchError(RawDatasetError):
    """The images and the label of a case do not share their voxel grid."""


class ShapeMismatchError(GeometryMismatchError):
    """Image and label (or two channels) differ in shape."""


class SpacingMismatchError(GeometryMismatchError):
    """Image and label (or two channels) differ in voxel spacing."""


class AffineMismatchError(GeometryMismatchError):
    """Image and label (or two channels) differ in affine (origin / direction) beyond the tolerance."""


class UnexpectedLabelError(RawDatasetError):
    """A label file holds a value that ``dataset.json`` does not declare (or a non-integer value)."""


class InvalidValueError(RawDatasetError):
    """An image or label holds NaN (or infinite) values."""


class DatasetValidationError(DataError):
    """Every problem ``validate_raw_dataset`` found; ``problems`` holds the individual errors."""

    def __init__(self, root: PathLike, problems: Sequence[RawDatasetError], truncated: bool = False):
        self.root = str(root)
        self.problems = list(problems)
        self.truncated = truncated
        lines = [f"{len(self.problems)}{'+' if truncated else ''} problem(s) in nnU-Net raw dataset {root}:"]
        lines += [f"  [{type(p).__name__}] {p}" for p in self.problems]
        if truncated:
            lines.append("  ... stopped at the cap; fix these and run the check again")
        super().__init__("\n".join(lines))


# dataset.json -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSpec:
    """The ``labels`` (and ``regions_class_order``) of a ``dataset.json``, as nnU-Net's ``LabelManager`` reads them.

    Attributes:
        label_dict: name -> int, or name -> list of ints (a region), in the file's order.
        all_labels: Sorted integer values that may appear in a label file, ignore label excluded.
        ignore_label: The value of the ``ignore`` label, or None.
        regions: Region training only: the non-background regions as tuples, in ``label_dict`` order.
        regions_class_order: Region training only: the label painted for each region (later overwrite earlier).
    """
    label_dict: Dict[str, Union[int, Tuple[int, ...]]]
    all_labels: Tuple[int, ...]
    ignore_label: Optional[int] = None
    regions: Optional[Tuple[Tuple[int, ...], ...]] = None
    regions_class_order: Optional[Tuple[int, ...]] = None

    @property
    def has_regions(self) -> bool:
        return self.regions is not None

    @property
    def has_ignore_label(self) -> bool:
        return self.ignore_label is not None

    @property
    def foreground_labels(self) -> List[int]:
        return [i for i in self.all_labels if i != 0]

    @property
    def foreground_regions(self) -> Optional[List[Tuple[int, ...]]]:
        return None if self.regions is None else list(self.regions)

    @property
    def allowed_values(self) -> List[int]:
        """Values a label file may contain: every label, plus the ignore label."""
        return list(self.all_labels) + ([self.ignore_label] if self.has_ignore_label else [])

    @property
    def num_segmentation_heads(self) -> int:
        """Output channels of a network: one per region (sigmoid) or one per label incl. background (softmax)."""
        return len(self.regions) if self.has_regions else len(self.all_labels)

    @property
    def evaluation_classes(self) -> List[Union[int, Tuple[int, ...]]]:
        """What nnU-Net's evaluation scores: the foreground regions, or the foreground labels."""
        return self.foreground_regions if self.has_regions else self.foreground_labels


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def parse_labels(labels: dict, regions_class_order: Optional[Sequence[int]] = None,
                 source: Optional[PathLike] = None) -> LabelSpec:
    """Checks the ``labels`` of a ``dataset.json`` as nnU-Net does and returns them as a ``LabelSpec``.

    Raises:
        LabelDefinitionError: background missing or not 0, an ignore label that is not an int equal to the highest
            label + 1, a value that is not an int (or list of ints), regions without a matching ``regions_class_order``.
        NonConsecutiveLabelsError: label values (with the ignore label last) not 0, 1, 2, ...
    """
    if not isinstance(labels, dict) or not labels:
        raise LabelDefinitionError("'labels' must be a non-empty object name -> value, e.g. "
                                   '{"background": 0, "liver": 1}', source)
    if "background" not in labels:
        raise LabelDefinitionError("'labels' has no 'background' entry; add \"background\": 0", source)
    background = labels["background"]
    if not _is_int(background) or background != 0:
        raise LabelDefinitionError(f"the background label must be the integer 0 (not a list), got {background!r}",
                                   source)
    ignore = labels.get("ignore")
    if ignore is not None and not _is_int(ignore):
        raise LabelDefinitionError(f"the 'ignore' label must be one integer (not a region), got {ignore!r}", source)
    label_dict, values = {}, []
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            if not value or not all(_is_int(v) for v in value):
                raise LabelDefinitionError(f"label {name!r}: a region must be a non-empty list of integers, got "
                                           f"{value!r}", source)
            label_dict[name] = tuple(int(v) for v in value)
            if name != "ignore":
                values += [int(v) for v in value]
        elif _is_int(value):
            label_dict[name] = int(value)
            if name != "ignore":
                values.append(int(value))
        else:
            raise LabelDefinitionError(f"label {name!r}: the value must be an integer or a list of integers, got "
                                       f"{value!r}", source)
    all_labels = tuple(sorted(set(values)))
    expected = list(all_labels) + ([int(ignore)] if ignore is not None else [])
    if ignore is not None and int(ignore) != max(all_labels) + 1:
        raise LabelDefinitionError(f"the 'ignore' label must be the highest value, max(labels) + 1 = "
                                   f"{max(all_labels) + 1}, got {ignore}", source)
    gaps = [b for a, b in zip(expected, expected[1:]) if b - a != 1]
    if gaps:
        raise NonConsecutiveLabelsError(
            f"label values must be consecutive (0, 1, 2, ...); declared {expected}, the values {gaps} do not follow "
            f"their predecessor; renumber the labels in dataset.json and in every label file", source)
    has_regions = any(isinstance(v, tuple) and len(v) > 1 for v in label_dict.values())
    regions = order = None
    if has_regions:
        regions = []
        for name, value in label_dict.items():
            region = value if isinstance(value, tuple) else (value,)
            if name == "ignore" or set(region) == {0}:
                continue
            regions.append(region)
        if regions_class_order is None:
            raise LabelDefinitionError("region labels (lists of values) need 'regions_class_order' in dataset.json: "
                                       "one label value per non-background region, in the order of 'labels'", source)
        if not isinstance(regions_class_order, (list, tuple)) or not all(_is_int(v) for v in regions_class_order):
            raise LabelDefinitionError(f"'regions_class_order' must be a list of integers, got "
                                       f"{regions_class_order!r}", source)
        if len(regions_class_order) != len(regions):
            raise LabelDefinitionError(f"'regions_class_order' has {len(regions_class_order)} entries but there are "
                                       f"{len(regions)} regions {regions}; give one value per region", source)
        regions, order = tuple(regions), tuple(int(v) for v in regions_class_order)
    return LabelSpec(label_dict, all_labels, None if ignore is None else int(ignore), regions, order)


@dataclass(frozen=True)
class DatasetJson:
    """A parsed ``dataset.json``: ``channel_names`` as a list in channel order, the labels, the rest kept in ``raw``."""
    channel_names: List[str]
    labels: LabelSpec
    num_training: int
    file_ending: str
    raw: dict = field(repr=False, default_factory=dict)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)


def parse_dataset_json(data: dict, source: Optional[PathLike] = None) -> DatasetJson:
    """Checks the keys and values of a loaded ``dataset.json`` (see ``read_dataset_json``)."""
    if not isinstance(data, dict):
        raise DatasetJsonError(f"dataset.json must hold a JSON object, got {type(data).__name__}", source)
    channels = data.get("channel_names", data.get("modality"))  # nnU-Net still reads the v1 name 'modality'
    present = set(data) | ({"channel_names"} if channels is not None else set())
    missing = [k for k in REQUIRED_KEYS if k not in present]
    if missing:
        raise DatasetJsonError(f"required key(s) {missing} missing; dataset.json needs {list(REQUIRED_KEYS)} "
                               f"(found {sorted(data)})", source)
    if not isinstance(channels, dict) or not channels:
        raise DatasetJsonError(f"'channel_names' must be a non-empty object index -> name, e.g. {{\"0\": \"CT\"}}, "
                               f"got {channels!r}", source)
    try:
        indices = sorted(int(k) for k in channels)
    except (TypeError, ValueError):
        raise DatasetJsonError(f"'channel_names' keys must be channel indices \"0\", \"1\", ..., got "
                               f"{list(channels)}", source) from None
    if indices != list(range(len(channels))):
        raise DatasetJsonError(f"'channel_names' keys must be \"0\" .. \"{len(channels) - 1}\", got {list(channels)}",
                               source)
    names = [str(channels[k]) for k in sorted(channels, key=int)]
    num_training = data["numTraining"]
    if not _is_int(num_training) or num_training < 0:
        raise DatasetJsonError(f"'numTraining' must be a non-negative integer, got {num_training!r}", source)
    file_ending = data["file_ending"]
    if not isinstance(file_ending, str) or not file_ending.startswith("."):
        raise DatasetJsonError(f"'file_ending' must be a string like \".nii.gz\" or \".png\", got {file_ending!r}",
                               source)
    if file_ending.lower() not in SUPPORTED_ENDINGS:
        raise DatasetJsonError(f"'file_ending' {file_ending!r} is not supported; use one of {list(SUPPORTED_ENDINGS)}",
                               source)
    labels = parse_labels(data["labels"], data.get("regions_class_order"), source)
    return DatasetJson(names, labels, int(num_training), file_ending, dict(data))


def read_dataset_json(path: PathLike) -> DatasetJson:
    """Reads and checks ``dataset.json`` (``path`` is the file or the dataset folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "dataset.json"
    if not path.is_file():
        raise DatasetJsonError("dataset.json not found; every raw dataset folder needs one", path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetJsonError(f"not valid JSON ({error}); fix the syntax (no trailing commas, double quotes)",
                               path) from None
    return parse_dataset_json(data, path)


# case listing -------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One case: its channel files in channel order (a missing channel is None) and its label file (or None)."""
    case_id: str
    images: List[Optional[Path]]
    label: Optional[Path] = None


@dataclass
class RawDataset:
    """A listed raw dataset: the parsed ``dataset.json``, the training cases and the test cases (``imagesTs``)."""
    root: Path
    dataset_json: DatasetJson
    training: Dict[str, Case]
    test: Dict[str, Case] = field(default_factory=dict)

    @property
    def labels(self) -> LabelSpec:
        return self.dataset_json.labels

    @property
    def file_ending(self) -> str:
        return self.dataset_json.file_ending


def _strip_ending(name: str, file_ending: str) -> Optional[str]:
    return name[:-len(file_ending)] if name.lower().endswith(file_ending.lower()) else None


def _visible_files(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def list_image_folder(folder: PathLike, file_ending: str, num_channels: int,
                      problems: Optional[list] = None) -> Dict[str, Case]:
    """Cases of an images folder (``{CASE}_{XXXX}{ext}`` files), each with its channel files in channel order.

    Files with another ending, without a four-digit channel index or with a channel index beyond ``num_channels``
    are reported as ``FileNamingError``; a case lacking a channel as ``MissingChannelError`` (2-D natural images may
    hold all channels in ``_0000``: checked when the file is read). Problems are appended to ``problems`` if given,
    else the first is raised.
    """
    folder = Path(folder)
    found = []
    cases: Dict[str, Dict[int, Path]] = {}
    for name in _visible_files(folder):
        stem = _strip_ending(name, file_ending)
        if stem is None:
            found.append(FileNamingError(f"does not end with file_ending {file_ending!r} of dataset.json; convert it "
                                         f"or remove it", folder / name))
            continue
        match = CHANNEL_SUFFIX.match(stem)
        if match is None:
            found.append(FileNamingError(f"an image needs a four-digit channel index: {stem}_0000{file_ending} "
                                         f"(channel 0)", folder / name))
            continue
        channel = int(match["channel"])
        if channel >= num_channels:
            found.append(FileNamingError(f"channel {channel} but channel_names declares {num_channels} channel(s) "
                                         f"(_0000 .. _{num_channels - 1:04d})", folder / name))
            continue
        cases.setdefault(match["case"], {})[channel] = folder / name
    natural = file_ending.lower() in NATURAL_2D_ENDINGS
    listed = {}
    for case_id, channels in sorted(cases.items()):
        images = [channels.get(c) for c in range(num_channels)]
        missing = [c for c in range(num_channels) if channels.get(c) is None]
        if missing and not (natural and images[0] is not None):
            names = ", ".join(f"{case_id}_{c:04d}{file_ending}" for c in missing)
            found.append(MissingChannelError(f"case {case_id!r} lacks channel file(s) {names} (channel_names "
                                             f"declares {num_channels})", folder))
        listed[case_id] = Case(case_id, images)
    if problems is None:
        if found:
            raise found[0]
    else:
        problems += found
    return listed


def load_raw_dataset(root: PathLike, problems: Optional[list] = None) -> RawDataset:
    """Parses ``dataset.json`` and lists the training and test cases (no image is read; see
    ``validate_raw_dataset`` for the full check). Problems are appended to ``problems`` if given, else raised."""
    root = Path(root)
    found = [] if problems is None else problems
    if not root.is_dir():
        raise MissingFileError("dataset folder not found", root)
    meta = read_dataset_json(root)
    ending = meta.file_ending
    training: Dict[str, Case] = {}
    if "dataset" in meta.raw:  # nnU-Net's alternative: files listed in dataset.json, paths relative to the folder
        entries = meta.raw["dataset"]
        if not isinstance(entries, dict):
            raise DatasetJsonError("'dataset' must be an object case -> {\"images\": [...], \"label\": ...}",
                                   root / "dataset.json")
        for case_id, entry in entries.items():
            if not isinstance(entry, dict):
                found.append(DatasetJsonError(f"'dataset' entry of case {case_id!r} must be an object "
                                              f"{{\"images\": [...], \"label\": ...}}", root / "dataset.json"))
                continue
            images = [root / p for p in entry.get("images", [])]
            label = root / entry["label"] if entry.get("label") else None
            for path in images:
                if not path.is_file():
                    found.append(MissingChannelError(f"listed for case {case_id!r} in dataset.json but missing",
                                                     path))
            if label is None or not label.is_file():
                found.append(MissingFileError(f"label of case {case_id!r} listed in dataset.json but missing",
                                              label or root / "dataset.json"))
            if len(images) != meta.num_channels:
                found.append(MissingChannelError(f"case {case_id!r} lists {len(images)} image(s) but channel_names "
                                                 f"declares {meta.num_channels}", root / "dataset.json"))
            training[case_id] = Case(case_id, images, label)
    else:
        images_tr, labels_tr = root / "imagesTr", root / "labelsTr"
        for folder in (images_tr, labels_tr):
            if not folder.is_dir():
                found.append(MissingFileError("folder missing; a raw dataset needs imagesTr/ and labelsTr/", folder))
        if images_tr.is_dir():
            training = list_image_folder(images_tr, ending, meta.num_channels, found)
        label_ids = {}
        if labels_tr.is_dir():
            for name in _visible_files(labels_tr):
                stem = _strip_ending(name, ending)
                if stem is None:
                    found.append(FileNamingError(f"does not end with file_ending {ending!r} of dataset.json",
                                                 labels_tr / name))
                else:
                    label_ids[stem] = labels_tr / name
            if not label_ids:
                found.append(EmptyDatasetError(f"no label file ({{CASE}}{ending}) in labelsTr; every training case "
                                               f"needs one", labels_tr))
        if images_tr.is_dir() and labels_tr.is_dir():
            for case_id, case in training.items():
                case.label = label_ids.get(case_id)
                if case.label is None:
                    found.append(MissingFileError(f"case {case_id!r} has images but no label {case_id}{ending} in "
                                                  f"labelsTr", labels_tr))
            for case_id, path in label_ids.items():
                if case_id not in training:
                    found.append(MissingFileError(f"label without images: expected {case_id}_0000{ending} in "
                                                  f"imagesTr", path))
            if not training and not _visible_files(images_tr):
                found.append(EmptyDatasetError("no image in imagesTr", images_tr))
    if training and len(training) != meta.num_training:
        found.append(CaseCountError(f"numTraining is {meta.num_training} but {len(training)} training case(s) were "
                                    f"found; set numTraining to {len(training)} or add the missing cases",
                                    root / "dataset.json"))
    test = {}
    if (root / "imagesTs").is_dir():
        test = list_image_folder(root / "imagesTs", ending, meta.num_channels, found)
    if problems is None and found:
        raise found[0]
    return RawDataset(root, meta, training, test)


# image I/O ----------------------------------------------------------------------------------------------------------


@dataclass
class ImageGeometry:
    """Where the voxels of an array lie: its spatial shape and spacing (array axis order) and, for NIfTI, the file's
    4x4 affine (kept as read; voxel index order of the file, i.e. the reverse of the array axes)."""
    shape: Tuple[int, ...]
    spacing: Tuple[float, ...]
    affine: Optional[np.ndarray] = None

    def mismatch(self, other: "ImageGeometry", spacing_rtol: float = 1e-5, affine_atol: float = 1e-4
                 ) -> Optional[Tuple[type, str]]:
        """None if ``other`` describes the same grid, else (error class, what differs)."""
        if tuple(self.shape) != tuple(other.shape):
            return ShapeMismatchError, f"shape {tuple(self.shape)} vs {tuple(other.shape)}"
        if len(self.spacing) != len(other.spacing) or not np.allclose(self.spacing, other.spacing, rtol=spacing_rtol):
            return SpacingMismatchError, f"spacing {tuple(self.spacing)} vs {tuple(other.spacing)}"
        if self.affine is not None and other.affine is not None and \
                not np.allclose(self.affine, other.affine, rtol=0, atol=affine_atol):
            return AffineMismatchError, (f"affine (origin / direction), off by up to "
                                         f"{np.abs(self.affine - other.affine).max():.3g} > {affine_atol}:\n"
                                         f"{np.array2string(self.affine, precision=4)}\nvs\n"
                                         f"{np.array2string(other.affine, precision=4)}")
        return None


def _file_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(NIFTI_ENDINGS):
        return "nifti"
    if name.endswith(NATURAL_2D_ENDINGS):
        return "natural"
    raise CorruptImageError(f"unsupported file type; use one of {list(SUPPORTED_ENDINGS)}", path)


def _read_one(path: Path, as_label: bool) -> Tuple[np.ndarray, ImageGeometry]:
    """(C, *spatial) array and geometry of one file (C = 1 except for RGB(A) natural images)."""
    kind = _file_kind(path)
    if not path.is_file():
        raise MissingFileError("file not found", path)
    try:
        if kind == "nifti":
            import nibabel
            image = nibabel.load(str(path))
            if len(image.shape) == 4 and image.shape[3] == 1:
                image = image.slicer[..., 0]
            if len(image.shape) != 3:
                raise CorruptImageError(f"a NIfTI file here must be 3-D, got shape {image.shape}", path)
            if as_label:
                array = np.asanyarray(image.dataobj)
                if image.dataobj.slope not in (1, None) or image.dataobj.inter not in (0, None):
                    array = image.get_fdata()
            else:
                array = image.get_fdata(dtype=np.float32)
            array = np.ascontiguousarray(array.transpose(2, 1, 0))[None]
            spacing = tuple(float(z) for z in image.header.get_zooms()[:3][::-1])
            return array, ImageGeometry(array.shape[1:], spacing, np.array(image.affine, dtype=np.float64))
        from PIL import Image
        with Image.open(path) as image:
            if getattr(image, "n_frames", 1) > 1:
                raise CorruptImageError(f"{image.n_frames} frames; only 2-D images are read from "
                                        f"{path.suffix} files", path)
            array = np.asarray(image)
        if array.ndim == 3:
            if array.shape[-1] not in (3, 4):
                raise CorruptImageError(f"a 2-D image with channels must be RGB or RGBA, got shape {array.shape}",
                                        path)
            array = array.transpose(2, 0, 1)
        elif array.ndim == 2:
            array = array[None]
        else:
            raise CorruptImageError(f"unexpected image shape {array.shape}", path)
        array = np.ascontiguousarray(array if as_label else array.astype(np.float32))
        return array, ImageGeometry(array.shape[1:], (1.0, 1.0))
    except DataError:
        raise
    except Exception as error:  # nibabel / zlib / PIL raise many types for truncated or foreign files
        raise CorruptImageError(f"cannot be read ({type(error).__name__}: {error}); re-export or replace the file",
                                path) from None


def read_image(files: Union[PathLike, Sequence[PathLike]], spacing_rtol: float = 1e-5, affine_atol: float = 1e-4
               ) -> Tuple[np.ndarray, ImageGeometry]:
    """Reads the channel files of one case into a float32 ``(C, *spatial)`` array and its geometry.

    Raises:
        CorruptImageError: a file cannot be read.
        GeometryMismatchError: the channel files do not share shape, spacing and affine.
    """
    files = [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(f) for f in files]
    arrays, geometry = [], None
    for path in files:
        array, geom = _read_one(path, as_label=False)
        if geometry is None:
            geometry = geom
        else:
            bad = geometry.mismatch(geom, spacing_rtol, affine_atol)
            if bad is not None:
                raise bad[0](f"channel files of one case differ in {bad[1]} (first file {files[0].name})", path)
        arrays.append(array)
    return np.concatenate(arrays, axis=0), geometry


def read_label(path: PathLike) -> Tuple[np.ndarray, ImageGeometry]:
    """Reads a label map into an integer ``(*spatial)`` array and its geometry.

    Raises:
        CorruptImageError: unreadable, or several channels.
        UnexpectedLabelError: non-integer (or NaN) values.
    """
    path = Path(path)
    array, geometry = _read_one(path, as_label=True)
    if array.shape[0] != 1:
        raise CorruptImageError(f"a label map must have one channel, got {array.shape[0]}", path)
    array = array[0]
    if not np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.bool_):
            array = array.astype(np.uint8)
        else:
            if not np.all(np.isfinite(array)):
                raise InvalidValueError("label map holds NaN or infinite values", path)
            if not np.all(array == np.round(array)):
                bad = np.unique(array[array != np.round(array)])[:5]
                raise UnexpectedLabelError(f"label map holds non-integer values {bad.tolist()}; labels are integers",
                                           path)
            array = array.astype(np.int16 if array.min() >= -32768 and array.max() < 32768 else np.int64)
    return array, geometry


def write_image(array: np.ndarray, path: PathLike, geometry: Optional[ImageGeometry] = None,
                is_label: bool = False) -> None:
    """Writes one ``(*spatial)`` array (or ``(C, H, W)`` with C in 3/4 for RGB(A) PNG) in the format of ``path``'s
    ending, with the geometry it was read with: NIfTI gets the axes reversed back and the original affine (or a
    diagonal affine of ``geometry.spacing`` when none is known). Labels are stored as uint8 / uint16 as nnU-Net does.
    The file appears atomically (written next to it, then renamed)."""
    path = Path(path)
    kind = _file_kind(path)
    array = np.asarray(array)
    if is_label:
        if array.min() < 0:
            raise ValueError(f"negative label values cannot be written to {path}")
        array = array.astype(np.uint8 if array.max() < 255 else np.uint16)
    # the temporary name keeps the ending: nibabel picks gzip from '.gz'
    tmp = path.with_name(f".tmp{os.getpid()}.{path.name}")
    try:
        if kind == "nifti":
            import nibabel
            if array.ndim != 3:
                raise ValueError(f"NIfTI output needs a 3-D array, got shape {array.shape}")
            if geometry is not None and geometry.affine is not None:
                affine = geometry.affine
            else:
                spacing = geometry.spacing if geometry is not None else (1.0, 1.0, 1.0)
                affine = np.diag(list(spacing[::-1]) + [1.0])
            image = nibabel.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine)
            image.header.set_zooms(tuple(float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(0))))
            nibabel.save(image, str(tmp))
        else:
            from PIL import Image
            if array.ndim == 3 and array.shape[0] in (3, 4):
                array = array.transpose(1, 2, 0)
            elif array.ndim != 2:
                raise ValueError(f"a 2-D image file needs (H, W) or (3|4, H, W), got shape {array.shape}")
            if not is_label and array.dtype != np.uint8:
                raise ValueError(f"only uint8 images (or labels) can be written to {path.suffix}")
            Image.fromarray(array).save(tmp, format={".png": "PNG", ".bmp": "BMP"}.get(path.suffix.lower(), "TIFF"))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_segmentation(segmentation: np.ndarray, path: PathLike, geometry: ImageGeometry) -> None:
    """Writes a predicted label map in the input's format and geometry (see ``write_image``)."""
    if tuple(segmentation.shape) != tuple(geometry.shape):
        raise ValueError(f"segmentation shape {tuple(segmentation.shape)} differs from the input's "
                         f"{tuple(geometry.shape)}; resample it back first")
    write_image(segmentation, path, geometry, is_label=True)


# validation ---------------------------------------------------------------------------------------------------------


def check_case(case: Case, meta: DatasetJson, spacing_rtol: float = 1e-5, affine_atol: float = 1e-4
               ) -> List[RawDatasetError]:
    """Every problem of one training case: unreadable files, channel count, NaNs, image/label geometry, label values
    not declared in ``dataset.json``."""
    problems: List[RawDatasetError] = []
    files = [f for f in case.images if f is not None and f.is_file()]  # the listing reported the missing ones
    if not files:
        return problems
    image = geometry = None
    try:
        image, geometry = read_image(files, spacing_rtol, affine_atol)
    except RawDatasetError as error:
        problems.append(error)
    if image is not None:
        # a NIfTI case lacking a channel file was reported by the listing; a 2-D natural image may hold its channels
        # in one file, so only reading it tells
        if image.shape[0] != meta.num_channels and (None not in case.images or _file_kind(files[0]) == "natural"):
            problems.append(MissingChannelError(f"case {case.case_id!r}: {image.shape[0]} channel(s) read from "
                                                f"{[f.name for f in files]}, channel_names declares "
                                                f"{meta.num_channels}", files[0].parent))
        bad_channels = np.flatnonzero(~np.isfinite(image.reshape(image.shape[0], -1)).all(1))
        if bad_channels.size:
            culprit = files[0] if len(files) == 1 else files[min(int(bad_channels[0]), len(files) - 1)]
            problems.append(InvalidValueError("image holds NaN or infinite values; replace them with a meaningful "
                                              "value", culprit))
    if case.label is None or not case.label.is_file():
        return problems
    try:
        label, label_geometry = read_label(case.label)
    except RawDatasetError as error:
        problems.append(error)
        return problems
    allowed = meta.labels.allowed_values
    found = np.unique(label)
    unexpected = [int(v) for v in found if int(v) not in allowed]
    if unexpected:
        problems.append(UnexpectedLabelError(f"values {unexpected} are not declared in dataset.json (allowed "
                                             f"{allowed}, found {found.tolist()}); fix the label file or the "
                                             f"'labels' of dataset.json", case.label))
    if geometry is not None:
        bad = geometry.mismatch(label_geometry, spacing_rtol, affine_atol)
        if bad is not None:
            problems.append(bad[0](f"label and image {files[0].name} differ in {bad[1]}; the label must lie on the "
                                   f"image's voxel grid (resample or fix its header)", case.label))
    return problems


def find_problems(root: PathLike, check_contents: bool = True, max_problems: int = 100, spacing_rtol: float = 1e-5,
                  affine_atol: float = 1e-4) -> Tuple[Optional[RawDataset], List[RawDatasetError], bool]:
    """(dataset or None, problems, truncated): what ``validate_raw_dataset`` checks, without raising."""
    problems: List[RawDatasetError] = []
    try:
        dataset = load_raw_dataset(root, problems)
    except RawDatasetError as error:  # dataset.json unusable or folder missing: nothing else can be checked
        return None, [error], False
    stopped = False
    if check_contents:
        for case in dataset.training.values():
            if len(problems) >= max_problems:
                stopped = True
                break
            problems += check_case(case, dataset.dataset_json, spacing_rtol, affine_atol)
    return dataset, problems[:max_problems], stopped or len(problems) > max_problems


def validate_raw_dataset(root: PathLike, check_contents: bool = True, max_problems: int = 100,
                         spacing_rtol: float = 1e-5, affine_atol: float = 1e-4) -> RawDataset:
    """Checks an nnU-Net raw dataset before training and returns it listed.

    Checks ``dataset.json`` (valid JSON, required keys, channel names, background 0, consecutive labels, ignore label,
    regions with ``regions_class_order``, supported ``file_ending``), the folders and file names (every channel file of
    every case, a label per case and images per label, endings, ``numTraining``), and with ``check_contents`` every
    training case (files readable, channel count, no NaN, label values declared, image and label on the same grid:
    shape, spacing within ``spacing_rtol``, affine within ``affine_atol``).

    Raises:
        DatasetValidationError: listing every problem found (``.problems``, each a ``RawDatasetError`` subclass
            naming its file), at most ``max_problems``.
    """
    dataset, problems, truncated = find_problems(root, check_contents, max_problems, spacing_rtol, affine_atol)
    if problems:
        raise DatasetValidationError(root, problems, truncated)
    return dataset
