"""The training and evaluation loops, assembled from timm's pieces.

``train(cfg, work_dir)`` runs one process's part of a run: create the model (timm.create_model), the data
(create_dataset / create_transform, Mixup), the optimizer (create_optimizer_v2: weight-decay exclusions from
``model.no_weight_decay()``, layer decay from ``model.group_matcher()``), the schedule (create_scheduler_v2), the EMA
(ModelEmaV3) and the loss (timm's cross-entropies); wrap the model for DDP or FSDP2 and optionally torch.compile it;
then alternate a training epoch (AMP, gradient accumulation, clipping) and an evaluation, writing ``summary.csv``,
the ``last.pth`` / ``best.pth`` checkpoints, the log and the curve plot into the work dir. A video run validates on one
centre clip per video; with ``final_test.protocol`` set, best.pth is then re-tested under that full multi-view
protocol by tools/eval_video.py's code (``test_best.json``).

The step keeps the GPU busy: image batches arrive as uint8 and are normalised and randomly erased on the device
(``DeviceBatches``), Mixup/CutMix mixes the device batch, synthetic splits live on the device (``DeviceSplit``); the
optimizer is fused on CUDA, clipping and the EMA use multi-tensor kernels, nothing in the step waits for the device
(the loss is read once per log interval), and on one GPU the whole step is replayed from a CUDA graph wherever it can
be captured (``cuda_graph``, ``vssm.engine.step``).
"""
import contextlib
import dataclasses
import difflib
import functools
import json
import logging
import math
import os
import signal
import time
from typing import Callable, Optional

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import load_pretrained
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, accuracy, random_seed
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict,
)
from torch.utils.data import Dataset
from tqdm import tqdm

from vssm.convert import checkpoint_filter_for
from vssm.data import SyntheticDataset
from vssm.layers.mamba_mixer import set_activation_recompute

from . import checkpoint as ckpt
from . import report
from .config import TrainConfig, config_to_dict, final_test_protocol
from .data import (
    SYNTHETIC_NUM_CLASSES, DeviceBatches, DeviceSplit, EvalSampler, TrainSampler, build_loader, build_transforms,
    clip_augment_of, clips_per_item, count_classes, erasing_of, open_synthetic, open_train_set, open_val_set,
    resolve_input_config, video_protocol_of, video_split_config,
)
from .distributed import DistContext
from .errors import USER_ERRORS, TrainingInterrupted, UserError, one_line
from .optim import has_overrides, param_groups
from .runtime import (
    NonFiniteGuard, StopSignals, autocast, changed_keys, check_work_dir, loader_failures, prepare_work_dir,
    process_settings, refuse_nonfinite_weights,
)
from .step import (
    CapturedStep, CaptureFailed, clip_gradients, graph_obstacle, optimizer_implementation,
    reset_implementation, trainable,
)
from .video_eval import VideoEvalConfig, build_protocol, check_clip_input, evaluate_video
from .workdir import WorkDirLock

FINAL_TEST_FILE, FINAL_TEST_VIEWS = "test_best.json", "test_best_views.pt"
WORK_DIR_OUTPUTS = ("config.py", "train.log", "summary.csv", "curves.png", "last.pth", "best.pth", FINAL_TEST_FILE,
                    FINAL_TEST_VIEWS)
_FSDP_BLOCK_LISTS = ("blocks", "layers")  # FSDP2 shards each element of ModuleLists/Sequentials with these names


def build_model(cfg: TrainConfig, num_classes: int, trust: bool = False) -> nn.Module:
    """``timm.create_model`` from the config's ``model`` section.

    ``model.pretrained_file`` (a training or an official checkpoint) is read here, so that a bad file is a one-line
    error, then loaded by timm's ``load_pretrained`` exactly as ``pretrained=True`` weights are: converted by the
    model's ``checkpoint_filter_fn``, the classifier re-initialised when the class count differs from the pretrained
    cfg's, the stem adapted to ``in_chans``. ``trust`` allows pickled Python objects in that file.
    """
    kwargs = dict(cfg.model)
    name = kwargs.pop("name")
    pretrained_file = kwargs.pop("pretrained_file", None)
    pretrained = kwargs.pop("pretrained", False) and pretrained_file is None
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.75)
        raise UserError(f"unknown model {name!r}" + (f" (similar: {', '.join(close)})" if close else ""))
    state_dict = None
    if pretrained_file is not None:
        state_dict = ckpt.state_dict_of(ckpt.read_checkpoint(pretrained_file, trust=trust), pretrained_file)
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except TypeError as error:  # an unknown keyword argument
        raise UserError(f"model {name!r}: {error}") from None
    if state_dict is not None:
        try:
            load_pretrained(model, {**model.pretrained_cfg, "state_dict": state_dict}, num_classes,
                            kwargs.get("in_chans", 3), filter_fn=checkpoint_filter_for(name))
        except (KeyError, RuntimeError, ValueError) as error:
            raise UserError(f"checkpoint {pretrained_file} does not fit model {name!r}: "
                            f"{_fit_problem(model, state_dict, error)}") from None
    return model


def _fit_problem(model: nn.Module, state_dict: dict, error: Exception) -> str:
    """Why a checkpoint failed to load: the keys that differ after conversion, else the error itself."""
    convert = checkpoint_filter_for(model)
    try:
        converted = convert(state_dict, model) if convert is not None else state_dict
    except (KeyError, RuntimeError, ValueError) as conversion_error:
        return f"{type(conversion_error).__name__}: {' '.join(str(conversion_error).split())}"
    return ckpt.describe_mismatch(model, converted) or f"{type(error).__name__}: {' '.join(str(error).split())}"


def _mix(mixup: Mixup, images: torch.Tensor, targets: torch.Tensor):
    """timm's Mixup/CutMix on images (B, C, H, W) or clips (B, C, T, H, W): a clip's frames share one mix and one
    CutMix box (the frames fold into the channels while timm mixes)."""
    if images.dim() == 5:
        batch, channels, frames, height, width = images.shape
        folded, targets = mixup(images.reshape(batch, channels * frames, height, width), targets)
        return folded.view(batch, channels, frames, height, width), targets
    return mixup(images, targets)


def _check_fixed_size(model: nn.Module, name: str, size: tuple) -> None:
    """A model built for one input size (a fixed position embedding) must get inputs of that size: say so before the
    first step, with the fix."""
    own = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if not model.pretrained_cfg.get("fixed_input_size") or getattr(model, "dynamic_img_size", False) or own is None:
        return
    own = tuple(own)[-2:]
    if own != size:
        raise UserError(f"model {name} was built for {own[0]}x{own[1]} inputs and takes no other size, but the data "
                        f"config gives {size[0]}x{size[1]} (data.img_size); build the model at that size with "
                        f"model.img_size={size[0] if size[0] == size[1] else list(size)}, or leave data.img_size unset")


def _shard(model: nn.Module) -> None:
    """FSDP2: shard each block (an element of a ModuleList/Sequential named 'blocks' or 'layers'), then the rest."""
    from torch.distributed.fsdp import fully_shard

    for name, module in reversed(list(model.named_modules())):  # inner blocks before the blocks holding them
        parts = name.split(".")
        if len(parts) >= 2 and parts[-2] in _FSDP_BLOCK_LISTS and parts[-1].isdigit():
            fully_shard(module)
    fully_shard(model)


@torch.no_grad()
def evaluate(model: nn.Module, loader, ctx: DistContext, amp: Optional[str] = None, channels_last: bool = False,
             num_classes: int = 1000) -> dict:
    """Cross-entropy loss, top-1 and top-5 accuracy (%) over the loader's dataset, summed exactly over all ranks."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    correct = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    count = 0
    top_k = (1, min(5, num_classes))
    for images, targets in loader:
        images = images.to(ctx.device, non_blocking=True)
        targets = targets.to(ctx.device, non_blocking=True)
        if channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(ctx.device, amp):
            output = model(images)
        valid = targets >= 0  # padding of uneven shards has target -1
        output, targets = output[valid].float(), targets[valid]
        if targets.numel() == 0:
            continue
        loss_sum += F.cross_entropy(output, targets, reduction="sum")
        correct += torch.stack(accuracy(output, targets, topk=top_k)).double() * targets.numel() / 100
        count += targets.numel()
    loss_total, top1, top5, total = ctx.sum([loss_sum.item(), *correct.tolist(), count])
    return {"loss": loss_total / total, "top1": 100 * top1 / total, "top5": 100 * top5 / total}


def evaluate_checkpoint(cfg: TrainConfig, path: str, use_ema: bool = False, trust: bool = False) -> dict:
    """Evaluate a checkpoint (a training checkpoint or an official one) on the config's validation split.

    Runs in one process or under torchrun (each rank evaluates its shard; the metrics are exact sums). An image
    folder's class indices come from its training split when there is one, else from the validation split's folders.
    """
    ctx = DistContext(cfg.device)
    try:
        with process_settings(cfg):
            checkpoint = ckpt.read_checkpoint(path, trust=trust)
            train_set = open_train_set(cfg.data, required=False)
            val_set = None if cfg.data.dataset == "synthetic" else open_val_set(cfg.data, train_set)
            num_classes = _num_classes(cfg, train_set if train_set is not None else val_set)
            model = build_model(cfg, num_classes, trust=trust)
            ckpt.load_model_weights(model, checkpoint, path, use_ema=use_ema)
            input_config = resolve_input_config(cfg, model)
            if val_set is None:
                val_set = open_synthetic(cfg.data, num_classes, input_config["input_size"], cfg.seed, training=False)
            elif cfg.data.dataset != "video":  # clips come normalised by their protocol
                val_set.transform = build_transforms(cfg, input_config, cfg.data.prefetcher)[1]
            loader = build_loader(val_set, EvalSampler(len(val_set), ctx.world_size, ctx.rank), cfg.batch_size,
                                  cfg.data.workers, cfg.data.pin_memory and ctx.device.type == "cuda")
            if cfg.data.prefetcher and _is_image_folder_like(cfg):
                loader = DeviceBatches(loader, ctx.device, input_config["mean"], input_config["std"])
            model.to(ctx.device)
            if cfg.channels_last:
                model.to(memory_format=torch.channels_last)
            metrics = evaluate(model, loader, ctx, cfg.amp, cfg.channels_last, num_classes)
            metrics["num_samples"] = len(val_set)
            return metrics
    finally:
        ctx.close()


def _is_image_folder_like(cfg: TrainConfig) -> bool:
    """Whether the config's images go through timm's image transforms (every dataset but 'synthetic' and 'video')."""
    return cfg.data.dataset not in ("synthetic", "video")


def _num_classes(cfg: TrainConfig, dataset: Optional[Dataset]) -> int:
    """The config's data.num_classes, else the dataset's class count (synthetic: SYNTHETIC_NUM_CLASSES)."""
    if cfg.data.num_classes:
        return cfg.data.num_classes
    return count_classes(dataset) if dataset is not None else SYNTHETIC_NUM_CLASSES


def train(
        cfg: TrainConfig,
        work_dir: str,
        resume: Optional[str] = None,
        overwrite: bool = False,
        trust: bool = False,
        on_epoch_end: Optional[Callable[[int, dict], None]] = None,
) -> dict:
    """Train as ``cfg`` says; the process's part of a run (one process, or one rank under torchrun).

    Args:
        cfg: The resolved config.
        work_dir: Output folder. An existing, non-empty one is refused unless ``resume`` or ``overwrite`` is given.
        resume: A checkpoint to continue from, or 'auto' for ``work_dir/last.pth``.
        overwrite: Replace the outputs of an earlier run in ``work_dir``.
        trust: Allow pickled Python objects in ``model.pretrained_file`` (only for files from a trusted source).
        on_epoch_end: Called as ``on_epoch_end(epoch, metrics)`` after each epoch's checkpoint is written (epochs
            count from 1).

    Returns:
        The last epoch's summary row, plus ``best`` (the best value of ``cfg.best_metric`` and its epoch) and
        ``final_test`` (what ``test_best.json`` holds; None without ``final_test.protocol`` or a best.pth).
    """
    ctx = DistContext(cfg.device)
    lock = None
    try:
        if ctx.is_main:
            lock = WorkDirLock(work_dir).acquire()
        ctx.barrier()
        with process_settings(cfg, cudnn_benchmark=True):  # the training shapes are fixed
            trainer = _Trainer(cfg, ctx, work_dir, resume, overwrite, trust)
            with trainer.stop:
                return trainer.run(on_epoch_end)
    except USER_ERRORS as error:
        report.log_to_file(logging.getLogger(report.LOGGER_NAME), f"error: {one_line(error)}")
        raise
    finally:
        report.close_logging(logging.getLogger(report.LOGGER_NAME))
        if lock is not None:
            lock.release()
        ctx.close()


class _Trainer:
    """One run's state: model (raw and wrapped), optimizer, scheduler, EMA, scaler, loaders and progress."""

    def __init__(
            self,
            cfg: TrainConfig,
            ctx: DistContext,
            work_dir: str,
            resume: Optional[str],
            overwrite: bool,
            trust: bool,
    ):
        self.cfg = cfg
        self.ctx = ctx
        self.work_dir = work_dir
        self.resume_path = os.path.join(work_dir, "last.pth") if resume == "auto" else resume
        check_work_dir(self.ctx, self.work_dir, self.resume_path, overwrite, "last.pth")
        checkpoint = ckpt.read_checkpoint(self.resume_path, trust_option=None) if self.resume_path else None
        if checkpoint is not None and not ckpt.is_training_checkpoint(checkpoint):
            raise UserError(f"{self.resume_path} is not a training checkpoint of this trainer (use "
                            "model.pretrained_file to start from other weights)")

        random_seed(cfg.seed)  # the same initial weights on every rank (FSDP does not broadcast them)
        train_set = open_train_set(cfg.data)
        self.num_classes = _num_classes(cfg, train_set)
        self.model = build_model(cfg, self.num_classes, trust)
        self._build_data(train_set)
        self._build_training()

        # only now: a bad config leaves the work dir untouched
        prepare_work_dir(self.ctx, self.work_dir, self.resume_path, WORK_DIR_OUTPUTS)
        self.logger = report.setup_logging(os.path.join(work_dir, "train.log"), ctx.is_main)
        self.start_epoch, self.num_updates, self.best = 0, 0, {"metric": cfg.best_metric, "value": None, "epoch": None}
        self.history: Optional[list[dict]] = None  # one summary row per epoch; last.pth holds it
        self.epoch_progress: Optional[dict] = None  # what an interrupted run had done of the epoch it resumes in
        self.stop = StopSignals()
        random_seed(cfg.seed, ctx.rank)  # per-rank generators for dropout, drop path, Mixup
        if checkpoint is not None:
            self._load_state(checkpoint)
            if ctx.is_main:
                self._repair_outputs(checkpoint)
        if ctx.is_main:
            Config(config_to_dict(cfg)).dump(os.path.join(work_dir, "config.py"))

    # ---------------------------------------------------------------------------------------------------------------
    # set-up


    def _build_data(self, train_set) -> None:
        cfg, ctx = self.cfg, self.ctx
        self.input_config = resolve_input_config(cfg, self.model)
        input_size = self.input_config["input_size"]
        _check_fixed_size(self.model, cfg.model["name"], tuple(input_size[-2:]))
        on_device = False  # normalisation and erasing on the device (uint8 loader)
        if cfg.data.dataset == "video":
            check_clip_input(self.model, video_protocol_of(cfg.data), cfg.model["name"])
            if cfg.final_test.protocol:  # refused now rather than after the training
                check_clip_input(self.model, final_test_protocol(cfg), cfg.model["name"])
            val_set = open_val_set(cfg.data, train_set)
            train_set.augment = clip_augment_of(cfg.augment)
        elif cfg.data.dataset == "synthetic":
            train_set = open_synthetic(cfg.data, self.num_classes, input_size, cfg.seed, training=True)
            val_set = open_synthetic(cfg.data, self.num_classes, input_size, cfg.seed, training=False)
        else:
            val_set = open_val_set(cfg.data, train_set)
            on_device = cfg.data.prefetcher
            train_set.transform, val_set.transform = build_transforms(cfg, self.input_config, use_prefetcher=on_device)
        mixing = cfg.mixup.mixup_alpha > 0 or cfg.mixup.cutmix_alpha > 0 or cfg.mixup.cutmix_minmax is not None
        clips = cfg.batch_size * clips_per_item(cfg.data)  # a step's samples: num_sample clips per video
        if mixing and clips % 2:
            per_video = f" x data.num_sample {clips // cfg.batch_size}" if clips != cfg.batch_size else ""
            raise UserError(f"Mixup/CutMix needs an even number of samples per step, got batch_size "
                            f"{cfg.batch_size}{per_video}")
        self.mixup = Mixup(**dataclasses.asdict(cfg.mixup), label_smoothing=cfg.smoothing,
                           num_classes=self.num_classes) if mixing else None
        pin_memory = cfg.data.pin_memory and ctx.device.type == "cuda"
        train_sampler = TrainSampler(len(train_set), cfg.batch_size, ctx.world_size, ctx.rank, cfg.seed,
                                     cfg.data.repeated_aug, cfg.grad_accum_steps)
        val_sampler = EvalSampler(len(val_set), ctx.world_size, ctx.rank)
        if isinstance(train_set, SyntheticDataset) and cfg.data.synthetic_on_device:
            self.train_loader = DeviceSplit(train_set, train_sampler, cfg.batch_size, ctx.device, cfg.data.workers)
            self.val_loader = DeviceSplit(val_set, val_sampler, cfg.batch_size, ctx.device, cfg.data.workers)
            gib = (self.train_loader.nbytes + self.val_loader.nbytes) / 2 ** 30
            self.pipeline = (f"synthetic data generated once and held on {ctx.device.type} ({len(train_set)} + "
                             f"{len(val_set)} images, {gib:.2f} GiB); a batch is an index into it")
        else:
            self.train_loader = build_loader(train_set, train_sampler, cfg.batch_size, cfg.data.workers, pin_memory)
            self.val_loader = build_loader(val_set, val_sampler, cfg.batch_size, cfg.data.workers, pin_memory)
            self.pipeline = f"loader with {cfg.data.workers} worker(s) per process"
        if on_device:
            mean, std = self.input_config["mean"], self.input_config["std"]
            self.train_loader = DeviceBatches(self.train_loader, ctx.device, mean, std,
                                              erasing_of(cfg.augment, ctx.device))
            self.val_loader = DeviceBatches(self.val_loader, ctx.device, mean, std)
            erasing = " and random erasing" if cfg.augment.re_prob > 0 else ""
            self.pipeline += f" giving uint8 images; normalisation{erasing} on {ctx.device.type}"
        if self.mixup is not None:
            self.pipeline += f"; Mixup/CutMix on {ctx.device.type}"
        self.num_train, self.num_val = len(train_set), len(val_set)
        self.data_notes = [f"{kind} split: class folder(s) without images, skipped: {', '.join(dataset.empty_classes)}"
                           for kind, dataset in (("training", train_set), ("validation", val_set))
                           if getattr(dataset, "empty_classes", None)]

    def _build_training(self) -> None:
        cfg, ctx, model = self.cfg, self.ctx, self.model
        model.to(ctx.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        self.recompute_note = None
        if cfg.activation_recompute is not None:
            mixers = set_activation_recompute(model, cfg.activation_recompute)
            self.recompute_note = (f"activation_recompute={cfg.activation_recompute} on {mixers} Mamba mixer(s)"
                                   + ("" if mixers else ": this model has none, so it changes nothing"))
        if ctx.distributed and cfg.fsdp:
            _shard(model)  # before the optimizer and the EMA: sharding replaces the parameters by DTensors
        self.params = trainable(model.parameters())  # what clipping walks at every step
        self.graph_obstacle = (graph_obstacle(cfg, ctx.device, ctx.distributed) if cfg.cuda_graph is not False
                               else None)
        capture = cfg.cuda_graph is not False and self.graph_obstacle is None

        opt = cfg.optimizer
        global_batch = cfg.batch_size * ctx.world_size * cfg.grad_accum_steps * clips_per_item(cfg.data)
        ratio = global_batch / opt.lr_base_size
        self.lr = opt.lr if opt.lr is not None else opt.lr_base * (math.sqrt(ratio) if opt.lr_base_scale == "sqrt"
                                                                    else ratio)
        extra = {k: v for k, v in (("eps", opt.eps), ("betas", opt.betas)) if v is not None}
        if opt.no_weight_decay is not None or has_overrides(model) or opt.layer_decay_rule != "timm":
            # the recipe's own exclusions instead of model.no_weight_decay(), parameters with their own lr / wd, and
            # the official VideoMamba layer-decay rule
            extra["param_group_fn"] = functools.partial(param_groups, weight_decay=opt.weight_decay,
                                                        layer_decay=opt.layer_decay,
                                                        no_weight_decay=opt.no_weight_decay,
                                                        layer_decay_rule=opt.layer_decay_rule)
        implementation = optimizer_implementation(cfg, self.params, sharded=ctx.distributed and cfg.fsdp,
                                                  capture=capture)
        foreach = implementation.pop("foreach", None)
        try:
            self.optimizer = create_optimizer_v2(model, opt=opt.opt, lr=self.lr, weight_decay=opt.weight_decay,
                                                 momentum=opt.momentum, layer_decay=opt.layer_decay, foreach=foreach,
                                                 **extra, **implementation, **opt.kwargs)
        except (AssertionError, ValueError, TypeError, RuntimeError) as error:
            raise UserError(f"optimizer {opt.opt!r}: {error}") from None
        self.implementation = ", ".join(key for key in ("fused", "foreach", "capturable")
                                        if self.optimizer.defaults.get(key)) or "torch's default implementation"
        self.ema = ModelEmaV3(model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup, foreach=True,
                              device=torch.device("cpu") if cfg.ema.force_cpu else None) if cfg.ema.enable else None
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.amp == "fp16")

        self.train_model, self.ddp = model, None
        if ctx.distributed and not cfg.fsdp:
            self.train_model = self.ddp = nn.parallel.DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model, backend=cfg.compile, mode=cfg.compile_mode)
        self.captured = CapturedStep(self._captured_step, self.optimizer) if capture else None

        sched = cfg.scheduler
        self.updates_per_epoch = len(self.train_loader) // cfg.grad_accum_steps
        self.scheduler, self.total_epochs = create_scheduler_v2(
            self.optimizer, sched=sched.sched, num_epochs=cfg.epochs, decay_epochs=sched.decay_epochs,
            decay_milestones=sched.decay_milestones, cooldown_epochs=sched.cooldown_epochs,
            patience_epochs=sched.patience_epochs, decay_rate=sched.decay_rate, min_lr=sched.min_lr,
            warmup_lr=sched.warmup_lr, warmup_epochs=sched.warmup_epochs, warmup_prefix=sched.warmup_prefix,
            step_on_epochs=not sched.on_updates, updates_per_epoch=self.updates_per_epoch)
        if self.mixup is not None:
            self.train_loss = SoftTargetCrossEntropy()
        elif cfg.smoothing:
            self.train_loss = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
        else:
            self.train_loss = nn.CrossEntropyLoss()
        self.train_loss = self.train_loss.to(ctx.device)

    # ---------------------------------------------------------------------------------------------------------------
    # checkpoints

    def _state(self, epoch: int, progress: Optional[dict] = None) -> Optional[dict]:
        """The checkpoint after ``epoch`` epochs and, mid-epoch, ``progress`` (the next epoch's steps done and its loss
        sums); collective under FSDP; None on ranks other than 0."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.model, options=options)
        optimizer_state = get_optimizer_state_dict(self.model, self.optimizer, options=options)
        rng = self.ctx.gather(ckpt.capture_rng())
        if not self.ctx.is_main:
            return None
        return {
            "format": ckpt.FORMAT,
            "epoch": epoch,
            "num_updates": self.num_updates,
            "model": model_state,
            "model_ema": {k: v.cpu() for k, v in self.ema.module.state_dict().items()} if self.ema else None,
            "optimizer": optimizer_state,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best": dict(self.best),
            "rng": rng,
            "config": config_to_dict(self.cfg),
            "history": list(self.history or []),
            "epoch_progress": progress,
        }

    def _load_state(self, checkpoint: dict) -> None:
        """Continue from a training checkpoint: weights, optimizer, schedule, EMA, scaler, epoch, generators."""
        options = StateDictOptions(full_state_dict=True)
        try:
            set_model_state_dict(self.model, checkpoint["model"], options=options)
            set_optimizer_state_dict(self.model, self.optimizer, checkpoint["optimizer"], options=options)
            reset_implementation(self.optimizer)  # the checkpoint's run may have used another implementation
        except (RuntimeError, KeyError, ValueError) as error:
            detail = ckpt.describe_mismatch(self.model, checkpoint["model"]) or " ".join(str(error).split())
            trained_as = ckpt.trained_model_name(checkpoint)
            origin = f" (it was trained as {trained_as})" if trained_as and trained_as != self.cfg.model["name"] else ""
            raise UserError(f"checkpoint {self.resume_path} does not fit this run's model "
                            f"{self.cfg.model['name']}{origin}: {detail}") from None
        if self.ema is not None:
            if checkpoint.get("model_ema") is None:
                raise UserError(f"checkpoint {self.resume_path} has no EMA weights but config key 'ema.enable' is set")
            self.ema.module.load_state_dict(checkpoint["model_ema"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.start_epoch = checkpoint["epoch"]
        self.num_updates = checkpoint["num_updates"]
        self.best = checkpoint["best"]
        self.history = list(checkpoint["history"]) if checkpoint.get("history") is not None else None
        self.epoch_progress = checkpoint.get("epoch_progress")
        if self.cfg.scheduler.on_updates:
            self.scheduler.step_update(self.num_updates)
        else:
            self.scheduler.step(self.start_epoch)
        state = ckpt.rank_rng(checkpoint["rng"], self.ctx.rank)
        if state is not None:
            ckpt.restore_rng(state)
        else:  # resumed on more ranks than saved: fresh but reproducible generators for the new ranks
            random_seed(self.cfg.seed + self.start_epoch, self.ctx.rank)
        self.logger.info(f"resumed from {self.resume_path} after epoch {self.start_epoch}")
        changed = changed_keys(checkpoint.get("config") or {}, config_to_dict(self.cfg))
        if changed:
            self.logger.warning(f"the config differs from the checkpoint's in {', '.join(changed)} (the optimizer and "
                                "schedule continue from the checkpoint's state)")

    def _repair_outputs(self, checkpoint: dict) -> None:
        """On resume, bring the files that follow last.pth up to its epoch (a crash between an epoch's writes leaves
        them behind): summary.csv and curves.png from its history, best.pth from it when it is the best epoch."""
        if self.history is not None:
            summary_path = os.path.join(self.work_dir, "summary.csv")
            on_disk = [int(row["epoch"]) for row in report.read_summary(summary_path)]
            if on_disk != [int(row["epoch"]) for row in self.history]:
                report.write_summary(summary_path, self.history, with_ema=self.ema is not None)
                if self.history:
                    report.plot_curves(self.history, os.path.join(self.work_dir, "curves.png"))
                self.logger.info(f"rebuilt {summary_path} and curves.png from {self.resume_path}")
        best_path = os.path.join(self.work_dir, "best.pth")
        if self.best.get("epoch") == checkpoint["epoch"] and ckpt.checkpoint_epoch(best_path) != checkpoint["epoch"]:
            ckpt.save_atomic(checkpoint, best_path)
            self.logger.info(f"rebuilt {best_path} (epoch {checkpoint['epoch']}) from {self.resume_path}")

    def _interrupt(self, epoch: int, steps_done: int, steps: int, guard: NonFiniteGuard, loss_sum: torch.Tensor,
                   seen: int) -> None:
        """After a stop signal: write a resumable mid-epoch last.pth (finite only) and raise TrainingInterrupted."""
        guard.check()
        total_loss, total_seen = self.ctx.sum([loss_sum.item(), seen])
        state = self._state(epoch, {"steps": steps_done, "loss_sum": total_loss, "seen": int(total_seen)})
        last = os.path.join(self.work_dir, "last.pth")
        if state is not None:
            ckpt.save_atomic(state, last)
        signum = self.stop.signum or signal.SIGTERM  # another rank's signal
        message = (f"stopped by {signal.Signals(signum).name} at epoch {epoch + 1} step {steps_done}/{steps}; wrote "
                   f"{last}, continue with --resume")
        self.logger.info(message)
        raise TrainingInterrupted(signum, message)

    def _save(self, epoch: int, is_best: bool) -> None:
        """Write last.pth (and best.pth) after ``epoch``; refuses weights that are not finite (collective)."""
        state = self._state(epoch)
        refuse_nonfinite_weights(self.ctx, state, epoch, "last.pth")
        if state is None:
            return
        ckpt.save_atomic(state, os.path.join(self.work_dir, "last.pth"))
        if is_best:
            ckpt.save_atomic(state, os.path.join(self.work_dir, "best.pth"))

    # ---------------------------------------------------------------------------------------------------------------
    # loops

    def _grad_sync(self, sync: bool):
        """Skip the gradient reduction on micro-batches that do not end an accumulation."""
        if self.cfg.fsdp and self.ctx.distributed:
            self.model.set_requires_gradient_sync(sync)
        if sync or self.ddp is None:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def _train_epoch(self, epoch: int, done: Optional[dict] = None) -> dict:
        """One training epoch; ``done``: what an interrupted run had done of it (``epoch_progress`` of last.pth)."""
        cfg, ctx = self.cfg, self.ctx
        self.train_model.train()
        start_step = done["steps"] if done else 0
        self.train_loader.sampler.set_epoch(epoch, start_step)
        steps = self.train_loader.sampler.steps
        resumed = done is not None and ctx.is_main  # rank 0 carries the global sums of the steps done
        loss_sum = torch.full((), done["loss_sum"] if resumed else 0.0, dtype=torch.float64, device=ctx.device)
        seen = done["seen"] if resumed else 0
        guard = NonFiniteGuard(cfg.nonfinite, ctx, epoch)
        progress = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch + 1}/{self.total_epochs}",
                        disable=None if ctx.is_main else True, leave=False, unit="batch", dynamic_ncols=True)
        interval_start, interval_seen, interval_wait = time.perf_counter(), 0, 0.0
        epoch_start = interval_start
        batches = iter(self.train_loader)
        for step in range(start_step, steps):
            wait_start = time.perf_counter()
            images, targets = next(batches)
            interval_wait += time.perf_counter() - wait_start
            last_micro_step = (step + 1) % cfg.grad_accum_steps == 0
            images, targets = self._prepare(images, targets)
            loss, finite = self._train_step(images, targets, step, last_micro_step, guard)
            if finite:
                loss_sum += loss.detach().double() * images.shape[0]
                seen += images.shape[0]
            progress.update()
            if last_micro_step and ctx.any(self.stop.signum is not None):
                progress.close()
                self._interrupt(epoch, step + 1, steps, guard, loss_sum, seen)
            interval_seen += images.shape[0]
            if last_micro_step and (self.num_updates % cfg.log_interval == 0 or step == steps - 1):
                self._synchronize()  # the interval ends when its steps have run, not when they were queued
                now = time.perf_counter()
                rate = interval_seen * ctx.world_size / (now - interval_start)
                eta = (now - epoch_start) / (step + 1 - start_step) * (steps - step - 1)
                lr = self._lr()
                guard.check()
                step_loss = ctx.sum([loss.item()])[0] / ctx.world_size  # the global batch's loss, on every rank
                progress.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
                memory = (f" peak mem {torch.cuda.max_memory_allocated(ctx.device) / 2 ** 30:.2f} GiB"
                          if ctx.device.type == "cuda" else "")
                waiting = interval_wait / (now - interval_start)
                self.logger.info(f"epoch {epoch + 1}/{self.total_epochs} step {step + 1}/{steps} loss {step_loss:.4f}"
                                 f" lr {lr:.3e} {rate:.1f} img/s (waiting for data {waiting:.0%}){memory} eta "
                                 f"{report.format_duration(eta)}")
                interval_start, interval_seen, interval_wait = now, 0, 0.0
        progress.close()
        guard.check()
        total_loss, total_seen = ctx.sum([loss_sum.item(), seen])
        if guard.skipped:
            self.logger.warning(f"epoch {epoch + 1}: skipped {guard.skipped} step(s) with a non-finite loss")
        return {"loss": total_loss / max(total_seen, 1), "time": time.perf_counter() - epoch_start,
                "skipped_steps": guard.skipped}

    def _prepare(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader's batch as the model takes it: on the device (a no-op for batches already there), mixed
        (Mixup/CutMix, soft targets), in the model's memory format."""
        images = images.to(self.ctx.device, non_blocking=True)
        targets = targets.to(self.ctx.device, non_blocking=True)
        if self.mixup is not None:
            images, targets = _mix(self.mixup, images, targets)
        if self.cfg.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets

    def _train_step(self, images: torch.Tensor, targets: torch.Tensor, step: int, last_micro_step: bool,
                    guard: NonFiniteGuard) -> tuple[torch.Tensor, bool]:
        """One micro-batch: forward, backward and (ending an accumulation) the update; returns its loss (a device
        scalar) and whether it counts (False: non-finite and skipped). Nothing here waits for the device."""
        if self.captured is not None:
            try:
                loss = self.captured(images, targets)
            except CaptureFailed as failure:
                self.logger.warning(f"cuda_graph: the capture failed ({failure}); the step runs eagerly")
                self.captured = None
            else:
                if self.captured.steps_run == self.captured.warmup + 1:
                    self.logger.info(f"cuda_graph: captured the training step after {self.captured.warmup} eager "
                                     "steps; replaying it")
                guard.observe(loss, step, self.num_updates, self._lr())
                self._after_update()
                return loss, True
        with self._grad_sync(last_micro_step):
            with autocast(self.ctx.device, self.cfg.amp):
                loss = self.train_loss(self.train_model(images), targets)
            self.scaler.scale(loss / self.cfg.grad_accum_steps).backward()
        finite = guard.observe(loss, step, self.num_updates, self._lr())
        if last_micro_step:
            if guard.skip_update():
                self.optimizer.zero_grad(set_to_none=True)
            else:
                self._optimizer_step()
        return loss, finite

    def _captured_step(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The step that ``CapturedStep`` runs and captures: forward, loss, backward, clipping, optimizer step (one
        process, no loss scaling, no accumulation)."""
        with autocast(self.ctx.device, self.cfg.amp, cache_enabled=False):
            loss = self.train_loss(self.train_model(images), targets)
        loss.backward()
        if self.cfg.clip_grad is not None:
            clip_gradients(self.params, self.cfg.clip_grad, self.cfg.clip_mode, self.cfg.optimizer.foreach)
        self.optimizer.step()
        return loss.detach()

    def _optimizer_step(self) -> None:
        cfg = self.cfg
        if cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            clip_gradients(self.params, cfg.clip_grad, cfg.clip_mode, cfg.optimizer.foreach)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self._after_update()

    def _after_update(self) -> None:
        """Count the update, average it into the EMA, advance a per-update schedule."""
        self.num_updates += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.num_updates)
        self.scheduler.step_update(num_updates=self.num_updates)

    def _measure_pipeline(self, batches: int) -> None:
        """Time ``batches`` training batches of the input pipeline alone (after one batch that starts the workers) and
        log its img/s per process; the random generators and the sampler are left as they were."""
        rng = ckpt.capture_rng()
        self.train_loader.sampler.set_epoch(self.start_epoch)
        count, start = 0, None
        for images, targets in self.train_loader:
            images, targets = self._prepare(images, targets)
            if start is None:
                self._synchronize()
                start = time.perf_counter()
                continue
            count += 1
            if count == batches:
                break
        self._synchronize()
        elapsed = time.perf_counter() - start
        ckpt.restore_rng(rng)
        if count == 0:
            self.logger.info("input pipeline alone: not measured (an epoch has one batch)")
            return
        rate = count * self.cfg.batch_size * clips_per_item(self.cfg.data) / elapsed
        self.logger.info(f"input pipeline alone: {rate:.1f} img/s per process over {count} batches "
                         f"({self.pipeline})")

    def _synchronize(self) -> None:
        if self.ctx.device.type == "cuda":
            torch.cuda.synchronize(self.ctx.device)

    def _lr(self) -> float:
        groups = self.optimizer.param_groups
        return sum(group["lr"] for group in groups) / len(groups)

    def _evaluate(self, model: nn.Module) -> dict:
        return evaluate(model, self.val_loader, self.ctx, self.cfg.amp, self.cfg.channels_last, self.num_classes)

    def run(self, on_epoch_end: Optional[Callable[[int, dict], None]]) -> dict:
        cfg, ctx = self.cfg, self.ctx
        summary_path = os.path.join(self.work_dir, "summary.csv")
        if self.history is None:  # a fresh run, or a checkpoint written before last.pth held the history
            self.history = [row for row in report.read_summary(summary_path) if int(row["epoch"]) <= self.start_epoch]
        rows = self.history
        params = sum(p.numel() for p in self.model.parameters()) / 1e6
        self.logger.info(
            f"model {cfg.model['name']} ({params:.2f}M params), {self.num_classes} classes, input "
            f"{tuple(self.input_config['input_size'])}; {self.num_train} training / {self.num_val} validation images; "
            f"{ctx.world_size} process(es) on {ctx.device.type}{' (FSDP)' if cfg.fsdp and ctx.distributed else ''}; "
            f"global batch {cfg.batch_size * ctx.world_size * cfg.grad_accum_steps * clips_per_item(cfg.data)}, "
            f"lr {self.lr:.3e}, "
            f"{self.total_epochs} epochs x {self.updates_per_epoch} steps; work dir {self.work_dir}")
        for note in self.data_notes:
            self.logger.warning(note)
        self.logger.info(f"input pipeline: {self.pipeline}; optimizer {cfg.optimizer.opt} ({self.implementation})")
        if self.recompute_note is not None:
            self.logger.info(self.recompute_note)
        if self.graph_obstacle is not None and cfg.cuda_graph:
            self.logger.warning(f"cuda_graph: not used ({self.graph_obstacle}); the step runs eagerly")
        elif self.graph_obstacle is not None and self.ctx.device.type == "cuda":
            self.logger.info(f"cuda_graph: off ({self.graph_obstacle}); the step runs eagerly")
        if cfg.data.measure_pipeline and self.start_epoch < self.total_epochs:
            self._measure_pipeline(cfg.data.measure_pipeline)
        row = rows[-1] if rows else {}
        if self.start_epoch >= self.total_epochs:
            self.logger.info(f"the run in {self.work_dir} is complete: {self.start_epoch} of {self.total_epochs} "
                             "epochs done, nothing to train (raise 'epochs' to continue it)")
        run_start = time.perf_counter()
        for epoch in range(self.start_epoch, self.total_epochs):
            with loader_failures():
                train_metrics = self._train_epoch(epoch, self.epoch_progress if epoch == self.start_epoch else None)
                eval_metrics = self._evaluate(self.model)  # the unwrapped model (sharded in place under FSDP)
            row = {"epoch": epoch + 1, "train_loss": train_metrics["loss"], "lr": self._lr(),
                   **{f"eval_{k}": v for k, v in eval_metrics.items()}}
            if self.ema is not None:
                row.update({f"ema_eval_{k}": v for k, v in self._evaluate(self.ema.module).items()})
            if train_metrics["skipped_steps"]:
                row["skipped_steps"] = train_metrics["skipped_steps"]
            self.scheduler.step(epoch + 1, row[cfg.best_metric])
            metric = float(row[cfg.best_metric])
            comparable = math.isfinite(metric) and math.isfinite(float(row["eval_loss"]))  # best among finite only
            is_best = comparable and (self.best["value"] is None or metric > self.best["value"])
            if is_best:
                self.best = {"metric": cfg.best_metric, "value": metric, "epoch": epoch + 1}
            rows.append(row)
            self._save(epoch + 1, is_best)
            if ctx.is_main:
                report.write_summary(summary_path, rows, with_ema=self.ema is not None)
                report.plot_curves(rows, os.path.join(self.work_dir, "curves.png"))
            ema_note = f" ema_top1 {row['ema_eval_top1']:.2f}" if self.ema is not None else ""
            per_epoch = (time.perf_counter() - run_start) / (epoch + 1 - self.start_epoch)
            best_note = ("no finite epoch yet" if self.best["value"] is None else
                         f"best {self.best['metric']} {self.best['value']:.2f} at epoch {self.best['epoch']}")
            self.logger.info(
                f"epoch {epoch + 1}/{self.total_epochs} train_loss {row['train_loss']:.4f} eval_loss "
                f"{row['eval_loss']:.4f} top1 {row['eval_top1']:.2f} top5 {row['eval_top5']:.2f}{ema_note} "
                f"({train_metrics['time']:.0f} s training; {best_note}; run eta "
                f"{report.format_duration(per_epoch * (self.total_epochs - epoch - 1))})")
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, row)
        final_test = self._final_test() if cfg.final_test.protocol else None
        return {**row, "best": dict(self.best), "final_test": final_test}

    # ---------------------------------------------------------------------------------------------------------------
    # the final test

    def _final_test_config(self) -> VideoEvalConfig:
        """tools/eval_video.py's config of the final test: the run's model (its weights come from best.pth), the
        validation split's videos, ``final_test``'s protocol and decoding settings, the run's device and precision."""
        cfg, test = self.cfg, self.cfg.final_test
        model = {key: value for key, value in cfg.model.items() if key not in ("pretrained", "pretrained_file")}
        data = dataclasses.replace(video_split_config(cfg.data, cfg.data.val_split), num_classes=self.num_classes)
        return VideoEvalConfig(
            model=model, data=data, protocol=dict(test.protocol), batch_size=test.batch_size or cfg.batch_size,
            workers=cfg.data.workers if test.workers is None else test.workers, timeout=test.timeout,
            on_error=test.on_error, device=cfg.device, amp=cfg.amp, cpu_threads=cfg.cpu_threads,
            views_file=os.path.join(self.work_dir, FINAL_TEST_VIEWS))

    def _final_test(self) -> Optional[dict]:
        """Re-test best.pth under ``final_test.protocol`` with ``vssm.engine.video_eval.evaluate_video`` (every rank a
        shard of the videos; the EMA weights when best.pth was chosen by an EMA metric) and write the result to
        ``test_best.json`` (atomically, rank 0). A ``test_best.json`` of the same best epoch, weights, protocol and
        videos (a resumed, finished run) is kept, not redone."""
        ctx = self.ctx
        if self.best.get("epoch") is None:
            self.logger.warning("final test: skipped, no best.pth (no epoch had a finite validation metric)")
            return None
        eval_cfg = self._final_test_config()
        use_ema = self.cfg.best_metric.startswith("ema_")
        best_path = os.path.join(self.work_dir, "best.pth")
        identity = {"checkpoint": best_path, "best_epoch": self.best["epoch"], "best_metric": self.best["metric"],
                    "weights": "ema" if use_ema else "model", "protocol": build_protocol(eval_cfg).describe(),
                    "data": dataclasses.asdict(eval_cfg.data)}
        result_path = os.path.join(self.work_dir, FINAL_TEST_FILE)
        earlier = ctx.broadcast(_read_json(result_path) if ctx.is_main else None)
        if earlier is not None and all(earlier.get(key) == value for key, value in identity.items()):
            self.logger.info(f"final test: {result_path} already holds best.pth (epoch {self.best['epoch']}) under "
                             "this protocol; not redone")
            return earlier
        self.logger.info(f"final test: best.pth (epoch {self.best['epoch']}, {identity['weights']} weights) under "
                         f"{identity['protocol']}")
        start = time.perf_counter()
        try:
            metrics = evaluate_video(eval_cfg, best_path, use_ema=use_ema, report=self.logger.warning, ctx=ctx)
        except USER_ERRORS as error:
            raise UserError(f"final test of {best_path}: {one_line(error)} (the training is complete; --resume redoes "
                            "only the test)") from None
        result = {**identity, **metrics, "seconds": round(time.perf_counter() - start, 1)}
        if ctx.is_main:
            ckpt.write_atomic(result_path, lambda file: json.dump(result, file, indent=2), mode="w")
        self.logger.info(
            f"final test of best.pth (epoch {self.best['epoch']}): top1 {metrics['top1']:.2f} top5 "
            f"{metrics['top5']:.2f} mean class {metrics['mean_class_accuracy']:.2f} over {metrics['videos_decoded']} "
            f"videos ({metrics['views']} views; {metrics['videos_failed']} failed, {metrics['videos_missing']} "
            f"missing of {metrics['videos_listed']} listed) in {report.format_duration(result['seconds'])}; wrote "
            f"{result_path}")
        return result


def _read_json(path: str) -> Optional[dict]:
    """The JSON object in ``path``; None when the file is missing or unreadable."""
    try:
        with open(path) as file:
            value = json.load(file)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
