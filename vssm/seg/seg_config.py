"""The segmentation training configuration: every key a ``configs/medical`` file may set, its default and meaning.

Loaded like the image trainer's config (``vssm.engine.config``): an mmengine Python file with ``_base_`` inheritance,
``--cfg-options key=value`` overrides (dotted keys for the sections: ``optimizer.lr=1e-3``), every key declared here
and an undeclared key an error naming it. The defaults are nnU-Net v2's (``nnUNetTrainer``): 1000 epochs of 250
iterations, 50 validation iterations, SGD lr 1e-2 with Nesterov momentum 0.99 and weight decay 3e-5, poly decay with
exponent 0.9 per epoch, gradient-norm clipping at 12, a third of the samples forced to hold foreground, Dice + CE with
deep supervision, the best checkpoint chosen by the EMA of the pseudo Dice.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from vssm.engine.config import build_dataclass, read_config_file
from vssm.engine.errors import UserError
from vssm.ops.mamba_inner import RECOMPUTE_LEVELS

SEG_AMP_DTYPES = (None, "bf16")
CONFIGURATIONS = ("2d", "3d_fullres")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("poly", "cosine")
NONFINITE_POLICIES = ("stop", "skip")
LOSSES = ("dice_ce", "dice_bce")
AUGMENTATIONS = ("nnunet", "flip_rotate", "rot90_flip_rotate")


@dataclass
class SegOptimizerConfig:
    """The optimizer and its learning rate per epoch, set at the start of every epoch: 'poly' ``lr * (1 - epoch /
    epochs) ** poly_exponent`` (nnU-Net's ``PolyLRScheduler``; exponent 0 keeps the rate constant) or 'cosine'
    ``min_lr + (lr - min_lr) * (1 + cos(pi * epoch / t_max)) / 2`` (torch's ``CosineAnnealingLR(T_max=t_max,
    eta_min=min_lr)`` stepped per epoch, as Swin-UMamba and VM-UNet train; past ``t_max`` epochs the rate rises
    again, as torch's does: VM-UNet's ISIC recipe runs 300 epochs with ``t_max`` 50)."""
    name: str = "sgd"  # 'sgd' (torch.optim.SGD) or 'adamw' (torch.optim.AdamW)
    lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99  # (sgd)
    nesterov: bool = True  # (sgd)
    betas: tuple = (0.9, 0.999)  # (adamw)
    eps: float = 1e-8  # (adamw)
    schedule: str = "poly"  # 'poly' or 'cosine'
    poly_exponent: float = 0.9  # ('poly')
    min_lr: float = 0.0  # ('cosine') the rate the decay ends at (torch's eta_min)
    t_max: Optional[int] = None  # ('cosine') epochs from lr down to min_lr (torch's T_max); None: 'epochs'


@dataclass
class SegLossConfig:
    """The training loss (``vssm.seg.losses.SegmentationLoss``), over every deep-supervision output with nnU-Net's
    weights. 'dice_ce': softmax outputs, one per label, soft Dice + cross-entropy (nnU-Net); 'dice_bce': sigmoid
    outputs, soft Dice + binary cross-entropy, for a binary dataset (background and one foreground label: ONE output,
    predictions thresholded at 0.5, as VM-UNet trains ISIC). Region datasets (dataset.json labels that are lists)
    always train sigmoid outputs with Dice + BCE, one per region (nnU-Net)."""
    name: str = "dice_ce"  # 'dice_ce' or 'dice_bce'
    weight_ce: float = 1.0  # weight of the cross-entropy (BCE) term
    weight_dice: float = 1.0  # weight of the Dice term
    smooth: float = 1e-5  # Dice smoothing, added to numerator and denominator (nnU-Net 1e-5; VM-UNet's ISIC Dice 1)
    include_background: bool = False  # softmax Dice scores the background channel too (VM-UNet's Synapse Dice)
    squared: bool = False  # Dice denominators sum(p^2) + sum(g^2) (VM-UNet's Synapse Dice; MONAI's squared_pred)


@dataclass
class SegValidationConfig:
    """The validation after the last epoch: every validation case of the fold predicted whole (sliding window with
    nnU-Net's steps and Gaussian weights, mirroring), reverted to its raw geometry, written to ``work_dir/validation``
    and scored (Dice, normalised surface Dice) into ``validation/summary.json``."""
    enable: bool = True
    step_size: float = 0.5  # window step as a fraction of the patch
    mirror: bool = True  # test-time mirroring over every spatial axis (nnU-Net's default)
    nsd_tolerance: Optional[float] = 2.0  # normalised-surface-Dice tolerance in mm; None: Dice only
    batch_size: int = 1  # windows per forward pass


@dataclass
class SegTrainConfig:
    """A segmentation training run; the sections are the dataclasses above, the rest plain top-level keys."""
    raw: Optional[str] = None  # the nnU-Net raw dataset folder (DatasetXXX_Name with dataset.json, imagesTr, labelsTr)
    plans: Optional[str] = None  # a plans.json (vssm's planner or nnU-Net's own, either layout); None:
    #                              <preprocessed>/nnUNetPlans.json. A path that does not exist yet is planned into
    planner: dict = field(default_factory=dict)  # keyword arguments of vssm.seg.planner.plan_dataset when planning
    #                                               (gpu_memory_gb, num_foreground_voxels, ...)
    builtin: Optional[dict] = None  # a dataset that ships with a package, written once before 'raw' is read:
    #   dict(name='mni152', dim=2, spacing_mm=2) writes the MNI152 tissue dataset (vssm.data.mni152) into raw's parent
    #   folder, and 'raw' must be the folder it writes (e.g. .../Dataset950_MNI152Slices2mm)
    splits: Optional[str] = None  # a splits_final.json (nnU-Net's format) to use instead of
    #                               <preprocessed>/splits_final.json (nnU-Net's random 5 folds, written on first use)
    network: dict = field(default_factory=dict)  # entries replacing the configuration's architecture.arch_kwargs in
    #   the plans (n_stages, features_per_stage, kernel_sizes, strides, n_conv_per_stage, n_conv_per_stage_decoder,
    #   ...): another net size than planned; the work dir's plans.json and the checkpoints hold the result
    preprocessed: Optional[str] = None  # folder of the preprocessed cases, the fingerprint and splits_final.json
    #                                     (share it between folds); None: <work_dir>/preprocessed
    configuration: str = "3d_fullres"  # the plan's configuration: '2d' or '3d_fullres'
    fold: Union[int, str] = 0  # 0-4 of splits_final.json (5 folds, nnU-Net's seed), or 'all' (train and validate on
    #                             every case)
    net: dict = field(default_factory=lambda: dict(name="umamba_bot"))  # name=<vssm.seg.nets.seg_net_names()>, the rest
    #                                                                      keyword arguments of the net's builder
    deep_supervision: bool = True
    epochs: int = 1000
    iterations_per_epoch: Optional[int] = 250  # None: one pass over the training images, ceil(images / batch_size)
    #   (2-D configurations count the slices of 3-D volumes), as a plain data loader's epoch (VM-UNet's recipes)
    val_iterations: Optional[int] = 50  # validation patches' batches per epoch (the pseudo Dice); None: one pass
    batch_size: Optional[int] = None  # the GLOBAL batch (as nnU-Net), split evenly over the processes; None: the plan's
    patch_size: Optional[tuple] = None  # None: the plan's
    oversample_foreground: float = 0.33  # fraction of each global batch (its last samples) forced to hold foreground
    batch_dice: Optional[bool] = None  # Dice over the whole batch; None: the plan's configuration, else True for '2d'
    augment: bool = True  # augmentation of the training patches (False: none)
    augmentation: str = "nnunet"  # which one (2-D recipes besides nnU-Net's):
    #   'nnunet': nnU-Net's spatial and intensity augmentation (vssm.data.seg_patches.nnunet_augmentation);
    #   'flip_rotate': VM-UNet's ISIC augmentation: horizontal and vertical flips (p 0.5 each) and a rotation by an
    #       angle uniform in [0, 360) deg (p 0.5);
    #   'rot90_flip_rotate': VM-UNet's Synapse augmentation (TransUNet's RandomGenerator): with p 0.5 a rotation by
    #       k x 90 deg (k uniform in 0-3) and a flip along a random axis, else with p 0.5 a rotation by up to +-20 deg;
    #       square patches only
    loss: SegLossConfig = field(default_factory=SegLossConfig)
    optimizer: SegOptimizerConfig = field(default_factory=SegOptimizerConfig)
    validation: SegValidationConfig = field(default_factory=SegValidationConfig)
    amp: Optional[str] = None  # None (float32) or 'bf16' autocast
    activation_recompute: Optional[int] = None  # what the Mamba mixers' fused backward recomputes instead of saving
    #   (vssm.ops.mamba_inner): 0 nothing, 1 the conv output and delta (the default), 2 also the scan's chunk states,
    #   3 also the scan's output (the least memory); None: the nets' default
    clip_grad: Optional[float] = 12.0  # gradient-norm clipping threshold; None: off
    workers: int = 2  # data-loading worker processes per rank (0: load in the training process)
    preprocess_workers: int = 0  # processes preprocessing the raw cases on first use
    seed: int = 42
    deterministic: bool = False  # torch.use_deterministic_algorithms (warning about ops without a deterministic kernel)
    device: Optional[str] = None  # None: CUDA (the local rank's GPU) if available, else CPU
    cpu_threads: Optional[int] = None  # intra-op CPU threads per process; None: torch's default
    log_interval: int = 50  # steps between log lines
    freeze_encoder_epochs: int = 0  # nets with freeze_encoder(freeze) (swin_umamba): the encoder, but its patch
    #   embedding, is frozen for this many first epochs (Swin-UMamba's recipe: 10); DDP then allows unused parameters
    init_decoder_from_encoder: bool = False  # nets with init_decoder_from_encoder() (vm_unet): after building the net
    #   (its encoder loaded with pretrained weights), copy the encoder's stage blocks into the mirrored decoder
    #   stages, as VM-UNet's load_from does (a resumed run takes its weights from the checkpoint)
    nonfinite: str = "stop"  # a NaN/Inf training loss: 'stop' the run (one line naming the step), or 'skip' the step
    work_dir: Optional[str] = None  # None: work_dirs/<config file name>; the command line's --work-dir wins


_SECTIONS = {SegTrainConfig: {"loss": SegLossConfig, "optimizer": SegOptimizerConfig,
                               "validation": SegValidationConfig}}


def _positive_int(key: str, value: Any, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"config key '{key}' must be a positive integer{' or None' if allow_none else ''}, got "
                        f"{value!r}")


def check_seg_config(cfg: SegTrainConfig) -> None:
    """Value checks that need no data: each problem raises ``UserError`` naming the key."""
    if not cfg.raw:
        raise UserError("config key 'raw' must name the nnU-Net raw dataset folder (DatasetXXX_Name)")
    if cfg.configuration not in CONFIGURATIONS:
        raise UserError(f"config key 'configuration' must be one of {CONFIGURATIONS}, got {cfg.configuration!r}")
    if not (cfg.fold == "all" or (isinstance(cfg.fold, int) and not isinstance(cfg.fold, bool) and cfg.fold >= 0)):
        raise UserError(f"config key 'fold' must be a fold number 0-4 or 'all', got {cfg.fold!r}")
    for key in ("planner", "network"):
        if not isinstance(getattr(cfg, key), dict):
            raise UserError(f"config key '{key}' must be a dict, got {getattr(cfg, key)!r}")
    if cfg.builtin is not None and not (isinstance(cfg.builtin, dict) and isinstance(cfg.builtin.get("name"), str)):
        raise UserError(f"config key 'builtin' must be None or a dict with a 'name', got {cfg.builtin!r}")
    name = cfg.net.get("name") if isinstance(cfg.net, dict) else None
    if not isinstance(name, str) or not name:
        raise UserError(f"config key 'net.name' must name a segmentation net, got {cfg.net!r}")
    for key in ("epochs", "log_interval"):
        _positive_int(key, getattr(cfg, key))
    _positive_int("iterations_per_epoch", cfg.iterations_per_epoch, allow_none=True)
    _positive_int("val_iterations", cfg.val_iterations, allow_none=True)
    _positive_int("batch_size", cfg.batch_size, allow_none=True)
    _positive_int("cpu_threads", cfg.cpu_threads, allow_none=True)
    _positive_int("validation.batch_size", cfg.validation.batch_size)
    if not isinstance(cfg.workers, int) or cfg.workers < 0:
        raise UserError(f"config key 'workers' must be an integer >= 0, got {cfg.workers!r}")
    if cfg.patch_size is not None and (not all(isinstance(s, int) and s > 0 for s in cfg.patch_size)
                                       or len(cfg.patch_size) not in (2, 3)):
        raise UserError(f"config key 'patch_size' must be 2 or 3 positive integers or None, got {cfg.patch_size!r}")
    if not 0 <= cfg.oversample_foreground <= 1:
        raise UserError(f"config key 'oversample_foreground' must be in [0, 1], got {cfg.oversample_foreground!r}")
    if cfg.amp not in SEG_AMP_DTYPES:
        raise UserError(f"config key 'amp' must be one of {SEG_AMP_DTYPES}, got {cfg.amp!r}")
    if cfg.activation_recompute is not None and cfg.activation_recompute not in RECOMPUTE_LEVELS:
        raise UserError(f"config key 'activation_recompute' must be {', '.join(map(str, RECOMPUTE_LEVELS))} or None, "
                        f"got {cfg.activation_recompute!r}")
    if cfg.optimizer.name not in OPTIMIZERS:
        raise UserError(f"config key 'optimizer.name' must be one of {OPTIMIZERS}, got {cfg.optimizer.name!r}")
    if cfg.optimizer.schedule not in SCHEDULES:
        raise UserError(f"config key 'optimizer.schedule' must be one of {SCHEDULES}, got {cfg.optimizer.schedule!r}")
    _positive_int("optimizer.t_max", cfg.optimizer.t_max, allow_none=True)
    if cfg.optimizer.t_max is not None and cfg.optimizer.schedule != "cosine":
        raise UserError(f"config key 'optimizer.t_max' is the period of the 'cosine' schedule; the schedule is "
                        f"{cfg.optimizer.schedule!r} (set optimizer.schedule='cosine' or t_max=None)")
    if not 0 <= cfg.optimizer.min_lr <= cfg.optimizer.lr:
        raise UserError(f"config key 'optimizer.min_lr' must be in [0, optimizer.lr = {cfg.optimizer.lr!r}], got "
                        f"{cfg.optimizer.min_lr!r}")
    loss = cfg.loss
    if loss.name not in LOSSES:
        raise UserError(f"config key 'loss.name' must be one of {LOSSES}, got {loss.name!r}")
    if not (loss.weight_ce >= 0 and loss.weight_dice >= 0 and loss.weight_ce + loss.weight_dice > 0):
        raise UserError(f"config keys 'loss.weight_ce' and 'loss.weight_dice' must be >= 0 and not both 0, got "
                        f"{loss.weight_ce!r} and {loss.weight_dice!r}")
    if not loss.smooth >= 0:
        raise UserError(f"config key 'loss.smooth' must be >= 0, got {loss.smooth!r}")
    if cfg.augmentation not in AUGMENTATIONS:
        raise UserError(f"config key 'augmentation' must be one of {AUGMENTATIONS}, got {cfg.augmentation!r}")
    if cfg.augmentation != "nnunet" and cfg.configuration != "2d":
        raise UserError(f"config key 'augmentation' {cfg.augmentation!r} is 2-D; configuration is "
                        f"{cfg.configuration!r} (use 'nnunet')")
    if cfg.augmentation == "rot90_flip_rotate" and cfg.patch_size is not None and len(set(cfg.patch_size)) != 1:
        raise UserError(f"config key 'augmentation' 'rot90_flip_rotate' turns patches by 90 deg: patch_size must be "
                        f"square, got {tuple(cfg.patch_size)}")
    if not isinstance(cfg.freeze_encoder_epochs, int) or cfg.freeze_encoder_epochs < 0:
        raise UserError(f"config key 'freeze_encoder_epochs' must be an integer >= 0, got "
                        f"{cfg.freeze_encoder_epochs!r}")
    if not cfg.optimizer.lr > 0 or cfg.optimizer.poly_exponent < 0:
        raise UserError("config keys 'optimizer.lr' must be > 0 and 'optimizer.poly_exponent' >= 0, got "
                        f"{cfg.optimizer.lr!r} and {cfg.optimizer.poly_exponent!r}")
    if cfg.clip_grad is not None and not cfg.clip_grad > 0:
        raise UserError(f"config key 'clip_grad' must be > 0 or None, got {cfg.clip_grad!r}")
    if cfg.nonfinite not in NONFINITE_POLICIES:
        raise UserError(f"config key 'nonfinite' must be one of {NONFINITE_POLICIES}, got {cfg.nonfinite!r}")
    if not 0 < cfg.validation.step_size <= 1:
        raise UserError(f"config key 'validation.step_size' must be in (0, 1], got {cfg.validation.step_size!r}")
    tolerance = cfg.validation.nsd_tolerance
    if tolerance is not None and not tolerance >= 0:
        raise UserError(f"config key 'validation.nsd_tolerance' must be >= 0 (mm) or None, got {tolerance!r}")


def seg_config_from_dict(values: dict) -> SegTrainConfig:
    """Build and check a SegTrainConfig from a plain dict (an mmengine config's ``to_dict()``)."""
    values = {k: v for k, v in values.items() if not k.startswith("_")}  # mmengine bookkeeping such as _base_
    cfg = build_dataclass(SegTrainConfig, values, sections=_SECTIONS)
    check_seg_config(cfg)
    return cfg


def seg_config_to_dict(cfg: SegTrainConfig) -> dict:
    """The fully resolved config (every default filled in) as a plain dict."""
    return dataclasses.asdict(cfg)


def load_seg_config(path: str, options: Optional[dict] = None) -> SegTrainConfig:
    """Read an mmengine config file, apply ``--cfg-options`` overrides, and check every key.

    Args:
        path: Config file (``.py``); its ``_base_`` files are merged first.
        options: Dotted-key overrides, as ``vssm.engine.config.key_value_action`` parses them.
    """
    return seg_config_from_dict(read_config_file(path, options))
