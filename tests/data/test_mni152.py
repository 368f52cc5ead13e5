"""The MNI152 tissue dataset: the labelling rule by hand, the 2x2x2 block grid, the slab split with its gaps, and the
written 2-D (PNG and one-slice NIfTI) and 3-D datasets on a small synthetic 'template' put in place of nilearn's maps:
valid nnU-Net raw datasets, labels and geometry as the rule says, written once. One slow test on the real template."""
import json

import numpy as np
import pytest

from vssm.data import mni152
from vssm.data.errors import DataError
from vssm.data.mni152 import (
    LABELS, MARKER, axial_slabs, block_affine, block_mean, read_split, tissue_labels, write_mni152_dataset,
)
from vssm.data.nnunet_raw import read_image, read_label, validate_raw_dataset

SHAPE = (20, 22, 40)  # (i, j, k): 40 axial slices, the brain in k = 4 .. 35
AFFINE = np.array([[1.0, 0, 0, -10], [0, 1, 0, -11], [0, 0, 1, -4], [0, 0, 0, 1]])


def synthetic_maps():
    """(T1, GM, WM, affine): an ellipsoid 'brain' of nested shells: WM core, GM shell, then a thin CSF shell."""
    grid = np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij")
    radius = np.sqrt(((grid[0] - 9.5) / 8) ** 2 + ((grid[1] - 10.5) / 9) ** 2 + ((grid[2] - 19.5) / 16) ** 2)
    wm = (radius < 0.5).astype(np.float32)
    gm = ((radius >= 0.5) & (radius < 0.8)).astype(np.float32)
    t1 = np.select([radius < 0.5, radius < 0.8, radius < 1.0], [0.85, 0.65, 0.35], 0.0).astype(np.float32)
    return t1, gm, wm, AFFINE.copy()


@pytest.fixture
def fake_template(monkeypatch):
    calls = []

    def load():
        calls.append(1)
        return synthetic_maps()
    monkeypatch.setattr(mni152, "load_nilearn_maps", load)
    return calls


def test_tissue_labels_rule_by_hand():
    t1 = np.array([0.1, 0.3, 0.3, 0.3, 0.3, 0.25])
    gm = np.array([0.9, 0.1, 0.6, 0.3, 0.5, 0.5])
    wm = np.array([0.0, 0.2, 0.3, 0.6, 0.5, 0.0])
    # outside the mask; other 0.7 wins; GM; WM; GM = WM tie -> lower label (GM); other = GM = 0.5 tie -> other
    assert tissue_labels(t1, gm, wm).tolist() == [0, 1, 2, 3, 2, 1]


def test_block_mean_and_its_affine():
    array = np.arange(5 * 4 * 3, dtype=float).reshape(5, 4, 3)
    means = block_mean(array, 2)
    assert means.shape == (2, 2, 1)  # the odd last voxel of axes 0 and 2 dropped
    assert means[1, 0, 0] == array[2:4, 0:2, 0:2].mean()
    affine = block_affine(AFFINE, 2)
    # the centre of the first block, voxel (0.5, 0.5, 0.5) of the 1 mm grid, is voxel (0, 0, 0) of the 2 mm grid
    np.testing.assert_allclose(affine @ [0, 0, 0, 1], AFFINE @ [0.5, 0.5, 0.5, 1])
    np.testing.assert_allclose(affine[:3, :3], 2 * AFFINE[:3, :3])


def test_axial_slabs_by_hand():
    labels = np.zeros((2, 2, 30), dtype=np.uint8)
    labels[:, :, 3:29] = 1  # brain in k = 3 .. 28: the last slab is partial
    slabs = axial_slabs(labels, slab=4, gap=2, val_every=3)
    assert slabs == [([3, 4, 5, 6], False), ([9, 10, 11, 12], False), ([15, 16, 17, 18], True),
                     ([21, 22, 23, 24], False), ([27, 28], False)]
    with pytest.raises(ValueError, match="val_every"):
        axial_slabs(labels, 4, 2, 1)
    with pytest.raises(DataError, match="no brain"):
        axial_slabs(np.zeros((2, 2, 3)), 4, 2, 3)


def expected_volume(spacing_mm):
    t1, gm, wm, affine = synthetic_maps()
    t1, gm, wm = (block_mean(a.astype(np.float64), spacing_mm) for a in (t1, gm, wm))
    return np.round(t1 * 255).astype(np.uint8), tissue_labels(t1, gm, wm), block_affine(affine, spacing_mm)


@pytest.mark.parametrize("spacing_mm", [1, 2])
def test_2d_png_dataset_is_valid_with_separate_slabs(tmp_path, fake_template, spacing_mm):
    folder = write_mni152_dataset(tmp_path, dim=2, spacing_mm=spacing_mm, slab_mm=4, gap_mm=2, val_every=3,
                                  min_brain_fraction=0.2)
    assert folder.name == f"Dataset950_MNI152Slices{spacing_mm}mm"
    dataset = validate_raw_dataset(folder)
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == LABELS and meta["channel_names"] == {"0": "T1"} and meta["file_ending"] == ".png"
    split = read_split(folder)
    train, val = set(split["train"]), set(split["val"])
    assert train and val and not train & val and train | val == set(dataset.training)
    # no training slice within the gap of a validation slice
    k_train, k_val = ([int(c.rsplit("z", 1)[1]) for c in cases] for cases in (train, val))
    gap_slices = 2 // spacing_mm
    assert min(abs(a - b) for a in k_train for b in k_val) > gap_slices
    image, labels, _ = expected_volume(spacing_mm)
    areas = (labels > 0).sum(axis=(0, 1))
    kept = sorted(k_train + k_val)
    assert all(areas[k] >= 0.2 * areas.max() for k in kept)
    k = kept[len(kept) // 2]
    case = dataset.training[f"mni152_z{k:03d}"]
    label, _ = read_label(case.label)
    picture, geometry = read_image(case.images)
    # rows anterior (high j) to posterior, columns along i
    np.testing.assert_array_equal(label, labels[:, ::-1, k].T)
    np.testing.assert_array_equal(picture[0], image[:, ::-1, k].T)
    assert set(np.unique(label)) <= {0, 1, 2, 3} and 3 in label
    assert fake_template == [1]


def test_2d_nifti_slices_keep_the_millimetres(tmp_path, fake_template):
    folder = write_mni152_dataset(tmp_path, dim=2, spacing_mm=2, file_ending=".nii.gz", slab_mm=4, gap_mm=2)
    dataset = validate_raw_dataset(folder)
    image, labels, affine = expected_volume(2)
    case_id = read_split(folder)["val"][0]
    k = int(case_id.rsplit("z", 1)[1])
    picture, geometry = read_image(dataset.training[case_id].images)
    label, _ = read_label(dataset.training[case_id].label)
    assert picture.shape == (1, 1, SHAPE[1] // 2, SHAPE[0] // 2) and geometry.spacing == (2.0, 2.0, 2.0)
    np.testing.assert_allclose(geometry.affine[:3, 3], (affine @ [0, 0, k, 1])[:3])  # the slice's position in mm
    np.testing.assert_array_equal(label[0], labels[:, :, k].T)
    np.testing.assert_array_equal(picture[0, 0], image[:, :, k].T)


def test_3d_slabs(tmp_path, fake_template):
    folder = write_mni152_dataset(tmp_path, dim=3, spacing_mm=1, slab_mm=8, gap_mm=2, val_every=2)
    assert folder.name == "Dataset951_MNI152Slabs1mm"
    dataset = validate_raw_dataset(folder)
    split = read_split(folder)
    _, labels, _ = expected_volume(1)
    slabs = axial_slabs(labels, 8, 2, 2)
    assert len(dataset.training) == len(slabs)
    assert split["val"] == [f"mni152_slab{n:02d}" for n, (_, is_val) in enumerate(slabs) if is_val]
    ks, _ = slabs[1]
    label, geometry = read_label(dataset.training["mni152_slab01"].label)
    np.testing.assert_array_equal(label, labels[:, :, ks[0]:ks[-1] + 1].transpose(2, 1, 0))
    np.testing.assert_allclose(geometry.affine, AFFINE @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, ks[0]],
                                                                   [0, 0, 0, 1]]))


def test_written_once_rebuilt_on_new_settings_and_foreign_folders_left_alone(tmp_path, fake_template):
    folder = write_mni152_dataset(tmp_path, slab_mm=4, gap_mm=2)
    stamp = (folder / "dataset.json").stat().st_mtime_ns
    assert write_mni152_dataset(tmp_path, slab_mm=4, gap_mm=2) == folder and fake_template == [1]
    assert (folder / "dataset.json").stat().st_mtime_ns == stamp
    assert json.loads((folder / MARKER).read_text())["slab_mm"] == 4.0
    write_mni152_dataset(tmp_path, slab_mm=6, gap_mm=2)  # other settings: rebuilt in place
    assert fake_template == [1, 1] and json.loads((folder / MARKER).read_text())["slab_mm"] == 6.0
    validate_raw_dataset(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no temporary folder left
    (folder / MARKER).unlink()
    with pytest.raises(DataError, match="not written by vssm.data.mni152"):
        write_mni152_dataset(tmp_path, slab_mm=4, gap_mm=2)
    with pytest.raises(ValueError, match="file_ending"):
        write_mni152_dataset(tmp_path, dim=3, file_ending=".png")


@pytest.mark.slow
def test_real_template_labels_and_dataset(tmp_path):
    pytest.importorskip("nilearn")
    t1, gm, wm, affine = mni152.load_nilearn_maps()
    assert t1.shape == (197, 233, 189) and np.allclose(np.diag(affine)[:3], 1.0)
    counts = np.bincount(tissue_labels(t1, gm, wm).ravel(), minlength=4)
    assert counts[1:].tolist() == [156568, 1091139, 635537]
    folder = write_mni152_dataset(tmp_path, dim=2)  # the quick start's: 1 mm axial slices
    dataset = validate_raw_dataset(folder)
    split = read_split(folder)
    assert (len(split["train"]), len(split["val"])) == (65, 36) and len(dataset.training) == 101
    _, geometry = read_image(dataset.training[split["val"][0]].images)
    assert geometry.shape == (233, 197)  # (j, i) of the 1 mm grid
