"""The folder nnU-Net's ``nnUNet_extTrainer`` points at (``vssm.seg.nnunet.EXT_TRAINER_FOLDER``): nnU-Net imports its
modules by file name and looks for the trainer class by name."""
