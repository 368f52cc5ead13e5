# VM-UNet on Synapse multi-organ CT (8 organs + background), as configs/config_setting_synapse.py trains: 224x224
# inputs, CeDiceLoss with weights [1, 1] (cross-entropy + a softmax Dice over all 9 classes including the background,
# counts summed over the batch, squared denominators, smoothing 1e-5), CosineAnnealingLR T_max 100, TransUNet's
# augmentation (a random 90-deg rotation and flip, or a rotation by up to 20 deg). One-channel CT: the stem sums its
# RGB weights, the same as the official repeat of the channel to 3.
#   python tools/train_seg.py configs/medical/vm_unet_synapse.py \
#       --cfg-options raw=/data/nnUNet_raw/DatasetXXX_Synapse splits=/data/synapse_split.json
# Data: the official trains on TransUNet's preprocessed axial slices (train_npz), each whole slice zoomed to 224x224,
# and tests on whole volumes (test_vol_h5); here 224x224 patches are drawn from the slices of the 2d configuration at
# the planned spacing, as nnU-Net draws them (with the plan's CT normalisation).
_base_ = ['./_base_/vm_unet.py']
patch_size = (224, 224)
loss = dict(name='dice_ce', weight_ce=1.0, weight_dice=1.0, smooth=1e-5, include_background=True, squared=True)
batch_dice = True
augmentation = 'rot90_flip_rotate'
optimizer = dict(t_max=100)
