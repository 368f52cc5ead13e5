"""Short runs of the vssm nnU-Net trainers for the acceptance test (nnU-Net configures trainers by subclassing; the
test lists this folder in ``nnUNet_extTrainer`` beside vssm's own): one epoch of two training and one validation
iteration."""
from vssm.seg.nnunet.trainers import nnUNetTrainerVssmUMambaBot


class nnUNetTrainerVssmUMambaBotShort(nnUNetTrainerVssmUMambaBot):
    def initialize(self):
        if not self.was_initialized:
            self.num_epochs = 1
            self.num_iterations_per_epoch = 2
            self.num_val_iterations_per_epoch = 1
        super().initialize()
