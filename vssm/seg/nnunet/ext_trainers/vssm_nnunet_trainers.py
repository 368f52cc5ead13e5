"""The vssm trainers, re-exported for nnU-Net's trainer lookup (it imports this file as a top-level module from the
folder in ``nnUNet_extTrainer``); they are defined in ``vssm.seg.nnunet.trainers``."""
from vssm.seg.nnunet.trainers import *  # noqa: F401,F403
