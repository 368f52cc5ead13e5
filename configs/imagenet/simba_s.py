# SiMBA-S (badripatro/simba, README command + main.py): 81.7 top-1 published, trained with Token Labeling (dense targets
# from a teacher; not implemented here, so this recipe uses DeiT's Mixup 0.8 + CutMix 1.0 in its place, as the official
# main.py does without token labeling). 8 GPUs x 128 = 1024 images per step, AdamW lr 1e-3 per 512 -> 2e-3, weight
# decay 0.05 (timm's exclusions: 1-D parameters and biases; A_log is 2-D and decays), cosine per epoch over 310
# epochs, 5 warm-up epochs from 1e-6, min lr 1e-5; main.py's loop then runs 20 'extra' epochs at min lr (330 in all:
# cooldown_epochs = 20 here); drop path 0.1; RandAugment rand-m9-mstd0.5-inc1, colour jitter 0.4, random erasing
# 0.25, label smoothing 0.1, random train interpolation; AMP; no EMA; no clipping.
# simba_s is the released default (MLP channel mixer); --cfg-options model.name=simba_s_einfft for the paper's EinFFT.
_base_ = ['../_base_/datasets/imagenet.py', '../_base_/schedules/imagenet_300e.py', '../_base_/default_runtime.py']

model = dict(name='simba_s', drop_path_rate=0.1)
augment = dict(interpolation='random')
epochs = 310
batch_size = 128  # per GPU, on 8 GPUs
optimizer = dict(lr_base=1e-3, weight_decay=0.05, no_weight_decay=())
scheduler = dict(cooldown_epochs=20)
