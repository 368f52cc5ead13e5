# PlainMamba-L1 (ChenhongyiYang/PlainMamba, plain_mamba_configs/plain_mamba_l1_in1k_300e.py; mmcls): 77.9 top-1
# published. 8 GPUs x 256 = 2048 images per step, AdamW lr 5e-4 per 512 -> 2e-3, weight decay 0.05 (no decay on norms,
# biases, pos_embed, A_log, D, direction tokens: the model's own no_weight_decay()), 300 epochs, 15 warm-up epochs from
# 1e-3 x lr, cosine per iteration to 1e-2 x lr; gradient clipping 5.0; drop path 0.2; RandomResizedCrop bicubic,
# RandAugment (2 ops, m9, std 0.5, increasing), random erasing 0.25, Mixup 0.8 or CutMix 1.0 (each half of the batches),
# label smoothing 0.1; fp16 autocast (bf16 here); no EMA. warmup_lr / min_lr are absolute, for the global batch 2048.
_base_ = ['../_base_/datasets/imagenet.py', '../_base_/schedules/imagenet_300e.py', '../_base_/default_runtime.py']

model = dict(name='plainmamba_l1', drop_path_rate=0.2)
augment = dict(auto_augment='rand-m9-n2-mstd0.5-inc1')
batch_size = 256  # per GPU, on 8 GPUs
optimizer = dict(lr_base=5e-4, weight_decay=0.05)
scheduler = dict(on_updates=True, warmup_epochs=15, warmup_lr=2e-6, min_lr=2e-5, cooldown_epochs=0)
clip_grad = 5.0
