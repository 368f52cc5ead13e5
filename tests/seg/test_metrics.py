"""Metric values on hand-made masks: Dice with nnU-Net's empty-mask conventions and ignore label, regions, the
normalised surface Dice at a tolerance in mm (worked by hand, and against MONAI where installed), and summary.json."""
import json
import math

import numpy as np
import pytest

from tests.data.phantoms import ball
from vssm.data.nnunet_raw import ImageGeometry, write_segmentation
from vssm.seg.metrics import (
    class_key, compute_metrics, dice, evaluate_folder, key_to_class, load_summary_json, normalized_surface_dice,
    summarize, surface_distances, write_summary_json,
)


def square(shape, rows, cols):
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def test_dice_by_hand():
    ref = square((10, 10), (2, 6), (2, 6))  # 16 pixels
    pred = square((10, 10), (2, 6), (3, 7))  # shifted one column: 12 shared
    assert dice(pred, ref) == pytest.approx(24 / 32)
    assert dice(ref, ref) == 1.0
    empty = np.zeros((10, 10), dtype=bool)
    assert math.isnan(dice(empty, empty))  # both empty: NaN, as nnU-Net reports
    assert dice(pred, empty) == 0.0 and dice(empty, ref) == 0.0


def test_compute_metrics_counts_regions_and_ignore():
    reference = np.zeros((6, 6), dtype=np.int64)
    reference[0:2, 0:3] = 1  # 6 px
    reference[3:5, 3:5] = 2  # 4 px
    reference[5, :] = 3  # ignore
    prediction = np.zeros_like(reference)
    prediction[0:2, 0:2] = 1  # 4 px, all correct
    prediction[3:5, 3:6] = 2  # 6 px, 4 correct
    prediction[5, :] = 1  # under the ignore label: not counted
    metrics = compute_metrics(prediction, reference, [1, 2, (1, 2)], ignore_label=3)
    one = metrics[1]
    assert (one["TP"], one["FP"], one["FN"], one["TN"]) == (4, 0, 2, 24) and one["Dice"] == pytest.approx(8 / 10)
    assert one["IoU"] == pytest.approx(4 / 6) and one["n_pred"] == 4 and one["n_ref"] == 6
    assert metrics[2]["Dice"] == pytest.approx(8 / 10)  # 4 shared of 6 predicted and 4 referenced
    both = metrics[(1, 2)]  # the region 1 | 2: 8 shared of 10 predicted and 10 referenced
    assert both["Dice"] == pytest.approx(16 / 20)
    absent = compute_metrics(np.zeros((3, 3)), np.zeros((3, 3)), [1])[1]
    assert math.isnan(absent["Dice"]) and math.isnan(absent["IoU"]) and absent["TN"] == 9
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(np.zeros((3, 3)), np.zeros((3, 4)), [1])


def test_surface_dice_by_hand():
    """Reference square rows 2..6 x cols 2..6, prediction shifted one column: each 5x5 ring has 16 surface pixels,
    8 shared with the other ring; the other 8 lie 1 pixel away."""
    ref = square((10, 10), (2, 7), (2, 7))
    pred = square((10, 10), (2, 7), (3, 8))
    pred_to_ref, ref_to_pred = surface_distances(pred, ref)
    assert sorted(pred_to_ref.tolist()) == [0.0] * 8 + [1.0] * 8 and sorted(ref_to_pred.tolist()) == sorted(
        pred_to_ref.tolist())
    assert normalized_surface_dice(pred, ref, tolerance=0.5) == 0.5
    assert normalized_surface_dice(pred, ref, tolerance=1.0) == 1.0
    # 2 mm columns: the far column is 2 mm off; of the left column of the prediction (rows 3..5), rows 3 and 5 lie
    # 1 mm (one row) from the reference ring, row 4 lies 2 mm from it; the same on the way back
    pred_to_ref, _ = surface_distances(pred, ref, spacing=(1.0, 2.0))
    assert sorted(pred_to_ref.tolist()) == [0.0] * 8 + [1.0] * 2 + [2.0] * 6
    assert normalized_surface_dice(pred, ref, tolerance=1.0, spacing=(1.0, 2.0)) == pytest.approx(20 / 32)
    assert normalized_surface_dice(pred, ref, tolerance=2.0, spacing=(1.0, 2.0)) == 1.0
    empty = np.zeros_like(ref)
    assert math.isnan(normalized_surface_dice(empty, empty, 1.0))
    assert normalized_surface_dice(pred, empty, 1.0) == 0.0 and normalized_surface_dice(empty, ref, 5.0) == 0.0
    with pytest.raises(ValueError, match="tolerance"):
        normalized_surface_dice(pred, ref, -1.0)


def test_surface_dice_in_metrics_uses_spacing_and_per_class_tolerance():
    reference = np.zeros((10, 10), dtype=np.uint8)
    reference[2:7, 2:7] = 1
    prediction = np.zeros_like(reference)
    prediction[2:7, 3:8] = 1
    metrics = compute_metrics(prediction, reference, [1], spacing=(1.0, 2.0), nsd_tolerance={1: 1.0})
    assert metrics[1]["NSD"] == pytest.approx(20 / 32)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_surface_dice_matches_monai_3d():
    torch = pytest.importorskip("torch")
    surface_dice = pytest.importorskip("monai.metrics").compute_surface_dice
    shape, spacing = (12, 14, 16), (2.0, 1.0, 0.5)
    ref = ball(shape, (6, 7, 8), 4.5, spacing)
    spur = (np.arange(16) == 15)[None, None] & (np.arange(14) < 3)[None, :, None]  # a detached strip at the border
    pred = ball(shape, (6.5, 6, 9), 4.0, spacing) | spur
    for tolerance in (0.5, 1.0, 2.5):
        ours = normalized_surface_dice(pred, ref, tolerance, spacing)
        onehot = [torch.from_numpy(np.stack([~m, m])[None]) for m in (pred, ref)]
        theirs = surface_dice(onehot[0], onehot[1], [tolerance, tolerance], include_background=True,
                              spacing=list(spacing))[0, 1].item()
        assert 0 < ours < 1 and ours == pytest.approx(theirs, abs=1e-6)


def test_summary_json_like_nnunet(tmp_path):
    ref = np.zeros((8, 8), dtype=np.uint8)
    ref[1:4, 1:4] = 1
    ref[5:7, 5:7] = 2
    pred_a = ref.copy()
    pred_b = np.zeros_like(ref)
    pred_b[1:4, 1:3] = 1  # label 1: Dice 12/15; label 2: missed (0)
    empty_ref, empty_pred = np.zeros_like(ref), np.zeros_like(ref)  # neither has label 1 or 2: NaN, skipped in means
    cases = [{"reference_file": f"r{i}.png", "prediction_file": f"p{i}.png",
              "metrics": compute_metrics(p, r, [1, 2])} for i, (p, r) in
             enumerate(((pred_a, ref), (pred_b, ref), (empty_pred, empty_ref)))]
    summary = summarize(cases)
    assert summary["mean"][1]["Dice"] == pytest.approx((1 + 12 / 15) / 2)
    assert summary["mean"][2]["Dice"] == pytest.approx(0.5)
    assert summary["foreground_mean"]["Dice"] == pytest.approx(((1 + 12 / 15) / 2 + 0.5) / 2)
    path = tmp_path / "out" / "summary.json"
    write_summary_json(summary, path)
    raw = json.loads(path.read_text())
    assert set(raw) == {"metric_per_case", "mean", "foreground_mean"} and set(raw["mean"]) == {"1", "2"}
    assert math.isnan(raw["metric_per_case"][2]["metrics"]["1"]["Dice"])  # written as NaN
    assert not [p for p in path.parent.iterdir() if p.name != "summary.json"]  # no temporary file left
    back = load_summary_json(path)
    assert back["mean"][1]["Dice"] == pytest.approx(summary["mean"][1]["Dice"])
    assert class_key((1, 2)) == "(1, 2)" and key_to_class("(1, 2)") == (1, 2) and key_to_class("3") == 3


def test_evaluate_folder_writes_summary(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    affine = np.diag([0.5, 1.0, 2.0, 1.0])  # file axes (i, j, k): array spacing (2.0, 1.0, 0.5)
    for i in range(2):
        ref = ball((6, 8, 10), (3, 4, 5), 2.5).astype(np.uint8)
        pred = np.roll(ref, i, axis=2)
        geometry = ImageGeometry(ref.shape, (2.0, 1.0, 0.5), affine)
        write_segmentation(ref, ref_dir / f"c{i}.nii.gz", geometry)
        write_segmentation(pred, pred_dir / f"c{i}.nii.gz", geometry)
    summary = evaluate_folder(ref_dir, pred_dir, [1], ".nii.gz", nsd_tolerance=0.25)
    assert (pred_dir / "summary.json").is_file()
    assert summary["metric_per_case"][0]["metrics"][1]["Dice"] == 1.0
    assert summary["metric_per_case"][0]["metrics"][1]["NSD"] == 1.0
    assert summary["metric_per_case"][1]["metrics"][1]["NSD"] < 1.0  # shifted by 0.5 mm along x
    (pred_dir / "c1.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="c1.nii.gz"):
        evaluate_folder(ref_dir, pred_dir, [1], ".nii.gz")
