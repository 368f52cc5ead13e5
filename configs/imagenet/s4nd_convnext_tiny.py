# S4ND-ConvNeXt-T (state-spaces/s4, configs/experiment/s4nd/convnext/convnext_timm_tiny_s4nd_imagenet.yaml + the
# README launch command): 82.2 top-1 published (paper). Global batch 3840 = 8 GPUs x 240 x 2 accumulation steps; AdamW
# (0.9, 0.999) lr 4e-3 at 3840, weight decay 0.05 (officially not on biases and norm weights); the S4 kernel
# parameters keep their own hyper-parameters (the layer's _optim hints, which the trainer's param groups honour): dt, A,
# B, P at lr 1e-3 without weight decay, C at lr 1e-3 with the global decay. timm cosine stepped per epoch: t_initial
# 300, 20 warm-up epochs from 1e-6, min lr 1e-5; 300 epochs (the README overrides the yaml's 310), no cool-down; drop
# path 0.1; RandAugment rand-m9-mstd0.5-inc1, random interpolation, random erasing 0.25 (pixel), Mixup 0.8 + CutMix 1.0,
# label smoothing 0.1, repeated augmentation x3; no EMA; no clipping; seed 1112. Evaluation: bicubic, crop 0.9 (the
# model's pretrained cfg). Differences: fp16 officially, bf16 here (the S4ND core runs in float32 either way); 1-D
# parameters (the layer scale) never decay here (timm's rule), officially they do.
_base_ = ['../_base_/datasets/imagenet.py', '../_base_/schedules/imagenet_300e.py', '../_base_/default_runtime.py']

model = dict(name='s4nd_convnext_tiny', drop_path_rate=0.1)
data = dict(repeated_aug=3)
augment = dict(interpolation='random')
epochs = 300
batch_size = 240  # per GPU, on 8 GPUs
grad_accum_steps = 2
optimizer = dict(lr_base=4e-3, lr_base_size=3840, weight_decay=0.05)
scheduler = dict(on_updates=False, warmup_epochs=20, warmup_lr=1e-6, min_lr=1e-5, cooldown_epochs=0)
seed = 1112
