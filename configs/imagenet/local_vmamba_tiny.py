# LocalVMamba-T (hunto/LocalMamba, configs/strategies/local_mamba/config.yaml + README): 82.7 top-1 published.
# 8 GPUs x 128 = 1024 images per step, AdamW lr 1e-3 (5e-4 per 512), weight decay 0.04, 300 epochs, 20 warm-up epochs
# from 1e-7, cosine per step to 1e-6, no cool-down; RandAugment rand-m9-mstd0.5 (no 'inc1'), Mixup 0.2 + CutMix 1.0
# (switch 0.5), random erasing 0.25 (pixel), label smoothing 0.1, bicubic; drop path 0.1; AMP; no EMA, no clipping.
_base_ = ['../_base_/datasets/imagenet.py', '../_base_/schedules/imagenet_300e.py', '../_base_/default_runtime.py']

model = dict(name='local_vmamba_tiny', drop_path_rate=0.1)
augment = dict(auto_augment='rand-m9-mstd0.5')
mixup = dict(mixup_alpha=0.2, cutmix_alpha=1.0)
batch_size = 128  # per GPU, on 8 GPUs
optimizer = dict(lr_base=5e-4, weight_decay=0.04,
                 # official exclusions: 1-D parameters, biases, no_weight_decay() names; A_log and dt biases decay
                 no_weight_decay=('pos_embed', 'cls_token', '*.D'))
scheduler = dict(on_updates=True, warmup_epochs=20, warmup_lr=1e-7, min_lr=1e-6, cooldown_epochs=0)
