"""tools/predict_seg.py on a work dir of tools/train_seg.py (a tiny U-Mamba_Bot trained two steps on 2-D phantoms):
predictions in the input's format and size, skipped when done, the checkpoint choices and their errors; and
tools/evaluate_seg.py: summary.json with the classes of dataset.json, Dice and NSD values known in advance."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.data.phantoms import write_raw_dataset
from vssm.data.medical_transforms import compute_fingerprint
from vssm.data.nnunet_raw import load_raw_dataset, read_image, read_label
from vssm.seg.planner import plan_dataset, read_case_as_volume
from vssm.seg.seg_config import load_seg_config
from vssm.seg.training import train_seg

from .helpers import load_tool, write_config

predict_seg = load_tool("predict_seg")
evaluate_seg = load_tool("evaluate_seg")
TINY_NET = dict(n_stages=2, features_per_stage=[4, 8], strides=[[1, 1], [2, 2]], kernel_sizes=[[3, 3]] * 2,
                n_conv_per_stage=[1, 1], n_conv_per_stage_decoder=[1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> SimpleNamespace:
    """Three RGB phantoms (a disc, label 1) and one test image; a tiny net trained for two steps on them."""
    root = tmp_path_factory.mktemp("predict_seg")
    raw = write_raw_dataset(root / "raw", dim=2, num_cases=3)
    preprocessed = root / "preprocessed"
    preprocessed.mkdir()
    dataset = load_raw_dataset(raw)
    volumes = [read_case_as_volume(case, natural_2d=True)[:3] for case in dataset.training.values()]
    plans_path = preprocessed / "plans.json"
    plans = plan_dataset(raw, plans_path, configurations=("2d",),
                         fingerprint=compute_fingerprint(volumes, num_foreground_voxels=1e3))
    plans["configurations"]["2d"]["architecture"]["arch_kwargs"].update(TINY_NET)
    plans_path.write_text(json.dumps(plans))
    config = write_config(root, "".join(f"{key} = {value}\n" for key, value in dict(
        raw=repr(str(raw)), preprocessed=repr(str(preprocessed)), plans=repr(str(plans_path)),
        configuration="'2d'", fold="'all'", net="dict(name='umamba_bot')", epochs=1, iterations_per_epoch=2,
        val_iterations=1, batch_size=2, workers=0, log_interval=1, seed=0, validation="dict(enable=False)").items()))
    work_dir = root / "run"
    train_seg(load_seg_config(config), str(work_dir))
    return SimpleNamespace(root=root, raw=raw, work_dir=work_dir)


def run(tool, argv, capsys):
    code = tool.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_predict_writes_the_input_format_and_skips_done_cases(trained, tmp_path, capsys):
    out = tmp_path / "pred"
    images = trained.raw / "imagesTs"
    code, stdout, _ = run(predict_seg, ["-i", images, "-o", out, "-m", trained.work_dir, "--no-progress"], capsys)
    assert code == 0
    line = json.loads(stdout)
    assert line["predicted"] == 1 and line["checkpoint"].endswith("checkpoint_final.pth") and line["tta"]
    segmentation, _ = read_label(out / "test_000.png")
    _, geometry = read_image(images / "test_000_0000.png")
    assert segmentation.shape == geometry.shape and set(np.unique(segmentation)) <= {0, 1}
    assert Image.open(out / "test_000.png").mode == "L"
    assert json.loads((out / "dataset.json").read_text())["labels"] == {"background": 0, "disc": 1}
    code, stdout, _ = run(predict_seg, ["-i", images, "-o", out, "-m", trained.work_dir, "--no-progress"], capsys)
    assert code == 0 and json.loads(stdout)["predicted"] == 0  # done already
    code, stdout, _ = run(predict_seg, ["-i", images, "-o", out, "-m", trained.work_dir / "checkpoint_best.pth",
                                        "--overwrite", "--disable-tta", "--save-probabilities", "--step-size", "0.7",
                                        "--no-progress"], capsys)
    line = json.loads(stdout)
    assert code == 0 and line["predicted"] == 1 and not line["tta"]
    probabilities = np.load(out / "test_000.npz")["probabilities"]
    assert probabilities.shape == (2, *geometry.shape)
    np.testing.assert_array_equal(probabilities.argmax(0), read_label(out / "test_000.png")[0])


def test_predict_checkpoint_choices_and_errors(trained, tmp_path, capsys):
    folds = tmp_path / "model"
    (folds / "fold_0").mkdir(parents=True)
    shutil.copy(trained.work_dir / "checkpoint_final.pth", folds / "fold_0")
    assert predict_seg.checkpoint_file(str(folds), 0) == folds / "fold_0" / "checkpoint_final.pth"
    assert predict_seg.checkpoint_file(str(trained.work_dir), which="best").name == "checkpoint_best.pth"
    images = trained.raw / "imagesTs"
    code, _, err = run(predict_seg, ["-i", images, "-o", tmp_path / "out", "-m", folds, "--fold", 3], capsys)
    assert code == 2 and "no fold_3 folder" in err and "fold_0" in err
    code, _, err = run(predict_seg, ["-i", images, "-o", tmp_path / "out", "-m", folds / "fold_0", "--checkpoint",
                                     "best"], capsys)
    assert code == 2 and "checkpoint_best.pth not found" in err and "checkpoint_final.pth" in err
    code, _, err = run(predict_seg, ["-i", tmp_path / "nowhere", "-o", tmp_path / "out", "-m", trained.work_dir],
                       capsys)
    assert code == 2 and "input folder not found" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "scan.png").write_bytes(b"")
    code, _, err = run(predict_seg, ["-i", tmp_path / "bad", "-o", tmp_path / "out", "-m", trained.work_dir], capsys)
    assert code == 2 and "scan.png" in err and "four-digit channel index" in err


def test_evaluate_summary_with_known_values(trained, tmp_path, capsys):
    references = trained.raw / "labelsTr"
    predictions = tmp_path / "pred"
    shutil.copytree(references, predictions)
    empty = np.zeros_like(read_label(predictions / "case_002.png")[0])
    Image.fromarray(empty.astype(np.uint8)).save(predictions / "case_002.png")
    code, stdout, _ = run(evaluate_seg, [references, predictions], capsys)  # dataset.json beside labelsTr
    assert code == 0
    line = json.loads(stdout)
    # per case Dice 1, 1, 0 (an empty prediction); NSD the same
    assert line["cases"] == 3 and line["mean"]["1"] == {"Dice": pytest.approx(2 / 3, abs=1e-4),
                                                        "NSD": pytest.approx(2 / 3, abs=1e-4)}
    assert line["foreground_mean"]["Dice"] == pytest.approx(2 / 3, abs=1e-4)
    summary = json.loads((predictions / "summary.json").read_text())
    assert [c["metrics"]["1"]["Dice"] for c in summary["metric_per_case"]] == [1.0, 1.0, 0.0]
    (predictions / "case_001.png").unlink()
    code, _, err = run(evaluate_seg, [references, predictions], capsys)
    assert code == 2 and "case_001.png" in err
    output = tmp_path / "elsewhere" / "summary.json"
    code, stdout, _ = run(evaluate_seg, [references, predictions, "--chill", "--no-nsd", "-o", output, "-d",
                                         trained.raw / "dataset.json"], capsys)
    assert code == 0 and json.loads(stdout)["mean"]["1"] == {"Dice": 0.5} and output.is_file()
    lonely = tmp_path / "lonely"
    shutil.copytree(predictions, lonely)
    (lonely / "summary.json").unlink()
    code, _, err = run(evaluate_seg, [lonely, predictions / "missing"], capsys)
    assert code == 2 and "folder not found" in err
    code, _, err = run(evaluate_seg, [lonely, lonely], capsys)
    assert code == 2 and "no dataset.json found" in err


QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "demo" / "seg_quickstart.py"


def test_quickstart_config_runs_end_to_end_on_a_small_template(tmp_path, monkeypatch, capsys):
    """The quick start's config, one step long, on a small synthetic 'template' put in place of nilearn's: the
    dataset is written, planned, trained on and its validation slices predicted; tools/predict_seg.py on those slices
    gives the trainer's validation predictions back, and tools/evaluate_seg.py its scores."""
    from tests.data.test_mni152 import synthetic_maps
    from vssm.data import mni152

    monkeypatch.setattr(mni152, "load_nilearn_maps", synthetic_maps)
    raw = tmp_path / "nnUNet_raw" / "Dataset950_MNI152Slices1mm"
    options = {"raw": str(raw), "splits": str(raw / "splits_final.json"), "preprocessed": str(tmp_path / "pre"),
               "builtin.slab_mm": 4, "builtin.gap_mm": 2, "epochs": 1, "iterations_per_epoch": 1,
               "val_iterations": 1, "batch_size": 2, "planner.num_foreground_voxels": 1e3}
    work_dir = tmp_path / "run"
    result = train_seg(load_seg_config(str(QUICKSTART), options), str(work_dir))
    capsys.readouterr()  # the trainer's log lines
    assert set(result["validation"]) >= {"Dice", "NSD"}
    plans = json.loads((work_dir / "plans.json").read_text())
    assert plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"] == [16, 32, 64, 128]
    val_cases = mni152.read_split(raw)["val"]
    images = tmp_path / "val_images"
    images.mkdir()
    for case in val_cases:
        shutil.copy(raw / "imagesTr" / f"{case}_0000.png", images)
    code, stdout, err = run(predict_seg, ["-i", images, "-o", tmp_path / "pred", "-m", work_dir, "--no-progress"],
                            capsys)
    assert code == 0, err
    assert json.loads(stdout)["predicted"] == len(val_cases)
    for case in val_cases:
        np.testing.assert_array_equal(read_label(tmp_path / "pred" / f"{case}.png")[0],
                                      read_label(work_dir / "validation" / f"{case}.png")[0])
    code, stdout, _ = run(evaluate_seg, [raw / "labelsTr", tmp_path / "pred", "--chill"], capsys)
    trainer_summary = json.loads((work_dir / "validation" / "summary.json").read_text())
    assert code == 0
    assert json.loads(stdout)["foreground_mean"]["Dice"] == pytest.approx(trainer_summary["foreground_mean"]["Dice"],
                                                                         abs=1e-4)


@pytest.mark.slow
def test_quickstart_reaches_its_dice_within_ten_minutes(tmp_path):
    """The acceptance figure: the real quick start (the template from nilearn) reaches a mean foreground Dice of 0.90
    on its validation slices, written in under ten minutes including the dataset, planning and preprocessing."""
    import subprocess
    import sys
    import time

    from .helpers import REPO, subprocess_env

    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "tools" / "train_seg.py"), str(QUICKSTART), "--work-dir",
                    str(tmp_path / "run"), "--cfg-options", f"raw={tmp_path}/nnUNet_raw/Dataset950_MNI152Slices1mm",
                    f"splits={tmp_path}/nnUNet_raw/Dataset950_MNI152Slices1mm/splits_final.json",
                    f"preprocessed={tmp_path}/pre"], check=True, cwd=tmp_path, env=subprocess_env(), timeout=900)
    elapsed = time.perf_counter() - start
    summary = json.loads((tmp_path / "run" / "validation" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 36
    assert summary["foreground_mean"]["Dice"] >= 0.90, summary["mean"]
    assert elapsed < 600, f"{elapsed:.0f} s"
