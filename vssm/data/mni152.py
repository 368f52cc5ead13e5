"""The MNI152 2009 brain template written as an nnU-Net raw dataset of four tissue labels, with nothing to download.

nilearn's wheel ships the MNI ICBM152 2009 T1 template with grey- and white-matter probability maps (files
``mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``, 197x233x189 voxels of 1 mm, read by
``nilearn.datasets.load_mni152_template`` / ``load_mni152_gm_template`` / ``load_mni152_wm_template`` at
``resolution=1``, which only read the packaged files). The segmentation quick start trains on it.

Labels (the rule): inside the brain mask ``T1 > 0.2`` (nilearn's ``load_mni152_brain_mask`` rule; T1 scaled to [0, 1]),
each voxel takes the largest of ``other = 1 - GM - WM`` (CSF and other tissue), ``GM`` and ``WM``: label 1
(``csf_other``), 2 (``grey_matter``) or 3 (``white_matter``); outside the mask label 0 (``background``). At 1 mm this
gives 156,568 / 1,091,139 / 635,537 voxels of labels 1 / 2 / 3. With ``spacing_mm=2`` the T1 and the probability maps
are first averaged over 2x2x2 blocks (the odd last voxel of an axis dropped; affine scaled and shifted to the block
centres), then labelled by the same rule.

The image channel (``{"0": "T1"}``, a per-image z-score in nnU-Net) is the T1 as uint8 (0-255, the template's own
8-bit values at 1 mm).

Cases come from axial slabs: the axial extent of the brain is cut, bottom to top, into slabs of ``slab_mm``
separated by unused gaps of ``gap_mm``; every ``val_every``-th slab (slabs ``val_every - 1``, ``2 val_every - 1``,
... counting from 0, so that the small bottom slab is not the first) is validation, the others training;
``splits_final.json`` (nnU-Net's format, one fold) lists them, so no training slice lies within ``gap_mm`` of a
validation slice.

* ``dim=2``: one case per axial slice of a slab whose brain area is at least ``min_brain_fraction`` of the largest
  slice's. ``.png`` (default): the slice as a uint8 image, rows anterior to posterior, columns left to right in MNI x
  (a natural image, spacing (1, 1) pixels); ``.nii.gz``: a one-slice NIfTI with the slice's affine (millimetres kept).
* ``dim=3``: one NIfTI case per slab (the whole axial plane, ``slab_mm`` thick).

The dataset is written once: into a temporary folder beside the target, then renamed into place; the marker file
``.mni152.json`` (the settings) says it is complete. A folder with the same settings is left as it is; one written
with other settings is rebuilt; a folder without the marker is never touched.

    from vssm.data.mni152 import write_mni152_dataset
    folder = write_mni152_dataset('data/nnUNet_raw', dim=2)   # .../Dataset950_MNI152Slices1mm: 65 + 36 slices
"""
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from .errors import DataError
from .nnunet_raw import ImageGeometry, write_image

LABELS = {"background": 0, "csf_other": 1, "grey_matter": 2, "white_matter": 3}
BRAIN_THRESHOLD = 0.2  # nilearn's load_mni152_brain_mask threshold on the [0, 1] T1
MARKER = ".mni152.json"
FORMAT_VERSION = 2  # bumped when the written content changes: older datasets are rebuilt
DATASET_IDS = {2: 950, 3: 951}
REFERENCE = ("Fonov et al., Unbiased average age-appropriate atlases for pediatric studies, NeuroImage 2011; "
             "Fonov et al., Unbiased nonlinear average age-appropriate brain templates from birth to adulthood, "
             "NeuroImage 2009; Collins et al. 1999. MNI ICBM152 2009 "
             "(http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009), as shipped in nilearn")
LICENCE = ("ICBM152 2009 template: the copyright notice of the McConnell Brain Imaging Centre, Montreal Neurological "
           "Institute (see the URL in 'reference'; nilearn lists its licence as unknown); nilearn: BSD-3-Clause")
PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class Mni152Settings:
    """What a written dataset depends on (stored in the marker file)."""
    dim: int
    spacing_mm: int
    file_ending: str
    slab_mm: float
    gap_mm: float
    val_every: int
    min_brain_fraction: float
    version: int = FORMAT_VERSION


def dataset_name(dim: int, spacing_mm: int) -> str:
    """The dataset folder's name, e.g. ``Dataset950_MNI152Slices1mm`` (2-D) or ``Dataset951_MNI152Slabs2mm``."""
    return f"Dataset{DATASET_IDS[dim]:03d}_MNI152{'Slices' if dim == 2 else 'Slabs'}{spacing_mm}mm"


# the template --------------------------------------------------------------------------------------------------------


def load_nilearn_maps() -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(T1, GM, WM, affine): the packaged 1 mm maps as float64 in [0, 1], indexed (i, j, k) = (x, y, z) as in the file.

    Raises:
        DataError: nilearn is not installed.
    """
    try:
        from nilearn import datasets
    except ImportError:
        raise DataError("the MNI152 quick-start dataset needs nilearn, which ships the template: pip install nilearn "
                        "(or pip install 'vssm[seg]')") from None
    images = [datasets.load_mni152_template(resolution=1), datasets.load_mni152_gm_template(resolution=1),
              datasets.load_mni152_wm_template(resolution=1)]
    arrays = [image.get_fdata() for image in images]
    return arrays[0], arrays[1], arrays[2], np.array(images[0].affine, dtype=np.float64)


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor``-wide blocks along every axis; the remainder of an axis not divisible by ``factor`` is
    dropped."""
    if factor == 1:
        return array
    cut = [n // factor * factor for n in array.shape]
    array = array[tuple(slice(0, c) for c in cut)]
    shape = [v for c in cut for v in (c // factor, factor)]
    return array.reshape(shape).mean(axis=tuple(range(1, 2 * array.ndim, 2)))


def block_affine(affine: np.ndarray, factor: int) -> np.ndarray:
    """The affine of ``block_mean(array, factor)``: voxels ``factor`` times larger, centred on their blocks."""
    scale = np.diag([factor] * 3 + [1.0])
    scale[:3, 3] = (factor - 1) / 2
    return affine @ scale


def tissue_labels(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, brain_threshold: float = BRAIN_THRESHOLD
                  ) -> np.ndarray:
    """uint8 labels of the module's rule: 0 outside ``t1 > brain_threshold``, inside 1 + argmax(1 - gm - wm, gm, wm)
    (ties go to the lower label)."""
    other = np.clip(1.0 - gm - wm, 0.0, None)
    tissue = np.argmax(np.stack([other, gm, wm]), axis=0).astype(np.uint8) + 1
    return np.where(t1 > brain_threshold, tissue, 0).astype(np.uint8)


def template_volume(spacing_mm: int = 1) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T1 uint8, labels uint8, affine) of the template at ``spacing_mm`` (1 or 2), indexed (i, j, k)."""
    if spacing_mm not in (1, 2):
        raise ValueError(f"spacing_mm must be 1 or 2 (the template's 1 mm grid, or 2x2x2 block means), got "
                         f"{spacing_mm}")
    t1, gm, wm, affine = load_nilearn_maps()
    t1, gm, wm = (block_mean(np.asarray(a, dtype=np.float64), spacing_mm) for a in (t1, gm, wm))
    labels = tissue_labels(t1, gm, wm)
    image = np.clip(np.round(t1 * 255), 0, 255).astype(np.uint8)
    return image, labels, block_affine(affine, spacing_mm)


# the split ----------------------------------------------------------------------------------------------------------


def axial_slabs(labels: np.ndarray, slab: int, gap: int, val_every: int) -> List[Tuple[List[int], bool]]:
    """The slabs of the brain's axial extent (last axis of an (i, j, k) volume), bottom to top: (slice indices,
    is_validation) per slab, ``gap`` slices left out between slabs; slabs val_every - 1, 2 val_every - 1, ... are
    validation."""
    if slab < 1 or gap < 0 or val_every < 2:
        raise ValueError(f"need slab >= 1 slice, gap >= 0, val_every >= 2; got {slab}, {gap}, {val_every}")
    occupied = np.flatnonzero(labels.any(axis=(0, 1)))
    if occupied.size == 0:
        raise DataError("the template holds no brain voxel (empty label map)")
    slabs, start, index = [], int(occupied[0]), 0
    while start <= occupied[-1]:
        stop = min(start + slab, int(occupied[-1]) + 1)
        slabs.append((list(range(start, stop)), index % val_every == val_every - 1))
        start, index = stop + gap, index + 1
    return slabs


def _slices(mm: float, spacing_mm: int, name: str, minimum: int) -> int:
    count = int(round(mm / spacing_mm))
    if count < minimum:
        raise ValueError(f"{name}={mm} mm is {count} slice(s) at {spacing_mm} mm; need at least {minimum}")
    return count


# writing ------------------------------------------------------------------------------------------------------------


def _dataset_json(settings: Mni152Settings, num_training: int) -> dict:
    kind = "axial slices" if settings.dim == 2 else "axial slabs"
    return {
        "channel_names": {"0": "T1"},
        "labels": dict(LABELS),
        "numTraining": num_training,
        "file_ending": settings.file_ending,
        "name": dataset_name(settings.dim, settings.spacing_mm).split("_", 1)[1],
        "description": (f"MNI ICBM152 2009 T1 template ({settings.spacing_mm} mm), {kind}; labels from nilearn's GM "
                        f"and WM probability maps inside T1 > {BRAIN_THRESHOLD}: the largest of 1 - GM - WM "
                        f"(csf_other), GM, WM. Written by vssm.data.mni152"),
        "reference": REFERENCE,
        "licence": LICENCE,
        "release": "nilearn mni_icbm152_*_tal_nlin_sym_09a_converted",
    }


def _write_cases(folder: Path, image: np.ndarray, labels: np.ndarray, affine: np.ndarray, settings: Mni152Settings
                 ) -> Dict[str, List[str]]:
    """Writes imagesTr / labelsTr; returns {"train": [...], "val": [...]} case ids."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    ending = settings.file_ending
    slab = _slices(settings.slab_mm, settings.spacing_mm, "slab_mm", 1)
    gap = _slices(settings.gap_mm, settings.spacing_mm, "gap_mm", 0)
    split = {"train": [], "val": []}
    areas = (labels > 0).sum(axis=(0, 1))
    for number, (ks, is_val) in enumerate(axial_slabs(labels, slab, gap, settings.val_every)):
        if settings.dim == 3:
            cases = [(f"mni152_slab{number:02d}", slice(ks[0], ks[-1] + 1))]
        else:
            cases = [(f"mni152_z{k:03d}", slice(k, k + 1)) for k in ks
                     if areas[k] >= settings.min_brain_fraction * areas.max()]
        for case, ks_slice in cases:
            volume, label = image[:, :, ks_slice], labels[:, :, ks_slice]
            shift = np.eye(4)
            shift[2, 3] = ks_slice.start
            case_affine = affine @ shift
            if ending == ".png":  # (j, i) plane, rows flipped so that anterior is up
                arrays = (volume[:, ::-1, 0].T, label[:, ::-1, 0].T)
                geometry = None
            else:  # nnU-Net axis order (k, j, i) = the file's axes reversed, the affine kept
                arrays = (volume.transpose(2, 1, 0), label.transpose(2, 1, 0))
                geometry = ImageGeometry(arrays[0].shape, (float(settings.spacing_mm),) * 3, case_affine)
            write_image(np.ascontiguousarray(arrays[0]), folder / "imagesTr" / f"{case}_0000{ending}", geometry)
            write_image(np.ascontiguousarray(arrays[1]), folder / "labelsTr" / f"{case}{ending}", geometry,
                        is_label=True)
            split["val" if is_val else "train"].append(case)
    return split


def _read_marker(folder: Path):
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def write_mni152_dataset(root: PathLike, dim: int = 2, spacing_mm: int = 1, file_ending: Optional[str] = None,
                         slab_mm: Optional[float] = None, gap_mm: float = 4.0, val_every: int = 3,
                         min_brain_fraction: float = 0.1) -> Path:
    """Writes the MNI152 tissue dataset under ``root`` once and returns its folder (see the module docstring).

    Args:
        root: The nnU-Net raw folder that receives ``Dataset95x_MNI152...``.
        dim: 2 (axial slices) or 3 (axial slabs).
        spacing_mm: 1 (the template's grid; the 2-D quick start's) or 2 (2x2x2 block means; the 3-D one's).
        file_ending: ``.png`` (default for 2-D) or ``.nii.gz`` (3-D always).
        slab_mm: Slab thickness (default 12 mm for 2-D, 24 mm for 3-D).
        gap_mm: Unused gap between slabs.
        val_every: Every ``val_every``-th slab is validation.
        min_brain_fraction: 2-D: slices whose brain area is below this fraction of the largest are left out.

    Returns:
        The dataset folder, holding ``dataset.json``, ``imagesTr``, ``labelsTr`` and ``splits_final.json``.

    Raises:
        DataError: nilearn missing, or the target folder exists without this module's marker.
    """
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    file_ending = file_ending or (".png" if dim == 2 else ".nii.gz")
    if file_ending not in ((".png", ".nii.gz") if dim == 2 else (".nii.gz",)):
        raise ValueError(f"file_ending {file_ending!r} is not available for dim={dim}; use "
                         f"{'.png or .nii.gz' if dim == 2 else '.nii.gz'}")
    settings = Mni152Settings(dim, int(spacing_mm), file_ending, float(slab_mm or (12.0 if dim == 2 else 24.0)),
                              float(gap_mm), int(val_every), float(min_brain_fraction))
    root = Path(root)
    folder = root / dataset_name(dim, settings.spacing_mm)
    if folder.exists():
        marker = _read_marker(folder)
        if marker == asdict(settings):
            return folder
        if marker is None:
            raise DataError(f"{folder} exists but was not written by vssm.data.mni152 (no {MARKER}, or a "
                            f"half-deleted one); remove it or pick another root")
    root.mkdir(parents=True, exist_ok=True)
    image, labels, affine = template_volume(settings.spacing_mm)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}."))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is owner-only; the dataset gets the usual permissions
    try:
        split = _write_cases(tmp, image, labels, affine, settings)
        num_cases = len(split["train"]) + len(split["val"])
        (tmp / "dataset.json").write_text(json.dumps(_dataset_json(settings, num_cases), indent=2))
        (tmp / "splits_final.json").write_text(json.dumps([split], indent=2))
        (tmp / MARKER).write_text(json.dumps(asdict(settings), indent=2))
        if folder.exists():  # written with other settings: replaced
            stale = folder.with_name(f".{folder.name}.stale{os.getpid()}")
            os.replace(folder, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first
            if _read_marker(folder) != asdict(settings):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def read_split(folder: PathLike) -> Dict[str, List[str]]:
    """The training and validation case ids of a written dataset (fold 0 of its ``splits_final.json``)."""
    return json.loads((Path(folder) / "splits_final.json").read_text())[0]
