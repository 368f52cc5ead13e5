# VideoMamba-Ti on ImageNet-1k (OpenGVLab/VideoMamba, videomamba/image_sm/exp/videomamba_tiny; DeiT-style main.py):
# 8 GPUs x 512 = 4096 images per step, lr 5e-4 per 512 -> 4e-3; 300 epochs cosine (DeiT: 5 warm-up epochs from 1e-6,
# min lr 1e-5, 10 cool-down), weight decay 0.1, drop path 0, gradient clipping 5.0, AutoAugment 'v0' instead of
# RandAugment, no repeated augmentation, no EMA, bf16 autocast. Mixup / CutMix / label smoothing / random erasing:
# DeiT's.
_base_ = ['../_base_/datasets/imagenet.py', '../_base_/schedules/imagenet_300e.py', '../_base_/default_runtime.py']

model = dict(name='videomamba_tiny_image', drop_path_rate=0.0)
augment = dict(auto_augment='v0')
batch_size = 512  # per GPU, on 8 GPUs
optimizer = dict(lr_base=5e-4, weight_decay=0.1,
                 # official exclusions (timm create_optimizer: 1-D, biases, pos_embed / cls_token); A_log decays
                 no_weight_decay=('pos_embed', 'cls_token', '*.D', '*.conv_bias', '*.dt_proj_bias'))
clip_grad = 5.0
amp = 'bf16'
