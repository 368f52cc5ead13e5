"""Training and evaluation of timm-registered models from mmengine configs (what ``tools/train.py`` and
``tools/test.py`` call): config schema and loading, seeded data pipeline, DDP/FSDP set-up, the loops, checkpoints."""
from .config import TrainConfig, config_from_dict, config_to_dict, load_config
from .errors import USER_ERRORS, TrainingInterrupted, UserError, one_line
from .trainer import build_model, evaluate, evaluate_checkpoint, train

__all__ = [
    "TrainConfig", "TrainingInterrupted", "USER_ERRORS", "UserError", "build_model", "config_from_dict", "config_to_dict", "evaluate",
    "evaluate_checkpoint", "load_config", "one_line", "train",
]
