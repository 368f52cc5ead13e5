"""Preprocessing a raw dataset for a plans configuration: the files per case, equality with ``preprocess_case`` on the
transposed volume, class locations, resuming (finished cases skipped, changed settings redone), 2-D images as one-slice
volumes, parallel workers, and errors that name the file."""
import json

import numpy as np
import pytest

from tests.data.phantoms import write_raw_dataset
from tests.tools.helpers import load_tool
from vssm.data.medical_transforms import preprocess_case
from vssm.data.nnunet_raw import CorruptImageError, load_raw_dataset, read_image, read_label
from vssm.seg.planner import plan_dataset
from vssm.seg.preprocess import (
    PreprocessingError, load_preprocessed_case, preprocess_dataset, sample_class_locations,
)

FEW_SAMPLES = 2000


@pytest.fixture(scope="module")
def transposed(tmp_path_factory):
    """A raw dataset whose coarse axis is the files' last one, and its plans (transpose_forward [2, 0, 1])."""
    root = tmp_path_factory.mktemp("transposed")
    raw = write_raw_dataset(root / "raw", num_cases=3, spacing=(0.7, 0.8, 2.5), shape=(16, 14, 10))
    plans = plan_dataset(raw, root / "pre" / "nnUNetPlans.json", num_foreground_voxels=FEW_SAMPLES)
    return raw, plans


def test_preprocess_3d_equals_preprocess_case_on_the_transposed_volume(transposed, tmp_path):
    raw, plans = transposed
    assert plans["transpose_forward"] == [2, 0, 1]
    done = preprocess_dataset(raw, plans, "3d_fullres", tmp_path)
    assert done == ["case_000", "case_001", "case_002"]
    data, seg, properties = load_preprocessed_case(tmp_path, "case_001")
    assert data.dtype == np.float32 and seg.dtype == np.int16
    assert data.shape[0] == 2 and seg.shape == (1,) + data.shape[1:]
    case = load_raw_dataset(raw).training["case_001"]
    image, geometry = read_image(case.images)
    label, _ = read_label(case.label)
    config = plans["configurations"]["3d_fullres"]
    expected, expected_seg, expected_props = preprocess_case(
        image.transpose(0, 3, 1, 2), label.transpose(2, 0, 1), [geometry.spacing[a] for a in (2, 0, 1)],
        config["spacing"], config["normalization_schemes"],
        {"foreground_intensity_properties_per_channel": plans["foreground_intensity_properties_per_channel"]},
        use_mask=config["use_mask_for_norm"])
    np.testing.assert_array_equal(data, expected)
    np.testing.assert_array_equal(seg[0], expected_seg)
    assert properties["shape_before_cropping"] == [10, 16, 14]  # the (16, 14, 10) file volume, coarse axis first
    assert properties["transpose_forward"] == [2, 0, 1]
    assert properties["geometry"]["shape"] == [16, 14, 10]
    assert np.allclose(properties["geometry"]["affine"], geometry.affine)
    for key in ("spacing", "target_spacing", "bbox_used_for_cropping", "shape_after_cropping_and_before_resampling"):
        assert np.allclose(np.asarray(properties[key], dtype=float), np.asarray(expected_props[key], dtype=float))
    # class locations: every sampled voxel holds its class; all voxels here (fewer than 10000 per class)
    assert set(properties["class_locations"]) == {"1", "2"}
    for key, locations in properties["class_locations"].items():
        assert len(locations) == np.count_nonzero(seg[0] == int(key))
        assert np.all(seg[0][tuple(locations.T)] == int(key))


def test_preprocess_2d_configuration_and_resume(transposed, tmp_path):
    raw, plans = transposed
    assert preprocess_dataset(raw, plans, "2d", tmp_path) == ["case_000", "case_001", "case_002"]
    data, seg, properties = load_preprocessed_case(tmp_path, "case_000")
    # the 2-D spacing applies in-plane; the slices keep theirs
    assert np.allclose(properties["target_spacing"], [properties["spacing"][0]] + plans["configurations"]["2d"]
                       ["spacing"])
    stamp = (tmp_path / "case_000.npz").stat().st_mtime_ns
    assert preprocess_dataset(raw, plans, "2d", tmp_path) == []  # everything done: skipped
    (tmp_path / "case_002.json").unlink()  # an interrupted case (the json is written last)
    assert preprocess_dataset(raw, plans, "2d", tmp_path) == ["case_002"]
    assert (tmp_path / "case_000.npz").stat().st_mtime_ns == stamp
    changed = json.loads(json.dumps(plans))
    changed["configurations"]["2d"]["spacing"] = [1.0, 1.0]
    assert preprocess_dataset(raw, changed, "2d", tmp_path, cases=["case_001"]) == ["case_001"]  # settings differ
    assert load_preprocessed_case(tmp_path, "case_001")[2]["target_spacing"][1:] == [1.0, 1.0]
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_preprocess_png_as_one_slice_volumes(tmp_path):
    raw = write_raw_dataset(tmp_path / "raw", dim=2, num_cases=3)
    plans = plan_dataset(raw, None, num_foreground_voxels=FEW_SAMPLES)
    preprocess_dataset(raw, plans, "2d", tmp_path / "out")
    data, seg, properties = load_preprocessed_case(tmp_path / "out", "case_000")
    assert data.shape == (3, 1, 20, 24) and seg.shape == (1, 1, 20, 24)
    assert np.allclose(data.reshape(3, -1).mean(1), 0, atol=1e-5)  # R, G, B: z-score per image
    assert properties["class_locations"]["1"].shape[1] == 3


def test_parallel_workers_write_the_same_files(transposed, tmp_path):
    raw, plans = transposed
    preprocess_dataset(raw, plans, "3d_fullres", tmp_path / "serial")
    assert preprocess_dataset(raw, plans, "3d_fullres", tmp_path / "parallel", num_workers=2) == \
        ["case_000", "case_001", "case_002"]
    for case in ("case_000", "case_002"):
        a, b = load_preprocessed_case(tmp_path / "serial", case), load_preprocessed_case(tmp_path / "parallel", case)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_sample_class_locations_rules():
    seg = np.zeros((40, 50), dtype=np.int16)
    seg[:40, :30] = 1  # 1200 voxels
    seg[0, 40] = 2
    locations = sample_class_locations(seg, [(1,), (2,), (3,), (1, 2)], num_samples=10)
    # at most num_samples, raised to 1% of the class: max(10, ceil(12)) = 12 of label 1, ceil(12.01) = 13 of the
    # region (1, 2)
    assert len(locations["1"]) == 12 and len(locations["1,2"]) == 13
    assert locations["2"].tolist() == [[0, 40]]
    assert locations["3"].shape == (0, 2)
    assert len({tuple(v) for v in locations["1"]}) == 12  # without replacement
    assert np.all(seg[tuple(locations["1"].T)] == 1) and np.all(np.isin(seg[tuple(locations["1,2"].T)], [1, 2]))
    again = sample_class_locations(seg, [(1,), (2,), (3,), (1, 2)], num_samples=10)
    assert all(np.array_equal(locations[k], again[k]) for k in locations)  # seeded


def test_errors_name_the_file(transposed, tmp_path):
    raw, plans = transposed
    preprocess_dataset(raw, plans, "3d_fullres", tmp_path, cases=["case_000"])
    (tmp_path / "case_000.npz").write_bytes(b"not a zip file")
    with pytest.raises(PreprocessingError, match="case_000.npz"):
        load_preprocessed_case(tmp_path, "case_000")
    with pytest.raises(PreprocessingError, match="case_009.json"):
        load_preprocessed_case(tmp_path, "case_009")
    with pytest.raises(PreprocessingError, match="case_7"):
        preprocess_dataset(raw, plans, "3d_fullres", tmp_path, cases=["case_7"])
    broken = write_raw_dataset(tmp_path / "broken", broken="corrupt_nifti")
    with pytest.raises(CorruptImageError, match="case_001_0000.nii.gz"):
        preprocess_dataset(broken, plans, "3d_fullres", tmp_path / "out")


def test_preprocess_seg_tool(transposed, tmp_path, capsys):
    raw, plans = transposed
    plans_file = tmp_path / "nnUNetPlans.json"
    plans_file.write_text(json.dumps(plans))
    tool = load_tool("preprocess_seg")
    assert tool.main([str(raw), "-p", str(plans_file), "-c", "2d"]) == 0
    assert sorted(p.name for p in (tmp_path / "nnUNetPlans_2d").glob("*.npz")) == \
        ["case_000.npz", "case_001.npz", "case_002.npz"]
    assert "2d: 3 case(s) preprocessed" in capsys.readouterr().out
    assert tool.main([str(raw), "-p", str(plans_file), "-c", "3d_lowres"]) == 2
    assert "3d_lowres" in capsys.readouterr().err
