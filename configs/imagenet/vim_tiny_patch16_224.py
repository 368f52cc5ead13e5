# Vim-Ti (hustvl/Vim, vim/main.py + vim/scripts/pt-vim-t.sh; the DeiT recipe): 76.1 top-1 published.
# 8 GPUs x 128 = 1024 images per step, lr 5e-4 per 512 -> 1e-3; 300 epochs + 10 cool-down, 5 warm-up from 1e-6, min
# lr 1e-5, lr stepped per epoch; weight decay 0.1; drop path 0; RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25,
# Mixup 0.8 + CutMix 1.0, label smoothing 0.1, repeated augmentation (x3, DeiT's RASampler), bicubic; EMA 0.99996;
# float32 (the scripts pass --no_amp); no gradient clipping.
_base_ = ['../_base_/datasets/imagenet.py', '../_base_/schedules/imagenet_300e.py', '../_base_/default_runtime.py']

model = dict(name='vim_tiny_patch16_224', drop_path_rate=0.0)
data = dict(repeated_aug=3)
batch_size = 128  # per GPU, on 8 GPUs
optimizer = dict(lr_base=5e-4, weight_decay=0.1,
                 # official exclusions (timm 0.4 add_weight_decay: 1-D, biases, Vim's no_weight_decay names), in our
                 # parameter names; A_log is 2-D and decays as it did officially
                 no_weight_decay=('pos_embed', 'cls_token', '*.D', '*.conv_bias', '*.dt_proj_bias'))
ema = dict(enable=True, decay=0.99996)
amp = None
