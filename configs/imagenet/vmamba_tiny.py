# VMamba-T [s1l8] (MzeroMiko/VMamba, classification/config.py defaults + configs/vssm/vmambav2v_tiny_224.yaml; the Swin
# recipe): 82.6 top-1 published. 8 GPUs x 128 = 1024 images per step; AdamW lr 5e-4 per 512 -> 1e-3, warm-up and min lr
# (5e-7 and 5e-6 per 512) -> 1e-6 and 1e-5 at 1024; 20 warm-up epochs, cosine stepped per iteration, 300 epochs, no
# cool-down; weight decay 0.05; gradient clipping 5.0; drop path 0.2; RandAugment rand-m9-mstd0.5-inc1, colour jitter
# 0.4, Mixup 0.8 + CutMix 1.0 (switch 0.5), random erasing 0.25 (pixel), label smoothing 0.1, bicubic; EMA 0.9999; AMP.
# The lr values are for a global batch of 1024: lr scales linearly with it, warmup_lr / min_lr are absolute.
_base_ = ['../_base_/datasets/imagenet.py', '../_base_/schedules/imagenet_300e.py', '../_base_/default_runtime.py']

model = dict(name='vmamba_tiny', drop_path_rate=0.2)
batch_size = 128  # per GPU, on 8 GPUs
optimizer = dict(lr_base=5e-4, weight_decay=0.05,
                 # official exclusions: 1-D parameters, biases, absolute_pos_embed; A_log and the dt bias decay
                 no_weight_decay=('*pos_embed*', '*.D'))
scheduler = dict(on_updates=True, warmup_epochs=20, warmup_lr=1e-6, min_lr=1e-5, cooldown_epochs=0)
clip_grad = 5.0
ema = dict(enable=True, decay=0.9999)
