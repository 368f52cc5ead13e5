"""Sliding-window inference: nnU-Net's step positions (worked by hand from its formula), its Gaussian importance
map, weighted blending, padding of small images, mirroring, and equality with a whole-image forward for a
translation-equivariant predictor in 2-D and 3-D."""
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from vssm.seg.sliding_window import (
    compute_gaussian, compute_steps, mirror_combinations, pad_to_patch, predict_with_mirroring,
    sliding_window_inference, sliding_window_predict, window_slices,
)


# n = ceil((size - patch) / (patch * step)) + 1, start_i = round(i * (size - patch) / (n - 1)), round half to even
@pytest.mark.parametrize("size, patch, step, expected", [
    (64, 64, 0.5, [0]),  # fits once: one step
    (65, 64, 0.5, [0, 1]),  # n = ceil(1 / 32) + 1 = 2, spacing 1
    (110, 64, 0.5, [0, 23, 46]),  # n = ceil(46 / 32) + 1 = 3, spacing 23 (nnU-Net's own example)
    (97, 64, 0.5, [0, 16, 33]),  # n = 3, spacing 16.5: round(16.5) = 16 (half to even)
    (160, 64, 0.5, [0, 32, 64, 96]),  # n = ceil(96 / 32) + 1 = 4
    (100, 64, 0.5, [0, 18, 36]),  # n = ceil(36 / 32) + 1 = 3, spacing 18
    (130, 64, 1.0, [0, 33, 66]),  # no overlap asked: n = ceil(66 / 64) + 1 = 3, spacing 33
    # n = ceil(13 / 2) + 1 = 8, spacing 13 / 7: 0, 1.86, 3.71, 5.57, 7.43, 9.29, 11.14, 13
    (21, 8, 0.25, [0, 2, 4, 6, 7, 9, 11, 13]),
])
def test_steps_by_hand(size, patch, step, expected):
    assert compute_steps([size], [patch], step) == [expected]


def test_steps_3d_and_errors():
    # axis 0: ceil(4 / 8) + 1 = 2 -> [0, 4]; axis 1: ceil(14 / 8) + 1 = 3 -> [0, 7, 14]; axis 2: ceil(18 / 16) + 1 = 3
    assert compute_steps((20, 30, 50), (16, 16, 32), 0.5) == [[0, 4], [0, 7, 14], [0, 9, 18]]
    assert len(window_slices((20, 30, 50), (16, 16, 32))) == 2 * 3 * 3
    with pytest.raises(ValueError, match="at least the patch"):
        compute_steps((40, 64), (64, 64))
    with pytest.raises(ValueError, match="step_size"):
        compute_steps((64,), (64,), 0)


def test_padding_of_images_smaller_than_the_patch():
    image = torch.arange(40.0).reshape(1, 5, 8)
    padded, region = pad_to_patch(image, (8, 11))  # 3 rows: 1 before, 2 after; 3 columns: 1 before, 2 after
    assert padded.shape == (1, 8, 11) and region == (slice(None), slice(1, 6), slice(1, 9))
    assert torch.equal(padded[region], image) and padded.sum() == image.sum()
    same, region = pad_to_patch(image, (4, 8))  # already large enough: untouched
    assert same is image and region == (slice(None), slice(0, 5), slice(0, 8))


def test_gaussian_importance_map():
    patch = (6, 9)
    expected = np.zeros(patch)
    expected[3, 4] = 1
    expected = gaussian_filter(expected, (6 / 8, 9 / 8), 0, mode="constant", cval=0)
    expected = expected / expected.max() * 10
    gaussian = compute_gaussian(patch, dtype=torch.float32)
    np.testing.assert_allclose(gaussian.numpy(), expected, rtol=1e-6)
    assert gaussian[3, 4] == 10 and gaussian.dtype == torch.float32
    # in float16 the far corners of a 3-D map underflow to 0: replaced by the smallest non-zero value
    raw = compute_gaussian((8, 8, 8), dtype=torch.float64).to(torch.float16)
    assert (raw == 0).any()
    half = compute_gaussian((8, 8, 8))
    assert half.dtype == torch.float16 and not (half == 0).any()
    assert half.min() == raw[raw > 0].min() and torch.equal(half[raw > 0], raw[raw > 0])


def pointwise_net(in_chans: int, classes: int, dims: int, seed: int = 0) -> torch.nn.Module:
    """1x1 convolutions: translation- and flip-equivariant, so windows see exactly what the whole image sees."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(conv(in_chans, 8, 1), torch.nn.Tanh(), conv(8, classes, 1)).eval()


@pytest.mark.parametrize("shape, patch", [
    ((2, 37, 50), (16, 24)),  # larger than the patch: several windows
    ((2, 11, 30), (16, 24)),  # smaller along one axis: padded, then cropped back
    ((2, 9, 21, 14), (8, 8, 8)),
    ((2, 5, 6, 7), (8, 8, 8)),  # smaller everywhere: one padded window
])
def test_equals_a_whole_image_forward(shape, patch):
    net = pointwise_net(shape[0], 3, len(patch))
    image = torch.randn(shape)
    with torch.no_grad():
        whole = net(image[None])[0]
    for kwargs in (dict(), dict(use_gaussian=False), dict(mirror_axes=tuple(range(len(patch))), batch_size=32),
                   dict(step_size=0.33, batch_size=7)):
        out = sliding_window_predict(image, net, patch, **kwargs)
        assert out.shape == whole.shape and out.dtype == torch.float32
        torch.testing.assert_close(out, whole, rtol=1e-5, atol=1e-5)


def test_weighted_blending_by_hand():
    """Each window predicts a constant (its index + 1): the result is the Gaussian-weighted mean of the constants."""
    calls = []

    def predictor(patches):
        calls.append(patches.shape[0])
        values = torch.arange(len(calls) - 1, len(calls)).float() + 1
        return values.view(-1, 1, 1, 1).expand(patches.shape[0], 1, *patches.shape[2:])

    image = torch.zeros(1, 4, 12)
    out = sliding_window_predict(image, predictor, (4, 8))  # steps along the last axis: [0, 4]
    g = compute_gaussian((4, 8)).float().numpy()
    num, den = np.zeros((4, 12)), np.zeros((4, 12))
    for value, start in ((1.0, 0), (2.0, 4)):
        num[:, start:start + 8] += value * g
        den[:, start:start + 8] += g
    np.testing.assert_allclose(out[0].numpy(), num / den, rtol=1e-6)
    assert calls == [1, 1]


def test_mirroring_averages_every_axis_combination():
    assert mirror_combinations([0, 1, 2]) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    ramp = torch.arange(6.0).view(1, 1, 1, 6)

    def predictor(x):  # position-dependent: not flip-equivariant
        return x * ramp

    x = torch.ones(1, 1, 2, 6)
    out = predict_with_mirroring(predictor, x, mirror_axes=(1,))
    torch.testing.assert_close(out, x * (ramp + ramp.flip(-1)) / 2)  # every entry 2.5
    out = predict_with_mirroring(predictor, x, mirror_axes=(0, 1))  # 4 terms: 2 flip the last axis
    torch.testing.assert_close(out, x * (ramp + ramp.flip(-1)) / 2)
    with pytest.raises(ValueError, match="out of range"):
        predict_with_mirroring(predictor, x, mirror_axes=(2,))
    deep_supervision = predict_with_mirroring(lambda x: [predictor(x), x[..., ::2]], x, mirror_axes=(1,))
    torch.testing.assert_close(deep_supervision, out)  # the full-resolution output of a deep-supervision list


def test_2d_patch_over_the_slices_of_a_volume():
    net = pointwise_net(1, 2, 2)
    volume = torch.randn(1, 5, 20, 13)
    out = sliding_window_predict(volume, net, (16, 16), batch_size=3, slices=True)
    with torch.no_grad():
        expected = net(volume.permute(1, 0, 2, 3)).permute(1, 0, 2, 3)  # slices as a batch
    assert out.shape == (2, 5, 20, 13)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_monai_style_call():
    net = pointwise_net(1, 2, 3)
    batch = torch.randn(2, 1, 10, 12, 9)
    out = sliding_window_inference(batch, roi_size=(8, 8, 8), sw_batch_size=4, predictor=net, overlap=0.5,
                                   mode="gaussian")
    assert out.shape == (2, 2, 10, 12, 9)
    torch.testing.assert_close(out[1], sliding_window_predict(batch[1], net, (8, 8, 8), batch_size=4))
    with torch.no_grad():
        torch.testing.assert_close(out, net(batch), rtol=1e-5, atol=1e-5)
    same = sliding_window_inference(batch, roi_size=8, sw_batch_size=1, predictor=net, overlap=0.25, mode="constant")
    torch.testing.assert_close(same, out, rtol=1e-5, atol=1e-5)
    whole = sliding_window_inference(batch, roi_size=(-1, 8, -1), sw_batch_size=1, predictor=net)
    torch.testing.assert_close(whole, out, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mode"):
        sliding_window_inference(batch, 8, 1, net, mode="triangle")


def test_predictor_shape_errors_are_explained():
    with pytest.raises(ValueError, match="expected"):
        sliding_window_predict(torch.zeros(1, 8, 8), lambda x: x[..., :4], (8, 8))
    with pytest.raises(ValueError, match="does not fit"):
        sliding_window_predict(torch.zeros(8, 8), lambda x: x, (8, 8, 8))
    with pytest.raises(ValueError, match="slices=True"):  # a batch, or a volume for a 2-D predictor: say which
        sliding_window_predict(torch.zeros(2, 1, 8, 8), lambda x: x, (8, 8))
