"""The nnU-Net raw-format reader: a valid phantom dataset lists and reads with its geometry, every broken rule is
reported by a named error naming the file, all problems of a dataset come in one report, and NIfTI / PNG round trips
keep the affine."""
import json

import nibabel
import numpy as np
import pytest

from vssm.data.errors import DataError
from vssm.data.nnunet_raw import (
    AffineMismatchError, CaseCountError, CorruptImageError, DatasetJsonError, DatasetValidationError,
    EmptyDatasetError, FileNamingError, ImageGeometry, InvalidValueError, LabelDefinitionError, MissingChannelError,
    NonConsecutiveLabelsError, ShapeMismatchError, SpacingMismatchError, UnexpectedLabelError, find_problems,
    load_raw_dataset, parse_labels, read_dataset_json, read_image, read_label, validate_raw_dataset, write_image,
    write_segmentation,
)

from .phantoms import BROKEN_RULES, SHAPE_2D, SHAPE_3D, SPACING_3D, nifti_affine, phantom_3d, save_nifti, \
    write_raw_dataset


@pytest.fixture(scope="module")
def dataset_3d(tmp_path_factory):
    return write_raw_dataset(tmp_path_factory.mktemp("raw3d"), dim=3)


def test_valid_3d_dataset_lists_and_reads_with_geometry(dataset_3d):
    dataset = validate_raw_dataset(dataset_3d)
    assert list(dataset.training) == ["case_000", "case_001", "case_002"] and list(dataset.test) == ["test_000"]
    assert dataset.dataset_json.channel_names == ["CT", "T2"] and dataset.labels.all_labels == (0, 1, 2)
    case = dataset.training["case_001"]
    assert [p.name for p in case.images] == ["case_001_0000.nii.gz", "case_001_0001.nii.gz"]
    image, geometry = read_image(case.images)
    label, label_geometry = read_label(case.label)
    expected_image, expected_label = phantom_3d(1)
    assert image.shape == (2, *SHAPE_3D) and image.dtype == np.float32
    np.testing.assert_allclose(image[0], expected_image)
    np.testing.assert_array_equal(label, expected_label)
    assert np.issubdtype(label.dtype, np.integer)
    np.testing.assert_allclose(geometry.spacing, SPACING_3D, rtol=1e-6)  # array-axis order (nnU-Net's)
    np.testing.assert_allclose(geometry.affine, nifti_affine())
    assert geometry.mismatch(label_geometry) is None


def test_valid_2d_rgb_dataset(tmp_path):
    dataset = validate_raw_dataset(write_raw_dataset(tmp_path, dim=2))
    case = dataset.training["case_000"]
    assert case.images[1:] == [None, None]  # R, G, B live in the one _0000.png
    image, geometry = read_image(case.images[:1])
    assert image.shape == (3, *SHAPE_2D) and geometry.spacing == (1.0, 1.0) and geometry.affine is None
    label, _ = read_label(case.label)
    assert set(np.unique(label)) == {0, 1}


EXPECTED = {  # rule -> (error class, text in the path of the first such problem)
    "invalid_json": (DatasetJsonError, "dataset.json"),
    "missing_keys": (DatasetJsonError, "dataset.json"),
    "no_background": (LabelDefinitionError, "dataset.json"),
    "nonconsecutive": (NonConsecutiveLabelsError, "dataset.json"),
    "ignore_not_last": (LabelDefinitionError, "dataset.json"),
    "regions_without_order": (LabelDefinitionError, "dataset.json"),
    "missing_channel": (MissingChannelError, "imagesTr"),
    "unexpected_label": (UnexpectedLabelError, "labelsTr/case_001.nii.gz"),
    "shape_mismatch": (ShapeMismatchError, "labelsTr/case_001.nii.gz"),
    "spacing_mismatch": (SpacingMismatchError, "labelsTr/case_001.nii.gz"),
    "affine_mismatch": (AffineMismatchError, "labelsTr/case_001.nii.gz"),
    "empty_labels": (EmptyDatasetError, "labelsTr"),
    "corrupt_nifti": (CorruptImageError, "imagesTr/case_001_0000.nii.gz"),
    "num_training": (CaseCountError, "dataset.json"),
    "file_ending": (FileNamingError, "imagesTr/case_002_0000.nii"),
    "no_channel_index": (FileNamingError, "imagesTr/case_001.nii.gz"),
    "nan_image": (InvalidValueError, "imagesTr/case_001_0000.nii.gz"),
}


def test_every_broken_rule_has_an_expectation():
    assert set(EXPECTED) == set(BROKEN_RULES)


@pytest.mark.parametrize("rule", BROKEN_RULES)
def test_broken_rule_is_reported_by_name_and_file(tmp_path, rule):
    folder = write_raw_dataset(tmp_path, broken=rule)
    with pytest.raises(DatasetValidationError) as info:
        validate_raw_dataset(folder)
    error_class, where = EXPECTED[rule]
    matching = [p for p in info.value.problems if isinstance(p, error_class)]
    assert matching, f"{rule}: got {[type(p).__name__ for p in info.value.problems]}"
    assert matching[0].path.replace("\\", "/").endswith(where) and where in str(info.value)
    assert isinstance(info.value, DataError) and all(isinstance(p, DataError) for p in info.value.problems)
    if rule == "missing_channel":
        assert "case_001_0001.nii.gz" in str(matching[0])
    if rule == "unexpected_label":
        assert "[7]" in str(matching[0])


def test_broken_2d_label_and_shape_are_reported(tmp_path):
    folder = write_raw_dataset(tmp_path, dim=2, broken="unexpected_label")
    (problem,) = find_problems(folder)[1]
    assert isinstance(problem, UnexpectedLabelError) and "case_001.png" in str(problem)
    folder = write_raw_dataset(tmp_path / "b", dim=2, broken="shape_mismatch")
    (problem,) = find_problems(folder)[1]
    assert isinstance(problem, ShapeMismatchError)


def test_all_problems_come_in_one_report_up_to_the_cap(tmp_path):
    folder = write_raw_dataset(tmp_path, num_cases=4, broken="unexpected_label")  # case_001
    image, label = phantom_3d(2)
    save_nifti(label[:, :-2], folder / "labelsTr" / "case_002.nii.gz", nifti_affine())  # shape
    (folder / "imagesTr" / "case_003_0001.nii.gz").unlink()  # missing channel
    (folder / "imagesTr" / "case_000_0000.nii.gz").write_bytes(b"\x1f\x8b garbage")  # corrupt
    with pytest.raises(DatasetValidationError) as info:
        validate_raw_dataset(folder)
    kinds = {type(p) for p in info.value.problems}
    assert {UnexpectedLabelError, ShapeMismatchError, MissingChannelError, CorruptImageError} <= kinds
    for name in ("case_000_0000.nii.gz", "case_001.nii.gz", "case_002.nii.gz", "case_003_0001.nii.gz"):
        assert name in str(info.value)
    with pytest.raises(DatasetValidationError) as info:
        validate_raw_dataset(folder, max_problems=2)
    assert len(info.value.problems) == 2 and info.value.truncated and "stopped at the cap" in str(info.value)


def test_listing_without_reading_contents(dataset_3d):
    dataset = load_raw_dataset(dataset_3d)
    assert len(dataset.training) == 3 and dataset.file_ending == ".nii.gz"
    assert validate_raw_dataset(dataset_3d, check_contents=False).training.keys() == dataset.training.keys()


def test_label_definitions():
    spec = parse_labels({"background": 0, "a": 1, "b": 2, "ignore": 3})
    assert spec.ignore_label == 3 and spec.allowed_values == [0, 1, 2, 3] and spec.foreground_labels == [1, 2]
    assert spec.num_segmentation_heads == 3 and not spec.has_regions
    spec = parse_labels({"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}, [1, 2, 3])
    assert spec.has_regions and spec.regions == ((1, 2, 3), (2, 3), (3,)) and spec.num_segmentation_heads == 3
    assert spec.evaluation_classes == [(1, 2, 3), (2, 3), (3,)]
    bad = [({"background": [0]}, None), ({"background": 1, "a": 2}, None), ({"background": 0, "a": 1.5}, None),
           ({"background": 0, "a": 1, "ignore": [2]}, None), ({"background": 0, "a": [1, 2], "b": 2}, [1]),
           ({"background": 0, "a": [1, 2], "b": 2}, None), ({}, None)]
    for labels, order in bad:
        with pytest.raises(LabelDefinitionError):
            parse_labels(labels, order)
    with pytest.raises(NonConsecutiveLabelsError, match=r"\[2\]"):
        parse_labels({"background": 0, "a": 2})


def test_dataset_json_fields(tmp_path):
    path = tmp_path / "dataset.json"
    base = {"channel_names": {"0": "MR"}, "labels": {"background": 0, "x": 1}, "numTraining": 1,
            "file_ending": ".nii.gz"}
    path.write_text(json.dumps(base))
    assert read_dataset_json(tmp_path).num_channels == 1
    legacy = {k: v for k, v in base.items() if k != "channel_names"}
    path.write_text(json.dumps(dict(legacy, modality={"0": "MR"})))  # nnU-Net v1 name, still read
    assert read_dataset_json(path).channel_names == ["MR"]
    for broken in ({"channel_names": {"1": "MR"}}, {"channel_names": {}}, {"numTraining": "3"},
                   {"file_ending": "nii.gz"}, {"file_ending": ".mha"}):
        path.write_text(json.dumps(dict(base, **broken)))
        with pytest.raises(DatasetJsonError, match="dataset.json"):
            read_dataset_json(path)
    path.write_text("[1, 2]")
    with pytest.raises(DatasetJsonError, match="JSON object"):
        read_dataset_json(path)
    with pytest.raises(DatasetJsonError, match="not found"):
        read_dataset_json(tmp_path / "missing")


def test_files_listed_in_dataset_json(tmp_path):
    folder = write_raw_dataset(tmp_path, num_cases=2, with_test=False)
    meta = json.loads((folder / "dataset.json").read_text())
    meta["dataset"] = {f"case_{i:03d}": {"images": [f"imagesTr/case_{i:03d}_0000.nii.gz",
                                                    f"imagesTr/case_{i:03d}_0001.nii.gz"],
                                         "label": f"labelsTr/case_{i:03d}.nii.gz"} for i in range(2)}
    (folder / "dataset.json").write_text(json.dumps(meta))
    assert len(validate_raw_dataset(folder).training) == 2
    meta["dataset"]["case_001"]["images"][1] = "imagesTr/nope_0001.nii.gz"
    (folder / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetValidationError, match="nope_0001.nii.gz"):
        validate_raw_dataset(folder)


def test_nifti_round_trip_keeps_the_affine(tmp_path):
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees about z
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 0.8, 2.5])
    affine[:3, 3] = (-12.5, 40.25, 3.0)
    image, label = phantom_3d(0)
    save_nifti(image, tmp_path / "img_0000.nii.gz", affine)
    read, geometry = read_image([tmp_path / "img_0000.nii.gz"])
    np.testing.assert_allclose(geometry.affine, affine)
    np.testing.assert_allclose(geometry.spacing, (2.5, 0.8, 0.7), rtol=1e-6)
    # a prediction written in the input's geometry reads back identical, with the same affine and header zooms
    write_segmentation(label, tmp_path / "pred.nii.gz", geometry)
    back, back_geometry = read_label(tmp_path / "pred.nii.gz")
    np.testing.assert_array_equal(back, label)
    assert back.shape == read.shape[1:] and geometry.mismatch(back_geometry) is None
    on_disk = nibabel.load(str(tmp_path / "pred.nii.gz"))
    assert on_disk.get_data_dtype() == np.uint8 and on_disk.shape == label.shape[::-1]
    np.testing.assert_allclose(on_disk.affine, affine)
    # an image round trip (float), and the diagonal affine used when none is known
    write_image(read[0], tmp_path / "copy.nii", geometry)
    again, again_geometry = read_image(tmp_path / "copy.nii")
    np.testing.assert_array_equal(again[0], read[0])
    np.testing.assert_allclose(again_geometry.affine, affine)
    write_image(read[0], tmp_path / "plain.nii.gz", ImageGeometry(read.shape[1:], (3.0, 2.0, 1.0)))
    assert read_image(tmp_path / "plain.nii.gz")[1].spacing == (3.0, 2.0, 1.0)
    with pytest.raises(ValueError, match="resample it back"):
        write_segmentation(label[:, :-1], tmp_path / "bad.nii.gz", geometry)


@pytest.mark.parametrize("ending", [".png", ".tif", ".bmp"])
def test_2d_round_trip(tmp_path, ending):
    label = np.zeros(SHAPE_2D, dtype=np.int64)
    label[3:9, 4:12] = 2
    geometry = ImageGeometry(SHAPE_2D, (1.0, 1.0))
    write_segmentation(label, tmp_path / f"case{ending}", geometry)
    back, back_geometry = read_label(tmp_path / f"case{ending}")
    np.testing.assert_array_equal(back, label)
    assert back_geometry.mismatch(geometry) is None and not list(tmp_path.glob(".*"))  # no temporary left


def test_unreadable_files_name_the_file(tmp_path):
    (tmp_path / "x_0000.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 not a gzip stream")
    with pytest.raises(CorruptImageError, match="x_0000.nii.gz"):
        read_image([tmp_path / "x_0000.nii.gz"])
    (tmp_path / "y.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(CorruptImageError, match="y.png"):
        read_label(tmp_path / "y.png")
    save_nifti(np.full((2, 3, 4), 0.5, dtype=np.float32), tmp_path / "half.nii.gz", np.eye(4))
    with pytest.raises(UnexpectedLabelError, match="non-integer"):
        read_label(tmp_path / "half.nii.gz")
    save_nifti(np.zeros((2, 3, 4), dtype=np.float32), tmp_path / "a.nii.gz", np.eye(4))
    save_nifti(np.zeros((2, 3, 5), dtype=np.float32), tmp_path / "b.nii.gz", np.eye(4))
    with pytest.raises(ShapeMismatchError, match="b.nii.gz"):
        read_image([tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"])
