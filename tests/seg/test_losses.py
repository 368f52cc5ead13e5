"""nnU-Net's segmentation losses on hand-made tensors: Dice sign and value, MONAI's DiceLoss as the reference of the
Dice, cross-entropy with the ignore label, regions (sigmoid), deep-supervision weights and target downsampling, and
the online pseudo-Dice counts."""
import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, MaskedDiceLoss

from vssm.seg.losses import (
    DiceBCELoss, DiceCELoss, SegmentationLoss, SoftDiceLoss, deep_supervision_weights, downsample_label,
    labels_to_regions, online_confusion,
)


def confident_logits(label: torch.Tensor, num_classes: int, scale: float = 30.0) -> torch.Tensor:
    """Logits (B, K, *spatial) that predict ``label`` (B, 1, *spatial) with near-certainty."""
    onehot = torch.zeros(label.shape[0], num_classes, *label.shape[2:]).scatter_(1, label.long(), 1)
    return (2 * onehot - 1) * scale


def random_case(seed: int = 0, batch: int = 2, classes: int = 4, shape=(5, 6, 7), ignore: bool = False):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, *shape, generator=generator)
    label = torch.randint(0, classes + int(ignore), (batch, 1, *shape), generator=generator)
    return logits, label


def test_deep_supervision_weights_halve_zero_the_lowest_resolution_and_sum_to_one():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(2) == [1.0, 0.0]
    assert deep_supervision_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert deep_supervision_weights(5) == pytest.approx([w / 1.875 for w in (1, 0.5, 0.25, 0.125, 0)])


def test_downsampled_labels_take_nearest_exact_voxels_and_keep_the_dtype():
    label = torch.arange(16).view(1, 1, 4, 4)
    full, half, quarter = downsample_label(label, [(1, 1), (2, 2), 4])
    assert full is label
    # nearest-exact picks source index floor((i + 0.5) * 2) = 2 i + 1 at half size
    assert half.dtype == label.dtype and half.tolist() == [[[[5, 7], [13, 15]]]]
    assert quarter.tolist() == [[[[10]]]]
    anisotropic = downsample_label(torch.zeros(2, 1, 3, 8, 10, dtype=torch.int16), [(1, 2, 2)])[0]
    assert anisotropic.shape == (2, 1, 3, 4, 5) and anisotropic.dtype == torch.int16
    with pytest.raises(ValueError, match="2 entries for a label with 3 spatial axes"):
        downsample_label(torch.zeros(1, 1, 3, 8, 10), [(2, 2)])


@pytest.mark.parametrize("batch_dice", [False, True])
def test_a_perfect_prediction_scores_minus_one_dice_and_zero_cross_entropy(batch_dice):
    label = torch.zeros(2, 1, 6, 6, dtype=torch.long)
    label[0, 0, 1:4, 1:4] = 1
    label[1, 0, 2:5, 0:2] = 2
    label[1, 0, 0, 0] = 1
    logits = confident_logits(label, 3)
    dice = SoftDiceLoss(batch_dice=batch_dice)(logits, label)
    # a class absent from a sample scores (0 + s) / (0 + s) = 1 as well
    assert dice.item() == pytest.approx(-1.0, abs=1e-6)
    assert DiceCELoss(batch_dice=batch_dice)(logits, label).item() == pytest.approx(-1.0, abs=1e-6)
    wrong = confident_logits(torch.where(label > 0, 0, 1), 3)  # background <-> class 1, class 2 never predicted
    # per sample, class 2 absent from sample 0 and not predicted there is a perfect 1 of four entries; over the batch
    # every class scores 0
    expected = 0.0 if batch_dice else -0.25
    assert SoftDiceLoss(batch_dice=batch_dice)(wrong, label).item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
def test_soft_dice_equals_monai_dice_loss_minus_one_in_value_and_gradient(batch_dice, ignore):
    logits, label = random_case(seed=1, ignore=ignore)
    ours_input = logits.clone().requires_grad_()
    monai_input = logits.clone().requires_grad_()
    mask = (label != 4) if ignore else None
    ours = SoftDiceLoss(batch_dice=batch_dice)(ours_input, torch.where(label == 4, 0, label), loss_mask=mask)
    reference = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=batch_dice,
                         ignore_index=4 if ignore else None)(monai_input, label)
    assert ours.item() == pytest.approx(reference.item() - 1, abs=1e-6)
    ours.backward()
    reference.backward()
    torch.testing.assert_close(ours_input.grad, monai_input.grad, rtol=1e-5, atol=1e-8)


def test_the_ignore_label_is_left_out_of_dice_and_cross_entropy():
    logits, label = random_case(seed=2, classes=3, ignore=True)  # label 3 is the ignore label
    ignored = label == 3
    loss_fn = DiceCELoss(ignore_label=3)
    inputs = logits.clone().requires_grad_()
    loss = loss_fn(inputs, label)
    loss.backward()
    assert torch.all(inputs.grad.masked_select(ignored.expand_as(inputs)) == 0)  # ignored voxels pull nowhere
    changed = logits.clone()
    changed[ignored.expand_as(changed)] = 100.0
    assert loss_fn(changed, label).item() == pytest.approx(loss.item(), abs=1e-6)

    keep = ~ignored[:, 0]
    expected_ce = F.cross_entropy(logits.movedim(1, -1)[keep], label[:, 0][keep])
    dice_only = DiceCELoss(ignore_label=3, weight_ce=0)(logits, label)
    ce_only = DiceCELoss(ignore_label=3, weight_dice=0)(logits, label)
    assert ce_only.item() == pytest.approx(expected_ce.item(), rel=1e-6)
    assert loss.item() == pytest.approx(ce_only.item() + dice_only.item(), rel=1e-6)

    all_ignored = DiceCELoss(ignore_label=3)(logits, torch.full_like(label, 3))
    assert torch.isfinite(all_ignored) and all_ignored.item() == pytest.approx(-1.0, abs=1e-6)  # CE 0, empty Dice


def test_regions_become_overlapping_sigmoid_targets_and_a_perfect_prediction_scores_minus_one():
    label = torch.tensor([[[[0, 1, 2], [2, 2, 1], [0, 3, 3]]]])  # 3 = ignore
    regions = [(1, 2), (2,)]
    target = labels_to_regions(label, regions, ignore_label=3)
    assert target.shape == (1, 3, 3, 3) and target.dtype == torch.bool
    assert target[0, 0].int().tolist() == [[0, 1, 1], [1, 1, 1], [0, 0, 0]]
    assert target[0, 1].int().tolist() == [[0, 0, 1], [1, 1, 0], [0, 0, 0]]
    assert target[0, 2].int().tolist() == [[0, 0, 0], [0, 0, 0], [0, 1, 1]]

    perfect = (2 * target[:, :2].float() - 1) * 30
    assert DiceBCELoss(has_ignore_channel=True)(perfect, target).item() == pytest.approx(-1.0, abs=1e-6)
    loss = SegmentationLoss(regions=regions, ignore_label=3)
    assert loss(perfect, label).item() == pytest.approx(-1.0, abs=1e-6)
    changed = perfect.clone()
    changed[..., 2, 1:] = -30.0  # the ignored voxels
    assert loss(changed, label).item() == pytest.approx(-1.0, abs=1e-6)


@pytest.mark.parametrize("ignore", [False, True])
def test_region_dice_equals_monai_and_bce_is_the_mean_over_voxels_that_count(ignore):
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 2, 6, 5, generator=generator)
    label = torch.randint(0, 3 + int(ignore), (2, 1, 6, 5), generator=generator)
    regions = [(1, 2), (2,)]
    target = labels_to_regions(label, regions, ignore_label=3 if ignore else None)
    dice_only = DiceBCELoss(batch_dice=True, has_ignore_channel=ignore, weight_ce=0)(logits, target)
    bce_only = DiceBCELoss(batch_dice=True, has_ignore_channel=ignore, weight_dice=0)(logits, target)
    region_target = target[:, :2].float()
    if ignore:
        mask = ~target[:, 2:]
        reference = MaskedDiceLoss(sigmoid=True, batch=True)(logits, region_target, mask=mask.float())
        keep = mask.expand_as(logits)
        expected_bce = F.binary_cross_entropy_with_logits(logits[keep], region_target[keep])
    else:
        reference = DiceLoss(sigmoid=True, batch=True)(logits, region_target)
        expected_bce = F.binary_cross_entropy_with_logits(logits, region_target)
    assert dice_only.item() == pytest.approx(reference.item() - 1, abs=1e-6)
    assert bce_only.item() == pytest.approx(expected_bce.item(), rel=1e-6)


@pytest.mark.parametrize("ignore", [False, True])
def test_squared_dice_with_background_equals_monai_in_value_and_gradient(ignore):
    """VM-UNet's Synapse Dice (every class, batch-global counts, squared denominators, smoothing 1e-5) is MONAI's
    DiceLoss(include_background=True, squared_pred=True, batch=True), offset by 1."""
    logits, label = random_case(seed=5, classes=4, ignore=ignore)
    ours_input, monai_input = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    dice = DiceCELoss(batch_dice=True, ignore_label=4 if ignore else None, weight_ce=0, include_background=True,
                      squared=True)
    ours = dice(ours_input, label)
    reference = DiceLoss(include_background=True, to_onehot_y=True, softmax=True, squared_pred=True, batch=True,
                         ignore_index=4 if ignore else None)(monai_input, label)
    assert ours.item() == pytest.approx(reference.item() - 1, abs=1e-6)
    ours.backward()
    reference.backward()
    torch.testing.assert_close(ours_input.grad, monai_input.grad, rtol=1e-5, atol=1e-8)


def test_binary_sigmoid_dice_bce_with_smoothing_one_is_vm_unets_isic_loss():
    """One sigmoid output for the one foreground label, Dice per sample with smoothing 1 plus the BCE over every
    pixel, weights 1 and 1: the official BceDiceLoss (1 - mean Dice + BCE), offset by 1; the term weights scale the
    terms."""
    generator = torch.Generator().manual_seed(6)
    logits = torch.randn(3, 1, 8, 8, generator=generator)
    label = (torch.rand(3, 1, 8, 8, generator=generator) > 0.6).long()
    ours = SegmentationLoss(regions=[(1,)], smooth=1.0)(logits, label)
    p, g = torch.sigmoid(logits).flatten(1), label.float().flatten(1)
    dice = (2 * (p * g).sum(1) + 1) / (p.sum(1) + g.sum(1) + 1)
    official = F.binary_cross_entropy(p, g) + 1 - dice.mean()
    assert ours.item() == pytest.approx(official.item() - 1, rel=1e-6)
    dice_term = SegmentationLoss(regions=[(1,)], smooth=1.0, weight_ce=0)(logits, label)
    bce_term = SegmentationLoss(regions=[(1,)], smooth=1.0, weight_dice=0)(logits, label)
    weighted = SegmentationLoss(regions=[(1,)], smooth=1.0, weight_ce=0.5, weight_dice=2.0)(logits, label)
    assert dice_term.item() == pytest.approx(-dice.mean().item(), rel=1e-6)
    assert weighted.item() == pytest.approx(0.5 * bce_term.item() + 2 * dice_term.item(), rel=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(weight_ce=-1.0), "loss term weights must be >= 0 and not both 0"),
    (dict(weight_ce=0.0, weight_dice=0.0), "loss term weights must be >= 0 and not both 0"),
    (dict(smooth=-1e-5), "Dice smoothing must be >= 0"),
])
def test_bad_loss_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegmentationLoss(**kwargs)


def test_deep_supervision_loss_is_the_weighted_sum_over_downsampled_targets():
    generator = torch.Generator().manual_seed(4)
    label = torch.randint(0, 3, (2, 1, 8, 8), generator=generator)
    outputs = [torch.randn(2, 3, 8 // 2 ** i, 8 // 2 ** i, generator=generator) for i in range(3)]
    scales = [(1, 1), (2, 2), (4, 4)]
    loss = SegmentationLoss(scales, batch_dice=True)(outputs, label)
    single = DiceCELoss(batch_dice=True)
    targets = downsample_label(label, scales)
    expected = 2 / 3 * single(outputs[0], targets[0]) + 1 / 3 * single(outputs[1], targets[1])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)

    inputs = [o.clone().requires_grad_() for o in outputs]
    SegmentationLoss(scales)(inputs, label).backward()
    assert inputs[2].grad is not None and torch.all(inputs[2].grad == 0)  # in the graph (DDP), weighted 0

    with pytest.raises(ValueError, match="returned 2 output"):
        SegmentationLoss(scales)(outputs[:2], label)
    with pytest.raises(ValueError, match=r"output 1 has spatial shape \(4, 4\) but its target \(2, 2\)"):
        SegmentationLoss([(1, 1), (4, 4), (4, 4)])(outputs, label)


def test_labels_below_zero_count_as_background():
    label = torch.tensor([[[[-1, 0], [1, 2]]]])
    logits = confident_logits(label.clamp_min(0), 3)
    assert SegmentationLoss()(logits, label).item() == pytest.approx(-1.0, abs=1e-6)


def test_online_confusion_counts_hard_predictions_per_foreground_class():
    label = torch.tensor([[[[0, 1, 1], [2, 2, 0], [3, 3, 1]]]])  # 3 = ignore
    predicted = torch.tensor([[[[1, 1, 0], [2, 1, 0], [1, 2, 2]]]])
    logits = confident_logits(predicted, 3)
    tp, fp, fn = online_confusion(logits, label, ignore_label=3)
    # class 1: tp (0,1); fp (0,0), (1,1); fn (0,2), (2,2).  class 2: tp (1,0); fp (2,2); fn (1,1).  Row 2's first two
    # voxels are ignored.
    assert tp.tolist() == [1, 1] and fp.tolist() == [2, 1] and fn.tolist() == [2, 1]
    assert tp.dtype == torch.float64

    tp, fp, fn = online_confusion(logits, torch.where(label == 3, 0, label))
    assert tp.tolist() == [1, 1] and fp.tolist() == [3, 2] and fn.tolist() == [2, 1]

    region_logits = torch.stack([predicted > 0, predicted == 2], 1).float() * 20 - 10
    tp, fp, fn = online_confusion(region_logits[:, :, 0], label, regions=[(1, 2), (2,)], ignore_label=3)
    # region (1, 2): predicted everywhere but (0,2), (1,2); region 2: predicted at (1,0), (2,1), (2,2)
    assert tp.tolist() == [4, 1] and fp.tolist() == [1, 1] and fn.tolist() == [1, 1]
