# U-Mamba_Bot (a Mamba layer at the bottleneck), nnU-Net's '2d' configuration, trained as U-Mamba's
# nnUNetTrainerUMambaBot trains (nnU-Net's defaults, _base_/nnunet_trainer.py):
#   python tools/train_seg.py configs/medical/umamba_bot_2d.py --cfg-options raw=/data/DatasetXXX_Name fold=0
_base_ = ['./_base_/nnunet_trainer.py']
configuration = '2d'
net = dict(name='umamba_bot')
