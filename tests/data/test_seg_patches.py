"""Patch sampling for segmentation training: shapes and dtypes (3-D, 2-D slices of volumes, 2-D images), padding of
small cases, nnU-Net's foreground oversampling (statistically), determinism by seed (and global RNGs untouched), the
augmentation's geometry, masking for use_mask_for_norm, and the 5-fold splits file."""
import json

import numpy as np
import pytest
import torch

from tests.data.phantoms import write_raw_dataset
from monai.data import get_track_meta

from vssm.data.seg_patches import (
    RandSpatialAugmentd, SegDataError, SegPatchDataset, SplitsFileError, choose_patch_start, crossval_splits,
    nnunet_augmentation, oversample_positions, read_or_write_splits, sampling_patch_size, unpack_case,
)
from vssm.seg.planner import plan_dataset
from vssm.seg.preprocess import preprocess_dataset, sample_class_locations, save_preprocessed_case


def write_case(folder, name, data, seg, classes=((1,),)):
    """A preprocessed case as vssm.seg.preprocess writes it (only what the sampler reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    properties = {"shape_before_cropping": list(seg.shape[1:]),
                  "class_locations": sample_class_locations(seg[0], classes)}
    save_preprocessed_case(folder, name, data.astype(np.float32), seg.astype(np.int16), properties)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """Preprocessed phantoms: (folder, plans configuration) for 3d_fullres and 2d of NIfTI volumes, 2d of PNGs."""
    root = tmp_path_factory.mktemp("phantoms")
    out = {}
    for dim in (3, 2):
        raw = write_raw_dataset(root / f"raw{dim}", dim=dim, num_cases=3)
        plans = plan_dataset(raw, None, num_foreground_voxels=2000)
        for name, config in plans["configurations"].items():
            folder = root / f"pre{dim}" / config["data_identifier"]
            preprocess_dataset(raw, plans, name, folder)
            out[f"{'nifti' if dim == 3 else 'png'}_{name}"] = (folder, config)
    return out


@pytest.mark.parametrize("which, channels, patch", [
    ("nifti_3d_fullres", 2, (10, 14, 16)), ("nifti_2d", 2, (14, 16)), ("png_2d", 3, (20, 24)),
])
@pytest.mark.parametrize("augment", [False, True])
def test_shapes_and_dtypes(phantoms, which, channels, patch, augment):
    folder, config = phantoms[which]
    assert tuple(config["patch_size"]) == patch
    dataset = SegPatchDataset(folder, ["case_000", "case_001", "case_002"], patch, augment=augment,
                              use_mask_for_norm=config["use_mask_for_norm"])
    assert len(dataset) == 3 and dataset.cases == ["case_000", "case_001", "case_002"]
    for index in range(3):
        item = dataset[index]
        assert item["image"].shape == (channels, *patch) and item["image"].dtype == torch.float32
        assert item["label"].shape == (1, *patch) and item["label"].dtype == torch.int64
        assert set(item["label"].unique().tolist()) <= {0, 1, 2}
        assert torch.isfinite(item["image"]).all()
        assert item["case"] == dataset.cases[index]
    forced = dataset[(1, 5, True)]  # forced foreground: some foreground in the patch
    assert (forced["label"] > 0).any()
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, channels, *patch) and batch["label"].shape == (2, 1, *patch)


def test_small_case_is_padded(tmp_path):
    data = np.arange(1, 1 + 4 * 5 * 6, dtype=np.float32).reshape(1, 4, 5, 6)
    seg = np.ones((1, 4, 5, 6))
    write_case(tmp_path, "small", data, seg)
    dataset = SegPatchDataset(tmp_path, ["small"], (8, 8, 8), augment=False)
    for seed in range(5):
        item = dataset.sample(0, seed, force_foreground=seed % 2 == 1)
        image, label = item["image"][0].numpy(), item["label"][0].numpy()
        assert image.shape == (8, 8, 8)
        assert image.sum() == data.sum()  # the whole case inside, zeros around it
        inside = image > 0
        assert np.array_equal(label == 1, inside) and inside.sum() == data.size
        np.testing.assert_array_equal(image[inside], np.sort(image[inside]))  # in order: a shifted copy


def test_oversampling_fraction(tmp_path):
    data = np.random.default_rng(0).normal(size=(1, 1, 64, 64)).astype(np.float32)
    seg = np.zeros((1, 1, 64, 64))
    seg[0, 0, 4:7, 4:7] = 1  # a small corner object: random 8x8 patches seldom hold it
    write_case(tmp_path, "case", data, seg)

    def fraction(p, samples=400):
        dataset = SegPatchDataset(tmp_path, ["case"], (8, 8), oversample_foreground=p, augment=False, seed=3)
        hits = 0
        for epoch in range(samples):
            dataset.set_epoch(epoch)
            hits += bool((dataset[0]["label"] > 0).any())
        return hits / samples
    by_chance = fraction(0.0)
    assert by_chance < 0.1
    # forced samples (33%) always hold foreground, the others by chance: 0.33 + 0.67 * by_chance, within ~4 sigma
    assert abs(fraction(0.33) - (0.33 + 0.67 * by_chance)) < 0.1
    assert fraction(1.0, samples=50) == 1.0
    assert oversample_positions(2) == [False, True]  # nnU-Net's rule: the last round(b * 0.33) of a batch
    assert oversample_positions(12) == [False] * 8 + [True] * 4


def test_determinism_by_seed(phantoms):
    folder, config = phantoms["nifti_3d_fullres"]
    cases = ["case_000", "case_001", "case_002"]
    numpy_state, torch_state = np.random.get_state()[1].copy(), torch.random.get_rng_state().clone()
    first = SegPatchDataset(folder, cases, config["patch_size"], augment=True, seed=11)
    second = SegPatchDataset(folder, cases, config["patch_size"], augment=True, seed=11)
    for index in range(3):
        a, b = first[index], second[index]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    a, b = first.sample(2, 99, True), second.sample(2, 99, True)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    # the sample depends on (seed, epoch, index): other seeds and epochs give other patches
    images = {first.sample(0, seed, False)["image"].sum().item() for seed in range(6)}
    assert len(images) > 1
    second.set_epoch(1)
    assert any(not torch.equal(first[i]["image"], second[i]["image"]) for i in range(3))
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert get_track_meta()  # MONAI's global switch is restored


def test_choose_patch_start_rules():
    rng = np.random.default_rng(0)
    locations = {"1": np.array([[30, 40]]), "2": np.zeros((0, 2), dtype=np.int64)}
    # forced: centred on the one voxel of the only present class
    assert choose_patch_start((64, 64), (16, 16), (0, 0), True, locations, rng) == [22, 32]
    # near the border the start stays >= -pad // 2 (it may reach past the far end, as nnU-Net's)
    assert choose_patch_start((64, 64), (16, 16), (4, 4), True, {"1": np.array([[0, 63]])}, rng) == [-2, 55]
    # unforced and without an ignore label: random within [-pad // 2, shape - size + pad // 2 + pad % 2]
    starts = np.array([choose_patch_start((20, 30), (8, 8), (3, 0), False, locations, rng) for _ in range(300)])
    assert starts[:, 0].min() == -2 and starts[:, 0].max() == 14 and starts[:, 1].min() == 0 and \
        starts[:, 1].max() == 22
    # with an ignore label, unforced samples centre on annotated voxels
    annotated = {"1": np.array([[30, 40]]), "-1,0,1": np.array([[10, 12]])}
    assert choose_patch_start((64, 64), (8, 8), (0, 0), False, annotated, rng) == [6, 8]
    assert choose_patch_start((64, 64), (8, 8), (0, 0), True, annotated, rng) == [26, 36]


def test_sampling_patch_size_by_hand():
    # 2-D +-180 deg (capped at 90): the vector (64, 64) rotated by 90 deg is (64, 64); / 0.85 -> 75
    assert sampling_patch_size((64, 64), np.pi) == (75, 75)
    # 3-D +-30 deg: rotating (64, 64, 64) about any axis gives 64 (cos 30 + sin 30) = 87.4 on one axis; / 0.85 -> 102
    assert sampling_patch_size((64, 64, 64), np.radians(30)) == (102, 102, 102)
    # dummy 2-D: in-plane 128 / 0.85 -> 150, the first axis unchanged
    assert sampling_patch_size((20, 128, 128), np.pi, dummy_2d=True) == (20, 150, 150)


def test_spatial_augmentation_geometry():
    image = torch.ones(1, 16, 16)
    label = torch.zeros(1, 16, 16)
    label[0, 6:10, 6:10] = 1
    plain = RandSpatialAugmentd(patch_size=(8, 8), p_rotation=0, p_scaling=0)
    plain.set_random_state(0)
    out = plain({"image": image, "label": label})
    assert torch.equal(torch.as_tensor(out["label"]), label[:, 4:12, 4:12])  # the centre, cut without interpolation
    zoom_out = RandSpatialAugmentd(patch_size=(16, 16), p_rotation=0, p_scaling=1, scaling=(1.5, 1.5))
    zoom_out.set_random_state(0)
    out = zoom_out({"image": image, "label": label})
    out_label, out_image = torch.as_tensor(out["label"])[0], torch.as_tensor(out["image"])[0]
    assert out_label[0, 0] == -1 and out_image[0, 0] == 0  # outside the input: image 0, label -1
    assert out_label[8, 8] == 1 and out_image[8, 8] == 1
    assert (out_label == 1).sum() < 16  # the object shrank


def test_rotation_keeps_image_and_label_aligned():
    label = torch.zeros(1, 24, 24)
    label[0, 5:15, 8:20] = 1
    spatial = RandSpatialAugmentd(patch_size=(16, 16), p_rotation=1, p_scaling=1)
    for seed in range(10):
        spatial.set_random_state(seed)
        out = spatial({"image": label.clone(), "label": label.clone()})
        assert spatial.angles is not None and spatial.scale is not None
        agree = ((out["image"] > 0.5) == (out["label"] == 1)) | (out["label"] < 0)
        assert agree.float().mean() > 0.95  # bilinear image and nearest label: the same geometry


def test_augmentation_changes_most_samples():
    image = torch.linspace(-1, 1, 20 * 20).reshape(1, 20, 20)
    label = (image > 0).float()
    augment = nnunet_augmentation((16, 16))
    plain = image[:, 2:18, 2:18]
    changed = 0
    for seed in range(40):
        augment.set_random_state(seed)
        out = augment({"image": image.clone(), "label": label.clone()})
        assert out["image"].shape == (1, 16, 16) and out["label"].shape == (1, 16, 16)
        changed += not torch.allclose(torch.as_tensor(out["image"]), plain)
    assert changed >= 30  # nothing applied has a chance of about 4%


def test_use_mask_for_norm_and_outside_label(tmp_path):
    data = np.full((2, 1, 10, 12), 5.0)
    seg = np.zeros((1, 1, 10, 12))
    seg[0, 0, :, :3] = -1  # outside the non-zero mask
    seg[0, 0, 4:6, 6:8] = 1
    write_case(tmp_path, "masked", data, seg)
    item = SegPatchDataset(tmp_path, ["masked"], (10, 12), augment=False, use_mask_for_norm=[True, False])[0]
    assert item["label"].min() == 0  # -1 becomes background
    assert (item["image"][0, :, :3] == 0).all() and (item["image"][0, :, 3:] == 5).all()
    assert (item["image"][1] == 5).all()  # a channel normalised without the mask keeps its values


def test_dummy_2d_augmentation_of_anisotropic_patches(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(size=(1, 6, 40, 40))
    seg = np.zeros((1, 6, 40, 40))
    seg[0, :, 10:30, 10:30] = 1
    write_case(tmp_path, "aniso", data, seg)
    dataset = SegPatchDataset(tmp_path, ["aniso"], (4, 16, 16), augment=True)  # 16 / 4 > 3: in-plane augmentation
    assert dataset.sampled_size == (4, 18, 18)
    for seed in range(8):
        item = dataset.sample(0, seed, True)
        assert item["image"].shape == (1, 4, 16, 16) and set(item["label"].unique().tolist()) <= {0, 1}


def test_unpack_and_errors(tmp_path):
    write_case(tmp_path, "case", np.ones((1, 4, 4, 4)), np.zeros((1, 4, 4, 4)))
    data_path, seg_path = unpack_case(tmp_path, "case")
    assert np.load(data_path, mmap_mode="r").shape == (1, 4, 4, 4) and np.load(seg_path).dtype == np.int16
    packed = SegPatchDataset(tmp_path, ["case"], (4, 4, 4), augment=False, unpack=False)
    assert packed[0]["image"].shape == (1, 4, 4, 4)
    with pytest.raises(SegDataError, match="a 2-D patch size cannot be sampled from 4-D data"):
        write_case(tmp_path, "four_d", np.ones((1, 2, 2, 2, 2)), np.zeros((1, 2, 2, 2, 2)))
        SegPatchDataset(tmp_path, ["four_d"], (2, 2), augment=False)[0]
    (tmp_path / "bad.npz").write_bytes(b"truncated")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SegDataError, match="bad.npz"):
        SegPatchDataset(tmp_path, ["bad"], (4, 4, 4))
    with pytest.raises(SegDataError, match="missing.npz"):
        SegPatchDataset(tmp_path, ["missing"], (4, 4, 4))
    with pytest.raises(SegDataError, match="bad.json"):
        SegPatchDataset(tmp_path, ["bad"], (4, 4, 4), unpack=False).properties(0)


def test_splits_round_trip_and_errors(tmp_path):
    cases = [f"case_{i:03d}" for i in range(12)][::-1]
    splits = read_or_write_splits(tmp_path, cases)
    assert json.loads((tmp_path / "splits_final.json").read_text()) == splits
    assert len(splits) == 5
    for split in splits:  # nnU-Net's format: every case validated once, train = the rest, sorted ids
        assert sorted(split["train"] + split["val"]) == sorted(cases) and split["val"] == sorted(split["val"])
    assert sorted(c for split in splits for c in split["val"]) == sorted(cases)
    assert [len(s["val"]) for s in splits] == [3, 3, 2, 2, 2]  # KFold: the first folds take the remainder
    assert splits == crossval_splits(cases)  # the same for any order of the case list
    custom = [{"train": ["case_000"], "val": ["case_001"]}]
    (tmp_path / "splits_final.json").write_text(json.dumps(custom))
    assert read_or_write_splits(tmp_path, cases) == custom  # an existing file wins
    (tmp_path / "splits_final.json").write_text('[{"train": ["case_000"], "val": ["case_001"],}]')
    with pytest.raises(SplitsFileError, match="splits_final.json.*not valid JSON"):
        read_or_write_splits(tmp_path, cases)
    (tmp_path / "splits_final.json").write_text('[{"train": ["case_000"]}]')
    with pytest.raises(SplitsFileError, match="fold 0 must be"):
        read_or_write_splits(tmp_path, cases)
    (tmp_path / "splits_final.json").write_text('[{"train": ["case_000"], "val": ["nope"]}]')
    with pytest.raises(SplitsFileError, match="nope"):
        read_or_write_splits(tmp_path, cases)
    with pytest.raises(ValueError, match="at least 5 cases"):
        read_or_write_splits(tmp_path / "few", cases[:3])
