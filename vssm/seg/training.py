"""Segmentation training on the engine's pieces, as nnU-Net v2's ``nnUNetTrainer`` trains: ``train_seg(cfg)``.

A run (one process, or one rank under torchrun):

1. checks the config and the raw dataset (``vssm.data.nnunet_raw``; every problem by file, before any work; a
   packaged dataset such as the MNI152 template is written first, config key ``builtin``), plans the dataset when the
   plans file does not exist yet (``vssm.seg.planner``), preprocesses the training cases on first use
   (``vssm.seg.preprocess``; cases already done are skipped) and reads or writes the 5-fold ``splits_final.json``
   (``vssm.data.seg_patches``; or config key ``splits``);
2. builds the net of the plan (``vssm.seg.nets.build_seg_net``; config key ``network`` may resize it; config key
   ``init_decoder_from_encoder`` mirrors a VM-UNet's pretrained encoder into its decoder), the loss (Dice + CE, or
   Dice + BCE for regions and, with config key ``loss.name = 'dice_bce'``, for a binary dataset's one sigmoid output;
   over the deep-supervision outputs, ``vssm.seg.losses``) and the optimizer (SGD with Nesterov momentum, or AdamW)
   with poly (or cosine) learning-rate decay per epoch;
3. per epoch: ``iterations_per_epoch`` steps on training patches (augmented as nnU-Net does, or by a recipe's
   augmentation, config key ``augmentation``), then ``val_iterations`` batches of validation
   patches giving the validation loss and nnU-Net's pseudo Dice per class (TP/FP/FN of the hard predictions summed
   over the epoch and the ranks); its mean over classes is averaged into an EMA (0.9 old + 0.1 new), which chooses
   ``checkpoint_best.pth``;
4. after the last epoch: ``checkpoint_final.pth``, then the validation: every validation case of the fold predicted
   whole from its preprocessed data (sliding window with nnU-Net's steps and Gaussian weights, mirroring, deep
   supervision off), reverted to its raw geometry, written to ``validation/`` and scored against its raw label (Dice,
   normalised surface Dice) into ``validation/summary.json`` (``vssm.seg.metrics``).

Samples: the trainer draws every sample: per step and position of the global batch (``batch_size``, split into
contiguous blocks, one per rank, as nnU-Net splits it) the case (uniform, with replacement), the augmentation seed and
whether foreground is forced (the last ``oversample_foreground`` of the global batch), from (seed, epoch, step)
alone. So a run is the same for any number of data workers and processes, and a run stopped mid-epoch and resumed
ends where the uninterrupted run ends.

Work dir: ``config.py`` (resolved), ``train.log``, ``summary.csv``, ``progress.png``, ``checkpoint_latest.pth`` (after
every epoch, and mid-epoch on SIGTERM / SIGINT; ``--resume`` continues from it), ``checkpoint_best.pth``,
``checkpoint_final.pth``, ``plans.json`` and ``dataset.json`` (what the net is rebuilt from), ``validation/``, and
``preprocessed/`` unless config key ``preprocessed`` puts it elsewhere. A checkpoint also holds what prediction needs
without the work dir: the net's name and arguments, the plans, ``dataset.json`` and the mirror axes
(``load_trained_net``).
"""
import copy
import csv
import dataclasses
import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.config import Config
from timm.utils import random_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from vssm.data.errors import DataError
from vssm.data.medical_transforms import revert_preprocessing
from vssm.data.nnunet_raw import (
    DatasetValidationError, ImageGeometry, LabelSpec, load_raw_dataset, read_label, validate_raw_dataset,
    write_segmentation,
)
from vssm.engine import checkpoint as ckpt
from vssm.engine import report
from vssm.engine.checkpoint import write_atomic
from vssm.engine.distributed import DistContext
from vssm.engine.errors import USER_ERRORS, TrainingInterrupted, UserError, one_line
from vssm.engine.runtime import (
    NonFiniteGuard, StopSignals, autocast, changed_keys, check_work_dir, loader_failures, prepare_work_dir,
    process_settings, refuse_nonfinite_weights,
)
from vssm.engine.workdir import WorkDirLock
from vssm.layers.mamba_mixer import set_activation_recompute

from .losses import SegmentationLoss, online_confusion
from .metrics import class_key, compute_metrics, summarize, write_summary_json
from .nets import build_seg_net, seg_net_names
from .planner import plan_dataset
from .plans import SegConfiguration, configuration as read_configuration, load_plans
from .predict import predict_logits
from .preprocess import is_case_done, load_preprocessed_case, plan_key, preprocess_dataset
from .seg_config import SegOptimizerConfig, SegTrainConfig, seg_config_to_dict

SEG_FORMAT = "vssm-seg-train-1"
LATEST, BEST, FINAL = "checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth"
WORK_DIR_OUTPUTS = ("config.py", "train.log", "summary.csv", "progress.png", LATEST, BEST, FINAL, "plans.json",
                    "dataset.json")
PLANS_FILE = "nnUNetPlans.json"
NETWORK_KEYS = {"n_stages", "features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage", "n_blocks_per_stage",
                "n_conv_per_stage_decoder"}  # what config key 'network' may set besides the plan's own arch_kwargs
EMA_MOMENTUM = 0.9  # nnU-Net: ema = 0.9 * ema + 0.1 * mean pseudo Dice
_TRAIN_STREAM, _VAL_STREAM = 0, 1


def _write_mni152(root: Path, **options) -> Path:
    from vssm.data.mni152 import write_mni152_dataset

    return write_mni152_dataset(root, **options)


BUILTIN_DATASETS = {"mni152": _write_mni152}  # config key 'builtin': name -> writer(root, **options) -> folder


class SampleKey(NamedTuple):
    """One sample: the case's index in the dataset, the seed of its patch and augmentation, and whether its patch
    must hold foreground."""
    case: int
    seed: int
    force_foreground: bool


class PatchSampler(Sampler):
    """This rank's ``SampleKey``s for one epoch of ``steps`` steps (call ``set_epoch`` before each epoch).

    The keys of a step's global batch (``batch_size * world_size`` positions) are drawn from (seed, stream, epoch)
    alone; rank r reads positions ``[r * batch_size, (r + 1) * batch_size)``; positions from
    ``round(global_batch * (1 - oversample_foreground))`` on force foreground (nnU-Net's rule on the global batch).

    Args:
        num_cases: Cases to draw from (uniformly, with replacement).
        batch_size: Per-rank batch size.
        world_size: Number of ranks.
        rank: This rank.
        steps: Steps per epoch.
        seed: Run seed.
        stream: Separates the training and the validation draws.
        oversample_foreground: Fraction of the global batch forced to hold foreground.
    """

    def __init__(self, num_cases: int, batch_size: int, world_size: int, rank: int, steps: int, seed: int,
                 stream: int, oversample_foreground: float):
        self.num_cases, self.batch_size, self.world_size, self.rank = num_cases, batch_size, world_size, rank
        self.steps, self.seed, self.stream = steps, seed, stream
        global_batch = batch_size * world_size
        self.first_forced = round(global_batch * (1 - oversample_foreground))
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Iterate ``epoch``'s keys from step ``start_step`` on (the steps before it were done before a resume)."""
        if not 0 <= start_step <= self.steps:
            raise ValueError(f"start_step must be in [0, {self.steps}], got {start_step}")
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.batch_size

    def __iter__(self):
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 2 + self.stream)
        global_batch = self.batch_size * self.world_size
        cases = torch.randint(0, self.num_cases, (self.steps, global_batch), generator=generator).tolist()
        seeds = torch.randint(0, 2 ** 31, (self.steps, global_batch), generator=generator).tolist()
        first = self.rank * self.batch_size
        for step in range(self.start_step, self.steps):
            for position in range(first, first + self.batch_size):
                yield SampleKey(cases[step][position], seeds[step][position], position >= self.first_forced)


class _Patches(Dataset):
    """``dataset.sample(case, seed, force_foreground)`` of a ``SegPatchDataset`` as (image, label) tensors per key."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey):
        item = self.dataset.sample(key.case, key.seed, key.force_foreground)
        return torch.as_tensor(item["image"]), torch.as_tensor(item["label"])


def epoch_lr(optimizer: SegOptimizerConfig, epoch: int, epochs: int) -> float:
    """The learning rate of ``epoch`` (from 0): nnU-Net's ``PolyLRScheduler`` ``lr * (1 - epoch / epochs) **
    poly_exponent``, or torch's ``CosineAnnealingLR`` stepped per epoch from ``lr`` to ``min_lr`` over ``t_max`` epochs
    (default ``epochs``; past ``t_max`` the rate rises again, as torch's)."""
    if optimizer.schedule == "cosine":
        period = optimizer.t_max or epochs
        return optimizer.min_lr + (optimizer.lr - optimizer.min_lr) * (1 + math.cos(math.pi * epoch / period)) / 2
    return optimizer.lr * (1 - epoch / epochs) ** optimizer.poly_exponent


def recipe_augmentation(name: str, patch_size: Sequence[int]):
    """A 2-D recipe's training augmentation in place of nnU-Net's (config key ``augmentation``): ``(transforms,
    sampled_size)``, a MONAI ``Compose`` on ``{"image", "label"}`` tensors ``(C, *sampled_size)`` that cuts out the
    centre ``patch_size`` (as ``SegPatchDataset``'s own augmentation does; outside the case the image is 0 and the
    label background), and the region to sample for it.

    * 'flip_rotate' (VM-UNet's ISIC ``train_transformer``): a rotation by an angle uniform in [0, 360) deg with p 0.5,
      then horizontal and vertical flips with p 0.5 each. (The official transform draws its angle once, when it is
      built, so every rotated image of a run turns by that one angle; here each sample draws its own.)
    * 'rot90_flip_rotate' (VM-UNet's Synapse ``RandomGenerator``, TransUNet's): with p 0.5 a rotation by k x 90 deg,
      k uniform in 0-3, then a flip along a random axis; else with p 0.5 a rotation by an angle uniform in [-20, 20]
      deg (the official draws integer degrees and interpolates the image by nearest neighbour; here bilinear).
      Square patches only.
    """
    import numpy as np
    from monai import transforms as mt

    from vssm.data.seg_patches import RandSpatialAugmentd, sampling_patch_size

    keys = ("image", "label")
    patch_size = tuple(int(p) for p in patch_size)
    if len(patch_size) != 2:
        raise ValueError(f"augmentation {name!r} is 2-D; the patch is {len(patch_size)}-D")
    if name == "flip_rotate":
        transforms = [RandSpatialAugmentd(keys, patch_size, max_rotation=np.pi, p_rotation=0.5, p_scaling=0.0)]
        transforms += [mt.RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in (1, 0)]
        return mt.Compose(transforms), sampling_patch_size(patch_size, np.pi)
    if name == "rot90_flip_rotate":
        if patch_size[0] != patch_size[1]:
            raise ValueError(f"augmentation {name!r} turns patches by 90 deg: the patch must be square, got "
                             f"{patch_size}")
        crop = mt.CenterSpatialCropd(keys, patch_size)
        rot90_flip = mt.Compose([crop, mt.RandRotate90d(keys, prob=1.0, max_k=4), mt.RandAxisFlipd(keys, prob=1.0)])
        rotate = RandSpatialAugmentd(keys, patch_size, max_rotation=np.radians(20.0), p_rotation=1.0, p_scaling=0.0)
        transforms = mt.OneOf([rot90_flip, rotate, crop], weights=[0.5, 0.25, 0.25])
        return mt.Compose([transforms]), sampling_patch_size(patch_size, np.radians(20.0))
    raise ValueError(f"unknown augmentation {name!r}; recipes: 'flip_rotate', 'rot90_flip_rotate'")


class BinarySigmoidAsSoftmax(nn.Module):
    """A net with ONE sigmoid output (a binary dataset trained with loss 'dice_bce') seen as a two-class softmax net:
    logits z -> (0, z) for every output, since softmax((0, z)) = (1 - sigmoid(z), sigmoid(z)). So prediction in
    label mode (argmax, softmax probabilities: ``vssm.seg.predict`` with the dataset's ``dataset.json``) equals the
    sigmoid thresholded at 0.5. ``decoder`` (nnU-Net's deep-supervision switch) and ``deep_supervision_scales`` are
    the wrapped net's."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    @property
    def decoder(self) -> nn.Module:
        return self.net.decoder

    def deep_supervision_scales(self, patch_size: Optional[Sequence[int]] = None):
        return self.net.deep_supervision_scales(patch_size)

    @staticmethod
    def _two_classes(logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != 1:
            raise ValueError(f"BinarySigmoidAsSoftmax: the net must have one output channel, got {logits.shape[1]}")
        return torch.cat([torch.zeros_like(logits), logits], 1)

    def forward(self, x: torch.Tensor):
        """(B, C, *spatial) -> (B, 2, *spatial) logits, or a list of them with deep supervision."""
        out = self.net(x)
        if isinstance(out, (list, tuple)):
            return [self._two_classes(o) for o in out]
        return self._two_classes(out)


def pseudo_dice(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """``2 TP / (2 TP + FP + FN)`` per class; NaN where the class was neither present nor predicted."""
    denominator = 2 * tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), np.nan)


def mirror_axes(dim: int) -> Tuple[int, ...]:
    """nnU-Net's test-time mirroring axes: every axis of the patch."""
    return tuple(range(dim))


def _class_names(labels) -> List[str]:
    """A name per evaluated class (foreground label or region), from ``dataset.json``'s labels."""
    by_class = {}
    for name, value in labels.label_dict.items():
        if name not in ("background", "ignore"):
            key = tuple(value) if isinstance(value, tuple) else value
            by_class.setdefault((key,) if labels.has_regions and isinstance(key, int) else key, name)
    return [by_class.get(c, class_key(c)) for c in labels.evaluation_classes]


def summary_columns(class_names: List[str]) -> List[str]:
    """The columns of ``summary.csv``."""
    return (["epoch", "train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr", "epoch_time"]
            + [f"pseudo_dice_{name}" for name in class_names])


def write_summary(path: str, rows: List[dict], columns: List[str]) -> None:
    """Rewrite ``summary.csv`` atomically, one row per epoch."""

    def write(file):
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    write_atomic(path, write, "w", newline="")


def plot_progress(rows: List[dict], path: str) -> None:
    """Training and validation loss, pseudo Dice and its EMA per epoch (nnU-Net's ``progress.png``), and the
    learning rate, into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(row["epoch"]) for row in rows]

    def series(column):
        return [float(row[column]) for row in rows]

    figure, (loss_axes, lr_axes) = plt.subplots(2, 1, figsize=(9, 7), gridspec_kw=dict(height_ratios=(3, 1)))
    loss_axes.plot(epochs, series("train_loss"), color="b", marker=".", label="train loss")
    loss_axes.plot(epochs, series("val_loss"), color="r", marker=".", label="val loss")
    dice_axes = loss_axes.twinx()
    dice_axes.plot(epochs, series("pseudo_dice"), color="g", linestyle=":", marker=".", label="pseudo Dice")
    dice_axes.plot(epochs, series("ema_pseudo_dice"), color="g", marker=".", label="pseudo Dice (EMA)")
    loss_axes.set(xlabel="epoch", ylabel="loss")
    dice_axes.set(ylabel="pseudo Dice")
    handles = loss_axes.get_legend_handles_labels()[0] + dice_axes.get_legend_handles_labels()[0]
    loss_axes.legend(handles, [h.get_label() for h in handles], loc="center right")
    loss_axes.grid(alpha=0.3)
    lr_axes.plot(epochs, series("lr"), color="k", marker=".")
    lr_axes.set(xlabel="epoch", ylabel="learning rate")
    lr_axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _read_summary(path: str) -> List[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def train_seg(
        cfg: SegTrainConfig,
        work_dir: Optional[str] = None,
        resume: Optional[str] = None,
        overwrite: bool = False,
        on_epoch_end: Optional[Callable[[int, dict], None]] = None,
) -> dict:
    """Train as ``cfg`` says; the process's part of a run (one process, or one rank under torchrun).

    Args:
        cfg: The resolved config.
        work_dir: Output folder; None: ``cfg.work_dir``. An existing run there is refused unless ``resume`` or
            ``overwrite`` is given.
        resume: A checkpoint of this trainer to continue from, or 'auto' for ``work_dir/checkpoint_latest.pth``.
        overwrite: Replace the outputs of an earlier run in ``work_dir`` (the preprocessed data are kept).
        on_epoch_end: Called as ``on_epoch_end(epoch, row)`` after each epoch's checkpoints are written (epochs count
            from 1).

    Returns:
        The last epoch's summary row, plus ``best`` (the best EMA pseudo Dice and its epoch) and ``validation`` (the
        final validation's ``foreground_mean``, None when it is off).
    """
    work_dir = work_dir or cfg.work_dir
    if not work_dir:
        raise UserError("no work dir: set config key 'work_dir' or pass --work-dir")
    ctx = DistContext(cfg.device)
    lock = None
    logger = logging.getLogger(report.LOGGER_NAME)
    try:
        if ctx.is_main:
            lock = WorkDirLock(work_dir).acquire()
        ctx.barrier()
        with process_settings(cfg):
            trainer = _SegTrainer(cfg, ctx, work_dir, resume, overwrite)
            with trainer.stop:
                return trainer.run(on_epoch_end)
    except USER_ERRORS as error:
        report.log_to_file(logger, f"error: {error if isinstance(error, DatasetValidationError) else one_line(error)}")
        raise
    finally:
        report.close_logging(logger)
        if lock is not None:
            lock.release()
        ctx.close()


class _SegTrainer:
    """One run's state: data, net (raw and DDP-wrapped), loss, optimizer and progress."""

    def __init__(self, cfg: SegTrainConfig, ctx: DistContext, work_dir: str, resume: Optional[str], overwrite: bool):
        self.cfg, self.ctx, self.work_dir = cfg, ctx, work_dir
        self.resume_path = os.path.join(work_dir, LATEST) if resume == "auto" else resume
        check_work_dir(self.ctx, self.work_dir, self.resume_path, overwrite, LATEST)
        checkpoint = ckpt.read_checkpoint(self.resume_path, trust_option=None) if self.resume_path else None
        if checkpoint is not None and checkpoint.get("format") != SEG_FORMAT:
            raise UserError(f"{self.resume_path} is not a checkpoint of the segmentation trainer (tools/train_seg.py)")
        if cfg.net["name"] not in seg_net_names():
            raise UserError(f"config key 'net.name': unknown segmentation net {cfg.net['name']!r}; registered: "
                            f"{', '.join(seg_net_names())}")
        self.raw = Path(cfg.raw)
        if cfg.builtin is not None:
            self._write_builtin_dataset()
        listing_problems = []
        self.dataset = load_raw_dataset(self.raw, listing_problems)  # dataset.json and the file names; no file read
        if listing_problems:
            validate_raw_dataset(self.raw)  # raises, listing every problem (names and contents) by file
        self.labels = self._output_labels(self.dataset.labels)
        self.preprocessed = Path(cfg.preprocessed or os.path.join(work_dir, "preprocessed"))
        self.plans_path = Path(cfg.plans) if cfg.plans else self.preprocessed / PLANS_FILE

        # only now: a bad config or dataset leaves the work dir untouched
        prepare_work_dir(self.ctx, self.work_dir, self.resume_path, WORK_DIR_OUTPUTS, ("validation",))
        self.logger = report.setup_logging(os.path.join(work_dir, "train.log"), ctx.is_main)
        self._prepare_data()
        random_seed(cfg.seed)  # the same initial weights on every rank
        self._build_training()

        self.start_epoch, self.num_updates = 0, 0
        self.best = {"ema_pseudo_dice": None, "epoch": None}
        self.ema: Optional[float] = None
        self.history: List[dict] = []
        self.epoch_progress: Optional[dict] = None
        self.stop = StopSignals()
        random_seed(cfg.seed, ctx.rank)  # per-rank generators (dropout, drop path)
        if checkpoint is not None:
            self._load_state(checkpoint)
            if ctx.is_main:
                self._repair_outputs(checkpoint)
        if ctx.is_main:
            Config(seg_config_to_dict(cfg)).dump(os.path.join(work_dir, "config.py"))

    # ---------------------------------------------------------------------------------------------------------------
    # set-up

    def _output_labels(self, labels: LabelSpec) -> LabelSpec:
        """What the net predicts: the dataset's labels, or, with loss 'dice_bce' on a binary dataset, its foreground
        label as one sigmoid region (one output; painted where the sigmoid exceeds 0.5)."""
        if self.cfg.loss.name != "dice_bce" or labels.has_regions:
            return labels
        foreground = labels.foreground_labels
        if len(foreground) != 1:
            raise UserError(f"config key 'loss.name' 'dice_bce' trains one sigmoid output: it needs a binary dataset "
                            f"(background and one foreground label) or region labels; {self.raw / 'dataset.json'} "
                            f"has {len(foreground)} foreground labels {foreground} (use 'dice_ce')")
        return dataclasses.replace(labels, regions=((foreground[0],),), regions_class_order=(foreground[0],))

    def _write_builtin_dataset(self) -> None:
        """Rank 0 writes config key ``builtin``'s dataset (once; later runs find it written) into raw's parent."""
        options = dict(self.cfg.builtin)
        name = options.pop("name")
        if name not in BUILTIN_DATASETS:
            raise UserError(f"config key 'builtin': unknown dataset {name!r}; available: {', '.join(BUILTIN_DATASETS)}")
        problem = None
        if self.ctx.is_main:
            try:
                folder = Path(BUILTIN_DATASETS[name](self.raw.parent, **options))
            except (TypeError, ValueError) as error:
                raise UserError(f"config key 'builtin' ({name}): {error}") from None
            if folder.resolve() != self.raw.resolve():
                problem = (f"config key 'builtin' ({name}) wrote {folder}, but config key 'raw' is {self.raw}; set raw "
                           f"to {folder}")
        problem = self.ctx.broadcast(problem)
        if problem:
            raise UserError(problem)

    def _prepare_data(self) -> None:
        """Plan and preprocess (rank 0; the others wait), split, and open the patch datasets."""
        from vssm.data.seg_patches import SegPatchDataset, unpack_case  # imports MONAI: only when training

        cfg, ctx = self.cfg, self.ctx
        cases = sorted(self.dataset.training)
        if ctx.is_main:
            self._plan_and_preprocess(cases)
        ctx.barrier()
        self.plans = self._with_network(load_plans(self.plans_path))
        self.configuration = self._configuration(self.plans)
        self.data_folder = self._data_folder(self.configuration)
        if cfg.fold == "all":
            self.train_cases = self.val_cases = cases
        else:
            splits_path = Path(cfg.splits) if cfg.splits else self.preprocessed / "splits_final.json"
            splits = self._splits(cases) if ctx.is_main else None  # rank 0 writes splits_final.json on first use
            splits = ctx.broadcast(splits)
            if cfg.fold >= len(splits):
                raise UserError(f"config key 'fold' is {cfg.fold}, but {splits_path} has {len(splits)} fold(s) "
                                f"(0-{len(splits) - 1}; or 'all')")
            self.train_cases, self.val_cases = sorted(splits[cfg.fold]["train"]), sorted(splits[cfg.fold]["val"])
            if not self.train_cases or not self.val_cases:
                raise UserError(f"fold {cfg.fold} of {splits_path} has no training or no validation case")

        self.patch_size = tuple(cfg.patch_size) if cfg.patch_size is not None else \
            tuple(self.configuration.patch_size)
        if len(self.patch_size) != self.configuration.dim:
            raise UserError(f"config key 'patch_size' {self.patch_size} has {len(self.patch_size)} axes; configuration "
                            f"{cfg.configuration!r} is {self.configuration.dim}-D")
        global_batch = cfg.batch_size or self.configuration.batch_size
        if global_batch % ctx.world_size:
            raise UserError(f"batch_size {global_batch} (the global batch, split over the processes as nnU-Net does) "
                            f"must be a multiple of the number of processes, {ctx.world_size}; set config key "
                            "'batch_size'")
        self.global_batch, self.batch_size = global_batch, global_batch // ctx.world_size
        if ctx.is_main:  # unpack the npz files once, before the other ranks open them
            for case in tqdm(sorted(set(self.train_cases) | set(self.val_cases)), desc="unpack", unit="case",
                             leave=False):
                unpack_case(self.data_folder, case)
        ctx.barrier()
        oversample, masks = cfg.oversample_foreground, self.configuration.use_mask_for_norm
        self.train_set = SegPatchDataset(self.data_folder, self.train_cases, self.patch_size, oversample,
                                         augment=cfg.augment, use_mask_for_norm=masks)
        self.val_set = SegPatchDataset(self.data_folder, self.val_cases, self.patch_size, oversample, augment=False,
                                       use_mask_for_norm=masks)
        if cfg.augment and cfg.augmentation != "nnunet":
            try:
                self.train_set.transforms, self.train_set.sampled_size = recipe_augmentation(cfg.augmentation,
                                                                                             self.patch_size)
            except ValueError as error:
                raise UserError(f"config key 'augmentation': {error}") from None
        self.train_steps = cfg.iterations_per_epoch or self._one_pass(self.train_set)
        self.val_steps = cfg.val_iterations or self._one_pass(self.val_set)
        self.train_sampler = PatchSampler(len(self.train_cases), self.batch_size, ctx.world_size, ctx.rank,
                                          self.train_steps, cfg.seed, _TRAIN_STREAM, oversample)
        self.val_sampler = PatchSampler(len(self.val_cases), self.batch_size, ctx.world_size, ctx.rank,
                                        self.val_steps, cfg.seed, _VAL_STREAM, oversample)
        self.train_loader, self.val_loader = (
            DataLoader(_Patches(dataset), batch_size=self.batch_size, sampler=sampler, num_workers=cfg.workers,
                       pin_memory=ctx.device.type == "cuda", persistent_workers=cfg.workers > 0,
                       generator=torch.Generator())
            for dataset, sampler in ((self.train_set, self.train_sampler), (self.val_set, self.val_sampler)))
        if ctx.is_main:
            for name, content in (("plans.json", dict(self.plans)), ("dataset.json", self.dataset.dataset_json.raw)):
                text = json.dumps(content, indent=4)
                write_atomic(os.path.join(self.work_dir, name), lambda file: file.write(text + "\n"), "w")

    def _one_pass(self, dataset) -> int:
        """Steps of one pass over a patch dataset's images: ceil(images / global batch), where an image is a case, or
        for a 2-D configuration a slice (a natural 2-D image is one)."""
        images = sum(dataset.load_case(i)[0].shape[1] if self.configuration.dim == 2 else 1
                     for i in range(len(dataset)))
        return max(1, math.ceil(images / self.global_batch))

    def _plan_and_preprocess(self, cases: List[str]) -> None:
        """Rank 0: when anything is still to be planned or preprocessed, check the whole raw dataset first (every
        problem by file), then plan (if the plans file does not exist) and preprocess the cases not done yet."""
        planned = self.plans_path.is_file()
        todo = cases
        if planned:
            configuration = self._configuration()
            folder, key = self._data_folder(configuration), plan_key(configuration)
            todo = [case for case in cases if not is_case_done(folder, case, key)]
        if not todo:
            return
        self.logger.info(f"checking the raw dataset {self.raw} ({len(cases)} training cases)")
        validate_raw_dataset(self.raw)
        if not planned:
            self.logger.info(f"planning {self.raw.name} into {self.plans_path}")
            self.plans_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                plan_dataset(self.raw, self.plans_path, verify=False, **self.cfg.planner)
            except TypeError as error:  # an unknown planner option
                raise UserError(f"config key 'planner': {error}") from None
            configuration = self._configuration()
            folder = self._data_folder(configuration)
        self.logger.info(f"preprocessing {len(todo)} case(s) for {self.cfg.configuration} into {folder}")
        preprocess_dataset(self.raw, self.plans_path, self.cfg.configuration, folder, self.cfg.preprocess_workers,
                           cases=todo)

    def _splits(self, cases: List[str]) -> list:
        """Config key ``splits``'s file, else ``splits_final.json`` of the preprocessed folder, written on first use
        (nnU-Net's 5 folds)."""
        from vssm.data.seg_patches import read_or_write_splits, read_splits

        if self.cfg.splits:
            if not os.path.isfile(self.cfg.splits):
                raise UserError(f"config key 'splits': file not found: {self.cfg.splits}")
            return read_splits(self.cfg.splits, cases)
        try:
            return read_or_write_splits(self.preprocessed, cases)
        except ValueError as error:  # fewer cases than folds
            raise UserError(f"config key 'fold': {error}") from None

    def _configuration(self, plans=None) -> SegConfiguration:
        """The config's configuration of ``plans`` (default: the plans file)."""
        try:
            return read_configuration(self.plans_path if plans is None else plans, self.cfg.configuration)
        except DataError as error:
            raise UserError(f"config key 'configuration': {error}") from None

    def _with_network(self, plans: dict) -> dict:
        """The plans with config key ``network``'s entries written into the configuration's ``arch_kwargs`` (the
        architecture found along ``inherits_from``, copied into the configuration itself)."""
        if not self.cfg.network:
            return plans
        plans = copy.deepcopy(plans)
        configurations, name = plans["configurations"], self.cfg.configuration
        if name not in configurations:
            return plans  # _configuration names the problem
        source, seen = name, set()
        while "architecture" not in configurations[source] and configurations[source].get("inherits_from") and \
                source not in seen:
            seen.add(source)
            source = configurations[source]["inherits_from"]
        architecture = copy.deepcopy(configurations.get(source, {}).get("architecture"))
        if not isinstance(architecture, dict) or not isinstance(architecture.get("arch_kwargs"), dict):
            raise UserError(f"config key 'network' replaces entries of the plans' architecture.arch_kwargs (nnU-Net "
                            f">= 2.4 layout), which configuration {name!r} of {self.plans_path} does not have")
        known = set(architecture["arch_kwargs"]) | NETWORK_KEYS
        unknown = sorted(set(self.cfg.network) - known)
        if unknown:
            raise UserError(f"config key 'network.{unknown[0]}' is not an architecture entry (known: "
                            f"{', '.join(sorted(known))})")
        architecture["arch_kwargs"].update(copy.deepcopy(self.cfg.network))
        configurations[name]["architecture"] = architecture
        return plans

    def _data_folder(self, config: SegConfiguration) -> Path:
        """nnU-Net's layout: ``<preprocessed>/<data_identifier>`` (``nnUNetPlans_3d_fullres``)."""
        return self.preprocessed / (config.data_identifier or f"nnUNetPlans_{config.name}")

    def _build_training(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        net_kwargs = {k: v for k, v in cfg.net.items() if k != "name"}
        self.net_info = {"name": cfg.net["name"], "kwargs": net_kwargs,
                         "in_channels": self.dataset.dataset_json.num_channels,
                         "num_classes": self.labels.num_segmentation_heads, "patch_size": list(self.patch_size),
                         "configuration": cfg.configuration,
                         "binary_sigmoid": self.labels is not self.dataset.labels}
        try:
            self.model = build_seg_net(cfg.net["name"], self.configuration.network, self.net_info["in_channels"],
                                       self.net_info["num_classes"], self.patch_size, cfg.deep_supervision,
                                       **net_kwargs)
        except (TypeError, ValueError) as error:
            raise UserError(f"net {cfg.net['name']!r} for configuration {cfg.configuration!r} of "
                            f"{self.plans_path}: {error}") from None
        if cfg.init_decoder_from_encoder:
            self._init_decoder_from_encoder()
        if cfg.activation_recompute is not None:
            mixers = set_activation_recompute(self.model, cfg.activation_recompute)
            self.logger.info(f"activation_recompute={cfg.activation_recompute} on {mixers} Mamba mixer(s)"
                             + ("" if mixers else ": this net has none, so it changes nothing"))
        self.model.to(ctx.device)
        scales = self.model.deep_supervision_scales(self.patch_size) if cfg.deep_supervision else None
        self.batch_dice = cfg.batch_dice
        if self.batch_dice is None:  # the plan's, else nnU-Net's planner default: batch Dice for 2-D only
            planned = self.configuration.batch_dice
            self.batch_dice = planned if planned is not None else self.configuration.dim == 2
        terms = cfg.loss
        self.loss = SegmentationLoss(scales, self.labels.regions, self.labels.ignore_label, self.batch_dice,
                                     weight_ce=terms.weight_ce, weight_dice=terms.weight_dice, smooth=terms.smooth,
                                     include_background=terms.include_background, squared=terms.squared)
        opt = cfg.optimizer
        if opt.name == "sgd":
            self.optimizer = torch.optim.SGD(self.model.parameters(), opt.lr, momentum=opt.momentum,
                                             nesterov=opt.nesterov, weight_decay=opt.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), opt.lr, betas=tuple(opt.betas), eps=opt.eps,
                                               weight_decay=opt.weight_decay)
        if cfg.freeze_encoder_epochs and not callable(getattr(self.model, "freeze_encoder", None)):
            raise UserError(f"config key 'freeze_encoder_epochs' needs a net with freeze_encoder(); "
                            f"{cfg.net['name']!r} has none")
        self.train_model = self.model
        if ctx.distributed:  # wrapped with every parameter trainable; a frozen encoder leaves parameters unused
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=cfg.freeze_encoder_epochs > 0)
        self.class_names = _class_names(self.labels)
        self.columns = summary_columns(self.class_names)

    def _init_decoder_from_encoder(self) -> None:
        """Config key ``init_decoder_from_encoder``: the net's own ``init_decoder_from_encoder()`` (VM-UNet's
        ``load_from`` mirror of the encoder's stage blocks into the decoder)."""
        name = self.cfg.net["name"]
        init = getattr(self.model, "init_decoder_from_encoder", None)
        if not callable(init):
            raise UserError(f"config key 'init_decoder_from_encoder' needs a net with init_decoder_from_encoder() "
                            f"(vm_unet); {name!r} has none")
        try:
            copied = init()
        except TypeError as error:  # an encoder without stage blocks to mirror
            raise UserError(f"config key 'init_decoder_from_encoder': {error}") from None
        self.logger.info(f"initialised {len(copied)} decoder tensors of {name} from its encoder's mirrored stages")

    # ---------------------------------------------------------------------------------------------------------------
    # checkpoints

    def _state(self, epoch: int, progress: Optional[dict] = None) -> Optional[dict]:
        """The checkpoint after ``epoch`` epochs and, mid-epoch, ``progress`` (the next epoch's steps done and its loss
        sums); collective; None on ranks other than 0."""
        rng = self.ctx.gather(ckpt.capture_rng())
        if not self.ctx.is_main:
            return None
        return {
            "format": SEG_FORMAT,
            "epoch": epoch,
            "num_updates": self.num_updates,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "best": dict(self.best),
            "ema_pseudo_dice": self.ema,
            "rng": rng,
            "config": seg_config_to_dict(self.cfg),
            "history": list(self.history),
            "epoch_progress": progress,
            "net": dict(self.net_info),
            "plans": dict(self.plans),
            "dataset_json": dict(self.dataset.dataset_json.raw),
            "mirror_axes": list(mirror_axes(self.configuration.dim)),
        }

    def _load_state(self, checkpoint: dict) -> None:
        """Continue from a checkpoint: weights, optimizer, epoch, best, EMA, history, generators."""
        try:
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, KeyError, ValueError) as error:
            detail = ckpt.describe_mismatch(self.model, checkpoint["model"]) or " ".join(str(error).split())
            raise UserError(f"checkpoint {self.resume_path} does not fit this run's net {self.cfg.net['name']}: "
                            f"{detail}") from None
        self.start_epoch, self.num_updates = checkpoint["epoch"], checkpoint["num_updates"]
        self.best, self.ema = dict(checkpoint["best"]), checkpoint["ema_pseudo_dice"]
        self.history = list(checkpoint["history"])
        self.epoch_progress = checkpoint.get("epoch_progress")
        state = ckpt.rank_rng(checkpoint["rng"], self.ctx.rank)
        if state is not None:
            ckpt.restore_rng(state)
        else:  # resumed on more ranks than saved: fresh but reproducible generators for the new ranks
            random_seed(self.cfg.seed + self.start_epoch, self.ctx.rank)
        self.logger.info(f"resumed from {self.resume_path} after epoch {self.start_epoch}"
                         + (f" and {self.epoch_progress['steps']} steps" if self.epoch_progress else ""))
        changed = changed_keys(checkpoint.get("config") or {}, seg_config_to_dict(self.cfg))
        if changed:
            self.logger.warning(f"the config differs from the checkpoint's in {', '.join(changed)} (the optimizer "
                                "continues from the checkpoint's state)")

    def _repair_outputs(self, checkpoint: dict) -> None:
        """On resume, bring the files that follow checkpoint_latest.pth up to its epoch (a crash between an epoch's
        writes leaves them behind): summary.csv and progress.png from its history, checkpoint_best.pth (and
        checkpoint_final.pth after the last epoch) from it."""
        summary_path = os.path.join(self.work_dir, "summary.csv")
        on_disk = [int(row["epoch"]) for row in _read_summary(summary_path)]
        if on_disk != [int(row["epoch"]) for row in self.history]:
            write_summary(summary_path, self.history, self.columns)
            if self.history:
                plot_progress(self.history, os.path.join(self.work_dir, "progress.png"))
            self.logger.info(f"rebuilt {summary_path} and progress.png from {self.resume_path}")
        epoch = checkpoint["epoch"]
        targets = [BEST] if self.best.get("epoch") == epoch and epoch > 0 else []
        if epoch >= self.cfg.epochs and checkpoint.get("epoch_progress") is None:
            targets.append(FINAL)
        for name in targets:
            path = os.path.join(self.work_dir, name)
            if ckpt.checkpoint_epoch(path) != epoch:
                ckpt.save_atomic(checkpoint, path)
                self.logger.info(f"rebuilt {path} (epoch {epoch}) from {self.resume_path}")

    def _save(self, epoch: int, is_best: bool) -> None:
        """Write checkpoint_latest.pth (and _best, and _final after the last epoch); refuses weights that are not
        finite (collective)."""
        state = self._state(epoch)
        refuse_nonfinite_weights(self.ctx, state, epoch, LATEST)
        if state is None:
            return
        ckpt.save_atomic(state, os.path.join(self.work_dir, LATEST))
        if is_best:
            ckpt.save_atomic(state, os.path.join(self.work_dir, BEST))
        if epoch == self.cfg.epochs:
            ckpt.save_atomic(state, os.path.join(self.work_dir, FINAL))

    def _interrupt(self, epoch: int, steps_done: int, guard: NonFiniteGuard, loss_sum: torch.Tensor,
                   seen: int) -> None:
        """After a stop signal: write a resumable mid-epoch checkpoint_latest.pth and raise TrainingInterrupted."""
        guard.check()
        total_loss, total_seen = self.ctx.sum([loss_sum.item(), seen])
        state = self._state(epoch, {"steps": steps_done, "loss_sum": total_loss, "seen": int(total_seen)})
        latest = os.path.join(self.work_dir, LATEST)
        if state is not None:
            ckpt.save_atomic(state, latest)
        signum = self.stop.signum or signal.SIGTERM  # another rank's signal
        message = (f"stopped by {signal.Signals(signum).name} at epoch {epoch + 1} step {steps_done}/"
                   f"{self.train_steps}; wrote {latest}, continue with --resume")
        self.logger.info(message)
        raise TrainingInterrupted(signum, message)

    # ---------------------------------------------------------------------------------------------------------------
    # loops

    def _train_epoch(self, epoch: int, done: Optional[dict]) -> dict:
        """One epoch of training steps; ``done``: what an interrupted run had done of it."""
        cfg, ctx, model = self.cfg, self.ctx, self.train_model
        lr = epoch_lr(cfg.optimizer, epoch, cfg.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if cfg.freeze_encoder_epochs:
            self.model.freeze_encoder(epoch < cfg.freeze_encoder_epochs)
        model.train()
        start_step = done["steps"] if done else 0
        self.train_sampler.set_epoch(epoch, start_step)
        steps = self.train_steps
        resumed = done is not None and ctx.is_main  # rank 0 carries the global sums of the steps done
        loss_sum = torch.full((), done["loss_sum"] if resumed else 0.0, dtype=torch.float64, device=ctx.device)
        seen = done["seen"] if resumed else 0
        guard = NonFiniteGuard(cfg.nonfinite, ctx, epoch, checkpoint_name=LATEST)
        progress = tqdm(self.train_loader, total=steps, initial=start_step, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                        disable=None if ctx.is_main else True, leave=False, unit="step", dynamic_ncols=True)
        epoch_start = interval_start = time.perf_counter()
        interval_steps = 0
        for step, (images, labels) in enumerate(progress, start=start_step):
            images = images.to(ctx.device, non_blocking=True)
            labels = labels.to(ctx.device, non_blocking=True)
            with autocast(ctx.device, cfg.amp):
                output = model(images)
            loss = self.loss(output, labels)
            loss.backward()
            finite = guard.observe(loss, step, self.num_updates, lr)
            if guard.skip_update():
                self.optimizer.zero_grad(set_to_none=True)
            else:
                self._optimizer_step()
            if finite:
                loss_sum += loss.detach().double()
                seen += 1
            if ctx.any(self.stop.signum is not None):
                progress.close()
                self._interrupt(epoch, step + 1, guard, loss_sum, seen)
            interval_steps += 1
            if (step + 1) % cfg.log_interval == 0 or step == steps - 1:
                guard.check()
                step_loss = ctx.sum([loss.item()])[0] / ctx.world_size  # the global batch's loss, on every rank
                now = time.perf_counter()  # after .item(): the interval ends when its steps have run
                progress.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
                memory = (f" peak mem {torch.cuda.max_memory_allocated(ctx.device) / 2 ** 30:.2f} GiB"
                          if ctx.device.type == "cuda" else "")
                self.logger.info(f"epoch {epoch + 1}/{cfg.epochs} step {step + 1}/{steps} loss {step_loss:.4f} lr "
                                 f"{lr:.3e} {interval_steps / (now - interval_start):.2f} it/s{memory}")
                interval_start, interval_steps = now, 0
        progress.close()
        guard.check()
        total_loss, total_seen = ctx.sum([loss_sum.item(), seen])
        if guard.skipped:
            self.logger.warning(f"epoch {epoch + 1}: skipped {guard.skipped} step(s) with a non-finite loss")
        return {"loss": total_loss / max(total_seen, 1), "lr": lr, "time": time.perf_counter() - epoch_start,
                "skipped_steps": guard.skipped}

    def _optimizer_step(self) -> None:
        if self.cfg.clip_grad is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.num_updates += 1

    @torch.no_grad()
    def _validate_epoch(self, epoch: int) -> dict:
        """Validation loss and nnU-Net's pseudo Dice on ``val_iterations`` batches of validation patches."""
        cfg, ctx = self.cfg, self.ctx
        self.model.eval()
        self.val_sampler.set_epoch(epoch)
        loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        counts = None
        progress = tqdm(self.val_loader, total=self.val_steps, desc="validation", leave=False, unit="step",
                        disable=None if ctx.is_main else True, dynamic_ncols=True)
        for images, labels in progress:
            images = images.to(ctx.device, non_blocking=True)
            labels = labels.to(ctx.device, non_blocking=True)
            with autocast(ctx.device, cfg.amp):
                output = self.model(images)
            loss_sum += self.loss(output, labels).double()
            logits = output[0] if isinstance(output, (list, tuple)) else output
            batch = torch.stack(online_confusion(logits.float(), labels, self.labels.regions,
                                                 self.labels.ignore_label))
            counts = batch if counts is None else counts + batch
        progress.close()
        totals = np.array(ctx.sum([loss_sum.item()] + counts.flatten().tolist()))
        tp, fp, fn = totals[1:].reshape(3, -1)
        dice = pseudo_dice(tp, fp, fn)
        mean = float(np.nanmean(dice)) if np.any(~np.isnan(dice)) else float("nan")
        return {"loss": float(totals[0]) / (self.val_steps * ctx.world_size), "dice": dice, "mean": mean}

    @torch.no_grad()
    def _final_validation(self) -> dict:
        """Every validation case predicted whole, reverted to its raw geometry, written and scored; the cases are
        shared among the ranks, rank 0 writes ``validation/summary.json``."""
        cfg, ctx = self.cfg, self.ctx
        folder = Path(self.work_dir) / "validation"
        if ctx.is_main:
            folder.mkdir(parents=True, exist_ok=True)
        ctx.barrier()
        classes = self.labels.evaluation_classes
        order = self.labels.regions_class_order
        config = dataclasses.replace(self.configuration, patch_size=self.patch_size)  # config key 'patch_size'
        mine = self.val_cases[ctx.rank::ctx.world_size]
        results = []
        for case in tqdm(mine, desc="final validation", unit="case", disable=None if ctx.is_main else True):
            data, _, properties = load_preprocessed_case(self.data_folder, case)
            logits = predict_logits(self.model, data, config, mirror=cfg.validation.mirror,
                                    step_size=cfg.validation.step_size, batch_size=cfg.validation.batch_size,
                                    amp=cfg.amp).cpu().numpy()
            segmentation = revert_preprocessing(logits, properties, order)
            segmentation = segmentation.transpose(self.configuration.transpose_backward)
            geometry = properties["geometry"]
            if len(geometry["shape"]) == segmentation.ndim - 1:  # a 2-D image, stored as one slice
                segmentation = segmentation[0]
            geometry = ImageGeometry(tuple(geometry["shape"]), tuple(geometry["spacing"]),
                                     None if geometry["affine"] is None else np.asarray(geometry["affine"]))
            raw_case = self.dataset.training[case]
            path = folder / f"{case}{self.dataset.file_ending}"
            write_segmentation(segmentation, path, geometry)
            reference, reference_geometry = read_label(raw_case.label)
            metrics = compute_metrics(segmentation, reference, classes, self.labels.ignore_label,
                                      reference_geometry.spacing, cfg.validation.nsd_tolerance)
            results.append({"reference_file": str(raw_case.label), "prediction_file": str(path), "metrics": metrics})
        gathered = [entry for part in ctx.gather(results) for entry in part]
        summary = None
        if ctx.is_main:
            gathered.sort(key=lambda entry: entry["prediction_file"])
            summary = summarize(gathered)
            write_summary_json(summary, folder / "summary.json")
            foreground = summary["foreground_mean"]
            described = ", ".join(f"{name} {value:.4f}" for name, value in foreground.items()
                                  if name in ("Dice", "NSD"))
            self.logger.info(f"final validation of {len(gathered)} case(s): mean foreground {described}; wrote "
                             f"{folder / 'summary.json'}")
        ctx.barrier()
        return ctx.broadcast(None if summary is None else summary["foreground_mean"])

    def _outputs(self) -> str:
        if self.net_info["binary_sigmoid"]:
            return "the foreground label, sigmoid"
        return "regions, sigmoid" if self.labels.has_regions else "labels, softmax"

    def run(self, on_epoch_end: Optional[Callable[[int, dict], None]]) -> dict:
        cfg, ctx = self.cfg, self.ctx
        summary_path = os.path.join(self.work_dir, "summary.csv")
        params = sum(p.numel() for p in self.model.parameters()) / 1e6
        self.logger.info(
            f"net {cfg.net['name']} ({params:.2f}M params), {cfg.configuration} patch {self.patch_size}, "
            f"{self.net_info['num_classes']} output channels ({self._outputs()}); "
            f"fold {cfg.fold}: {len(self.train_cases)} training / {len(self.val_cases)} validation cases; "
            f"{ctx.world_size} process(es) on {ctx.device.type}; global batch {self.global_batch}, batch Dice "
            f"{self.batch_dice}, lr {cfg.optimizer.lr:.3e} ({cfg.optimizer.name}); {cfg.epochs} epochs x "
            f"{self.train_steps} steps; work dir {self.work_dir}")
        row = self.history[-1] if self.history else {}
        if self.start_epoch >= cfg.epochs:
            self.logger.info(f"the run in {self.work_dir} is complete: {self.start_epoch} of {cfg.epochs} epochs done, "
                             "nothing to train (raise 'epochs' to continue it)")
        run_start = time.perf_counter()
        for epoch in range(self.start_epoch, cfg.epochs):
            with loader_failures("workers"):
                train_metrics = self._train_epoch(epoch, self.epoch_progress if epoch == self.start_epoch else None)
                val_metrics = self._validate_epoch(epoch)
            mean = val_metrics["mean"]
            if math.isfinite(mean):  # an epoch without any class in its patches and predictions leaves the EMA as is
                self.ema = mean if self.ema is None else EMA_MOMENTUM * self.ema + (1 - EMA_MOMENTUM) * mean
            row = {"epoch": epoch + 1, "train_loss": train_metrics["loss"], "val_loss": val_metrics["loss"],
                   "pseudo_dice": mean, "ema_pseudo_dice": float("nan") if self.ema is None else self.ema,
                   "lr": train_metrics["lr"],
                   "epoch_time": train_metrics["time"],
                   **{f"pseudo_dice_{name}": float(value) for name, value in zip(self.class_names,
                                                                                   val_metrics["dice"])}}
            if train_metrics["skipped_steps"]:
                row["skipped_steps"] = train_metrics["skipped_steps"]
            is_best = self.ema is not None and (self.best["ema_pseudo_dice"] is None
                                                or self.ema > self.best["ema_pseudo_dice"])
            if is_best:
                self.best = {"ema_pseudo_dice": self.ema, "epoch": epoch + 1}
            self.history.append(row)
            self._save(epoch + 1, is_best)
            if ctx.is_main:
                write_summary(summary_path, self.history, self.columns)
                plot_progress(self.history, os.path.join(self.work_dir, "progress.png"))
            per_epoch = (time.perf_counter() - run_start) / (epoch + 1 - self.start_epoch)
            per_class = ", ".join(f"{name} {value:.4f}" for name, value in zip(self.class_names, val_metrics["dice"]))
            self.logger.info(
                f"epoch {epoch + 1}/{cfg.epochs} train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
                f"pseudo Dice {mean:.4f} [{per_class}] EMA {row['ema_pseudo_dice']:.4f}"
                f"{' (new best)' if is_best else ''} "
                f"({train_metrics['time']:.0f} s training; run eta "
                f"{report.format_duration(per_epoch * (cfg.epochs - epoch - 1))})")
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, row)
        validation = None
        if cfg.validation.enable:
            done = os.path.isfile(os.path.join(self.work_dir, "validation", "summary.json"))
            if self.start_epoch < cfg.epochs or not ctx.broadcast(done):
                validation = self._final_validation()
        return {**row, "best": dict(self.best), "validation": validation}


def load_trained_net(path: str, device: Optional[str] = None, checkpoint: Optional[dict] = None
                     ) -> Tuple[nn.Module, dict]:
    """The net of a segmentation checkpoint (``checkpoint_final.pth``, ``_best``, ``_latest``), rebuilt from what the
    checkpoint holds and its weights loaded, in eval mode with deep supervision off. A binary dataset's one-output
    sigmoid net (loss 'dice_bce') comes wrapped in ``BinarySigmoidAsSoftmax``, so that it predicts the dataset's
    labels as the trainer's validation does.

    Returns:
        (net, checkpoint): the checkpoint's ``plans``, ``dataset_json``, ``net`` (name, kwargs, in_channels,
        num_classes, patch_size, configuration) and ``mirror_axes`` say how to predict with it.
    """
    checkpoint = checkpoint if checkpoint is not None else ckpt.read_checkpoint(path, trust_option=None)
    if checkpoint.get("format") != SEG_FORMAT:
        raise UserError(f"{path} is not a checkpoint of the segmentation trainer (tools/train_seg.py)")
    info = checkpoint["net"]
    config = read_configuration(checkpoint["plans"], info["configuration"])
    net = build_seg_net(info["name"], config.network, info["in_channels"], info["num_classes"], info["patch_size"],
                        deep_supervision=False, **info["kwargs"])
    mismatch = ckpt.describe_mismatch(net, checkpoint["model"])
    if mismatch:
        raise UserError(f"checkpoint {path} does not fit net {info['name']}: {mismatch}")
    net.load_state_dict(checkpoint["model"])
    if info.get("binary_sigmoid"):
        net = BinarySigmoidAsSoftmax(net)
    return net.to(device or "cpu").eval(), checkpoint
