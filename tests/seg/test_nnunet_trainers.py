"""The nnU-Net trainers (``vssm.seg.nnunet``): nnunetv2's three ``build_network_architecture`` call forms, the patch
size kept in the trained model's plans, nnU-Net's trainer lookup through ``nnUNet_extTrainer``, the deep-supervision
scales and loss weights taken from the net, torch.compile, and a whole nnU-Net run (plan and preprocess, train a few
iterations, predict) with nnU-Net's own commands on a generated raw dataset.

The call-form tests need no nnunetv2. The others are marked ``nnunet`` and skip where nnunetv2 is not importable: run
them in the extra's environment (``tools/nnunet_env.sh``), e.g.
``.venv-nnunet/bin/python -m pytest -q -m nnunet tests/seg/test_nnunet_trainers.py``.
"""
import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.data.phantoms import write_raw_dataset
from vssm.seg import build_seg_net, configuration
from vssm.seg.nnunet import (
    EXT_TRAINER_FOLDER, PATCH_SIZE_KEY, build_nnunet_network, nnunet_call_form, record_patch_size,
    round_up_patch_size,
)
from vssm.seg.nnunet.__main__ import main as print_export_line

HAS_NNUNET = importlib.util.find_spec("nnunetv2") is not None
requires_nnunet = pytest.mark.skipif(
    not HAS_NNUNET, reason="nnunetv2 is not installed here; the nnunet extra's environment runs these tests "
                           "(tools/nnunet_env.sh, then VENV/bin/python -m pytest -m nnunet ...)")
SHORT_TRAINERS = Path(__file__).resolve().parent / "nnunet_env"  # vssm_short_trainers.py, nnunet_command.py


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def nnunet_plans(patch=(32, 32)) -> dict:
    """A 2-D nnU-Net plans dict as nnunetv2 >= 2.4 writes it (3 stages 8/16/32), with a configuration that inherits."""
    arch_kwargs = {
        "n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True}}
    config_2d = {
        "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": list(patch), "median_image_size_in_voxels": list(patch), "spacing": [1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": arch_kwargs,
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": True}
    return {
        "dataset_name": "Dataset001_Phantom", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [999.0, 1.0, 1.0], "original_median_shape_after_transp": [1, *patch],
        "image_reader_writer": "NaturalImage2DIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"2d": config_2d, "2d_large_batch": {"inherits_from": "2d", "batch_size": 4}},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"mean": 0.0, "std": 1.0}}}


DATASET_JSON = {"channel_names": {"0": "MR"}, "labels": {"background": 0, "left": 1, "right": 2},
                "numTraining": 6, "file_ending": ".png"}


def resolved(plans: dict, name: str) -> dict:
    """The configuration with ``inherits_from`` applied (as nnU-Net's PlansManager does)."""
    config = copy.deepcopy(plans["configurations"][name])
    parent = config.pop("inherits_from", None)
    return config if parent is None else {**resolved(plans, parent), **config}


def assert_same_net(reference: torch.nn.Module, other: torch.nn.Module, x: torch.Tensor):
    reference_state, other_state = reference.state_dict(), other.state_dict()
    assert list(reference_state) == list(other_state)
    for key in reference_state:
        assert torch.equal(reference_state[key], other_state[key]), key
    reference.eval(), other.eval()
    with torch.no_grad():
        for a, b in zip(reference(x), other(x)):
            assert torch.equal(a, b)


# --- call forms (no nnunetv2 needed) ------------------------------------------------------------------------------

PLANS_MANAGER, CONFIGURATION_MANAGER = object(), object()


@pytest.mark.parametrize("args, kwargs, form, expected", [
    ((PLANS_MANAGER, CONFIGURATION_MANAGER, 1, 3, True), {}, ">=2.7",  # 2.7+ trainer
     dict(plans_manager=PLANS_MANAGER, configuration_manager=CONFIGURATION_MANAGER, num_input_channels=1,
          num_output_channels=3, enable_deep_supervision=True)),
    ((PLANS_MANAGER, CONFIGURATION_MANAGER, 1, 3), {"enable_deep_supervision": False}, ">=2.7",  # 2.7+ predictor
     dict(plans_manager=PLANS_MANAGER, configuration_manager=CONFIGURATION_MANAGER, num_input_channels=1,
          num_output_channels=3, enable_deep_supervision=False)),
    ((PLANS_MANAGER, DATASET_JSON, CONFIGURATION_MANAGER, 1), {"enable_deep_supervision": True}, "<=2.2",
     dict(plans_manager=PLANS_MANAGER, dataset_json=DATASET_JSON, configuration_manager=CONFIGURATION_MANAGER,
          num_input_channels=1, enable_deep_supervision=True)),
    (("PlainConvUNet", {"n_stages": 3}, ["conv_op"], 1, 3, True), {}, "2.3-2.6",  # 2.3-2.6 trainer
     dict(architecture_class_name="PlainConvUNet", arch_init_kwargs={"n_stages": 3},
          arch_init_kwargs_req_import=["conv_op"], num_input_channels=1, num_output_channels=3,
          enable_deep_supervision=True)),
    (("PlainConvUNet", {"n_stages": 3}, ["conv_op"], 1, 3), {"enable_deep_supervision": False}, "2.3-2.6",
     dict(architecture_class_name="PlainConvUNet", arch_init_kwargs={"n_stages": 3},
          arch_init_kwargs_req_import=["conv_op"], num_input_channels=1, num_output_channels=3,
          enable_deep_supervision=False)),
    ((), dict(architecture_class_name="PlainConvUNet", arch_init_kwargs={}, arch_init_kwargs_req_import=(),
              num_input_channels=2, num_output_channels=4), "2.3-2.6",
     dict(architecture_class_name="PlainConvUNet", arch_init_kwargs={}, arch_init_kwargs_req_import=(),
          num_input_channels=2, num_output_channels=4, enable_deep_supervision=True)),
], ids=["2.7-trainer", "2.7-predictor", "2.2", "2.3-trainer", "2.3-predictor", "2.3-keywords"])
def test_call_forms_are_told_apart(args, kwargs, form, expected):
    assert nnunet_call_form(args, kwargs) == (form, expected)


def test_call_form_with_wrong_arguments_names_the_form():
    with pytest.raises(TypeError, match=r"nnunetv2 >=2.7.*missing a required argument: 'num_output_channels'"):
        nnunet_call_form((PLANS_MANAGER, CONFIGURATION_MANAGER, 1), {})
    with pytest.raises(TypeError, match=r"nnunetv2 2.3-2.6.*too many"):
        nnunet_call_form(("PlainConvUNet", {}, [], 1, 3, True, "surplus"), {})


@pytest.mark.parametrize("seg_net", ["umamba_bot", "umamba_enc"])
def test_2_3_form_builds_the_plan_net_from_the_recorded_patch_size(seg_net):
    """nnunetv2 2.3-2.6 pass only arch kwargs: with the patch size the trainer records there, the net is the plan's."""
    plans = nnunet_plans(patch=(32, 32))
    config = resolved(plans, "2d")
    record_patch_size(plans, "2d", config)
    architecture = config["architecture"]
    torch.manual_seed(0)
    net = build_nnunet_network(seg_net, {}, architecture["network_class_name"], architecture["arch_kwargs"],
                               architecture["_kw_requires_import"], 1, 3, enable_deep_supervision=False)
    torch.manual_seed(0)
    reference = build_seg_net(seg_net, configuration(nnunet_plans(), "2d").network, 1, 3, (32, 32),
                              deep_supervision=False)
    assert_same_net(reference, net, torch.randn(1, 1, 32, 32))
    assert net.decoder.deep_supervision is False


def test_2_3_form_without_a_patch_size_names_the_key():
    architecture = nnunet_plans()["configurations"]["2d"]["architecture"]
    with pytest.raises(ValueError, match=PATCH_SIZE_KEY):
        build_nnunet_network("umamba_bot", {}, architecture["network_class_name"], architecture["arch_kwargs"],
                             architecture["_kw_requires_import"], 1, 3, True)


def test_record_patch_size_writes_the_resolved_and_the_saved_plans():
    plans = nnunet_plans(patch=(32, 48))
    for name in ("2d", "2d_large_batch"):
        config = resolved(plans, name)
        record_patch_size(plans, name, config)
        assert config["architecture"]["arch_kwargs"][PATCH_SIZE_KEY] == [32, 48]
        assert plans["configurations"][name]["architecture"]["arch_kwargs"][PATCH_SIZE_KEY] == [32, 48]
    assert plans["configurations"]["2d_large_batch"]["inherits_from"] == "2d"  # inheritance kept
    assert configuration(plans, "2d_large_batch").network == configuration(nnunet_plans(), "2d").network
    old_layout = {"patch_size": [32, 32], "UNet_base_num_features": 32}  # nnunetv2 <= 2.2: left as it is
    plans["configurations"]["old"] = copy.deepcopy(old_layout)
    record_patch_size(plans, "old", old_layout)
    assert plans["configurations"]["old"] == old_layout == {"patch_size": [32, 32], "UNet_base_num_features": 32}


def test_round_up_patch_size_changes_both_copies():
    plans = nnunet_plans(patch=(40, 64))
    config = resolved(plans, "2d_large_batch")
    assert round_up_patch_size(plans, "2d_large_batch", config, 32) == ((40, 64), (64, 64))
    assert config["patch_size"] == plans["configurations"]["2d_large_batch"]["patch_size"] == [64, 64]
    assert plans["configurations"]["2d"]["patch_size"] == [40, 64]  # the parent configuration is not touched


def test_module_prints_the_export_line(capsys, monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", "/opt/other_trainers")
    assert print_export_line() == 0
    line = capsys.readouterr().out.strip()
    assert line == f"export nnUNet_extTrainer=/opt/other_trainers{os.pathsep}{EXT_TRAINER_FOLDER}"
    modules = sorted(p.name for p in Path(EXT_TRAINER_FOLDER).glob("*.py"))
    assert modules == ["__init__.py", "vssm_nnunet_trainers.py"]  # nnU-Net imports every module it finds there


# --- with nnunetv2 -------------------------------------------------------------------------------------------------

@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    """nnU-Net's path variables in tmp_path and the trainer folders; returns the environment for subprocesses."""
    paths = {name: tmp_path / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for name, path in paths.items():
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([EXT_TRAINER_FOLDER, str(SHORT_TRAINERS)]))
    return paths



@pytest.mark.nnunet
@requires_nnunet
def test_nnunet_finds_the_trainers_through_ext_trainer(nnunet_env):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from vssm.seg.nnunet import trainers
    for name in trainers.__all__:
        assert recursive_find_trainer_class_by_name(name) is getattr(trainers, name)
    assert "vssm_nnunet_trainers" not in sys.modules  # nnU-Net forgets the modules it imported from the folder


@pytest.mark.nnunet
@requires_nnunet
@pytest.mark.parametrize("seg_net", ["umamba_bot", "umamba_enc"])
@pytest.mark.parametrize("configuration_name", ["2d", "2d_large_batch"])
def test_every_call_form_builds_the_same_net(seg_net, configuration_name):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from vssm.seg.nnunet.trainers import nnUNetTrainerVssmUMambaBot, nnUNetTrainerVssmUMambaEnc
    trainer = {"umamba_bot": nnUNetTrainerVssmUMambaBot, "umamba_enc": nnUNetTrainerVssmUMambaEnc}[seg_net]
    plans_manager = PlansManager(nnunet_plans(patch=(32, 32)))
    configuration_manager = plans_manager.get_configuration(configuration_name)
    record_patch_size(plans_manager.plans, configuration_name, configuration_manager.configuration)
    calls = {
        ">=2.7 trainer": ((plans_manager, configuration_manager, 1, 3, True), {}),
        ">=2.7 predictor": ((plans_manager, configuration_manager, 1, 3), {"enable_deep_supervision": True}),
        "<=2.2": ((plans_manager, DATASET_JSON, configuration_manager, 1), {"enable_deep_supervision": True}),
        "2.3-2.6": ((configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
                     configuration_manager.network_arch_init_kwargs_req_import, 1, 3, True), {}),
    }
    x = torch.randn(2, 1, 32, 32)
    torch.manual_seed(0)
    reference = build_seg_net(seg_net, configuration(nnunet_plans(), "2d").network, 1, 3, (32, 32))
    for args, kwargs in calls.values():
        torch.manual_seed(0)
        net = trainer.build_network_architecture(*args, **kwargs)
        assert type(net) is type(reference)
        assert_same_net(reference, net, x)
        assert [tuple(o.shape) for o in net(x)] == [(2, 3, 32, 32), (2, 3, 16, 16)]


@pytest.mark.nnunet
@requires_nnunet
def test_the_base_trainer_names_no_net():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from vssm.seg.nnunet.trainers import nnUNetTrainerVssm
    plans_manager = PlansManager(nnunet_plans())
    with pytest.raises(TypeError, match="seg_net_name.*umamba_bot"):
        nnUNetTrainerVssm.build_network_architecture(plans_manager, plans_manager.get_configuration("2d"), 1, 3)


@pytest.mark.nnunet
@requires_nnunet
@pytest.mark.parametrize("trainer_name, seg_net_kwargs, scales", [
    ("nnUNetTrainerVssmUMambaBot", None, [[1.0, 1.0], [0.5, 0.5]]),
    ("nnUNetTrainerVssmSwinUMamba", {"encoder_name": "test_s4nd_convnext"},
     [[1.0, 1.0], [0.5, 0.5], [0.25, 0.25], [0.125, 0.125]]),
    ("nnUNetTrainerVssmUPerNet", {"encoder_name": "test_s4nd_convnext", "channels": 16}, [[1.0, 1.0]]),
])
def test_deep_supervision_scales_and_loss_follow_the_net(nnunet_env, trainer_name, seg_net_kwargs, scales):
    """nnU-Net downsamples the targets to the scales the trainer gives and weights the outputs' losses; the scales
    come from the net (SwinUMamba's outputs do not follow the plan's strides) and a one-output net gets weight 1."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from vssm.seg.nnunet import trainers
    trainer_class = getattr(trainers, trainer_name)
    if seg_net_kwargs is not None:  # a small encoder, as users configure trainers: by subclassing
        trainer_class = type(trainer_name + "Small", (trainer_class,), {"seg_net_kwargs": seg_net_kwargs})
    trainer = trainer_class(dict(nnunet_plans(patch=(32, 32)), continue_training=False), "2d", 0, DATASET_JSON,
                            device=torch.device("cpu"))
    torch.manual_seed(0)
    trainer.network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 3,
                                                         True)
    assert trainer._get_deep_supervision_scales() == scales
    if trainer_name == "nnUNetTrainerVssmUMambaBot":  # U-Mamba's outputs are nnU-Net's own: the same scales
        assert np.allclose(nnUNetTrainer._get_deep_supervision_scales(trainer), scales)
    loss = trainer._build_loss()
    x, target = torch.randn(2, 1, 32, 32), torch.randint(0, 3, (2, 1, 32, 32))
    outputs = trainer.network(x)
    targets = [target[:, :, ::round(1 / s[0]), ::round(1 / s[1])] for s in scales]
    assert [o.shape[2:] for o in outputs] == [t.shape[2:] for t in targets]
    value = loss(outputs, targets)
    assert torch.isfinite(value)
    if len(scales) == 1:
        assert loss.weight_factors == (1.0,)
        assert torch.allclose(value, loss.loss(outputs[0], targets[0]))


@pytest.mark.nnunet
@requires_nnunet
def test_swin_umamba_trainer_follows_the_official_recipe(nnunet_env):
    """nnU-Net's own ``initialize`` on the Swin-UMamba trainer (a small encoder): patch rounded up to multiples of
    32 (and recorded), AdamW (1e-4, 0.05, eps 1e-5), cosine to 1e-6 per epoch, encoder frozen for 10 epochs."""
    from vssm.seg.nnunet.trainers import nnUNetTrainerVssmSwinUMamba
    trainer_class = type("nnUNetTrainerVssmSwinUMambaSmall", (nnUNetTrainerVssmSwinUMamba,),
                         {"seg_net_kwargs": {"encoder_name": "test_s4nd_convnext"}})
    folder = nnunet_env["nnUNet_preprocessed"] / "Dataset001_Phantom" / "nnUNetPlans_2d"
    folder.mkdir(parents=True)
    (folder / "case_000.b2nd").touch()  # initialize() only infers nnU-Net's dataset class from the file ending
    trainer = trainer_class(dict(nnunet_plans(patch=(40, 56)), continue_training=False), "2d", 0, DATASET_JSON,
                            device=torch.device("cpu"))
    trainer.initialize()
    assert tuple(trainer.configuration_manager.patch_size) == (64, 64)
    saved = trainer.plans_manager.plans["configurations"]["2d"]
    assert saved["patch_size"] == saved["architecture"]["arch_kwargs"][PATCH_SIZE_KEY] == [64, 64]

    optimizer = trainer.optimizer
    assert isinstance(optimizer, torch.optim.AdamW)
    assert (optimizer.defaults["lr"], optimizer.defaults["weight_decay"], optimizer.defaults["eps"]) == (
        1e-4, 5e-2, 1e-5)
    reference_optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-4)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(reference_optimizer, T_max=trainer.num_epochs,
                                                           eta_min=1e-6)
    for epoch in range(trainer.num_epochs + 1):
        trainer.lr_scheduler.step(epoch)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(reference_optimizer.param_groups[0]["lr"], rel=1e-9)
        reference_optimizer.step()  # (no gradients: only keeps torch from warning about the order)
        reference.step()

    net = trainer.network
    stem = set(net.encoder.stem_parameter_names())
    for epoch, frozen in ((0, True), (9, True), (10, False)):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        assert net.encoder_frozen is frozen
        for name, param in net.encoder.model.named_parameters():
            assert param.requires_grad is (not frozen or name in stem), (epoch, name)
    assert any(p.requires_grad for p in net.decoder.parameters())


@pytest.mark.nnunet
@requires_nnunet
def test_compiled_net_matches_eager():
    """nnU-Net compiles the net with plain ``torch.compile(net)`` (on CUDA by default): the vssm ops are custom ops
    with fake and autograd formulas, so the compiled net gives the eager outputs and gradients (backend aot_eager
    here: dynamo and AOTAutograd as inductor uses them, without a compiler toolchain on the CPU)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from vssm.seg.nnunet.trainers import nnUNetTrainerVssmUMambaBot
    plans_manager = PlansManager(nnunet_plans(patch=(32, 32)))
    torch.manual_seed(0)
    net = nnUNetTrainerVssmUMambaBot.build_network_architecture(
        plans_manager, plans_manager.get_configuration("2d"), 1, 3, True)
    x = torch.randn(2, 1, 16, 16)

    def outputs_and_grads(model):
        net.zero_grad(set_to_none=True)
        outputs = model(x)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outputs).backward()
        return [o.detach() for o in outputs], {n: p.grad.clone() for n, p in net.named_parameters()}

    eager_outputs, eager_grads = outputs_and_grads(net)
    torch._dynamo.reset()
    compiled_outputs, compiled_grads = outputs_and_grads(torch.compile(net, backend="aot_eager"))
    torch._dynamo.reset()
    for eager, compiled in zip(eager_outputs, compiled_outputs):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    assert eager_grads.keys() == compiled_grads.keys()
    for name in eager_grads:
        torch.testing.assert_close(compiled_grads[name], eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def run_nnunet(command, args, env, log):
    """One of nnU-Net's console commands (from this interpreter's bin folder) or, for a ``.py`` path, that script
    with this interpreter; output appended to ``log``, failures reported with the output's tail."""
    program = [sys.executable, str(command)] if str(command).endswith(".py") else [
        str(Path(sys.executable).parent / command)]
    result = subprocess.run(program + [str(a) for a in args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=600)
    log.write_text(log.read_text() + result.stdout if log.exists() else result.stdout)
    assert result.returncode == 0, f"{command} {' '.join(map(str, args))} failed:\n{result.stdout[-4000:]}"
    return result.stdout


@pytest.mark.nnunet
@requires_nnunet
def test_nnunet_plans_trains_and_predicts_with_a_vssm_trainer(nnunet_env, tmp_path):
    """nnU-Net's own commands, as users run them, on 6 generated 2-D cases: plan and preprocess (2d), train fold 0
    with a one-epoch subclass of nnUNetTrainerVssmUMambaBot on the CPU (nnU-Net's final validation included), then
    predict the test image. Everything lands under nnU-Net's path variables (tmp_path)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from vssm.seg.nnunet.trainers import nnUNetTrainerVssmUMambaBot
    raw = write_raw_dataset(nnunet_env["nnUNet_raw"], dim=2, num_cases=6)  # Dataset001_Phantom, RGB PNG, 1 label
    env = dict(os.environ, nnUNet_def_n_proc="1", OMP_NUM_THREADS="1")
    log = tmp_path / "nnunet.log"
    # nnU-Net's planning sets torch threads to nnUNet_n_proc_DA, so 0 (in-process augmentation) is for training only
    run_nnunet(SHORT_TRAINERS / "nnunet_command.py",
               ["nnUNetv2_plan_and_preprocess", "-d", 1, "-c", "2d", "-np", 1, "-npfp", 1], env, log)
    preprocessed = nnunet_env["nnUNet_preprocessed"] / "Dataset001_Phantom"
    patch_size = json.loads((preprocessed / "nnUNetPlans.json").read_text())["configurations"]["2d"]["patch_size"]

    trainer = "nnUNetTrainerVssmUMambaBotShort"
    out = run_nnunet("nnUNetv2_train", [1, "2d", 0, "-tr", trainer, "-device", "cpu"],
                     dict(env, nnUNet_n_proc_DA="0"), log)
    assert f"Using trainer '{trainer}' from: {SHORT_TRAINERS}" in out
    model = nnunet_env["nnUNet_results"] / "Dataset001_Phantom" / f"{trainer}__nnUNetPlans__2d"
    plans = json.loads((model / "plans.json").read_text())
    assert plans["configurations"]["2d"]["architecture"]["arch_kwargs"][PATCH_SIZE_KEY] == patch_size
    checkpoint = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == trainer
    plans_manager = PlansManager(plans)
    net = nnUNetTrainerVssmUMambaBot.build_network_architecture(
        plans_manager, plans_manager.get_configuration("2d"), 3, 2, enable_deep_supervision=False)
    net.load_state_dict(checkpoint["network_weights"])  # strict: the trained net is the one the trainers build
    assert any(key.startswith("mamba_layer.") for key in checkpoint["network_weights"])
    assert "vssm net 'umamba_bot' (UMambaBot" in next((model / "fold_0").glob("training_log_*.txt")).read_text()
    summary = json.loads((model / "fold_0" / "validation" / "summary.json").read_text())
    assert 0.0 <= summary["foreground_mean"]["Dice"] <= 1.0

    predictions = tmp_path / "predictions"
    run_nnunet("nnUNetv2_predict", ["-i", raw / "imagesTs", "-o", predictions, "-d", 1, "-c", "2d", "-f", 0,
                                    "-tr", trainer, "-device", "cpu", "-npp", 1, "-nps", 1], env, log)
    image = np.asarray(Image.open(raw / "imagesTs" / "test_000_0000.png"))
    segmentation = np.asarray(Image.open(predictions / "test_000.png"))
    assert segmentation.shape == image.shape[:2]
    assert set(np.unique(segmentation)) <= {0, 1}
