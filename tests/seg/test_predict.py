"""Prediction of raw-format images: an 'oracle' net that reads the label off the (preprocessed) intensities gives the
phantom's mask back exactly through transposition, cropping, padding or many windows, mirroring and the way back, in
3-D, 2-D slice by slice and on 2-D natural images; resampled predictions return to the input grid; probabilities
agree with the labels; a tiny untrained U-Mamba predicts folders of NIfTI (affine kept) and PNG cases, skips what is
done, and bad inputs are named by file."""
import json

import nibabel
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from tests.data.phantoms import ball, box, nifti_affine, phantom_3d, save_nifti, write_raw_dataset
from vssm.data.nnunet_raw import (
    CorruptImageError, DatasetValidationError, ImageGeometry, MissingChannelError, parse_labels, read_image,
    read_label,
)
from vssm.seg.nets import build_seg_net
from vssm.seg.plans import configuration
from vssm.seg.predict import PredictionError, inference_mode, predict_case, predict_folder


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread (several threads on a shared CPU make each op tens of times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_plans(name, patch_size, spacing, transpose_forward=(0, 1, 2), schemes=("NoNormalization",),
               features=(4, 8), foreground=None):
    """A small nnU-Net (>= 2.4 layout) plans dict with one configuration."""
    dim = len(patch_size)
    n = len(features)
    forward = list(transpose_forward)
    backward = [forward.index(i) for i in range(len(forward))]
    architecture = {
        "network_class_name": "vssm.seg.umamba.UMambaBot",
        "arch_kwargs": {"n_stages": n, "features_per_stage": list(features),
                        "conv_op": f"torch.nn.modules.conv.Conv{dim}d", "kernel_sizes": [[3] * dim] * n,
                        "strides": [[1] * dim] + [[2] * dim] * (n - 1), "n_conv_per_stage": [1] * n,
                        "n_conv_per_stage_decoder": [1] * (n - 1)},
        "_kw_requires_import": [],
    }
    return {
        "dataset_name": "Dataset001_Phantom", "plans_name": "nnUNetPlans",
        "transpose_forward": forward, "transpose_backward": backward,
        "configurations": {name: {"patch_size": list(patch_size), "batch_size": 2, "spacing": list(spacing),
                                  "normalization_schemes": list(schemes), "use_mask_for_norm": [False] * len(schemes),
                                  "architecture": architecture}},
        "foreground_intensity_properties_per_channel": foreground or {},
    }


class Oracle(nn.Module):
    """Logits of the label coded in the intensities: body 1 -> label 0, 2 -> label 1, 3 -> label 2 (0 outside the
    body -> label 0). Voxel-wise, so windows, padding and mirroring must not change its answer."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        labels = (x[:, 0].round() - 1).clamp(0, self.num_classes - 1).long()
        return F.one_hot(labels, self.num_classes).movedim(-1, 1).float() * 10


def coded_volume(shape=(10, 14, 16)):
    """(image (1, *shape) float32, label uint8): two objects inside a body box that does not fill the volume, so
    cropping to the non-zero region matters."""
    label = np.zeros(shape, dtype=np.uint8)
    label[ball(shape, (shape[0] / 2, shape[1] / 2, shape[2] / 3), 3.5)] = 1
    label[box(shape, (2, 3, shape[2] - 6), (shape[0] - 2, 7, shape[2] - 2))] = 2
    body = box(shape, (1, 2, 1), (shape[0] - 1, shape[1] - 1, shape[2] - 1))
    image = np.where(body, label + 1.0, 0.0).astype(np.float32)
    label[~body] = 0
    return image[None], label


SPACING = (2.5, 0.8, 0.7)


@pytest.mark.parametrize("patch", [(4, 6, 5), (16, 20, 24)], ids=["many_windows", "padded"])
@pytest.mark.parametrize("forward", [(0, 1, 2), (2, 0, 1)], ids=["identity", "transposed"])
def test_oracle_gives_the_mask_back_3d(patch, forward):
    image, label = coded_volume()
    config = configuration(make_plans("3d_fullres", patch, [SPACING[a] for a in forward], forward), "3d_fullres")
    geometry = ImageGeometry(label.shape, SPACING, nifti_affine())
    segmentation = predict_case(Oracle(), image, geometry, config, step_size=0.5)
    assert segmentation.shape == label.shape
    np.testing.assert_array_equal(segmentation, label)


@pytest.mark.parametrize("patch", [(4, 5), (24, 32)], ids=["many_windows", "padded"])
def test_oracle_gives_the_mask_back_2d_configuration_slice_by_slice(patch):
    image, label = coded_volume()
    forward = (1, 0, 2)  # slices along the second array axis
    config = configuration(make_plans("2d", patch, [SPACING[a] for a in forward][1:], forward), "2d")
    segmentation = predict_case(Oracle(), image, ImageGeometry(label.shape, SPACING), config)
    np.testing.assert_array_equal(segmentation, label)


@pytest.mark.parametrize("patch", [(6, 8), (32, 32)], ids=["many_windows", "padded"])
def test_oracle_gives_the_mask_back_on_a_natural_2d_image(patch):
    image, label = coded_volume((1, 18, 21))
    image, label = image[:, 0], label[0]
    config = configuration(make_plans("2d", patch, (1.0, 1.0)), "2d")
    segmentation = predict_case(Oracle(), image, ImageGeometry(label.shape, (1.0, 1.0)), config)
    np.testing.assert_array_equal(segmentation, label)


def test_resampled_prediction_returns_to_the_input_grid_with_probabilities():
    shape = (12, 30, 34)
    label = box(shape, (3, 6, 8), (9, 22, 25)).astype(np.uint8)  # one object: no intermediate level to pass through
    image = np.where(box(shape, (1, 2, 2), (11, 28, 32)), label + 1.0, 0.0).astype(np.float32)[None]
    spacing = (1.0, 0.5, 0.5)
    config = configuration(make_plans("3d_fullres", (8, 8, 8), (1.0, 1.0, 1.0)), "3d_fullres")  # half the size
    segmentation, probabilities = predict_case(Oracle(), image, ImageGeometry(label.shape, spacing), config,
                                               return_probabilities=True)
    assert segmentation.shape == label.shape and probabilities.shape == (3, *label.shape)
    overlap = np.sum((segmentation == 1) & (label == 1))  # interpolation moves the borders a little, no more
    assert 2 * overlap / (np.sum(segmentation == 1) + np.sum(label == 1)) > 0.9
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(0), segmentation)
    assert np.all(probabilities[0][image[0] == 0] == 1.0)  # outside the crop: background


def test_regions_are_painted_in_order():
    image, label = coded_volume()

    class RegionOracle(nn.Module):  # sigmoid outputs: region (1, 2) = 'objects', region (2,) = 'box'
        def forward(self, x):
            value = x[:, :1].round()
            return torch.cat([(value >= 2).float() * 20 - 10, (value >= 3).float() * 20 - 10], 1)
    labels = parse_labels({"background": 0, "objects": [1, 2], "box": 2}, regions_class_order=[1, 2])
    config = configuration(make_plans("3d_fullres", (6, 8, 8), SPACING), "3d_fullres")
    segmentation = predict_case(RegionOracle(), image, ImageGeometry(label.shape, SPACING), config, labels)
    np.testing.assert_array_equal(segmentation, label)
    with pytest.raises(PredictionError, match="2 channel"):
        predict_case(RegionOracle(), image, ImageGeometry(label.shape, SPACING), config,
                     parse_labels({"background": 0, "a": 1, "b": 2}))


def tiny_umamba(config, in_channels, num_classes):
    torch.manual_seed(0)
    return build_seg_net("umamba_bot", config.network, in_channels, num_classes, config.patch_size)


CT_PROPERTIES = {"0": {"mean": 100.0, "std": 200.0, "percentile_00_5": -150.0, "percentile_99_5": 450.0},
                 "1": {"mean": 50.0, "std": 100.0, "percentile_00_5": -75.0, "percentile_99_5": 225.0}}


def test_predict_folder_nifti_keeps_the_affine_and_skips_done_cases(tmp_path):
    dataset = write_raw_dataset(tmp_path, dim=3)
    plans = make_plans("3d_fullres", (8, 8, 8), SPACING, schemes=("CTNormalization", "ZScoreNormalization"),
                       foreground=CT_PROPERTIES)
    net = tiny_umamba(configuration(plans, "3d_fullres"), 2, 3)
    assert net.decoder.deep_supervision
    out = tmp_path / "pred"
    written = predict_folder(net, dataset / "imagesTs", out, plans, "3d_fullres", dataset / "dataset.json",
                             save_probabilities=True, progress=False)
    assert [p.name for p in written] == ["test_000.nii.gz"]
    assert net.decoder.deep_supervision and net.training  # switched back after prediction
    source = nibabel.load(str(dataset / "imagesTs" / "test_000_0000.nii.gz"))
    result = nibabel.load(str(written[0]))
    assert result.shape == source.shape
    np.testing.assert_allclose(result.affine, source.affine, atol=1e-6)
    segmentation, _ = read_label(written[0])
    probabilities = np.load(out / "test_000.npz")["probabilities"]
    assert probabilities.shape == (3, *segmentation.shape)
    np.testing.assert_array_equal(probabilities.argmax(0), segmentation)
    assert json.loads((out / "dataset.json").read_text())["labels"] == {"background": 0, "sphere": 1, "box": 2}
    assert json.loads((out / "plans.json").read_text())["configurations"]["3d_fullres"]["patch_size"] == [8, 8, 8]
    stamp = written[0].stat().st_mtime_ns
    assert predict_folder(net, dataset / "imagesTs", out, plans, "3d_fullres", dataset, save_probabilities=True,
                          progress=False) == []
    assert written[0].stat().st_mtime_ns == stamp
    again = predict_folder(net, dataset / "imagesTs", out, plans, "3d_fullres", dataset, overwrite=True,
                           mirror=False, progress=False)
    assert again == written and written[0].stat().st_mtime_ns != stamp


def test_predict_folder_png(tmp_path):
    dataset = write_raw_dataset(tmp_path, dim=2)
    plans = make_plans("2d", (16, 16), (1.0, 1.0), schemes=("ZScoreNormalization",) * 3)
    net = tiny_umamba(configuration(plans, "2d"), 3, 2)
    written = predict_folder(net, dataset / "imagesTr", tmp_path / "pred", plans, "2d", dataset, step_size=0.5,
                             progress=False)
    assert sorted(p.name for p in written) == ["case_000.png", "case_001.png", "case_002.png"]
    segmentation, geometry = read_label(written[0])
    _, source = read_image(dataset / "imagesTr" / "case_000_0000.png")
    assert segmentation.shape == source.shape == (20, 24) and set(np.unique(segmentation)) <= {0, 1}
    assert Image.open(written[0]).mode == "L"


def test_bad_inputs_are_named_by_file(tmp_path):
    dataset = write_raw_dataset(tmp_path, dim=3)
    plans = make_plans("3d_fullres", (8, 8, 8), SPACING, schemes=("CTNormalization", "ZScoreNormalization"),
                       foreground=CT_PROPERTIES)
    config = configuration(plans, "3d_fullres")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    image, _ = phantom_3d(0)
    for c in range(2):
        save_nifti(image, inputs / f"good_{c:04d}.nii.gz", nifti_affine())
    (inputs / "broken_0000.nii.gz").write_bytes(b"not a NIfTI file")
    save_nifti(image, inputs / "broken_0001.nii.gz", nifti_affine())
    with pytest.raises(CorruptImageError, match="broken_0000.nii.gz"):
        predict_folder(Oracle(), inputs, tmp_path / "out", plans, config, dataset, cases=["broken"], progress=False)
    (inputs / "broken_0001.nii.gz").unlink()  # now a channel file is missing: reported before any prediction
    with pytest.raises(DatasetValidationError, match="broken_0001.nii.gz"):
        predict_folder(Oracle(), inputs, tmp_path / "out", plans, config, dataset, progress=False)
    # a PNG dataset declaring one channel, given RGB files
    png = write_raw_dataset(tmp_path / "png", dim=2)
    meta = json.loads((png / "dataset.json").read_text())
    meta["channel_names"] = {"0": "gray"}
    plans_2d = make_plans("2d", (16, 16), (1.0, 1.0))
    with pytest.raises(MissingChannelError, match="case_000_0000.png"):
        predict_folder(Oracle(2), png / "imagesTr", tmp_path / "out2", plans_2d, "2d", meta, progress=False)
    rgb_plans = make_plans("2d", (16, 16), (1.0, 1.0), schemes=("NoNormalization",) * 3)
    with pytest.raises(PredictionError, match=r"case_000_0000.png: the net predicts 3 channel\(s\)"):  # 2 labels
        predict_folder(Oracle(3), png / "imagesTr", tmp_path / "out3", rgb_plans, "2d", png, progress=False)
    with pytest.raises(PredictionError, match="normalises 1"):
        predict_case(Oracle(), np.zeros((2, 4, 5, 6), np.float32), ImageGeometry((4, 5, 6), SPACING),
                     configuration(make_plans("3d_fullres", (4, 4, 4), SPACING), "3d_fullres"))


def test_inference_mode_restores_the_switches():
    plans = make_plans("2d", (16, 16), (1.0, 1.0))
    net = tiny_umamba(configuration(plans, "2d"), 1, 2)
    net.train()
    with inference_mode(net):
        assert not net.training and not net.decoder.deep_supervision
        assert isinstance(net(torch.zeros(1, 1, 16, 16)), torch.Tensor)
    assert net.training and net.decoder.deep_supervision
