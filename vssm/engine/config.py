"""The training configuration: every key a config file may set, its default and meaning; loading through mmengine.

A config is an mmengine Python file with ``_base_`` inheritance, overridden from the command line with
``--cfg-options key=value`` (dotted keys for nested values: ``optimizer.lr_base=1e-3``). Every key is declared below
and a key that is not declared is an error, so a typo never passes silently. ``model`` is the one open section: besides
``name``, ``pretrained`` and ``pretrained_file``, its keys are keyword arguments of ``timm.create_model`` (for example
``drop_path_rate``), checked by the model itself.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from vssm.data.video import VideoProtocol, video_protocol
from vssm.ops.mamba_inner import RECOMPUTE_LEVELS

from .errors import UserError

AMP_DTYPES = (None, "bf16", "fp16")
NONFINITE_POLICIES = ("stop", "skip")
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
BEST_METRICS = ("eval_top1", "eval_top5")
EMA_BEST_METRICS = ("ema_eval_top1", "ema_eval_top5")


@dataclass
class DataConfig:
    """Where the images come from and how they are evaluated (timm's create_dataset / create_transform)."""
    dataset: str = "imagefolder"  # 'imagefolder' (root/<split>/<class>/<image>), 'digits', 'synthetic', 'video', or a
    #                               timm create_dataset name such as 'torch/cifar10' (read from root, never downloaded)
    root: Optional[str] = None  # folder holding the splits (imagefolder, timm datasets)
    train_split: str = "train"
    val_split: str = "val"
    num_classes: Optional[int] = None  # None: the number of classes in the training split (synthetic: 10)
    img_size: Optional[int | tuple] = None  # side (or (height, width)); None: model.img_size if the config sets
    #                                         it, else the model's pretrained cfg input size
    crop_pct: Optional[float] = None  # evaluation centre-crop fraction; None: the model's pretrained cfg
    interpolation: Optional[str] = None  # evaluation resize interpolation; None: the model's pretrained cfg
    mean: Optional[tuple] = None  # None: the model's pretrained cfg
    std: Optional[tuple] = None
    workers: int = 4  # data-loading worker processes per rank (0: load in the training process)
    pin_memory: bool = True  # (CUDA only)
    repeated_aug: int = 1  # repeated augmentation: each image appears this many times per epoch, with different
    #                        augmentations on different ranks (DeiT's RASampler uses 3); the epoch length is unchanged
    digits_size: int = 32  # digits: side the 8x8 images are upsampled to before augmentation
    synthetic_train_size: int = 1024  # synthetic: number of training images
    synthetic_val_size: int = 256  # synthetic: number of validation images
    synthetic_on_device: bool = True  # synthetic: generate each split once and keep it on the training device
    #   (float32: N x C x H x W x 4 bytes, 0.6 GiB per 1024 images at 224 px), every batch an index into it, so data
    #   is never the limit; False: each sample is generated in the loader workers
    prefetcher: bool = True  # image datasets: the loader yields uint8 images (pinned, copied without blocking) and the
    #   normalisation and random erasing run on the device, the next batch prepared on a side stream (timm's
    #   prefetcher); False: both in the loader workers (timm's CPU transform). Clips ('video') come normalised by the
    #   dataset either way
    measure_pipeline: int = 0  # time this many training batches of the input pipeline alone (loader, copy,
    #   normalisation, erasing, Mixup) at start-up and log its img/s: whether data can keep up with the model; 0: off
    video: dict = field(default_factory=dict)  # 'video': the annotated videos, keys of vssm.engine.video_eval's
    #   VideoDataConfig (format, root, classes, labels, ...) with a sub-dict per split name for what differs
    #   (e.g. train=dict(annotation='train.csv'), val=dict(annotation='val.csv')); root is data.root unless set here
    protocol: dict = field(default_factory=dict)  # 'video': the clip protocol preset and its overrides
    #   (vssm.data.video.video_protocol), e.g. dict(name='videomamba_k400', num_frames=8, short_side=64, crop_size=64);
    #   training clips follow its sampler, validation takes one clip and the centre crop
    num_sample: int = 1  # 'video' training: augmented clips per decoded video (VideoMamba's repeated sampling, 2 in
    #                      its recipes); a step holds batch_size x num_sample clips, the views of a video side by
    #                      side, and the learning rate's global batch counts clips (the official lr x batch x
    #                      num_sample / 256); an epoch still passes each video once


@dataclass
class AugmentConfig:
    """Training-time augmentation, as timm's create_transform takes it."""
    no_aug: bool = False  # only resize and centre-crop, as in evaluation
    scale: tuple = (0.08, 1.0)  # RandomResizedCrop area range
    ratio: tuple = (3 / 4, 4 / 3)  # RandomResizedCrop aspect-ratio range
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: float = 0.4  # ignored by timm when auto_augment is set
    auto_augment: Optional[str] = None  # 'rand-m9-mstd0.5-inc1' (RandAugment), 'v0' (AutoAugment), ...
    interpolation: str = "random"  # training resize interpolation ('random' picks bilinear or bicubic per image)
    re_prob: float = 0.0  # random-erasing probability
    re_mode: str = "pixel"
    re_count: int = 1


@dataclass
class MixupConfig:
    """Mixup / CutMix (timm's Mixup, batch-level); off while both alphas are 0. Label smoothing: ``smoothing``."""
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    cutmix_minmax: Optional[tuple] = None
    prob: float = 1.0  # probability of mixing a batch at all
    switch_prob: float = 0.5  # probability of CutMix instead of Mixup when both are on
    mode: str = "batch"  # 'batch', 'pair' or 'elem'


@dataclass
class OptimizerConfig:
    """timm's create_optimizer_v2; ``model.no_weight_decay()`` and 1-D parameters are excluded from weight decay."""
    opt: str = "adamw"  # any name in timm.optim.list_optimizers()
    lr: Optional[float] = None  # absolute learning rate; None: lr_base scaled by the global batch size
    lr_base: float = 5e-4  # learning rate at a global batch of lr_base_size ...
    lr_base_size: int = 512
    lr_base_scale: str = "linear"  # ... scaled 'linear'ly or by 'sqrt' to batch_size * world_size * grad_accum_steps
    weight_decay: float = 0.05
    momentum: float = 0.9  # (SGD-like optimizers)
    eps: Optional[float] = None  # None: the optimizer's default
    betas: Optional[tuple] = None
    layer_decay: Optional[float] = None  # layer-wise lr decay through model.group_matcher()
    layer_decay_rule: str = "timm"  # which parameters layer_decay scales: 'timm' (model.group_matcher(): stem, each
    #   block, head) or 'videomamba_official' (VideoMamba's fine-tuning code, whose name matching misses its blocks:
    #   cls_token, pos_embed and patch_embed get layer_decay ** (depth + 1), everything else 1; how the released
    #   video models were trained)
    no_weight_decay: Optional[tuple] = None  # parameter-name patterns (fnmatch) without weight decay, besides 1-D
    #                                          parameters and biases; None: model.no_weight_decay() (timm's default).
    #                                          Official recipes that decay A_log list only their own exclusions here
    fused: Optional[bool] = None  # the fused (one kernel per step) implementation of torch's Adam / AdamW / SGD;
    #                               None: on when every parameter is on a CUDA device (no FSDP), opt is 'adam',
    #                               'adamw', 'sgd' or 'momentum' and foreach is not set
    foreach: Optional[bool] = None  # the multi-tensor implementation (and foreach gradient clipping); None: torch's
    #                                 default (on for CUDA tensors)
    kwargs: dict = field(default_factory=dict)  # further optimizer keyword arguments


@dataclass
class SchedulerConfig:
    """timm's create_scheduler_v2. The run lasts ``epochs + cooldown_epochs`` epochs, as in timm's train.py."""
    sched: str = "cosine"  # 'cosine', 'step', 'multistep', 'plateau', 'poly', 'tanh', 'wsd', ...
    on_updates: bool = True  # update the lr after every optimizer step (False: once per epoch)
    warmup_epochs: int = 5
    warmup_lr: float = 1e-6  # lr at the start of warm-up
    warmup_prefix: bool = False  # count the decay from the end of warm-up
    min_lr: float = 1e-5
    cooldown_epochs: int = 0  # epochs at min_lr after the decay
    decay_epochs: float = 90  # ('step')
    decay_milestones: tuple = (90, 180, 270)  # ('multistep')
    decay_rate: float = 0.1  # ('step', 'multistep', 'plateau')
    patience_epochs: int = 10  # ('plateau')


@dataclass
class EmaConfig:
    """An exponential moving average of the weights (timm's ModelEmaV3), evaluated beside the model."""
    enable: bool = False
    decay: float = 0.9998
    warmup: bool = False  # ramp the decay up over the first steps
    force_cpu: bool = False  # keep the average on the CPU to save accelerator memory


@dataclass
class FinalTestConfig:
    """'video' runs: at the end of training, best.pth re-tested under a full multi-view protocol by the code of
    tools/eval_video.py (vssm.engine.video_eval), on the validation split, every rank a shard; the result goes to
    ``test_best.json`` in the work dir (per-view logits: ``test_best_views.pt``)."""
    protocol: dict = field(default_factory=dict)  # the preset and its overrides (vssm.data.video.video_protocol),
    #   e.g. dict(name='videomamba_k400', num_frames=16, num_clips=4, num_crops=3); empty: no re-test. Its frames,
    #   crop size and normalisation must be those of data.protocol (the clips the model trained on)
    batch_size: Optional[int] = None  # views per forward pass; None: the training batch_size
    workers: Optional[int] = None  # decoder processes per rank; None: data.workers (0: decode in the training process)
    timeout: float = 120.0  # seconds one video may take to decode before its decoder is killed and the video skipped
    on_error: str = "skip"  # a missing / unreadable / stuck video: 'skip' (named in the log and counted) or 'fatal'


@dataclass
class TrainConfig:
    """A training run; sections are the dataclasses above, the rest are plain top-level keys."""
    model: dict = field(default_factory=dict)  # name=<timm model name>, pretrained=False, pretrained_file=None, and
    #   timm.create_model kwargs. pretrained / pretrained_file start from the model's published weights / a local
    #   (official or vssm) checkpoint, converted as for pretrained=True; the classifier is re-initialised when
    #   data.num_classes differs from the pretrained cfg's (fine-tuning)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    final_test: FinalTestConfig = field(default_factory=FinalTestConfig)
    epochs: int = 300  # training epochs, followed by scheduler.cooldown_epochs
    batch_size: int = 128  # per process (GPU); the global batch is batch_size * world_size * grad_accum_steps
    grad_accum_steps: int = 1  # micro-batches accumulated before each optimizer step
    smoothing: float = 0.1  # label smoothing (also of Mixup's soft targets)
    clip_grad: Optional[float] = None  # gradient clipping threshold; None: off
    clip_mode: str = "norm"  # 'norm', 'value' or 'agc'
    amp: Optional[str] = None  # mixed precision: None (float32), 'bf16', or 'fp16' (with loss scaling)
    channels_last: bool = False  # NHWC memory format for model and inputs
    compile: Optional[str] = None  # torch.compile backend ('inductor'); None: eager
    compile_mode: Optional[str] = None  # torch.compile mode with compile='inductor': 'reduce-overhead' (CUDA graphs),
    #                                     'max-autotune', 'max-autotune-no-cudagraphs'; None: the default mode
    cuda_graph: Optional[bool] = None  # capture the training step (forward, loss, backward, clipping, optimizer step)
    #   in a CUDA graph after 3 eager warm-up steps and replay it: no per-step host dispatch. Needs one process on a GPU,
    #   amp None or 'bf16', grad_accum_steps 1, nonfinite 'stop', no compile, opt 'adam', 'adamw', 'sgd' or 'momentum'.
    #   None (the default): on wherever these hold, else eager (on a GPU one log line says why); True: the same, with
    #   a warning where they do not hold; False: always eager. A capture that fails trains eagerly and says why
    grad_checkpointing: bool = False  # recompute activations in backward (model.set_grad_checkpointing)
    activation_recompute: Optional[int] = None  # what the Mamba mixers' fused backward recomputes instead of saving
    #   (vssm.ops.mamba_inner): 0 nothing, 1 the conv output and delta (the models' default), 2 also the scan's chunk
    #   states (the VideoMamba fine-tuning recipes' clips per GPU), 3 also the scan's output (the least memory); in
    #   SiMBA, PlainMamba and LocalVim / LocalVMamba 2 and 3 recompute the scan's chunk states
    #   (vssm.layers.mamba_mixer.set_activation_recompute); None: the models' default
    fsdp: bool = False  # multi-process: shard parameters, gradients and optimizer state (FSDP2) instead of DDP
    seed: int = 42
    deterministic: bool = False  # torch.use_deterministic_algorithms (warning about ops without a deterministic
    #                              kernel); slower on GPU. CPU runs are reproducible without it
    device: Optional[str] = None  # None: CUDA (the local rank's GPU) if available, else CPU
    cpu_threads: Optional[int] = None  # intra-op CPU threads per process (torch.set_num_threads); None: torch's
    #                                    default (OMP_NUM_THREADS, which torchrun sets to 1, else one per core)
    log_interval: int = 50  # optimizer steps between log lines
    best_metric: str = "eval_top1"  # accuracy column of summary.csv that selects best.pth (and drives the 'plateau'
    #                                 schedule): 'eval_top1', 'eval_top5', and with EMA 'ema_eval_top1', 'ema_eval_top5'
    work_dir: Optional[str] = None  # None: work_dirs/<config file name>; the command line's --work-dir wins
    nonfinite: str = "stop"  # a NaN/Inf training loss: 'stop' the run (one line naming the step, epoch and learning
    #                          rate; nothing non-finite is written), or 'skip' the step and count it (checks every step
    #                          on the host, a synchronisation per step)


def build_dataclass(cls, values: dict, prefix: str = "", sections: Optional[dict] = None):
    """Instantiate dataclass ``cls`` from ``values``, recursing into the nested sections that ``sections`` maps
    (class -> {field: section class}; default: the training config's); unknown keys raise ``UserError`` naming them,
    lists become tuples."""
    if not isinstance(values, dict):
        raise UserError(f"config key '{prefix.rstrip('.')}' must be a dict, got {values!r}")
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f"in '{prefix.rstrip('.')}'" if prefix else "at the top level"
        raise UserError(f"unknown config key '{prefix}{unknown[0]}' (known {where}: {', '.join(fields)})")
    sections = _SECTIONS if sections is None else sections
    nested = sections.get(cls, {})
    kwargs = {}
    for name, value in values.items():
        if name in nested:
            kwargs[name] = build_dataclass(nested[name], value, f"{prefix}{name}.", sections)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


_SECTIONS = {
    TrainConfig: {"data": DataConfig, "augment": AugmentConfig, "mixup": MixupConfig, "optimizer": OptimizerConfig,
                  "scheduler": SchedulerConfig, "ema": EmaConfig, "final_test": FinalTestConfig},
}


def _check(cfg: TrainConfig) -> None:
    """Value checks that need no model or data."""
    name = cfg.model.get("name")
    if not isinstance(name, str) or not name:
        raise UserError("config key 'model.name' must name a timm model")
    if cfg.amp not in AMP_DTYPES:
        raise UserError(f"config key 'amp' must be one of {AMP_DTYPES}, got {cfg.amp!r}")
    for key in ("epochs", "batch_size", "grad_accum_steps", "log_interval"):
        if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 1:
            raise UserError(f"config key '{key}' must be a positive integer, got {getattr(cfg, key)!r}")
    if cfg.cpu_threads is not None and (not isinstance(cfg.cpu_threads, int) or cfg.cpu_threads < 1):
        raise UserError(f"config key 'cpu_threads' must be a positive integer or None, got {cfg.cpu_threads!r}")
    if cfg.data.repeated_aug < 1:
        raise UserError(f"config key 'data.repeated_aug' must be >= 1, got {cfg.data.repeated_aug!r}")
    if cfg.nonfinite not in NONFINITE_POLICIES:
        raise UserError(f"config key 'nonfinite' must be one of {NONFINITE_POLICIES}, got {cfg.nonfinite!r}")
    metrics = BEST_METRICS + (EMA_BEST_METRICS if cfg.ema.enable else ())
    if cfg.best_metric not in metrics:
        raise UserError(f"config key 'best_metric' must be one of {', '.join(metrics)}, got {cfg.best_metric!r}")
    if cfg.compile_mode not in COMPILE_MODES:
        raise UserError(f"config key 'compile_mode' must be one of {COMPILE_MODES}, got {cfg.compile_mode!r}")
    if cfg.compile_mode is not None and cfg.compile != "inductor":
        raise UserError(f"config key 'compile_mode' is a mode of compile='inductor' (compile is {cfg.compile!r})")
    if cfg.optimizer.fused and cfg.optimizer.foreach:
        raise UserError("config keys 'optimizer.fused' and 'optimizer.foreach' cannot both be True (two "
                        "implementations of the same step)")
    if not isinstance(cfg.data.measure_pipeline, int) or cfg.data.measure_pipeline < 0:
        raise UserError(f"config key 'data.measure_pipeline' must be a number of batches >= 0, got "
                        f"{cfg.data.measure_pipeline!r}")
    if cfg.activation_recompute is not None and cfg.activation_recompute not in RECOMPUTE_LEVELS:
        raise UserError(f"config key 'activation_recompute' must be {', '.join(map(str, RECOMPUTE_LEVELS))} or None, "
                        f"got {cfg.activation_recompute!r}")
    if not (cfg.cuda_graph is None or isinstance(cfg.cuda_graph, bool)):
        raise UserError(f"config key 'cuda_graph' must be None (where the step can be captured), True or False, got "
                        f"{cfg.cuda_graph!r}")
    if cfg.fsdp and cfg.ema.enable:
        raise UserError("config keys 'fsdp' and 'ema.enable' cannot both be set (the EMA copy would not be sharded)")
    _check_final_test(cfg)


def protocol_of_section(settings: dict, key: str, default: Optional[str] = None) -> VideoProtocol:
    """The video protocol a config section names (a preset ``name`` and its overrides, ``video_protocol``); a bad
    name or setting is a UserError naming ``key``."""
    settings = dict(settings)
    try:
        return video_protocol(settings.pop("name", default), **settings)
    except (TypeError, ValueError) as error:
        raise UserError(f"config key '{key}': {error}") from None


def final_test_protocol(cfg: TrainConfig) -> Optional[VideoProtocol]:
    """The protocol of ``final_test``; None when the config sets none."""
    if not cfg.final_test.protocol:
        return None
    return protocol_of_section(cfg.final_test.protocol, "final_test.protocol")


def _check_final_test(cfg: TrainConfig) -> None:
    """The final re-test: a 'video' run's, with a valid protocol that scores the clips the model trains on."""
    test = cfg.final_test
    if not isinstance(test.protocol, dict):
        raise UserError(f"config key 'final_test.protocol' must be a dict (a protocol preset and its overrides), got "
                        f"{test.protocol!r}")
    if test.on_error not in ("skip", "fatal"):
        raise UserError(f"config key 'final_test.on_error' must be 'skip' or 'fatal', got {test.on_error!r}")
    if test.batch_size is not None and (not isinstance(test.batch_size, int) or test.batch_size < 1):
        raise UserError(f"config key 'final_test.batch_size' must be a positive integer or None, got "
                        f"{test.batch_size!r}")
    if test.workers is not None and (not isinstance(test.workers, int) or test.workers < 0):
        raise UserError(f"config key 'final_test.workers' must be an integer >= 0 or None, got {test.workers!r}")
    if not isinstance(test.timeout, (int, float)) or test.timeout <= 0:
        raise UserError(f"config key 'final_test.timeout' must be a positive number of seconds, got {test.timeout!r}")
    protocol = final_test_protocol(cfg)
    if protocol is None:
        return
    if cfg.data.dataset != "video":
        raise UserError(f"config key 'final_test.protocol' re-tests video runs (data.dataset='video'), but "
                        f"data.dataset is {cfg.data.dataset!r}")
    trained = protocol_of_section(cfg.data.protocol, "data.protocol", "videomamba_k400")
    for key in ("num_frames", "crop_size", "mean", "std"):
        if getattr(protocol, key) != getattr(trained, key):
            raise UserError(f"config key 'final_test.protocol' gives {key} {getattr(protocol, key)}, the clips the "
                            f"model trains on (data.protocol) {getattr(trained, key)}: set the same {key} in both")


def config_from_dict(values: dict) -> TrainConfig:
    """Build and check a TrainConfig from a plain dict (an mmengine config's ``to_dict()``)."""
    values = {k: v for k, v in values.items() if not k.startswith("_")}  # mmengine bookkeeping such as _base_
    cfg = build_dataclass(TrainConfig, values)
    _check(cfg)
    return cfg


def config_to_dict(cfg: TrainConfig) -> dict:
    """The fully resolved config (every default filled in) as a plain dict."""
    return dataclasses.asdict(cfg)


def load_config(path: str, options: Optional[dict[str, Any]] = None) -> TrainConfig:
    """Read an mmengine config file, apply ``--cfg-options`` overrides, and check every key.

    Args:
        path: Config file (``.py``); its ``_base_`` files are merged first.
        options: Dotted-key overrides, as mmengine's DictAction parses them.
    """
    return config_from_dict(read_config_file(path, options))


def read_config_file(path: str, options: Optional[dict[str, Any]] = None) -> dict:
    """An mmengine config file (its ``_base_`` files merged first) with the ``--cfg-options`` overrides applied, as a
    plain dict; unreadable files and bad overrides raise ``UserError``."""
    from mmengine.config import Config

    try:
        mm_cfg = Config.fromfile(path)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except Exception as error:  # syntax errors and bad _base_ references surface as various types
        raise UserError(f"cannot read config {path}: {error}") from None
    if options:
        try:
            mm_cfg.merge_from_dict(options)
        except Exception as error:  # e.g. a dotted key below a non-dict value
            raise UserError(f"cannot apply --cfg-options {options}: {error}") from None
    return mm_cfg.to_dict()


def key_value_action():
    """The argparse action of ``--cfg-options`` / ``--model-args``: mmengine's ``DictAction`` (KEY=VALUE, lists as
    ``a,b`` or ``[a,b]``, tuples as ``(a,b)``, numbers, booleans, None) that keeps the spaces inside a single value
    (``data.root='/my data'``; mmengine removes them) and says plainly when an argument has no ``=``."""
    from mmengine.config import DictAction

    class KeyValueAction(DictAction):
        def __call__(self, parser, namespace, values, option_string=None):
            options = dict(getattr(namespace, self.dest, None) or {})
            for item in values:
                if "=" not in item:
                    parser.error(f"{option_string} expects KEY=VALUE pairs, got {item!r} (e.g. {item}=VALUE)")
                key, value = item.split("=", maxsplit=1)
                plain = value.strip("'\"")
                single = "," not in plain and not plain.startswith(("[", "(")) and not plain.endswith(("]", ")"))
                options[key] = self._parse_int_float_bool(plain) if single else self._parse_iterable(value)
            setattr(namespace, self.dest, options)

    return KeyValueAction
