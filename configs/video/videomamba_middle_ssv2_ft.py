# VideoMamba-M fine-tuned on Something-Something-V2 (exp/ssv2/videomamba_middle/run_f16x224.sh): the Ti SSv2 recipe
# (configs/video/videomamba_tiny_ssv2_ft.py) with 16 GPUs x 16 videos x 2 clips (lr 4e-4 per 256 -> 8e-4, warm-up /
# min lr 2e-6), 30 epochs (5 warm-up + 25), drop path 0.8, weight decay 0.05, RandAugment rand-m7-n4-mstd0.5-inc1.
# MODEL_ZOO top-1 (2x3): 68.3 (f16); f8 67.3 (16 GPUs x 32 videos).
#   model.pretrained_file=videomamba_m16_in1k_res224.pth
_base_ = ['./videomamba_tiny_ssv2_ft.py']

model = dict(name='videomamba_middle', drop_path_rate=0.8)
augment = dict(auto_augment='rand-m7-n4-mstd0.5-inc1')
epochs = 25  # + 5 warm-up epochs = 30
batch_size = 16  # videos per GPU (x num_sample clips), on 16 GPUs
optimizer = dict(lr_base=4e-4, weight_decay=0.05)
scheduler = dict(warmup_lr=2e-6, min_lr=2e-6)
