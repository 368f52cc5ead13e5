"""vssm's segmentation nets inside nnU-Net v2: trainers (``vssm.seg.nnunet.trainers``, needs the ``nnunet`` extra)
that nnU-Net (>= 2.8) finds through its ``nnUNet_extTrainer`` environment variable.

Point ``nnUNet_extTrainer`` at ``EXT_TRAINER_FOLDER`` (``python -m vssm.seg.nnunet`` prints the export line); nnU-Net
then resolves ``-tr nnUNetTrainerVssmUMambaBot`` (and the others) for training and for inference. This package
imports no nnunetv2 itself.
"""
from pathlib import Path

from .network import PATCH_SIZE_KEY, build_nnunet_network, nnunet_call_form, record_patch_size, round_up_patch_size

__all__ = [
    "EXT_TRAINER_FOLDER", "PATCH_SIZE_KEY", "build_nnunet_network", "nnunet_call_form", "record_patch_size",
    "round_up_patch_size",
]

# the folder to list in nnUNet_extTrainer: its one module re-exports the trainers
EXT_TRAINER_FOLDER = str(Path(__file__).resolve().parent / "ext_trainers")
