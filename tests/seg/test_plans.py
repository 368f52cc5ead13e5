"""nnU-Net plans: the old (<= 2.3) and current (>= 2.4) layouts of the same plans give the same NetworkPlan and nets
with the same parameters and outputs; residual-encoder plans, configuration inheritance, the typed fields; and a
named error for every bad input (missing, corrupt or misplaced file, unknown configuration, missing keys, wrong
values)."""
import copy
import json

import pytest
import torch

from vssm.seg.nets import build_seg_net
from vssm.seg.plans import (
    MissingPlansKeyError, NetworkPlan, Plans, PlansFileError, PlansFormatError, UnknownConfigurationError,
    configuration, configuration_names, load_plans,
)

@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared CPU they cost a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


KERNELS_3D = [[1, 3, 3], [3, 3, 3], [3, 3, 3]]
STRIDES_3D = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
KERNELS_2D = [[3, 3], [3, 3], [3, 3], [3, 3]]
STRIDES_2D = [[1, 1], [2, 2], [2, 2], [2, 2]]
RESAMPLING = {
    "resampling_fn_data": "resample_data_or_seg_to_shape",
    "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
    "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
    "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
}


def common(patch_size, spacing, batch_size, identifier):
    return {"data_identifier": identifier, "preprocessor_name": "DefaultPreprocessor", "batch_size": batch_size,
            "patch_size": patch_size, "median_image_size_in_voxels": [40.0, 64.0, 64.0][-len(patch_size):],
            "spacing": spacing, "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
            **RESAMPLING, "batch_dice": True}


def dataset_keys():
    return {"dataset_name": "Dataset999_Phantom", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [2.5, 0.8, 0.8],
            "original_median_shape_after_transp": [40, 64, 64], "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {"0": {
                "max": 3071.0, "mean": 99.5, "median": 101.0, "min": -1024.0, "percentile_00_5": -56.0,
                "percentile_99_5": 271.0, "std": 56.3}}}


def old_layout_plans():
    """nnU-Net <= 2.3 (U-Mamba's vendored 2.1.1): the network as UNet_* keys inside each configuration."""
    def network(kernels, strides, maximum):
        n = len(kernels)
        return {"UNet_class_name": "PlainConvUNet", "UNet_base_num_features": 4, "n_conv_per_stage_encoder": [2] * n,
                "n_conv_per_stage_decoder": [2] * (n - 1), "num_pool_per_axis": [1, 2, 2][-len(kernels[0]):],
                "pool_op_kernel_sizes": strides, "conv_kernel_sizes": kernels, "unet_max_num_features": maximum}
    return {**dataset_keys(), "configurations": {
        "2d": {**common([16, 16], [0.8, 0.8], 12, "nnUNetPlans_2d"), **network(KERNELS_2D, STRIDES_2D, 16)},
        "3d_fullres": {**common([8, 16, 16], [2.5, 0.8, 0.8], 2, "nnUNetPlans_3d_fullres"),
                       **network(KERNELS_3D, STRIDES_3D, 12)},
    }}


def new_layout_plans():
    """nnU-Net >= 2.4: the same plans with the network under architecture/arch_kwargs."""
    def architecture(kernels, strides, features, dim):
        n = len(kernels)
        return {"architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": n, "features_per_stage": features,
                            "conv_op": f"torch.nn.modules.conv.Conv{dim}d", "kernel_sizes": kernels,
                            "strides": strides, "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1),
                            "conv_bias": True, "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}
    return {**dataset_keys(), "configurations": {
        "2d": {**common([16, 16], [0.8, 0.8], 12, "nnUNetPlans_2d"),
               **architecture(KERNELS_2D, STRIDES_2D, [4, 8, 16, 16], 2)},
        "3d_fullres": {**common([8, 16, 16], [2.5, 0.8, 0.8], 2, "nnUNetPlans_3d_fullres"),
                       **architecture(KERNELS_3D, STRIDES_3D, [4, 8, 12], 3)},
    }}


def write(path, plans):
    path.write_text(json.dumps(plans, indent=2))
    return path


@pytest.mark.parametrize("name", ["2d", "3d_fullres"])
def test_both_layouts_give_the_same_network(tmp_path, name):
    old = configuration(write(tmp_path / "old.json", old_layout_plans()), name)
    new = configuration(write(tmp_path / "new.json", new_layout_plans()), name)
    assert old.network == new.network
    assert (old.patch_size, old.batch_size, old.spacing) == (new.patch_size, new.batch_size, new.spacing)
    dim = len(old.patch_size)
    assert old.network.dim == dim and old.network.n_conv_per_stage_decoder == (2,) * (old.network.n_stages - 1)
    x = torch.randn(1, 1, *old.patch_size)
    for net_name in ("umamba_bot", "umamba_enc"):
        nets = []
        for config in (old, new):
            torch.manual_seed(0)
            nets.append(build_seg_net(net_name, config.network, 1, 3, config.patch_size).eval())
        shapes = [{k: v.shape for k, v in net.state_dict().items()} for net in nets]
        assert shapes[0] == shapes[1]
        with torch.no_grad():
            outputs = [net(x) for net in nets]
        assert len(outputs[0]) == old.network.n_stages - 1
        for a, b in zip(*outputs):
            assert torch.equal(a, b)


def test_network_plan_values():
    plans = old_layout_plans()
    net2d = configuration(plans, "2d").network
    assert net2d == NetworkPlan(n_stages=4, features_per_stage=(4, 8, 16, 16), kernel_sizes=((3, 3),) * 4,
                                strides=((1, 1), (2, 2), (2, 2), (2, 2)), n_conv_per_stage_encoder=(2, 2, 2, 2),
                                n_conv_per_stage_decoder=(2, 2, 2), dim=2)
    assert configuration(plans, "3d_fullres").network.features_per_stage == (4, 8, 12)  # min(4 * 2^i, 12)
    assert configuration(plans, "3d_fullres").network.size_divisor == (2, 4, 4)


def test_configuration_fields(tmp_path):
    path = write(tmp_path / "nnUNetPlans.json", new_layout_plans())
    config = configuration(path, "3d_fullres")
    assert config.name == "3d_fullres" and config.dim == 3
    assert config.patch_size == (8, 16, 16) and config.batch_size == 2 and config.spacing == (2.5, 0.8, 0.8)
    assert config.normalization_schemes == ("CTNormalization",) and config.use_mask_for_norm == (False,)
    assert config.transpose_forward == (0, 1, 2) and config.transpose_backward == (0, 1, 2)
    assert config.foreground_intensity_properties["0"]["percentile_99_5"] == 271.0
    assert config.resampling["resampling_fn_data_kwargs"]["order"] == 3
    assert config.batch_dice is True and config.data_identifier == "nnUNetPlans_3d_fullres"
    assert config.network_class_name.endswith("PlainConvUNet") and config.source == str(path)
    assert configuration_names(path) == ["2d", "3d_fullres"]


def test_residual_encoder_plans():
    """nnU-Net's ResEnc presets (>= 2.4) give blocks as n_blocks_per_stage."""
    plans = new_layout_plans()
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    del arch["arch_kwargs"]["n_conv_per_stage"]
    arch["arch_kwargs"]["n_blocks_per_stage"] = [1, 3, 4]
    arch["arch_kwargs"]["n_conv_per_stage_decoder"] = [1, 1]
    network = configuration(plans, "3d_fullres").network
    assert network.n_conv_per_stage_encoder == (1, 3, 4) and network.n_conv_per_stage_decoder == (1, 1)
    arch["arch_kwargs"]["n_conv_per_stage"] = [2, 2, 2]
    with pytest.raises(PlansFormatError, match="disagree"):
        configuration(plans, "3d_fullres")


def test_inheritance():
    """A configuration with inherits_from updates a copy of its parent (nnU-Net's PlansManager), recursively."""
    plans = new_layout_plans()
    plans["configurations"]["3d_fullres_bs4"] = {"inherits_from": "3d_fullres", "batch_size": 4}
    plans["configurations"]["3d_fullres_bs4_big"] = {"inherits_from": "3d_fullres_bs4", "patch_size": [16, 32, 32]}
    config = configuration(plans, "3d_fullres_bs4_big")
    assert config.batch_size == 4 and config.patch_size == (16, 32, 32)
    assert config.network == configuration(plans, "3d_fullres").network
    assert configuration(plans, "3d_fullres").batch_size == 2  # the parent is untouched


def test_load_from_folder_and_dict(tmp_path):
    write(tmp_path / "plans.json", old_layout_plans())  # a trained model's folder
    plans = load_plans(tmp_path)
    assert isinstance(plans, Plans) and plans.source == str(tmp_path / "plans.json")
    assert json.loads(json.dumps(plans)) == old_layout_plans()  # serialises as the plain dict
    original = new_layout_plans()
    loaded = load_plans(original)
    original["configurations"]["2d"]["batch_size"] = 99
    assert configuration(loaded, "2d").batch_size == 12  # a copy
    assert load_plans(loaded) is loaded


# --- bad input -----------------------------------------------------------------------------------------------------

def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(PlansFileError, match="nope.json: plans file not found"):
        load_plans(tmp_path / "nope.json")
    (tmp_path / "dataset.json").write_text("{}")
    with pytest.raises(PlansFileError, match=r"no plans file in this folder .*dataset\.json"):
        load_plans(tmp_path)
    text = json.dumps(new_layout_plans())
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(text[: len(text) // 2])
    with pytest.raises(PlansFileError, match=r"corrupt\.json: not valid JSON \(line 1, column \d+"):
        load_plans(corrupt)
    with pytest.raises(PlansFormatError, match="a plans file holds a JSON object, got list"):
        load_plans(write(tmp_path / "list.json", [1, 2]))
    with pytest.raises(MissingPlansKeyError, match="'configurations'"):
        load_plans({"dataset_name": "x"})


def test_unknown_configuration_lists_the_available(tmp_path):
    path = write(tmp_path / "nnUNetPlans.json", new_layout_plans())
    expected = r"nnUNetPlans\.json: no configuration '3d_lowres' in the plans; available: 2d, 3d_fullres"
    with pytest.raises(UnknownConfigurationError, match=expected):
        configuration(path, "3d_lowres")


@pytest.mark.parametrize("layout, key", [
    (new_layout_plans, "patch_size"),
    (new_layout_plans, "normalization_schemes"),
    (old_layout_plans, "unet_max_num_features"),
    (old_layout_plans, "pool_op_kernel_sizes"),
])
def test_missing_configuration_keys(tmp_path, layout, key):
    plans = layout()
    del plans["configurations"]["2d"][key]
    path = write(tmp_path / "plans.json", plans)
    with pytest.raises(MissingPlansKeyError, match=rf"plans\.json: configuration '2d' .*'{key}'"):
        configuration(path, "2d")
    configuration(path, "3d_fullres")  # the other configuration is fine


def test_missing_architecture_keys():
    plans = new_layout_plans()
    del plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["strides"]
    with pytest.raises(MissingPlansKeyError, match=r"configuration '2d' architecture\.arch_kwargs lacks the key "
                                                   r"'strides'"):
        configuration(plans, "2d")
    del plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["n_conv_per_stage"]
    with pytest.raises(MissingPlansKeyError, match="n_blocks_per_stage"):
        configuration(plans, "2d")
    plans = new_layout_plans()
    del plans["transpose_backward"]
    with pytest.raises(MissingPlansKeyError, match="'transpose_backward'"):
        configuration(plans, "2d")


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["architecture"]["arch_kwargs"].update(strides=[[1, 1], [2, 2]]), "strides needs one entry per stage"),
    (lambda c: c["architecture"]["arch_kwargs"].update(features_per_stage="32"), "features_per_stage must be a list"),
    (lambda c: c.update(patch_size=[16, 16, 16]), "patch_size needs 2 entries"),
    (lambda c: c.update(batch_size=0), "batch_size must be a positive integer"),
    (lambda c: c.update(use_mask_for_norm=[False, True]), "use_mask_for_norm must hold one bool per channel"),
    (lambda c: c["architecture"]["arch_kwargs"].update(conv_op="torch.nn.Conv1d"), "not a 2-D or 3-D convolution"),
    (lambda c: c["architecture"]["arch_kwargs"].update(n_conv_per_stage_decoder=[2, 2, 2, 2]),
     "n_conv_per_stage_decoder needs 3 entries"),
])
def test_bad_values(edit, message):
    plans = new_layout_plans()
    edit(plans["configurations"]["2d"])
    with pytest.raises(PlansFormatError, match=message):
        configuration(plans, "2d")


def test_bad_structure():
    plans = new_layout_plans()
    plans["configurations"]["a"] = {"inherits_from": "b"}
    plans["configurations"]["b"] = {"inherits_from": "a"}
    with pytest.raises(PlansFormatError, match="inherit in a cycle: a -> b -> a"):
        load_plans(plans)
    plans = new_layout_plans()
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_lowres"}
    with pytest.raises(PlansFormatError, match="inherits from '3d_lowres', which the plans do not have"):
        load_plans(plans)
    plans = new_layout_plans()
    plans["transpose_backward"] = [1, 0, 2]
    plans["transpose_forward"] = [2, 0, 1]
    with pytest.raises(PlansFormatError, match="transpose_backward .* its inverse"):
        configuration(plans, "2d")
    plans = copy.deepcopy(new_layout_plans())
    plans["configurations"]["2d"] = ["not", "an", "object"]
    with pytest.raises(PlansFormatError, match="configuration '2d' must be a JSON object"):
        load_plans(plans)
