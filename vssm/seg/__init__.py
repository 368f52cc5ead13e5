"""Segmentation: sliding-window inference with nnU-Net's rules and nnU-Net-style metrics (U-Mamba nets, heads on zoo
backbones and losses join here)."""
from .metrics import (
    compute_metrics, dice, evaluate_folder, load_summary_json, normalized_surface_dice, summarize, write_summary_json,
)
from .sliding_window import (
    compute_gaussian, compute_steps, pad_to_patch, predict_with_mirroring, sliding_window_inference,
    sliding_window_predict,
)

__all__ = [
    "compute_gaussian", "compute_metrics", "compute_steps", "dice", "evaluate_folder", "load_summary_json",
    "normalized_surface_dice", "pad_to_patch", "predict_with_mirroring", "sliding_window_inference",
    "sliding_window_predict", "summarize", "write_summary_json",
]
