"""tools/train_seg.py on generated 2-D phantoms (nnU-Net raw format) with a tiny U-Mamba_Bot: outputs and the final
validation, exact resume (after an epoch, and after SIGTERM mid-epoch), two gloo processes against one, planning and
preprocessing on first use, regions with an ignore label, bad input refused before training; the shipped recipes
(U-Mamba with nnU-Net's defaults, VM-UNet and Swin-UMamba with their own) and what they need from the trainer: the
cosine period, one-pass epochs, binary sigmoid training, the recipe augmentations, the decoder initialisation."""
import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tests.data.phantoms import ball, write_raw_dataset
from vssm.data.medical_transforms import compute_fingerprint
from vssm.data.nnunet_raw import load_raw_dataset, read_label
from vssm.engine import UserError
from vssm.seg.planner import plan_dataset, read_case_as_volume
from vssm.seg.losses import SegmentationLoss
from vssm.seg.nets import register_seg_net
from vssm.seg.seg_config import SegOptimizerConfig, load_seg_config
from vssm.seg.training import (
    FINAL, LATEST, SEG_FORMAT, BinarySigmoidAsSoftmax, PatchSampler, epoch_lr, load_trained_net, recipe_augmentation,
    train_seg,
)

from .helpers import REPO, load_tool, read_rows, subprocess_env, write_config

NUM_CASES = 5  # fold 0 of nnU-Net's 5 folds: 4 training cases, 1 validation case
TINY_NET = dict(n_stages=3, features_per_stage=[4, 8, 16], strides=[[1, 1], [2, 2], [2, 2]],
                kernel_sizes=[[3, 3]] * 3, n_conv_per_stage=[1, 1, 1], n_conv_per_stage_decoder=[1, 1])


def plan_quickly(raw: Path, out_path: Path) -> dict:
    """The planner's plans for ``raw`` from a fingerprint of few intensity samples (nnU-Net samples 1e8), with the
    '2d' network shrunk to ``TINY_NET``; written to ``out_path``."""
    dataset = load_raw_dataset(raw)
    volumes = [read_case_as_volume(case, natural_2d=True)[:3] for case in dataset.training.values()]
    fingerprint = compute_fingerprint(volumes, num_foreground_voxels=1e4)
    plans = plan_dataset(raw, out_path, configurations=("2d",), fingerprint=fingerprint)
    plans["configurations"]["2d"]["architecture"]["arch_kwargs"].update(TINY_NET)
    out_path.write_text(json.dumps(plans, indent=2))
    return plans


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory) -> SimpleNamespace:
    """Five 20x24 RGB phantoms (a disc, label 1) planned with the tiny net; preprocessed by the first run."""
    root = tmp_path_factory.mktemp("seg")
    raw = write_raw_dataset(root / "raw", dim=2, num_cases=NUM_CASES, with_test=False)
    preprocessed = root / "preprocessed"
    preprocessed.mkdir()
    plans = preprocessed / "tiny_plans.json"
    plan_quickly(raw, plans)
    return SimpleNamespace(root=root, raw=raw, preprocessed=preprocessed, plans=plans)


def seg_config(data: SimpleNamespace, **keys) -> str:
    """A 2-epoch, 2-step config on the phantoms; ``keys`` add or replace lines."""
    values = dict(raw=repr(str(data.raw)), preprocessed=repr(str(data.preprocessed)),
                  plans=repr(str(data.plans)) if data.plans else None,
                  configuration="'2d'", fold=0, net="dict(name='umamba_bot')", epochs=2, iterations_per_epoch=2,
                  val_iterations=2, batch_size=2, workers=0, log_interval=1, seed=0, cpu_threads=1,
                  validation="dict(enable=False)")
    values.update(keys)
    return "".join(f"{key} = {value}\n" for key, value in values.items())


@pytest.fixture(scope="module")
def straight(seg_data, tmp_path_factory) -> SimpleNamespace:
    """An uninterrupted 2-epoch run, the reference of the resume and the two-process tests."""
    folder = tmp_path_factory.mktemp("straight")
    config = write_config(folder, seg_config(seg_data))
    result = train_seg(load_seg_config(config), str(folder / "run"))
    return SimpleNamespace(config=config, work_dir=folder / "run", result=result)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def without_time(rows: list) -> list:
    return [{k: v for k, v in row.items() if k != "epoch_time"} for row in rows]


def assert_same_state(actual: dict, expected: dict) -> None:
    """Bit-for-bit equal weights and optimizer state, same updates and epoch."""
    assert actual["num_updates"] == expected["num_updates"] and actual["epoch"] == expected["epoch"]
    for key, value in expected["model"].items():
        assert torch.equal(actual["model"][key], value), key
    for index, state in expected["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(actual["optimizer"]["state"][index][name], value), (index, name)


MEDICAL_CONFIGS = sorted(p for p in (REPO / "configs" / "medical").glob("*.py"))
UMAMBA_CONFIGS = [p for p in MEDICAL_CONFIGS if p.stem.startswith("umamba_")]
VM_UNET = dict(name="vm_unet", encoder_name="vmamba_small_v0", depths=(2, 2, 2, 1), drop_path_rate=0.2,
               pretrained=True, encoder_kwargs=dict(depths=(2, 2, 2, 2), pretrained_strict=False))
VM_UNET_TRAINING = dict(  # VM-UNet's configs/config_setting*.py, train*.py, engine*.py
    configuration="2d", net=VM_UNET, init_decoder_from_encoder=True, deep_supervision=False, epochs=300,
    iterations_per_epoch=None, val_iterations=None, batch_size=32, oversample_foreground=0.0, clip_grad=None,
    amp=None, seed=42, optimizer=SegOptimizerConfig(name="adamw", lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                                                    weight_decay=1e-2, schedule="cosine", min_lr=1e-5))
ISIC = dict(VM_UNET_TRAINING, patch_size=(256, 256), batch_dice=False, augmentation="flip_rotate",
            loss=dict(name="dice_bce", weight_ce=1.0, weight_dice=1.0, smooth=1.0, include_background=False,
                      squared=False), t_max=50)
RECIPES = {
    "vm_unet_isic17": ISIC,
    "vm_unet_isic18": ISIC,
    "vm_unet_synapse": dict(VM_UNET_TRAINING, patch_size=(224, 224), batch_dice=True, augmentation="rot90_flip_rotate",
                            loss=dict(name="dice_ce", weight_ce=1.0, weight_dice=1.0, smooth=1e-5,
                                      include_background=True, squared=True), t_max=100),
    "swin_umamba_2d": dict(  # nnUNetTrainerSwinUMamba: nnU-Net's defaults but the net and the optimizer
        configuration="2d", fold="all", net=dict(name="swin_umamba", encoder_name="vmamba_tiny_v0", pretrained=True,
                                                 drop_path_rate=0.2),
        deep_supervision=True, freeze_encoder_epochs=10, epochs=1000, iterations_per_epoch=250, val_iterations=50,
        clip_grad=12.0, augmentation="nnunet", patch_size=None,
        optimizer=SegOptimizerConfig(name="adamw", lr=1e-4, betas=(0.9, 0.999), eps=1e-5, weight_decay=0.05,
                                     schedule="cosine", min_lr=1e-6),
        loss=dict(name="dice_ce", weight_ce=1.0, weight_dice=1.0, smooth=1e-5, include_background=False,
                  squared=False), t_max=None),
}


def test_every_shipped_medical_config_is_checked():
    assert sorted(p.stem for p in MEDICAL_CONFIGS) == sorted([p.stem for p in UMAMBA_CONFIGS] + list(RECIPES))


@pytest.mark.parametrize("path", UMAMBA_CONFIGS, ids=[p.stem for p in UMAMBA_CONFIGS])
def test_shipped_umamba_configs_load_with_nnunet_defaults_and_name_registered_nets(path):
    from vssm.seg.nets import seg_net_names

    cfg = load_seg_config(str(path), {"raw": "/data/Dataset001_X"})
    assert cfg.net["name"] in seg_net_names() and cfg.configuration in ("2d", "3d_fullres")
    assert (cfg.epochs, cfg.iterations_per_epoch, cfg.val_iterations) == (1000, 250, 50)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (
        "sgd", 1e-2, 0.99, 3e-5) and cfg.optimizer.nesterov and cfg.clip_grad == 12.0
    assert cfg.loss.name == "dice_ce" and cfg.augmentation == "nnunet"
    with pytest.raises(UserError, match="config key 'raw' must name the nnU-Net raw dataset folder"):
        load_seg_config(str(path))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_shipped_recipe_configs_hold_their_recipes_values(name):
    from vssm.seg.nets import seg_net_names

    expected = dict(RECIPES[name])
    cfg = load_seg_config(str(REPO / "configs" / "medical" / f"{name}.py"), {"raw": "/data/Dataset001_X"})
    assert cfg.net["name"] in seg_net_names()
    t_max, optimizer = expected.pop("t_max"), expected.pop("optimizer")
    for key in ("name", "lr", "betas", "eps", "weight_decay", "schedule", "min_lr"):
        assert getattr(cfg.optimizer, key) == getattr(optimizer, key), key
    assert cfg.optimizer.t_max == t_max
    loss = expected.pop("loss")
    assert {key: getattr(cfg.loss, key) for key in loss} == loss
    for key, value in expected.items():
        assert getattr(cfg, key) == value, key
    with pytest.raises(UserError, match="config key 'raw' must name the nnU-Net raw dataset folder"):
        load_seg_config(str(REPO / "configs" / "medical" / f"{name}.py"))


# the recipes on the phantoms: a tiny encoder without weights, 32x32 patches, 2 epochs
TINY_RECIPE = {
    "vm_unet_isic17": dict(net=dict(encoder_name="test_vmamba", depths=(1, 1, 1, 1), pretrained=False,
                                    encoder_kwargs=dict(depths=(1, 1, 1, 1)))),
    "vm_unet_synapse": dict(net=dict(encoder_name="test_vmamba", depths=(1, 1, 1, 1), pretrained=False,
                                     encoder_kwargs=dict(depths=(1, 1, 1, 1)))),
    "swin_umamba_2d": dict(net=dict(pretrained=False, encoder_kwargs=dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))),
                           iterations_per_epoch=2, val_iterations=1, fold=0, validation=dict(enable=True)),
}


@pytest.mark.parametrize("name", sorted(TINY_RECIPE))
def test_recipe_configs_train_on_the_phantoms(seg_data, tmp_path, name):
    """Each recipe with a tiny encoder trains 2 epochs and validates: VM-UNet's epochs are one pass over the 4
    training images (2 steps of 2), its cosine period is t_max, its decoder starts as the mirrored encoder; the ISIC
    recipe trains ONE sigmoid output whose checkpoint predicts through vssm.seg.predict as the validation did; the
    Swin-UMamba recipe trains its 4 deep-supervision outputs with the encoder frozen."""
    options = dict(raw=str(seg_data.raw), preprocessed=str(seg_data.preprocessed), plans=str(seg_data.plans),
                   patch_size=(32, 32), batch_size=2, epochs=2, workers=0, log_interval=1, cpu_threads=1,
                   **TINY_RECIPE[name])
    cfg = load_seg_config(str(REPO / "configs" / "medical" / f"{name}.py"), options)
    work_dir = tmp_path / "run"
    result = train_seg(cfg, str(work_dir))
    assert np.isfinite(result["train_loss"])
    final = load(work_dir / FINAL)
    rows = read_rows(work_dir / "summary.csv")
    log = (work_dir / "train.log").read_text()
    assert final["num_updates"] == 4 and "epoch 2/2 step 2/2" in log
    period = cfg.optimizer.t_max or cfg.epochs
    expected_lr = [epoch_lr(cfg.optimizer, epoch, cfg.epochs) for epoch in (0, 1)]
    assert [float(row["lr"]) for row in rows] == pytest.approx(expected_lr)
    assert expected_lr[1] == pytest.approx(cfg.optimizer.min_lr + (cfg.optimizer.lr - cfg.optimizer.min_lr) * (
        1 + np.cos(np.pi / period)) / 2)
    if name.startswith("vm_unet"):
        assert "initialised" in log and "decoder tensors of vm_unet from its encoder's mirrored stages" in log
    if name == "vm_unet_isic17":
        assert final["net"]["num_classes"] == 1 and final["net"]["binary_sigmoid"] is True
        assert "1 output channels (the foreground label, sigmoid)" in log
        summary = json.loads((work_dir / "validation" / "summary.json").read_text())
        (case,) = summary["metric_per_case"]
        assert set(summary["mean"]) == {"(1,)"}
        net, checkpoint = load_trained_net(str(work_dir / FINAL))
        assert isinstance(net, BinarySigmoidAsSoftmax)
        from vssm.seg.plans import configuration
        from vssm.seg.predict import predict_folder
        prediction_path = Path(case["prediction_file"])
        trained = dataclasses.replace(configuration(checkpoint["plans"], "2d"),
                                      patch_size=tuple(checkpoint["net"]["patch_size"]))  # as tools/predict_seg.py
        predict_folder(net, seg_data.raw / "imagesTr", tmp_path / "predicted", checkpoint["plans"], trained,
                       checkpoint["dataset_json"], mirror=cfg.validation.mirror,
                       cases=[prediction_path.name[:-len(".png")]], progress=False)
        np.testing.assert_array_equal(read_label(tmp_path / "predicted" / prediction_path.name)[0],
                                      read_label(prediction_path)[0])
    if name == "swin_umamba_2d":
        assert len(final["optimizer"]["state"]) < len([v for v in final["model"].values()])  # encoder frozen
        assert final["net"]["num_classes"] == 2 and not final["net"]["binary_sigmoid"]


def test_init_decoder_from_encoder_runs_when_the_net_is_built(seg_data, tmp_path, monkeypatch):
    """Config key 'init_decoder_from_encoder': right after the trainer builds the net, every decoder block tensor
    equals the tensor of the same block of the mirrored encoder stage (decoder stage j <- encoder stage 3 - j); off,
    they differ; a net without the method is refused."""
    from vssm.seg import training

    built = {}
    build = training._SegTrainer._build_training

    def build_then_stop(self):
        build(self)
        built["net"] = self.model
        raise _Stop

    monkeypatch.setattr(training._SegTrainer, "_build_training", build_then_stop)
    net = "dict(name='vm_unet', encoder_name='test_vmamba', depths=(2, 1, 1, 1))"  # test_vmamba: depths (1, 1, 2, 1)
    text = seg_config(seg_data, net=net, patch_size=(32, 32), init_decoder_from_encoder=True)
    for initialise in (True, False):
        with pytest.raises(_Stop):
            train_seg(load_seg_config(write_config(tmp_path, text), {"init_decoder_from_encoder": initialise}),
                      str(tmp_path / f"run_{initialise}"))
        encoder = built["net"].encoder.model.state_dict()
        mirrored = {}
        for key, value in built["net"].decoder.state_dict().items():
            parts = key.split(".")
            if parts[0] == "stages" and parts[2] == "blocks":
                source = ".".join(["stages", str(3 - int(parts[1]))] + parts[2:])
                if source in encoder:
                    mirrored[key] = torch.equal(value, encoder[source])
        # every decoder block with a source block: stage 0 block 0 <- 3.0, 1.0 <- 2.0, 2.0 <- 1.0, 3.0 <- 0.0
        assert {k.split(".mixer")[0].split(".norm")[0].split(".mlp")[0] for k in mirrored} >= {
            "stages.0.blocks.0", "stages.1.blocks.0", "stages.2.blocks.0", "stages.3.blocks.0"}
        random_init = [k for k in mirrored if k.endswith("in_proj.weight")]  # not a constant init
        assert len(random_init) == 4  # decoder stage 0 has a second block without a source
        if initialise:
            assert all(mirrored.values())
        else:
            assert not any(mirrored[k] for k in random_init)
        assert not any(k.startswith("stages.0.blocks.1.") for k in mirrored)  # encoder stage 3 has one block
    with pytest.raises(UserError, match="config key 'init_decoder_from_encoder' needs a net with "
                                        "init_decoder_from_encoder"):
        train_seg(load_seg_config(write_config(tmp_path, seg_config(seg_data, init_decoder_from_encoder=True))),
                  str(tmp_path / "umamba"))


def test_cosine_schedule_with_a_period_is_torchs_cosine_annealing_stepped_per_epoch():
    """t_max 50 over 300 epochs (VM-UNet's ISIC recipe): torch's CosineAnnealingLR, which rises again after each
    period; t_max None: the period is the run."""
    optimizer = SegOptimizerConfig(name="adamw", lr=1e-3, schedule="cosine", min_lr=1e-5, t_max=50)
    parameter = torch.nn.Parameter(torch.zeros(1))
    torch_optimizer = torch.optim.AdamW([parameter], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(torch_optimizer, T_max=50, eta_min=1e-5)
    for epoch in range(300):
        assert epoch_lr(optimizer, epoch, 300) == pytest.approx(torch_optimizer.param_groups[0]["lr"], rel=1e-9,
                                                               abs=1e-15), epoch
        torch_optimizer.step()
        scheduler.step()
    assert epoch_lr(optimizer, 50, 300) == pytest.approx(1e-5) and epoch_lr(optimizer, 100, 300) == pytest.approx(1e-3)
    optimizer.t_max = None
    assert epoch_lr(optimizer, 150, 300) == pytest.approx((1e-3 + 1e-5) / 2)


def _augmented(transforms, image, label, seed):
    """One call of a recipe augmentation as SegPatchDataset makes it (one random stream for every transform)."""
    state = np.random.RandomState(seed)
    for transform in transforms.transforms:
        transform.set_random_state(state=state)
    out = transforms({"image": image.clone(), "label": label.clone()})
    return torch.as_tensor(out["image"]), torch.as_tensor(out["label"])


def _dihedral(x: torch.Tensor):
    """The 8 rotations by multiples of 90 deg and their flips of (C, H, W)."""
    turns = [torch.rot90(x, k, (1, 2)) for k in range(4)]
    return turns + [t.flip(2) for t in turns]


@pytest.mark.parametrize("name, exact_fraction", [("flip_rotate", 0.5), ("rot90_flip_rotate", 0.75)])
def test_recipe_augmentations_cut_the_patch_and_rotate_and_flip_at_their_rates(name, exact_fraction):
    """flip_rotate: half of the samples are not rotated, so they are the centre patch flipped (or not);
    rot90_flip_rotate: three quarters are the centre patch turned by 90-deg steps and flipped (or left alone), one
    quarter rotated by up to 20 deg. Outputs have the patch size and integer labels."""
    transforms, sampled = recipe_augmentation(name, (8, 8))
    assert min(sampled) > 8  # room for the rotation
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, *sampled, generator=generator)
    label = (image > 0.5).float()
    start = [(s - 8) // 2 for s in sampled]
    centre = image[:, start[0]:start[0] + 8, start[1]:start[1] + 8]
    variants = _dihedral(centre) if name == "rot90_flip_rotate" else [
        centre, centre.flip(1), centre.flip(2), centre.flip(1).flip(2)]
    exact = 0
    samples = 80
    for seed in range(samples):
        out_image, out_label = _augmented(transforms, image, label, seed)
        assert out_image.shape == out_label.shape == (1, 8, 8)
        assert set(out_label.unique().tolist()) <= {-1.0, 0.0, 1.0}
        exact += any(torch.allclose(out_image, v, atol=1e-6) for v in variants)
    assert abs(exact / samples - exact_fraction) < 0.15
    with pytest.raises(ValueError, match="the patch must be square"):
        recipe_augmentation("rot90_flip_rotate", (8, 16))


def test_patch_sampler_splits_global_batches_into_rank_blocks_and_forces_the_last_third():
    """Rank r reads the r-th contiguous block of every global batch; the keys do not depend on the number of ranks;
    a resumed epoch continues at its step."""
    one = list(PatchSampler(7, 6, 1, 0, steps=3, seed=5, stream=0, oversample_foreground=0.33))
    two = [list(PatchSampler(7, 3, 2, rank, steps=3, seed=5, stream=0, oversample_foreground=0.33))
           for rank in (0, 1)]
    assert [two[0][3 * s:3 * s + 3] + two[1][3 * s:3 * s + 3] for s in range(3)] == [one[6 * s:6 * s + 6]
                                                                                   for s in range(3)]
    assert [key.force_foreground for key in one[:6]] == [False] * 4 + [True] * 2  # round(6 * 0.67) = 4
    assert {key.case for key in one} <= set(range(7)) and len({key.seed for key in one}) == len(one)
    sampler = PatchSampler(7, 6, 1, 0, steps=3, seed=5, stream=0, oversample_foreground=0.33)
    sampler.set_epoch(0, start_step=2)
    assert list(sampler) == one[12:] and len(sampler) == 6
    sampler.set_epoch(1)
    assert list(sampler) != one
    validation = PatchSampler(7, 6, 1, 0, steps=3, seed=5, stream=1, oversample_foreground=0.33)
    assert list(validation) != one


def test_recipe_run_writes_every_output_and_its_validation_matches_predict_folder(seg_data, tmp_path, capsys):
    """configs/medical/umamba_bot_2d.py with the phantoms: checkpoints, summary, curves, log; the fold's validation
    case predicted whole, scored into validation/summary.json; the final checkpoint, rebuilt by load_trained_net,
    predicts the same through vssm.seg.predict.predict_folder from the raw image."""
    work_dir = tmp_path / "run"
    options = [f"raw={seg_data.raw}", f"preprocessed={seg_data.preprocessed}", f"plans={seg_data.plans}",
               "epochs=2", "iterations_per_epoch=2", "val_iterations=2", "workers=0", "amp=None", "log_interval=1"]
    status = load_tool("train_seg").main([str(REPO / "configs/medical/umamba_bot_2d.py"), "--work-dir",
                                          str(work_dir), "--cfg-options", *options])
    assert status == 0, capsys.readouterr().err
    assert sorted(p.name for p in work_dir.iterdir()) == [
        "checkpoint_best.pth", "checkpoint_final.pth", "checkpoint_latest.pth", "config.py", "dataset.json",
        "plans.json", "progress.png", "summary.csv", "train.log", "validation"]  # no temporary files left
    rows = read_rows(work_dir / "summary.csv")
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr",
                             "epoch_time", "pseudo_dice_disc"]
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert float(rows[0]["lr"]) == 1e-2 and float(rows[1]["lr"]) == pytest.approx(1e-2 * 0.5 ** 0.9)  # poly
    ema = 0.9 * float(rows[0]["pseudo_dice"]) + 0.1 * float(rows[1]["pseudo_dice"])
    assert float(rows[1]["ema_pseudo_dice"]) == pytest.approx(ema)
    log = (work_dir / "train.log").read_text()
    assert "fold 0: 4 training / 1 validation cases" in log and "epoch 2/2 train_loss" in log

    final = load(work_dir / FINAL)
    assert final["format"] == SEG_FORMAT and final["epoch"] == 2 and final["num_updates"] == 4
    assert final["net"]["name"] == "umamba_bot" and final["net"]["num_classes"] == 2
    assert final["best"]["epoch"] in (1, 2) and load(work_dir / "checkpoint_best.pth")["epoch"] == final["best"][
        "epoch"]
    assert final["config"]["optimizer"] == dict(name="sgd", lr=1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True,
                                                betas=(0.9, 0.999), eps=1e-8, schedule="poly", poly_exponent=0.9,
                                                min_lr=0.0, t_max=None)
    assert final["config"]["clip_grad"] == 12.0 and final["config"]["validation"]["mirror"] is True

    summary = json.loads((work_dir / "validation" / "summary.json").read_text())
    (case,) = summary["metric_per_case"]
    assert set(summary["mean"]) == {"1"} and {"Dice", "NSD"} <= set(summary["mean"]["1"])
    prediction_path = Path(case["prediction_file"])
    prediction, _ = read_label(prediction_path)
    reference, _ = read_label(case["reference_file"])
    assert prediction.shape == reference.shape == (20, 24)
    assert summary["mean"]["1"]["TP"] == int(np.sum((prediction == 1) & (reference == 1)))

    from vssm.seg.predict import predict_folder
    net, checkpoint = load_trained_net(str(work_dir / FINAL))
    case_id = prediction_path.name[:-len(".png")]
    predict_folder(net, seg_data.raw / "imagesTr", tmp_path / "predicted", checkpoint["plans"], "2d",
                   checkpoint["dataset_json"], cases=[case_id], progress=False)
    again, _ = read_label(tmp_path / "predicted" / prediction_path.name)
    np.testing.assert_array_equal(again, prediction)


class _Stop(Exception):
    pass


def _stop_after_first_epoch(epoch: int, row: dict) -> None:
    raise _Stop


def test_resume_after_one_epoch_ends_where_two_epochs_straight_end(seg_data, straight, tmp_path):
    """Augmented patches, poly schedule, Nesterov momentum, EMA and best choice: the resumed half (reading through a
    worker process) ends with the uninterrupted run's weights, optimizer state and summary."""
    cfg = load_seg_config(straight.config)
    with pytest.raises(_Stop):
        train_seg(cfg, str(tmp_path / "resumed"), on_epoch_end=_stop_after_first_epoch)
    assert not (tmp_path / "resumed" / FINAL).exists()
    cfg.workers = 1
    resumed = train_seg(cfg, str(tmp_path / "resumed"), resume="auto")
    assert without_time([resumed])[0] == without_time([straight.result])[0]
    assert without_time(read_rows(tmp_path / "resumed" / "summary.csv")) == without_time(
        read_rows(straight.work_dir / "summary.csv"))
    assert_same_state(load(tmp_path / "resumed" / FINAL), load(straight.work_dir / FINAL))


def test_a_stop_mid_epoch_then_resume_ends_where_an_uninterrupted_run_ends(straight, tmp_path, monkeypatch):
    """A stop request (what SIGTERM / SIGINT set) after the 3rd update (epoch 2, step 1 of 2): the step ends, a
    resumable checkpoint_latest.pth holds the epoch's progress, TrainingInterrupted says where; resuming ends with the
    uninterrupted weights and summary."""
    from vssm.engine import TrainingInterrupted
    from vssm.seg import training

    step = training._SegTrainer._optimizer_step

    def step_then_stop(self):
        step(self)
        if self.num_updates == 3:
            self.stop.signum = signal.SIGTERM

    monkeypatch.setattr(training._SegTrainer, "_optimizer_step", step_then_stop)
    cfg = load_seg_config(straight.config)
    work_dir = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted, match=f"stopped by SIGTERM at epoch 2 step 1/2; wrote {work_dir / LATEST}"):
        train_seg(cfg, str(work_dir))
    partial = load(work_dir / LATEST)
    assert partial["epoch"] == 1 and partial["epoch_progress"]["steps"] == 1 and partial["num_updates"] == 3
    monkeypatch.setattr(training._SegTrainer, "_optimizer_step", step)
    train_seg(cfg, str(work_dir), resume="auto")
    assert_same_state(load(work_dir / FINAL), load(straight.work_dir / FINAL))
    assert without_time(read_rows(work_dir / "summary.csv")) == without_time(
        read_rows(straight.work_dir / "summary.csv"))


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_ends_where_an_uninterrupted_run_ends(straight, tmp_path):
    """A real process sends itself SIGTERM after its 3rd update (epoch 2, step 1 of 2): it finishes the step, writes a
    resumable checkpoint_latest.pth, prints one line and exits 143; --resume then ends with the uninterrupted
    weights."""
    work_dir = tmp_path / "interrupted"
    script = textwrap.dedent(f"""\
        import os, signal, sys
        sys.path.insert(0, {str(REPO / 'tools')!r})
        import train_seg
        from vssm.seg import training
        step = training._SegTrainer._optimizer_step
        def step_then_signal(self):
            step(self)
            if self.num_updates == 3:
                os.kill(os.getpid(), signal.SIGTERM)
        training._SegTrainer._optimizer_step = step_then_signal
        sys.exit(train_seg.main({[straight.config, '--work-dir', str(work_dir)]!r}))
        """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=subprocess_env(),
                            timeout=600)
    assert result.returncode == 128 + 15, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (f"stopped by SIGTERM at epoch 2 step 1/2; wrote "
                                                      f"{work_dir / LATEST}, continue with --resume")
    partial = load(work_dir / LATEST)
    assert partial["epoch"] == 1 and partial["epoch_progress"]["steps"] == 1 and partial["num_updates"] == 3

    assert load_tool("train_seg").main([straight.config, "--work-dir", str(work_dir), "--resume"]) == 0
    assert_same_state(load(work_dir / FINAL), load(straight.work_dir / FINAL))
    assert without_time(read_rows(work_dir / "summary.csv")) == without_time(
        read_rows(straight.work_dir / "summary.csv"))


def test_two_gloo_processes_train_as_one_process_with_the_same_global_batch(seg_data, straight, tmp_path):
    """torchrun, 2 CPU processes with 1 sample each (the global batch of 2 split as nnU-Net splits it; the batch Dice
    summed over the ranks): the weights of the one-process run, up to float summation order; the validation cases
    are shared among the ranks."""
    config = write_config(tmp_path, seg_config(seg_data, validation="dict(enable=True, mirror=False)"))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tools" / "train_seg.py"), config, "--work-dir", str(tmp_path / "two")]
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es) on cpu; global batch 2" in (tmp_path / "two" / "train.log").read_text()
    two, one = load(tmp_path / "two" / FINAL), load(straight.work_dir / FINAL)
    assert two["num_updates"] == one["num_updates"] == 4 and len(two["rng"]) == 2
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    for row_two, row_one in zip(read_rows(tmp_path / "two" / "summary.csv"), read_rows(straight.work_dir /
                                                                                         "summary.csv")):
        for column in ("train_loss", "val_loss", "pseudo_dice"):
            assert float(row_two[column]) == pytest.approx(float(row_one[column]), rel=1e-3, abs=1e-6), column
    summary = json.loads((tmp_path / "two" / "validation" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 1


def test_missing_plans_are_planned_and_the_cases_preprocessed_once(seg_data, tmp_path):
    """No plans file: the raw dataset is checked, planned (nnU-Net's layout: nnUNetPlans.json with dataset.json
    beside it; the planner options of the config passed on) and preprocessed into the preprocessed folder,
    splits_final.json written; a second run reuses all of it."""
    dataset = load_raw_dataset(seg_data.raw)
    volumes = [read_case_as_volume(case, natural_2d=True)[:3] for case in dataset.training.values()]
    fingerprint = compute_fingerprint(volumes, num_foreground_voxels=1e4)
    preprocessed = tmp_path / "preprocessed"
    text = seg_config(seg_data, plans=None, preprocessed=repr(str(preprocessed)), epochs=1, iterations_per_epoch=1,
                      val_iterations=1, planner=repr(dict(fingerprint=fingerprint, configurations=("2d",))))
    config = write_config(tmp_path, text)
    train_seg(load_seg_config(config), str(tmp_path / "first"))
    assert {"nnUNetPlans.json", "dataset.json", "splits_final.json"} <= {p.name for p in preprocessed.iterdir()}
    assert sorted(p.name for p in (preprocessed / "nnUNetPlans_2d").glob("*.npz")) == [
        f"case_{i:03d}.npz" for i in range(NUM_CASES)]
    log = (tmp_path / "first" / "train.log").read_text()
    assert "planning Dataset001_Phantom" in log and f"preprocessing {NUM_CASES} case(s) for 2d" in log
    splits = json.loads((preprocessed / "splits_final.json").read_text())
    assert len(splits) == 5 and all(len(split["val"]) == 1 for split in splits)

    train_seg(load_seg_config(config, {"fold": 1}), str(tmp_path / "second"))
    log = (tmp_path / "second" / "train.log").read_text()
    assert "planning" not in log and "preprocessing" not in log and "checking the raw dataset" not in log


def test_builtin_dataset_own_splits_and_network_override(seg_data, tmp_path, monkeypatch):
    """Config key 'builtin' writes a packaged dataset (here a stand-in writer) into raw's parent before the run reads
    it; 'splits' replaces nnU-Net's 5 folds; 'network' replaces planned architecture entries, and the work dir's
    plans.json and the checkpoint hold the result."""
    from vssm.seg import training

    calls = []

    def write_phantoms(root, num_cases):
        calls.append((root, num_cases))
        return write_raw_dataset(root, dim=2, num_cases=num_cases, with_test=False)

    monkeypatch.setitem(training.BUILTIN_DATASETS, "phantoms", write_phantoms)
    raw = tmp_path / "raw" / "Dataset001_Phantom"
    splits = tmp_path / "my_splits.json"
    splits.write_text(json.dumps([{"train": ["case_000", "case_001"], "val": ["case_002", "case_003"]}]))
    preprocessed = tmp_path / "preprocessed"
    preprocessed.mkdir()
    shutil.copy(seg_data.plans, preprocessed / "tiny_plans.json")
    data = SimpleNamespace(raw=raw, preprocessed=preprocessed, plans=preprocessed / "tiny_plans.json")
    text = seg_config(data, epochs=1, iterations_per_epoch=1, val_iterations=1,
                      builtin="dict(name='phantoms', num_cases=4)", splits=repr(str(splits)),
                      network="dict(features_per_stage=[2, 4, 8])")
    train_seg(load_seg_config(write_config(tmp_path, text)), str(tmp_path / "run"))
    assert calls == [(raw.parent, 4)]
    assert "fold 0: 2 training / 2 validation cases" in (tmp_path / "run" / "train.log").read_text()
    assert not (preprocessed / "splits_final.json").exists()
    final = load(tmp_path / "run" / FINAL)
    for plans in (final["plans"], json.loads((tmp_path / "run" / "plans.json").read_text())):
        assert plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"] == [2, 4, 8]
    assert load_trained_net(str(tmp_path / "run" / FINAL))[0].decoder.deep_supervision is False
    assert json.loads((preprocessed / "tiny_plans.json").read_text()) == json.loads(seg_data.plans.read_text())

    with pytest.raises(UserError, match=r"config key 'network.feature_per_stage' is not an architecture entry"):
        train_seg(load_seg_config(write_config(tmp_path, text), {"network": {"feature_per_stage": [2, 4, 8]}}),
                  str(tmp_path / "other"))
    with pytest.raises(UserError, match=r"config key 'builtin' \(phantoms\) wrote .*Dataset001_Phantom, but config "
                                        r"key 'raw' is .*elsewhere"):
        train_seg(load_seg_config(write_config(tmp_path, text), {"raw": str(tmp_path / "raw" / "elsewhere")}),
                  str(tmp_path / "other"))


class _FreezableNet(nn.Module):
    """A one-output 2-D conv net with ``freeze_encoder``, as swin_umamba has."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.LeakyReLU())
        self.decoder = nn.Conv2d(4, num_classes, 1)
        self.decoder.deep_supervision = True

    def freeze_encoder(self, freeze: bool = True) -> None:
        for param in self.encoder.parameters():
            param.requires_grad = not freeze

    def deep_supervision_scales(self, patch_size=None):
        return [(1, 1)]

    def forward(self, x):
        logits = self.decoder(self.encoder(x))
        return [logits] if self.decoder.deep_supervision else logits


@register_seg_net("test_freezable")
def _freezable(network, in_channels, num_classes, patch_size, deep_supervision=True):
    net = _FreezableNet(in_channels, num_classes)
    net.decoder.deep_supervision = deep_supervision
    return net


def test_frozen_encoder_epochs_and_cosine_schedule(seg_data, tmp_path):
    """freeze_encoder_epochs=1: the encoder gets no update in epoch 1 (AdamW holds no state for it), then trains;
    the cosine schedule steps per epoch to min_lr; a net without freeze_encoder is refused."""
    text = seg_config(seg_data, net="dict(name='test_freezable')", freeze_encoder_epochs=1,
                      optimizer="dict(name='adamw', lr=1e-3, weight_decay=0.01, schedule='cosine', min_lr=1e-4)")
    config = write_config(tmp_path, text)
    states = []
    train_seg(load_seg_config(config), str(tmp_path / "run"),
              on_epoch_end=lambda epoch, row: states.append(load(tmp_path / "run" / LATEST)))
    num_encoder = len(list(_FreezableNet(3, 2).encoder.parameters()))
    num_all = len(states[0]["model"])
    assert len(states[0]["optimizer"]["state"]) == num_all - num_encoder
    assert len(states[1]["optimizer"]["state"]) == num_all
    rows = read_rows(tmp_path / "run" / "summary.csv")
    assert float(rows[0]["lr"]) == pytest.approx(1e-3) and float(rows[1]["lr"]) == pytest.approx(5.5e-4)
    with pytest.raises(UserError, match="config key 'freeze_encoder_epochs' needs a net with freeze_encoder"):
        train_seg(load_seg_config(config, {"net": {"name": "umamba_bot"}}), str(tmp_path / "other"))


class _NaNOnSecondTrainingStep(SegmentationLoss):
    calls = 0

    def forward(self, output, label):
        loss = super().forward(output, label)
        if torch.is_grad_enabled():  # training steps only
            type(self).calls += 1
            if type(self).calls == 2:
                return loss * float("nan")
        return loss


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_non_finite_loss_stops_the_run_or_skips_the_step(seg_data, tmp_path, monkeypatch, policy):
    from vssm.seg import training

    monkeypatch.setattr(training, "SegmentationLoss", _NaNOnSecondTrainingStep)
    _NaNOnSecondTrainingStep.calls = 0
    cfg = load_seg_config(write_config(tmp_path, seg_config(seg_data, nonfinite=repr(policy))))
    if policy == "stop":
        with pytest.raises(UserError, match=r"loss became non-finite at epoch 1 step 2 \(update 2\), learning rate "
                                            r"1.000e-02; .* \(checkpoint_latest.pth holds the last finite epoch\)"):
            train_seg(cfg, str(tmp_path / "run"))
        assert not (tmp_path / "run" / LATEST).exists()
        return
    train_seg(cfg, str(tmp_path / "run"))
    final = load(tmp_path / "run" / FINAL)
    assert final["history"][0]["skipped_steps"] == 1 and "skipped_steps" not in final["history"][1]
    assert final["num_updates"] == 3 and np.isfinite(final["history"][0]["train_loss"])
    assert "epoch 1: skipped 1 step(s) with a non-finite loss" in (tmp_path / "run" / "train.log").read_text()
    assert all(torch.isfinite(v).all() for v in final["model"].values() if v.is_floating_point())


def write_region_dataset(source: Path, root: Path) -> Path:
    """The phantoms relabelled: disc 1 with a core of label 2 inside, the top row ignore (3); regions 'disc' = (1, 2)
    and 'core' = (2,), regions_class_order [1, 2]."""
    folder = root / source.name
    shutil.copytree(source, folder)
    for path in sorted((folder / "labelsTr").iterdir()):
        label = np.array(Image.open(path))
        centre = np.argwhere(label == 1).mean(0)
        label[ball(label.shape, centre, 2.0) & (label == 1)] = 2
        label[0] = 3
        Image.fromarray(label.astype(np.uint8)).save(path)
    meta = json.loads((folder / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "disc": [1, 2], "core": [2], "ignore": 3}
    meta["regions_class_order"] = [1, 2]
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))
    return folder


def test_regions_with_an_ignore_label_train_with_sigmoid_outputs_and_validate_per_region(seg_data, tmp_path):
    raw = write_region_dataset(seg_data.raw, tmp_path / "raw")
    preprocessed = tmp_path / "preprocessed"
    preprocessed.mkdir()
    shutil.copy(seg_data.plans, preprocessed / "tiny_plans.json")  # the same images: the same plan
    data = SimpleNamespace(raw=raw, preprocessed=preprocessed, plans=preprocessed / "tiny_plans.json")
    config = write_config(tmp_path, seg_config(data, epochs=1, val_iterations=1, amp="'bf16'",
                                               optimizer="dict(name='adamw', lr=1e-3, weight_decay=0.01)",
                                               validation="dict(enable=True, mirror=False, nsd_tolerance=1.0)"))
    result = train_seg(load_seg_config(config), str(tmp_path / "run"))
    assert set(result) >= {"pseudo_dice_disc", "pseudo_dice_core"} and np.isfinite(result["train_loss"])
    final = load(tmp_path / "run" / FINAL)
    assert final["net"]["num_classes"] == 2  # one sigmoid output per region
    assert all("exp_avg_sq" in state for state in final["optimizer"]["state"].values())  # AdamW
    summary = json.loads((tmp_path / "run" / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"(1, 2)", "(2,)"}
    (case,) = summary["metric_per_case"]
    prediction, _ = read_label(case["prediction_file"])
    assert set(np.unique(prediction)) <= {0, 1, 2}  # painted by regions_class_order, never the ignore label


def test_dice_bce_needs_a_binary_or_region_dataset(seg_data, tmp_path):
    """Loss 'dice_bce' on labels with two foreground classes (not regions) is refused before anything is written."""
    raw = tmp_path / "raw" / seg_data.raw.name
    shutil.copytree(seg_data.raw, raw)
    for path in sorted((raw / "labelsTr").iterdir()):
        label = np.array(Image.open(path))
        label[0] = 2
        Image.fromarray(label).save(path)
    meta = json.loads((raw / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "disc": 1, "edge": 2}
    (raw / "dataset.json").write_text(json.dumps(meta))
    data = SimpleNamespace(raw=raw, preprocessed=tmp_path / "pre", plans=None)
    config = write_config(tmp_path, seg_config(data, loss="dict(name='dice_bce')"))
    with pytest.raises(UserError, match=r"config key 'loss.name' 'dice_bce' trains one sigmoid output: it needs a "
                                        r"binary dataset .* has 2 foreground labels \[1, 2\] \(use 'dice_ce'\)"):
        train_seg(load_seg_config(config), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("options, message", [
    (["epoch=3"], "unknown config key 'epoch' (known at the top level: raw, plans,"),
    (["configuration=3d_lowres"], "config key 'configuration' must be one of ('2d', '3d_fullres'), got '3d_lowres'"),
    (["raw=None"], "config key 'raw' must name the nnU-Net raw dataset folder"),
    (["net.name=unet_resenc"], "config key 'net.name': unknown segmentation net 'unet_resenc'; registered: "),
    (["fold=7"], "config key 'fold' is 7, but "),
    (["configuration=3d_fullres"], "no configuration '3d_fullres' in the plans; available: 2d"),
    (["amp=fp16"], "config key 'amp' must be one of (None, 'bf16'), got 'fp16'"),
    (["batch_size=0"], "config key 'batch_size' must be a positive integer or None, got 0"),
    (["loss.name=dice"], "config key 'loss.name' must be one of ('dice_ce', 'dice_bce'), got 'dice'"),
    (["loss.weight_ce=0", "loss.weight_dice=0"], "config keys 'loss.weight_ce' and 'loss.weight_dice' must be >= 0 "
                                                 "and not both 0"),
    (["optimizer.t_max=50"], "config key 'optimizer.t_max' is the period of the 'cosine' schedule; the schedule is "
                             "'poly'"),
    (["optimizer.min_lr=1"], "config key 'optimizer.min_lr' must be in [0, optimizer.lr = 0.01], got 1"),
    (["augmentation=mixup"], "config key 'augmentation' must be one of ('nnunet', 'flip_rotate', "
                             "'rot90_flip_rotate'), got 'mixup'"),
    (["augmentation=rot90_flip_rotate", "patch_size=[32,64]"], "config key 'augmentation' 'rot90_flip_rotate' turns "
                                                               "patches by 90 deg: patch_size must be square"),
    (["iterations_per_epoch=0"], "config key 'iterations_per_epoch' must be a positive integer or None, got 0"),
    (["activation_recompute=5"], "config key 'activation_recompute' must be 0, 1, 2, 3 or None, got 5"),
], ids=["unknown-key", "configuration", "no-raw", "net", "fold", "not-planned", "amp", "batch", "loss", "loss-weights",
        "t-max", "min-lr", "augmentation", "rot90-square", "iterations", "recompute"])
def test_config_errors_are_one_line_naming_the_key(seg_data, tmp_path, capsys, options, message):
    config = write_config(tmp_path, seg_config(seg_data))
    status = load_tool("train_seg").main([config, "--work-dir", str(tmp_path / "run"), "--cfg-options", *options])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.splitlines()[-1].startswith("error: ") and message in err.splitlines()[-1], err
    assert not (tmp_path / "run" / LATEST).exists()


def test_activation_recompute_reaches_the_nets_mamba_mixers(seg_data, tmp_path):
    """The key sets every Mamba mixer of the net (U-Mamba_Bot's bottleneck layers) and the log says how many."""
    config = write_config(tmp_path, seg_config(seg_data, epochs=1, iterations_per_epoch=1, activation_recompute=2))
    train_seg(load_seg_config(config), str(tmp_path / "run"))
    found = re.search(r"activation_recompute=2 on (\d+) Mamba mixer\(s\)", (tmp_path / "run" / "train.log").read_text())
    assert found and int(found.group(1)) >= 1


def test_a_broken_raw_dataset_is_refused_before_training_with_every_problem_by_file(tmp_path, capsys):
    raw = write_raw_dataset(tmp_path / "raw", dim=2, num_cases=5, broken="unexpected_label", with_test=False)
    (raw / "imagesTr" / "case_003_0000.png").unlink()
    config = write_config(tmp_path, seg_config(SimpleNamespace(raw=raw, preprocessed=tmp_path / "pre", plans=None)))
    status = load_tool("train_seg").main([config, "--work-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2
    assert "problem(s) in nnU-Net raw dataset" in err
    assert f"[UnexpectedLabelError] {raw / 'labelsTr' / 'case_001.png'}" in err
    assert str(raw / "labelsTr" / "case_003.png") in err  # the label without images
    assert not (tmp_path / "pre" / "nnUNetPlans.json").exists() and not (tmp_path / "run" / LATEST).exists()
