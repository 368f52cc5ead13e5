"""nnU-Net's preprocessing pieces: normalisation per channel name, the use-mask-for-norm rule, cropping to the
non-zero region, resampling of images and label maps (hand-worked values), and the dataset fingerprint."""
import numpy as np
import pytest

from vssm.data.medical_transforms import (
    compute_fingerprint, compute_new_shape, create_nonzero_mask, crop_to_nonzero, logits_to_segmentation,
    normalization_scheme, normalize, normalize_channel, preprocess_case, resample_image, resample_label, resize,
    resize_label, revert_preprocessing, separate_z_axis, use_mask_for_norm,
)
from vssm.data.nnunet_raw import load_raw_dataset

from .phantoms import ball, phantom_3d, write_raw_dataset


@pytest.mark.parametrize("name, scheme", [
    ("CT", "CTNormalization"), ("ct", "CTNormalization"), ("noNorm", "NoNormalization"),
    ("NONORM", "NoNormalization"), ("zscore", "ZScoreNormalization"), ("rescale_to_0_1", "RescaleTo01Normalization"),
    ("RGB_to_0_1", "RGBTo01Normalization"), ("MR", "ZScoreNormalization"), ("T2", "ZScoreNormalization"),
    ("R", "ZScoreNormalization"), ("ADC", "ZScoreNormalization"),
])
def test_channel_name_to_scheme(name, scheme):
    assert normalization_scheme(name) == scheme


def test_each_scheme_by_hand():
    image = np.array([[-1000.0, -50.0, 0.0], [40.0, 80.0, 3000.0]])
    props = {"mean": 20.0, "std": 40.0, "percentile_00_5": -100.0, "percentile_99_5": 200.0}
    ct = normalize_channel(image, "CT", props)
    np.testing.assert_allclose(ct, (np.clip(image, -100, 200) - 20) / 40)
    assert ct.dtype == np.float32
    with pytest.raises(ValueError, match="fingerprint"):
        normalize_channel(image, "CT")
    z = normalize_channel(image, "MR")
    np.testing.assert_allclose([z.mean(), z.std()], [0, 1], atol=1e-6)
    np.testing.assert_array_equal(normalize_channel(image, "noNorm"), image.astype(np.float32))
    np.testing.assert_allclose(normalize_channel(image, "rescale_to_0_1"), (image + 1000) / 4000, rtol=1e-6)
    rgb = np.array([[0.0, 51.0], [255.0, 102.0]])
    np.testing.assert_allclose(normalize_channel(rgb, "rgb_to_0_1"), rgb / 255)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        normalize_channel(image, "rgb_to_0_1")
    constant = normalize_channel(np.full((3, 3), 7.0), "T1")  # std 0: divided by eps, no NaN
    assert np.all(constant == 0)


def test_masked_zscore_leaves_the_outside_at_zero():
    image = np.zeros((1, 8, 8))
    inside = ball((8, 8), (3.5, 3.5), 3)
    image[0][inside] = np.linspace(10, 20, inside.sum())
    mask = create_nonzero_mask(image)
    out = normalize(image, ["T1"], use_mask=[True])
    np.testing.assert_allclose([out[0][mask].mean(), out[0][mask].std()], [0, 1], atol=1e-6)
    assert np.all(out[0][~mask] == 0)
    unmasked = normalize(image, ["T1"])
    assert abs(unmasked[0].mean()) < 1e-6 and np.all(unmasked[0][~mask] < 0)


def test_use_mask_for_norm_rule():
    names = ["CT", "T1", "noNorm", "flair"]
    assert use_mask_for_norm(names, 0.5) == [False, True, False, True]  # cropping shrank cases: z-score in mask
    assert use_mask_for_norm(names, 0.8) == [False] * 4


def test_normalize_with_a_fingerprint_applies_the_rule():
    image = np.zeros((2, 10, 10))
    image[:, 2:5, 2:5] = np.arange(18).reshape(2, 3, 3) + 1.0
    fingerprint = {"median_relative_size_after_cropping": 0.3, "foreground_intensity_properties_per_channel": {
        "0": {"mean": 5.0, "std": 2.0, "percentile_00_5": 1.0, "percentile_99_5": 8.0}, "1": {}}}
    out = normalize(image, {"0": "CT", "1": "T2"}, fingerprint)
    np.testing.assert_allclose(out[0], (np.clip(image[0], 1, 8) - 5) / 2)
    assert np.all(out[1][image[1] == 0] == 0)  # T2 z-scored inside the non-zero mask only


def test_crop_to_nonzero():
    image = np.zeros((2, 6, 7))
    image[0, 1:4, 2:5] = 1
    image[1, 4, 5] = 2
    label = np.zeros((6, 7), dtype=np.int16)
    label[2, 3] = 1
    cropped, cropped_label, bbox = crop_to_nonzero(image, label)
    assert bbox == [(1, 5), (2, 6)] and cropped.shape == (2, 4, 4)
    assert cropped_label[1, 1] == 1 and cropped_label[0, 3] == -1 and cropped_label[0, 0] == 0
    _, mask_label, _ = crop_to_nonzero(image)
    assert mask_label.dtype == np.int8 and set(np.unique(mask_label)) == {-1, 0}


def test_resize_hand_values():
    # skimage / nnU-Net grid: output pixel centres at (i + 0.5) * in / out - 0.5, edges clamped
    np.testing.assert_allclose(resize(np.array([0.0, 1.0]), (4,), 1), [0, 0.25, 0.75, 1])
    np.testing.assert_allclose(resize(np.array([0.0, 4.0, 8.0, 12.0]), (2,), 1), [2, 10])
    cubic = resize(np.array([0.0, 0.0, 10.0, 10.0]), (8,), 3)
    assert cubic.min() >= 0 and cubic.max() <= 10  # clipped to the input range (no overshoot)
    np.testing.assert_array_equal(resize_label(np.array([0, 2]), (4,), 1), [0, 0, 2, 2])
    # samples at 0.5, 2.5, 4.5: the masks of 0 and 2 both reach 0.5 at the first two, the later label wins
    np.testing.assert_array_equal(resize_label(np.array([0, 2, 2, 0, 1, 1]), (3,), 1), [2, 2, 1])
    np.testing.assert_array_equal(resize_label(np.array([0, 0, 2, 2, 1, 1]), (3,), 1), [0, 2, 1])


def test_resample_isotropic_keeps_shapes_and_labels():
    spacing, target = (1.0, 1.0, 1.0), (0.5, 0.75, 1.25)
    label = ball((8, 9, 10), (4, 4.5, 5), 3).astype(np.uint8) * 2
    image = label[None].astype(np.float32) * 100
    assert compute_new_shape(label.shape, spacing, target) == (16, 12, 8)
    assert separate_z_axis(spacing, target) is None
    out = resample_image(image, spacing, target)
    assert out.shape == (1, 16, 12, 8) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 200
    seg = resample_label(label, spacing, target)
    assert seg.shape == (16, 12, 8) and set(np.unique(seg)) == {0, 2} and seg.dtype == np.uint8
    volume_mm3 = (seg == 2).sum() * np.prod(target)
    assert abs(volume_mm3 - (label == 2).sum()) / (label == 2).sum() < 0.25
    np.testing.assert_array_equal(resample_label(label, spacing, spacing), label)


def test_anisotropic_resampling_takes_z_separately_with_nearest():
    spacing, target = (3.0, 0.5, 0.5), (1.5, 1.0, 1.0)
    assert separate_z_axis(spacing, target) == 0 and separate_z_axis((1, 1, 1), (4, 1, 1)) == 0
    assert separate_z_axis((3, 3, 0.5), (1, 1, 1)) is None  # two coarse axes: no separate axis
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 3, 8, 8))
    out = resample_image(image, spacing, target)
    assert out.shape == (1, 6, 4, 4)
    for k in range(3):  # slices repeated along z (order 0), each in-plane resized like its source slice
        np.testing.assert_allclose(out[0, 2 * k], resize(image[0, k], (4, 4), 3))
        np.testing.assert_allclose(out[0, 2 * k + 1], out[0, 2 * k])
    label = (rng.random((3, 8, 8)) > 0.5).astype(np.int16)
    seg = resample_label(label, spacing, target)
    assert seg.shape == (6, 4, 4)
    np.testing.assert_array_equal(seg[::2], seg[1::2])


def test_fingerprint_values_by_hand():
    label = np.zeros((4, 6, 6), dtype=np.uint8)
    label[1:3, 2:4, 2:4] = 1
    image_a = np.where(label > 0, 100.0, 1.0)[None]
    image_b = np.where(label > 0, 300.0, 1.0)[None]
    image_b = np.pad(image_b, ((0, 0), (0, 0), (2, 2), (0, 0)))  # zero border: cropped away
    label_b = np.pad(label, ((0, 0), (2, 2), (0, 0)))
    fp = compute_fingerprint([(image_a, label, (2.0, 1.0, 1.0)), (image_b, label_b, (3.0, 1.0, 1.0))],
                             num_foreground_voxels=1000)
    props = fp["foreground_intensity_properties_per_channel"]["0"]
    assert props["mean"] == 200 and props["std"] == 100 and props["min"] == 100 and props["max"] == 300
    assert props["percentile_00_5"] == 100 and props["percentile_99_5"] == 300 and props["median"] == 200
    assert fp["spacings"] == [[2.0, 1.0, 1.0], [3.0, 1.0, 1.0]]
    assert fp["shapes_after_crop"] == [[4, 6, 6], [4, 6, 6]]
    assert fp["median_relative_size_after_cropping"] == pytest.approx((1 + 6 / 10) / 2)


def test_fingerprint_of_a_raw_dataset_feeds_ct_normalisation(tmp_path):
    dataset = load_raw_dataset(write_raw_dataset(tmp_path, num_cases=2, with_test=False))
    fp = compute_fingerprint(dataset, num_foreground_voxels=2000)
    assert set(fp["foreground_intensity_properties_per_channel"]) == {"0", "1"}
    ct = fp["foreground_intensity_properties_per_channel"]["0"]
    assert 50 < ct["mean"] < 450 and ct["percentile_00_5"] < ct["median"] < ct["percentile_99_5"]
    image = np.full((2, 2, 2, 2), 1e6, dtype=np.float32)
    out = normalize(image, dataset.dataset_json.channel_names, fp)
    np.testing.assert_allclose(out[0], (ct["percentile_99_5"] - ct["mean"]) / ct["std"], rtol=1e-5)


def test_preprocess_then_revert_gives_back_the_label_on_the_input_grid():
    image, label = phantom_3d(0)
    image = np.pad(image, ((0, 0), (0, 0), (3, 0)))[None]  # a zero slab that cropping removes
    label = np.pad(label, ((0, 0), (0, 0), (3, 0)))
    spacing = (2.5, 0.8, 0.7)
    fingerprint = compute_fingerprint([(image, label, spacing)], num_foreground_voxels=1000)
    data, seg, props = preprocess_case(image, label, spacing, (1.25, 0.8, 0.7), ["CT"], fingerprint)
    assert props["bbox_used_for_cropping"][2] == (3, 19) and props["shape_before_cropping"] == label.shape
    assert data.shape == (1, 20, 14, 16) and seg.shape == (20, 14, 16) and data.dtype == np.float32
    assert set(np.unique(seg)) == {0, 1, 2}
    one_hot = np.stack([seg == k for k in range(3)]).astype(np.float32) * 10  # a perfect network's logits
    restored = revert_preprocessing(one_hot, props)
    assert restored.shape == label.shape
    for k in (1, 2):
        overlap = np.sum((restored == k) & (label == k))
        assert 2 * overlap / (np.sum(restored == k) + np.sum(label == k)) > 0.95
    _, _, same_props = preprocess_case(image, label, spacing, spacing, ["CT"], fingerprint)
    cropped_one_hot = np.eye(3)[label[:, :, 3:]].transpose(3, 0, 1, 2)  # at the input spacing: exact
    np.testing.assert_array_equal(revert_preprocessing(cropped_one_hot, same_props), label)
    _, no_label, _ = preprocess_case(image, None, spacing, (1.25, 1.6), ["CT"], fingerprint)  # 2-D target
    assert no_label is None


def test_logits_to_segmentation_regions():
    logits = np.array([[[3.0, -1.0, 2.0]], [[-2.0, -1.0, 1.0]]])  # regions (1, 2) and (2,)
    np.testing.assert_array_equal(logits_to_segmentation(logits, [1, 2]), [[1, 0, 2]])
    np.testing.assert_array_equal(logits_to_segmentation(logits), [[0, 0, 0]])
