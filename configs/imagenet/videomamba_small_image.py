# VideoMamba-S on ImageNet-1k (videomamba/image_sm/exp/videomamba_small): as VideoMamba-Ti, except weight decay 0.05,
# drop path 0.15, DeiT's RandAugment (rand-m9-mstd0.5-inc1) and no gradient clipping. (M and B were trained by
# self-distillation from a trained S teacher, which this trainer does not implement.)
_base_ = ['./videomamba_tiny_image.py']

model = dict(name='videomamba_small_image', drop_path_rate=0.15)
augment = dict(auto_augment='rand-m9-mstd0.5-inc1')
optimizer = dict(weight_decay=0.05)
clip_grad = None
