"""The experiment planner: nnU-Net's rules worked by hand (topology, target spacing, transposition, memory model), the
published Hippocampus plan, and whole plans of phantom datasets (isotropic, anisotropic, transposed, 2-D PNG) that
are deterministic and parse with ``vssm.seg.plans.configuration``."""
import json

import numpy as np
import pytest

from tests.data.phantoms import write_raw_dataset
from tests.tools.helpers import load_tool
from vssm.data.nnunet_raw import DatasetValidationError
from vssm.seg.planner import (
    PlanningError, feature_map_voxels, plan_dataset, plan_topology, plans_from_fingerprint, pool_and_conv_props,
    target_spacing, transpose_axes,
)
from vssm.seg.plans import configuration

FEW_SAMPLES = 2000  # foreground intensities sampled for the fingerprint: plenty for phantoms, fast


def total_stride(config):
    return np.prod(config["architecture"]["arch_kwargs"]["strides"], axis=0)


def test_hippocampus_plan_of_the_nnunet_docs():
    # documentation/explanation_plans_files.md: Hippocampus 3d_fullres at spacing 1 has median size [36, 50, 35],
    # patch [40, 56, 40] and 3 poolings per axis; 260 training cases. Both batch sizes hit the 5% cap:
    # round(36*50*35*260 * 0.05 / (40*56*40)) = round(9.14) = 9 and round(819000 / (56*40)) = round(365.6) = 366
    voxels = 36 * 50 * 35 * 260
    plan = plan_topology((1.0, 1.0, 1.0), (36, 50, 35), 3, voxels)
    assert plan["patch_size"] == [40, 56, 40]
    assert plan["batch_size"] == 9
    kw = plan["architecture"]["arch_kwargs"]
    assert kw["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 3
    assert kw["kernel_sizes"] == [[3, 3, 3]] * 4
    assert kw["features_per_stage"] == [32, 64, 128, 256]
    assert kw["n_conv_per_stage"] == [2] * 4 and kw["n_conv_per_stage_decoder"] == [2] * 3
    plan_2d = plan_topology((1.0, 1.0), (50, 35), 3, voxels)
    assert plan_2d["patch_size"] == [56, 40] and plan_2d["batch_size"] == 366


def test_large_ct_plans_hit_the_memory_budget():
    # a 512x512 CT slice: the 2-D patch is the whole slice with 8 stages and features capped at 512; the reference
    # batch of 12 at 8 GB
    plan_2d = plan_topology((0.8, 0.8), (512, 512), 14, 200 * 512 * 512 * 50)
    kw = plan_2d["architecture"]["arch_kwargs"]
    assert plan_2d["patch_size"] == [512, 512] and plan_2d["batch_size"] == 12
    assert kw["n_stages"] == 8 and kw["features_per_stage"][-1] == 512
    plan_3d = plan_topology((2.5, 0.8, 0.8), (200, 512, 512), 14, 200 * 512 * 512 * 50)
    assert plan_3d["batch_size"] == 2  # the budget, not the median size, limits a 3-D CT patch
    assert max(plan_3d["architecture"]["arch_kwargs"]["features_per_stage"]) == 320
    assert plan_3d["feature_map_voxels"] <= 560_000_000  # fits at batch 2 (the reference of 8 GB)
    # a smaller budget never gives a larger patch, and every patch is a multiple of the total stride
    sizes = []
    for budget in (16, 8, 4, 2, 1):
        plan = plan_topology((2.5, 0.8, 0.8), (200, 512, 512), 14, 200 * 512 * 512 * 50, gpu_memory_gb=budget)
        stride = np.prod(plan["architecture"]["arch_kwargs"]["strides"], axis=0)
        assert all(p % s == 0 for p, s in zip(plan["patch_size"], stride))
        assert plan["feature_map_voxels"] <= 560_000_000 * budget / 8
        sizes.append(np.prod(plan["patch_size"]))
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    with pytest.raises(PlanningError, match="gpu_memory_gb"):
        plan_topology((1.0, 1.0), (64, 64), 2, 1e6, gpu_memory_gb=0)


def test_pool_and_conv_props_anisotropic_by_hand():
    # spacing (2.5, 0.8, 0.7), patch (10, 14, 16): first pool only the fine axes 1, 2 (2.5 / 0.7 >= 2, kernel 1 on
    # axis 0) -> spacing (2.5, 1.6, 1.4), size (10, 7, 8); then axes 0 and 2 (axis 1 has 7 < 8 voxels; 2.5 / 1.4 < 2,
    # kernel 3 everywhere) -> size (5, 7, 4); nothing has 8 voxels left
    pools, strides, kernels, patch, divisible_by = pool_and_conv_props((2.5, 0.8, 0.7), (10, 14, 16))
    assert pools == [1, 1, 2]
    assert strides == [[1, 1, 1], [1, 2, 2], [2, 1, 2]]
    assert kernels == [[1, 3, 3], [3, 3, 3], [3, 3, 3]]
    assert patch == (10, 14, 16) and divisible_by == (2, 2, 4)
    # a lone pooling axis needs 3 x 4 voxels: (9, 100) at spacing (1, 1) pools both once (-> 5, 50), then only axis 1
    # while it has >= 12 voxels: 50 -> 25 -> 13 -> 7
    pools, strides, _, patch, _ = pool_and_conv_props((1.0, 1.0), (9, 100))
    assert pools == [1, 4] and strides[1:] == [[2, 2], [1, 2], [1, 2], [1, 2]]
    assert patch == (10, 112)  # padded up to multiples of 2 and 16


def test_feature_map_voxels_by_hand():
    # patch 8x8, features (2, 4), strides (1, 1), (2, 2), 2 convs everywhere, 3 classes:
    # encoder 2*2*64 + 2*4*16 = 384; decoder at 8x8: (2 convs + transposed conv) * 2 * 64 = 384; segmentation 3 * 64
    assert feature_map_voxels((8, 8), (2, 4), ((1, 1), (2, 2)), (2, 2), (2,), 3) == 384 + 384 + 192


def test_target_spacing_anisotropy_rule():
    fine = [1.0, 1.0]
    # median 5 > 3 x 1 and 20 slices x 3 < 256 voxels in-plane: the coarse axis takes the 10th percentile of its
    # spacings; np.percentile([2, 3, 5 x 8], 10) = 2 + 0.9 * (3 - 2) = 2.9
    spacings = [[2.0] + fine, [3.0] + fine] + [[5.0] + fine] * 8
    shapes = [[20, 256, 256]] * 10
    assert np.allclose(target_spacing(spacings, shapes), [2.9, 1.0, 1.0])
    # with as many slices as in-plane voxels the median stays
    assert np.allclose(target_spacing(spacings, [[200, 256, 256]] * 10), [5.0, 1.0, 1.0])
    # the 10th percentile may not be finer than the other axes: it becomes their spacing (+1e-5)
    spacings = [[0.5] + fine] * 2 + [[5.0] + fine] * 8
    assert np.allclose(target_spacing(spacings, shapes), [1.00001, 1.0, 1.0])
    # a mildly anisotropic dataset keeps its median spacing (the coarse axis may be any axis)
    assert np.allclose(target_spacing([[1.0, 1.0, 2.0], [1.0, 1.0, 2.5], [1.2, 1.0, 2.0]], [[64, 64, 20]] * 3),
                       [1.0, 1.0, 2.0])


def test_transpose_axes():
    forward, backward = transpose_axes((0.7, 0.8, 2.5))
    assert forward == [2, 0, 1] and backward == [1, 2, 0]
    volume = np.arange(24).reshape(2, 3, 4)
    assert np.array_equal(volume.transpose(forward).transpose(backward), volume)
    assert transpose_axes((2.5, 0.8, 0.7)) == ([0, 1, 2], [0, 1, 2])


def check_plans(plans, configurations):
    assert list(plans["configurations"]) == configurations
    for name, config in plans["configurations"].items():
        typed = configuration(plans, name)  # helper A's reader accepts the plans
        assert typed.patch_size == tuple(config["patch_size"])
        assert typed.network.dim == len(config["patch_size"]) == (2 if name == "2d" else 3)
        assert all(p % s == 0 for p, s in zip(typed.patch_size, typed.network.size_divisor))
        assert config["batch_size"] >= 2
        kw = config["architecture"]["arch_kwargs"]
        assert kw["n_stages"] == len(kw["strides"]) == len(kw["kernel_sizes"]) == len(kw["features_per_stage"])
        assert kw["features_per_stage"][0] == 32
        assert config["data_identifier"] == f"nnUNetPlans_{name}"
    for key in ("dataset_name", "plans_name", "original_median_spacing_after_transp",
                "original_median_shape_after_transp", "image_reader_writer", "transpose_forward", "transpose_backward",
                "configurations", "experiment_planner_used", "label_manager",
                "foreground_intensity_properties_per_channel"):
        assert key in plans


def test_plan_anisotropic_nifti_dataset(tmp_path):
    raw = write_raw_dataset(tmp_path / "raw", num_cases=4)  # spacing (2.5, 0.8, 0.7), shape (10, 14, 16)
    out = tmp_path / "pre" / "nnUNetPlans.json"
    plans = plan_dataset(raw, out, num_foreground_voxels=FEW_SAMPLES)
    check_plans(plans, ["2d", "3d_fullres"])
    assert json.loads(out.read_text()) == plans
    fingerprint = json.loads((out.parent / "dataset_fingerprint.json").read_text())
    assert np.allclose(fingerprint["spacings"], [[2.5, 0.8, 0.7]] * 4)
    assert set(fingerprint["foreground_intensity_properties_per_channel"]) == {"0", "1"}
    assert json.loads((out.parent / "dataset.json").read_text()) == json.loads((raw / "dataset.json").read_text())
    full, flat = plans["configurations"]["3d_fullres"], plans["configurations"]["2d"]
    # coarse axis already first: no transposition; median spacing (the 10 slices are not few enough for the 10th
    # percentile rule: 10 x 3 >= 14); the 2-D configuration is the in-plane part
    assert plans["transpose_forward"] == [0, 1, 2]
    assert np.allclose(full["spacing"], [2.5, 0.8, 0.7]) and np.allclose(flat["spacing"], [0.8, 0.7])
    assert full["patch_size"] == [10, 14, 16]  # the median image, whose sizes are already multiples of (2, 2, 4)
    assert full["architecture"]["arch_kwargs"]["kernel_sizes"][0] == [1, 3, 3]  # no conv across the coarse axis
    assert full["normalization_schemes"] == ["CTNormalization", "ZScoreNormalization"]
    assert full["use_mask_for_norm"] == [False, False]
    assert plans["image_reader_writer"] == "NibabelIO"
    # deterministic: the same plans again, and from the fingerprint alone
    assert plan_dataset(raw, None, num_foreground_voxels=FEW_SAMPLES) == plans
    assert plans_from_fingerprint(fingerprint, json.loads((raw / "dataset.json").read_text()), raw.name) == plans


def test_plan_transposes_the_coarse_axis_first(tmp_path):
    # the coarse axis last in the files: transpose_forward brings it first; 16 x 3 >= 10 voxels, so no 10th percentile
    spacings = [(0.7, 0.8, 2.5), (0.7, 0.8, 3.0), (0.7, 0.8, 2.5)]
    raw = write_raw_dataset(tmp_path / "raw", num_cases=3, spacing=spacings, shape=(16, 14, 10))
    plans = plan_dataset(raw, None, num_foreground_voxels=FEW_SAMPLES)
    check_plans(plans, ["2d", "3d_fullres"])
    assert plans["transpose_forward"] == [2, 0, 1] and plans["transpose_backward"] == [1, 2, 0]
    assert np.allclose(plans["original_median_spacing_after_transp"], [2.5, 0.7, 0.8])
    assert plans["original_median_shape_after_transp"] == [10, 16, 14]
    assert np.allclose(plans["configurations"]["3d_fullres"]["spacing"], [2.5, 0.7, 0.8])
    assert np.allclose(plans["configurations"]["2d"]["spacing"], [0.7, 0.8])


def test_plan_isotropic_dataset(tmp_path):
    raw = write_raw_dataset(tmp_path / "raw", num_cases=3, spacing=(1.0, 1.0, 1.0), shape=(24, 20, 28))
    plans = plan_dataset(raw, None, num_foreground_voxels=FEW_SAMPLES)
    check_plans(plans, ["2d", "3d_fullres"])
    kw = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    # isotropic: kernels 3 everywhere; 24, 20, 28 -> 12, 10, 14 -> 6, 5, 7: two poolings on every axis
    assert kw["kernel_sizes"] == [[3, 3, 3]] * 3
    assert kw["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [24, 20, 28]


def test_plan_png_dataset(tmp_path):
    raw = write_raw_dataset(tmp_path / "raw", dim=2, num_cases=3)  # RGB 20x24 PNGs
    plans = plan_dataset(raw, tmp_path / "pre" / "nnUNetPlans.json", num_foreground_voxels=FEW_SAMPLES)
    check_plans(plans, ["2d"])  # one slice: no 3d_fullres, as nnU-Net
    assert plans["transpose_forward"] == [0, 1, 2]
    assert plans["original_median_spacing_after_transp"] == [999.0, 1.0, 1.0]
    assert plans["original_median_shape_after_transp"] == [1, 20, 24]
    assert plans["image_reader_writer"] == "NaturalImage2DIO"
    config = plans["configurations"]["2d"]
    assert config["spacing"] == [1.0, 1.0] and config["patch_size"] == [20, 24]
    assert config["normalization_schemes"] == ["ZScoreNormalization"] * 3  # channels R, G, B
    with pytest.raises(PlanningError, match="none of the configurations"):
        plan_dataset(raw, None, configurations=("3d_fullres",), num_foreground_voxels=FEW_SAMPLES)


def test_plan_errors(tmp_path):
    raw = write_raw_dataset(tmp_path / "raw", broken="unexpected_label")
    with pytest.raises(DatasetValidationError, match="case_001"):
        plan_dataset(raw, None)
    with pytest.raises(PlanningError, match="3d_lowres"):
        plan_dataset(raw, None, configurations=("3d_lowres",))


def test_plan_seg_tool(tmp_path, capsys, monkeypatch):
    plan_seg = load_tool("plan_seg")
    raw = write_raw_dataset(tmp_path / "raw", num_cases=2)
    out = tmp_path / "pre" / "plans.json"
    assert plan_seg.main([str(raw), "-o", str(out), "--gpu-memory-gb", "4", "-c", "3d_fullres",
                          "--foreground-samples", str(FEW_SAMPLES)]) == 0
    assert list(json.loads(out.read_text())["configurations"]) == ["3d_fullres"]
    assert "3d_fullres: patch [10, 14, 16]" in capsys.readouterr().out
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "env"))
    assert plan_seg.default_plans_path(str(raw)) == tmp_path / "env" / "Dataset001_Phantom" / "nnUNetPlans.json"
    bad = write_raw_dataset(tmp_path / "bad", broken="missing_channel")
    assert plan_seg.main([str(bad), "-o", str(tmp_path / "x.json")]) == 2
    assert "case_001_0001.nii.gz" in capsys.readouterr().err
