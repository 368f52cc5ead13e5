"""Bad input: one clear error line naming the problem, exit status 2, and no earlier run's work dir overwritten."""
import argparse
import subprocess
import sys

import pytest
import torch

from .helpers import REPO, load_tool, make_image_folder, subprocess_env, tiny_config, write_config


def run_tool(capsys, tool: str, argv: list[str]) -> tuple[int, str]:
    """(exit status, stderr) of ``tools/<tool>.py`` run in-process."""
    capsys.readouterr()
    status = load_tool(tool).main(argv)
    return status, capsys.readouterr().err


def assert_one_error_line(status: int, err: str, *fragments: str) -> None:
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def config(tmp_path, image_root) -> str:
    return write_config(tmp_path, tiny_config(image_root))


@pytest.mark.parametrize("options, fragments", [
    (["model.name=vmamba_tinny"], ["unknown model 'vmamba_tinny'", "vmamba_tiny"]),
    (["model.drop_path_rat=0.1"], ["model 'test_vmamba'", "drop_path_rat"]),
    (["data.root=/no/such/folder"], ["data directory not found: /no/such/folder"]),
    (["model.pretrained_file=/no/such.pth"], ["checkpoint not found: /no/such.pth"]),
    (["data.train_split=training"], ["data directory not found", "training"]),
    (["optimizer.lrr=0.1"], ["unknown config key 'optimizer.lrr'"]),
    (["optimizer.opt=adamz"], ["optimizer 'adamz'"]),
    (["batch_size=64"], ["fewer than one optimizer step"]),
    (["activation_recompute=4"], ["config key 'activation_recompute' must be 0, 1, 2, 3 or None, got 4"]),
])
def test_bad_config_values(tmp_path, capsys, config, options, fragments):
    work_dir = tmp_path / "run"
    status, err = run_tool(capsys, "train", [config, "--work-dir", str(work_dir), "--cfg-options", *options])
    assert_one_error_line(status, err, *fragments)
    assert not work_dir.exists()


def test_unknown_key_in_a_config_file(tmp_path, capsys, image_root):
    config = write_config(tmp_path, tiny_config(image_root, warmup_epochs=3))
    assert_one_error_line(*run_tool(capsys, "train", [config]), "unknown config key 'warmup_epochs'")


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "worker"])
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_is_reported_with_its_path(tmp_path, capsys, damage, workers):
    root = make_image_folder(tmp_path / "images")
    image = root / "train" / "square" / "5.png"
    data = image.read_bytes()
    image.write_bytes(b"not an image" if damage == "garbage" else data[:len(data) // 2])
    config = write_config(tmp_path, tiny_config(root))
    argv = [config, "--work-dir", str(tmp_path / "run"), "--cfg-options", f"data.workers={workers}"]
    status, err = run_tool(capsys, "train", argv)
    assert_one_error_line(status, err, f"corrupt image {image}")


def test_existing_work_dir_is_kept_unless_resume_or_overwrite(tmp_path, capsys, config):
    work_dir = tmp_path / "run"
    work_dir.mkdir()
    (work_dir / "last.pth").write_bytes(b"an earlier run's checkpoint")
    (work_dir / "summary.csv").write_text("an earlier run\n")
    (work_dir / "notes.txt").write_text("mine\n")
    status, err = run_tool(capsys, "train", [config, "--work-dir", str(work_dir)])
    assert_one_error_line(status, err, f"work dir {work_dir} already holds a run", "--resume", "--overwrite")
    assert (work_dir / "summary.csv").read_text() == "an earlier run\n"

    assert run_tool(capsys, "train", [config, "--work-dir", str(work_dir), "--overwrite"])[0] == 0
    assert (work_dir / "summary.csv").read_text().startswith("epoch,")
    assert (work_dir / "notes.txt").read_text() == "mine\n"  # only the trainer's own outputs are replaced

    status, err = run_tool(capsys, "train", [config, "--work-dir", str(tmp_path / "empty"), "--resume"])
    assert_one_error_line(status, err, "nothing to resume", "last.pth")


def test_run_that_ended_before_its_first_checkpoint_is_rerun_plainly(tmp_path, capsys, config):
    """A crash before the first epoch's checkpoint leaves a log but nothing to resume: --resume says so and a plain
    re-run starts over."""
    work_dir = tmp_path / "run"
    work_dir.mkdir()
    (work_dir / "train.log").write_text("2026-01-01 00:00:00 model test_vmamba ...\n")
    status, err = run_tool(capsys, "train", [config, "--work-dir", str(work_dir), "--resume"])
    assert_one_error_line(status, err, "nothing to resume", "stopped before its first epoch ended",
                          "without --resume")
    assert run_tool(capsys, "train", [config, "--work-dir", str(work_dir)])[0] == 0
    assert (work_dir / "last.pth").is_file() and "model test_vmamba ..." not in (work_dir / "train.log").read_text()


@pytest.fixture
def bad_checkpoints(tmp_path) -> dict:
    paths = {name: tmp_path / f"{name}.pth" for name in ("garbage", "truncated", "pickled", "other_model", "empty")}
    paths["garbage"].write_bytes(b"\x00\x01 not a checkpoint")
    torch.save({"model": {"w": torch.zeros(1000)}}, paths["truncated"])
    paths["truncated"].write_bytes(paths["truncated"].read_bytes()[:500])
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, paths["pickled"])
    torch.save({"head.fc.weight": torch.zeros(2, 2)}, paths["other_model"])
    torch.save({"epoch": 3}, paths["empty"])
    paths["missing"] = tmp_path / "missing.pth"
    return paths


@pytest.mark.parametrize("name, fragments", [
    ("missing", ["checkpoint not found"]),
    ("garbage", ["cannot read checkpoint"]),
    ("truncated", ["cannot read checkpoint"]),
    ("pickled", ["pickled Python objects", "--trust-checkpoint"]),
    ("other_model", ["does not fit model"]),
    ("empty", ["holds no state dict"]),
])
def test_unreadable_checkpoint_in_test_py(capsys, config, bad_checkpoints, name, fragments):
    status, err = run_tool(capsys, "test", [config, "--checkpoint", str(bad_checkpoints[name])])
    assert_one_error_line(status, err, str(bad_checkpoints[name]), *fragments)


@pytest.mark.parametrize("name, fragments", [
    ("garbage", ["cannot read checkpoint"]),
    ("other_model", ["not a training checkpoint"]),
])
def test_unreadable_checkpoint_in_train_resume(tmp_path, capsys, config, bad_checkpoints, name, fragments):
    argv = [config, "--work-dir", str(tmp_path / "run"), "--resume", str(bad_checkpoints[name])]
    assert_one_error_line(*run_tool(capsys, "train", argv), *fragments)


def test_command_line_exit_status_and_single_stderr_line(tmp_path, config):
    """The real process: exit status 2 and the error as the last stderr line, without a traceback."""
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train.py"), config, "--cfg-options", "model.name=no_such_model"],
        capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: unknown model 'no_such_model'"


def test_cfg_options_without_a_value_and_values_with_spaces(tmp_path, capsys, config):
    train_tool = load_tool("train")
    with pytest.raises(SystemExit) as exit_info:
        train_tool.parse_args([config, "--cfg-options", "epochs"])
    assert exit_info.value.code == 2
    assert "--cfg-options expects KEY=VALUE pairs, got 'epochs'" in capsys.readouterr().err
    args = train_tool.parse_args([config, "--cfg-options", "data.root=/my data", "augment.scale=(0.5, 1.0)",
                                  "epochs=3", "model.name='test_vim'"])
    assert args.cfg_options == {"data.root": "/my data", "augment.scale": (0.5, 1.0), "epochs": 3,
                                "model.name": "test_vim"}


def test_fixed_size_model_and_data_size_disagree_before_the_first_step(tmp_path, capsys, config):
    work_dir = tmp_path / "run"
    status, err = run_tool(capsys, "train", [config, "--work-dir", str(work_dir), "--cfg-options",
                                             "model.name=test_vim"])
    assert_one_error_line(status, err, "model test_vim was built for 64x64 inputs", "gives 16x16",
                          "model.img_size=16")
    assert not work_dir.exists()


def test_validation_class_missing_from_training_is_an_error_and_empty_classes_are_logged(tmp_path, capsys):
    root = make_image_folder(tmp_path / "images")
    (root / "val" / "hexagon").mkdir()
    (root / "val" / "circle" / "0.png").rename(root / "val" / "hexagon" / "0.png")
    config = write_config(tmp_path, tiny_config(root))
    status, err = run_tool(capsys, "train", [config, "--work-dir", str(tmp_path / "run")])
    assert_one_error_line(status, err, f"{root / 'val'} has class folder(s) that the training split lacks: hexagon")

    (root / "val" / "hexagon" / "0.png").rename(root / "val" / "circle" / "0.png")
    (root / "val" / "hexagon").rmdir()
    (root / "train" / "empty_class").mkdir()
    assert run_tool(capsys, "train", [config, "--work-dir", str(tmp_path / "run")])[0] == 0
    assert "training split: class folder(s) without images, skipped: empty_class" in (
        tmp_path / "run" / "train.log").read_text()


def test_checkpoint_read_errors_say_what_the_file_is(tmp_path, capsys, config):
    import zipfile

    foreign = tmp_path / "foreign.pth"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("weights.npy", b"123")
    text = tmp_path / "text.pth"
    text.write_text("e")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    for path, fragments in ((foreign, ["a zip archive of 1 file(s) (weights.npy) but not a PyTorch checkpoint"]),
                            (text, ["not a PyTorch or safetensors checkpoint (", "Error: "]),
                            (empty, ["the file is empty or ends early (EOFError)"])):
        status, err = run_tool(capsys, "test", [config, "--checkpoint", str(path)])
        assert_one_error_line(status, err, f"cannot read checkpoint {path}: ", *fragments)


def test_checkpoint_that_does_not_fit_gives_counts_and_the_model_it_was_trained_as(tmp_path, capsys, config):
    work_dir = tmp_path / "run"
    assert run_tool(capsys, "train", [config, "--work-dir", str(work_dir)])[0] == 0
    status, err = run_tool(capsys, "test", [config, "--checkpoint", str(work_dir / "last.pth"), "--cfg-options",
                                            "model.name=test_plainmamba"])
    assert_one_error_line(status, err, "does not fit model test_plainmamba (it was trained as test_vmamba)",
                          "key(s) missing: ", "key(s) unexpected: ", "more")


def test_resume_from_a_pickled_file_does_not_suggest_trusting_it(tmp_path, capsys, config, bad_checkpoints):
    argv = [config, "--work-dir", str(tmp_path / "run"), "--resume", str(bad_checkpoints["pickled"])]
    status, err = run_tool(capsys, "train", argv)
    assert_one_error_line(status, err, "holds pickled Python objects", "tools/train.py did not write it")
    assert "--trust-checkpoint" not in err
