# VM-UNet on ISIC 2017 / 2018 skin-lesion images (binary: background, lesion), as configs/config_setting.py trains:
# 256x256 inputs, BceDiceLoss(wb=1, wd=1) on the one sigmoid output (BCE over every pixel + 1 - Dice per image with
# smoothing 1, thresholded at 0.5), CosineAnnealingLR T_max 50 (over 300 epochs the rate falls and rises three times),
# flips and a rotation in [0, 360) deg.
# Data: the official resizes every image and mask to 256x256 before the net (myResize); write the nnU-Net raw dataset
# from the official 7:3 split with images and masks already resized to 256x256 (RGB PNG, channel_names R, G, B; masks
# 0 / 1), so that a 256x256 patch is the whole image. Normalisation differs: nnU-Net's per-image z-score per channel
# here, the official dataset mean / std followed by a per-image min-max to [0, 255].
_base_ = ['./vm_unet.py']
patch_size = (256, 256)
loss = dict(name='dice_bce', weight_ce=1.0, weight_dice=1.0, smooth=1.0)
batch_dice = False  # the Dice of each image, averaged
augmentation = 'flip_rotate'
optimizer = dict(t_max=50)
