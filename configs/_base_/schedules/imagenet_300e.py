# DeiT's schedule: 300 epochs of AdamW with cosine decay, lr 5e-4 per 512 images scaled linearly to the global batch
# (batch_size x GPUs x grad_accum_steps), 5 warm-up epochs from 1e-6, min lr 1e-5, then 10 cool-down epochs at min lr
# (timm's scheduler default), the lr updated once per epoch. Weight decay skips 1-D parameters, biases and
# model.no_weight_decay() unless a recipe lists its own exclusions in optimizer.no_weight_decay.
epochs = 300
batch_size = 128  # per GPU
optimizer = dict(opt='adamw', lr_base=5e-4, lr_base_size=512, lr_base_scale='linear', weight_decay=0.05, eps=1e-8,
                 betas=(0.9, 0.999))
scheduler = dict(sched='cosine', on_updates=False, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5, cooldown_epochs=10)
