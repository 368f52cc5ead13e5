# U-Mamba_Enc (Mamba layers after every other encoder stage), nnU-Net's '2d' configuration, trained as U-Mamba's
# nnUNetTrainerUMambaEnc trains (nnU-Net's defaults, _base_/nnunet_trainer.py):
#   python tools/train_seg.py configs/medical/umamba_enc_2d.py --cfg-options raw=/data/DatasetXXX_Name fold=0
_base_ = ['./_base_/nnunet_trainer.py']
configuration = '2d'
net = dict(name='umamba_enc')
