"""Segmentation: sliding-window inference with nnU-Net's rules and nnU-Net-style metrics (U-Mamba nets, heads on zoo
backbones and losses join here)."""
from .metrics import (
    compute_metrics, dice, evaluate_folder, load_summary_json, normalized_surface_dice, summarize, write_summary_json,
)
from .sliding_window import (
    compute_gaussian, compute_steps, pad_to_patch, predict_with_mirroring, sliding_window_inference,
    sliding_window_predict,
)
from .nets import build_seg_net, register_seg_net, seg_net_names
from .plans import (
    MissingPlansKeyError, NetworkPlan, Plans, PlansError, PlansFileError, PlansFormatError, SegConfiguration,
    UnknownConfigurationError, configuration, configuration_names, load_plans,
)
from .umamba import UMambaBot, UMambaEnc, convert_official_state_dict
from .heads import SemanticFPN, UPerNet
from .swin_umamba import SwinUMamba
from .vm_unet import VMUNet
from .zoo_encoder import ZooEncoder
from . import zoo_nets  # noqa: F401  (registers vm_unet, swin_umamba, upernet, fpn)
from .planner import PlanningError, fingerprint_dataset, plan_dataset
from .preprocess import PreprocessingError, load_preprocessed_case, preprocess_dataset

__all__ = [
    "compute_gaussian", "compute_metrics", "compute_steps", "dice", "evaluate_folder", "load_summary_json",
    "normalized_surface_dice", "pad_to_patch", "predict_with_mirroring", "sliding_window_inference",
    "sliding_window_predict", "summarize", "write_summary_json",
]
__all__ += [  # U-Mamba nets, the net registry and nnU-Net plans
    "MissingPlansKeyError", "NetworkPlan", "Plans", "PlansError", "PlansFileError", "PlansFormatError",
    "SegConfiguration", "UMambaBot", "UMambaEnc", "UnknownConfigurationError", "build_seg_net", "configuration",
    "configuration_names", "convert_official_state_dict", "load_plans", "register_seg_net", "seg_net_names",
]
__all__ += [  # zoo encoders and the nets on them
    "SemanticFPN", "SwinUMamba", "UPerNet", "VMUNet", "ZooEncoder",
]
__all__ += [  # the planner and the preprocessing
    "PlanningError", "PreprocessingError", "fingerprint_dataset", "load_preprocessed_case", "plan_dataset",
    "preprocess_dataset",
]
