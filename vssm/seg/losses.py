"""nnU-Net v2's segmentation losses: soft Dice + cross-entropy (labels) or + BCE (regions), deep supervision.

nnU-Net's formulation (``training/loss/dice.py``, ``compound_losses.py``, ``deep_supervision.py``):

* Soft Dice per class ``(2 I + s) / max(P + G + s, 1e-8)`` with ``s = 1e-5``, ``I = sum(p * g)``, ``P = sum(p)``,
  ``G = sum(g)`` over the spatial axes (and the batch with ``batch_dice``, and then over every DDP rank), averaged
  over classes (and samples); the loss is its NEGATIVE, so a perfect prediction scores -1 (MONAI's ``DiceLoss``
  gives ``1 - dice`` for the same Dice, 0 when perfect). Softmax outputs leave the background out; region (sigmoid)
  outputs keep every region.
* Labels: ``Dice + CE`` (weights 1 and 1); the ignore label is masked out of both (CE: ``ignore_index``; Dice: the
  loss mask) and CE is 0 for a batch that is all ignore. Regions: ``Dice + BCE`` on the region one-hot target, the
  ignore voxels masked out of both.
* Deep supervision: output i (highest resolution first) against the label downsampled to its size (nearest-exact),
  weighted ``1 / 2**i``, the lowest resolution weighted 0 when there is more than one output, normalised to sum 1.

Recipes other than nnU-Net's (``SegmentationLoss`` options): the term weights, the Dice smoothing, the background
channel in a softmax Dice and squared denominators ``sum(p^2) + sum(g^2)`` (VM-UNet's Synapse Dice; MONAI's
``squared_pred``).

Why not MONAI's ``DiceLoss``: it computes this Dice (``include_background=False, to_onehot_y=True, softmax=True,
batch=batch_dice, ignore_index=...``; the tests check ours against it, offset by 1), but it cannot sum the batch Dice's
counts over DDP ranks as nnU-Net does, so a multi-GPU run would train on per-GPU Dice instead of the global batch's.
The cross-entropies are torch's.

Deviations: with an ignore label in region mode nnU-Net divides the channel-summed BCE by the number of unmasked
voxels (C times the unmasked mean); here the BCE is the mean over unmasked elements, as it is without an ignore label.
Under DDP nnU-Net weights the lowest-resolution output 1e-6 instead of 0 so that DDP sees its head used; here every
output stays in the graph with its weight (0 gives a zero gradient), so DDP and one process train alike.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

Factor = Union[int, Sequence[int]]


def deep_supervision_weights(num_outputs: int) -> List[float]:
    """nnU-Net's weights of ``num_outputs`` deep-supervision outputs, highest resolution first: ``1 / 2**i``, the
    lowest resolution 0 when there is more than one output, normalised to sum 1 (3 outputs: 2/3, 1/3, 0)."""
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
    weights = [1 / 2 ** i for i in range(num_outputs)]
    if num_outputs > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def downsample_label(label: torch.Tensor, factors: Sequence[Factor]) -> List[torch.Tensor]:
    """The label at every deep-supervision output's resolution, as nnU-Net's ``DownsampleSegForDSTransform``
    (nearest-exact).

    Args:
        label: ``(B, C, *spatial)`` integer labels (C = 1) or region masks.
        factors: One entry per output, highest resolution first: the integer downscale factor per spatial axis (or one
            for all), as ``net.deep_supervision_scales()`` gives them, e.g. ``[(1, 1), (2, 2), (4, 4)]``; the size
            becomes ``size // factor`` (nnU-Net's scales are the reciprocals: ``round(size * 1 / factor)``).

    Returns:
        One tensor per output, the label's dtype; the label itself where the factor is 1.
    """
    spatial = label.shape[2:]
    results = []
    for factor in factors:
        factor = [int(factor)] * len(spatial) if isinstance(factor, int) else [int(f) for f in factor]
        if len(factor) != len(spatial):
            raise ValueError(f"deep-supervision factor {tuple(factor)} has {len(factor)} entries for a label with "
                             f"{len(spatial)} spatial axes {tuple(spatial)}")
        if all(f == 1 for f in factor):
            results.append(label)
            continue
        size = [n // f for n, f in zip(spatial, factor)]
        results.append(F.interpolate(label.float(), size, mode="nearest-exact").to(label.dtype))
    return results


def labels_to_regions(label: torch.Tensor, regions: Sequence[Tuple[int, ...]], ignore_label: Optional[int] = None
                      ) -> torch.Tensor:
    """``(B, 1, *spatial)`` labels -> ``(B, R, *spatial)`` bool region masks (a voxel is in a region when its label
    is one of the region's), plus a last channel marking the ignore label when there is one (nnU-Net's
    ``ConvertSegmentationToRegionsTransform``)."""
    channels = [torch.isin(label[:, 0], torch.as_tensor(region, device=label.device)) for region in regions]
    if ignore_label is not None:
        channels.append(label[:, 0] == ignore_label)
    return torch.stack(channels, 1)


class _AllGatherSum(torch.autograd.Function):
    """Sum of a tensor over DDP ranks whose backward gives each rank the gradient of the summed value (what nnU-Net's
    ``AllGatherGrad`` does for the batch Dice): forward all-reduce, backward all-reduce of the incoming gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        summed = tensor.clone()
        dist.all_reduce(summed)
        return summed

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return _AllGatherSum.apply(tensor)
    return tensor


class SoftDiceLoss(nn.Module):
    """nnU-Net's (memory-efficient) soft Dice loss: minus the mean soft Dice over classes.

    Args:
        nonlinearity: 'softmax' (labels) or 'sigmoid' (regions), applied to the logits.
        batch_dice: Sum the counts over the batch (and over DDP ranks) before the ratio, instead of one Dice per
            sample.
        include_background: Score channel 0 too (nnU-Net: False for softmax, True for regions).
        smooth: Added to numerator and denominator.
        sum_over_ranks: With ``batch_dice`` under DDP, sum the counts over all ranks (nnU-Net's ``ddp=True``).
        squared: Denominator ``sum(p^2) + sum(g^2)`` instead of ``sum(p) + sum(g)`` (MONAI's ``squared_pred``).
    """

    def __init__(self, nonlinearity: str = "softmax", batch_dice: bool = False, include_background: bool = False,
                 smooth: float = 1e-5, sum_over_ranks: bool = True, squared: bool = False):
        super().__init__()
        if nonlinearity not in ("softmax", "sigmoid"):
            raise ValueError(f"nonlinearity must be 'softmax' or 'sigmoid', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self.batch_dice = batch_dice
        self.include_background = include_background
        self.smooth = smooth
        self.sum_over_ranks = sum_over_ranks
        self.squared = squared

    def forward(self, logits: torch.Tensor, target: torch.Tensor, loss_mask: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """
        Args:
            logits: ``(B, K, *spatial)``.
            target: ``(B, 1, *spatial)`` label indices in [0, K) or ``(B, K, *spatial)`` one-hot / region masks.
            loss_mask: ``(B, 1, *spatial)``, 1 where voxels count, 0 where they are ignored.

        Returns:
            The loss, a scalar in [-1, 0].
        """
        probabilities = torch.softmax(logits, 1) if self.nonlinearity == "softmax" else torch.sigmoid(logits)
        axes = tuple(range(2, logits.ndim))
        with torch.no_grad():
            if target.shape == logits.shape:
                onehot = target.to(probabilities.dtype)
            else:
                onehot = torch.zeros_like(probabilities).scatter_(1, target.long(), 1)
            if not self.include_background:
                onehot = onehot[:, 1:]
            if loss_mask is not None:
                onehot = onehot * loss_mask
            sum_target = onehot.sum(axes)
        if not self.include_background:
            probabilities = probabilities[:, 1:]
        if loss_mask is not None:
            probabilities = probabilities * loss_mask
        intersection = (probabilities * onehot).sum(axes)
        sum_prediction = (probabilities * probabilities if self.squared else probabilities).sum(axes)
        if self.batch_dice:
            intersection, sum_prediction, sum_target = intersection.sum(0), sum_prediction.sum(0), sum_target.sum(0)
            if self.sum_over_ranks:
                intersection, sum_prediction = _sum_over_ranks(intersection), _sum_over_ranks(sum_prediction)
                sum_target = _sum_over_ranks(sum_target)
        dice = (2 * intersection + self.smooth) / torch.clip(sum_target + sum_prediction + self.smooth, 1e-8)
        return -dice.mean()


class DiceCELoss(nn.Module):
    """Soft Dice (background excluded) + cross-entropy on softmax outputs, nnU-Net's ``DC_and_CE_loss``.

    Args:
        batch_dice: See ``SoftDiceLoss``.
        ignore_label: A label value left out of both terms, or None.
        weight_ce: Weight of the cross-entropy.
        weight_dice: Weight of the Dice loss.
        smooth: Dice smoothing.
        include_background: Score the background channel in the Dice too (nnU-Net: no).
        squared: See ``SoftDiceLoss``.
    """

    def __init__(self, batch_dice: bool = False, ignore_label: Optional[int] = None, weight_ce: float = 1.0,
                 weight_dice: float = 1.0, smooth: float = 1e-5, include_background: bool = False,
                 squared: bool = False):
        super().__init__()
        self.ignore_label = ignore_label
        self.weight_ce = weight_ce
        self.weight_dice = weight_dice
        self.dice = SoftDiceLoss("softmax", batch_dice, include_background=include_background, smooth=smooth,
                                 squared=squared)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` (B, K, *spatial), ``target`` (B, 1, *spatial) integer labels."""
        if target.shape[1] != 1:
            raise ValueError(f"target must be (B, 1, *spatial) labels, got {tuple(target.shape)}")
        mask = None
        if self.ignore_label is not None:
            mask = target != self.ignore_label
            dice_target = torch.where(mask, target, 0)
        else:
            dice_target = target
        dice = self.dice(logits, dice_target, loss_mask=mask) if self.weight_dice else 0.0
        ce = 0.0
        if self.weight_ce:
            if mask is None:
                ce = F.cross_entropy(logits, target[:, 0].long())
            else:  # the mean over the voxels that count; 0 (not NaN) for a batch that is all ignore label
                ce = F.cross_entropy(logits, target[:, 0].long(), ignore_index=self.ignore_label, reduction="sum")
                ce = ce / mask.sum().clamp_min(1)
        return self.weight_ce * ce + self.weight_dice * dice


class DiceBCELoss(nn.Module):
    """Soft Dice (every region) + binary cross-entropy on sigmoid region outputs, nnU-Net's ``DC_and_BCE_loss``.

    Args:
        batch_dice: See ``SoftDiceLoss``.
        has_ignore_channel: The target's last channel marks ignored voxels (``labels_to_regions`` with an ignore
            label).
        weight_ce: Weight of the BCE.
        weight_dice: Weight of the Dice loss.
        smooth: Dice smoothing.
        squared: See ``SoftDiceLoss``.
    """

    def __init__(self, batch_dice: bool = False, has_ignore_channel: bool = False, weight_ce: float = 1.0,
                 weight_dice: float = 1.0, smooth: float = 1e-5, squared: bool = False):
        super().__init__()
        self.has_ignore_channel = has_ignore_channel
        self.weight_ce = weight_ce
        self.weight_dice = weight_dice
        self.dice = SoftDiceLoss("sigmoid", batch_dice, include_background=True, smooth=smooth, squared=squared)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` (B, R, *spatial), ``target`` (B, R [+ 1 ignore channel], *spatial) region masks."""
        mask = None
        if self.has_ignore_channel:
            mask, target = ~target[:, -1:].bool(), target[:, :-1]
        target = target.to(logits.dtype)
        dice = self.dice(logits, target, loss_mask=mask) if self.weight_dice else 0.0
        if not self.weight_ce:
            bce = 0.0
        elif mask is None:
            bce = F.binary_cross_entropy_with_logits(logits, target)
        else:
            elementwise = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            weights = mask.expand_as(elementwise).to(elementwise.dtype)
            bce = (elementwise * weights).sum() / torch.clip(weights.sum(), min=1e-8)
        return self.weight_ce * bce + self.weight_dice * dice


class SegmentationLoss(nn.Module):
    """The training loss of a segmentation net: Dice + CE (labels) or Dice + BCE (regions), over every
    deep-supervision output with nnU-Net's weights.

    Labels below 0 (nnU-Net's -1 outside the non-zero crop mask) count as background, as nnU-Net's
    ``RemoveLabelTransform(-1, 0)`` makes them.

    Args:
        deep_supervision_scales: The net's per-output downscale factors (``net.deep_supervision_scales(patch_size)``),
            highest resolution first; None for a net with one output (deep supervision off).
        regions: Region training: the foreground regions (``LabelSpec.regions``); None for labels.
        ignore_label: The ignore label, or None.
        batch_dice: See ``SoftDiceLoss`` (nnU-Net's plans: True for '2d', False for '3d_fullres').
        weights: Per-output weights; None: ``deep_supervision_weights``.
        weight_ce: Weight of the cross-entropy (BCE for regions).
        weight_dice: Weight of the Dice loss.
        smooth: Dice smoothing (nnU-Net 1e-5).
        include_background: Labels only: the softmax Dice scores the background channel too (nnU-Net: no; region
            Dice always scores every region).
        squared: Squared Dice denominators (see ``SoftDiceLoss``).

    Raises:
        ValueError: a negative term weight or smoothing, or both term weights 0.
    """

    def __init__(self, deep_supervision_scales: Optional[Sequence[Factor]] = None,
                 regions: Optional[Sequence[Tuple[int, ...]]] = None, ignore_label: Optional[int] = None,
                 batch_dice: bool = False, weights: Optional[Sequence[float]] = None, weight_ce: float = 1.0,
                 weight_dice: float = 1.0, smooth: float = 1e-5, include_background: bool = False,
                 squared: bool = False):
        super().__init__()
        if weight_ce < 0 or weight_dice < 0 or not weight_ce + weight_dice > 0:
            raise ValueError(f"loss term weights must be >= 0 and not both 0, got weight_ce={weight_ce}, "
                             f"weight_dice={weight_dice}")
        if not smooth >= 0:
            raise ValueError(f"Dice smoothing must be >= 0, got {smooth}")
        self.scales = None if deep_supervision_scales is None else list(deep_supervision_scales)
        self.regions = None if regions is None else [tuple(r) for r in regions]
        self.ignore_label = ignore_label
        num_outputs = 1 if self.scales is None else len(self.scales)
        self.weights = list(weights) if weights is not None else deep_supervision_weights(num_outputs)
        if len(self.weights) != num_outputs:
            raise ValueError(f"{len(self.weights)} weights for {num_outputs} deep-supervision outputs")
        terms = dict(weight_ce=weight_ce, weight_dice=weight_dice, smooth=smooth, squared=squared)
        if self.regions is not None:
            self.loss = DiceBCELoss(batch_dice, has_ignore_channel=ignore_label is not None, **terms)
        else:
            self.loss = DiceCELoss(batch_dice, ignore_label, include_background=include_background, **terms)

    def targets(self, label: torch.Tensor) -> List[torch.Tensor]:
        """The target of every output: the label (B, 1, *spatial) -> regions if any -> each scale."""
        label = label.clamp_min(0)
        if self.regions is not None:
            label = labels_to_regions(label, self.regions, self.ignore_label)
        return [label] if self.scales is None else downsample_label(label, self.scales)

    def forward(self, output: Union[torch.Tensor, Sequence[torch.Tensor]], label: torch.Tensor) -> torch.Tensor:
        """
        Args:
            output: The net's logits: one tensor (B, K, *spatial), or the deep-supervision list, highest resolution
                first.
            label: ``(B, 1, *spatial)`` integer labels at the full resolution.
        """
        outputs = list(output) if isinstance(output, (list, tuple)) else [output]
        if len(outputs) != len(self.weights):
            raise ValueError(f"the net returned {len(outputs)} output(s) but the loss expects {len(self.weights)} "
                             "(deep_supervision_scales of the net and its deep_supervision switch disagree)")
        total = 0.0
        for i, (logits, target, weight) in enumerate(zip(outputs, self.targets(label), self.weights)):
            if logits.shape[2:] != target.shape[2:]:
                raise ValueError(f"deep-supervision output {i} has spatial shape {tuple(logits.shape[2:])} but its "
                                 f"target {tuple(target.shape[2:])}; the scales do not fit the net's outputs")
            # every output takes part, the zero-weighted one too: DDP then sees every parameter used
            total = total + weight * self.loss(logits.float(), target)
        return total


@torch.no_grad()
def online_confusion(logits: torch.Tensor, label: torch.Tensor, regions: Optional[Sequence[Tuple[int, ...]]] = None,
                     ignore_label: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """True positives, false positives and false negatives per foreground class of hard predictions over a batch of
    patches (nnU-Net's ``validation_step``): argmax (labels, background dropped) or sigmoid > 0.5 (regions), the
    ignore label left out. Summed over epochs and ranks, they give nnU-Net's pseudo Dice ``2 TP / (2 TP + FP + FN)``.

    Args:
        logits: ``(B, K, *spatial)`` full-resolution logits.
        label: ``(B, 1, *spatial)`` integer labels (values below 0 count as background).

    Returns:
        (tp, fp, fn), each ``(num_foreground_classes,)`` float64.
    """
    label = label.clamp_min(0)
    mask = None if ignore_label is None else (label != ignore_label)
    if regions is not None:
        target = labels_to_regions(label, regions)
        prediction = logits > 0  # sigmoid(x) > 0.5
    else:
        target = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, torch.where(
            mask, label, 0).long() if mask is not None else label.long(), True)
        prediction = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, logits.argmax(1, keepdim=True), True)
    if mask is not None:
        target, prediction = target & mask, prediction & mask
    axes = [0] + list(range(2, logits.ndim))
    tp = (prediction & target).sum(axes, dtype=torch.float64)
    fp = (prediction & ~target).sum(axes, dtype=torch.float64)
    fn = (~prediction & target).sum(axes, dtype=torch.float64)
    if regions is None:
        tp, fp, fn = tp[1:], fp[1:], fn[1:]
    return tp, fp, fn
