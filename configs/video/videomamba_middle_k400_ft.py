# VideoMamba-M fine-tuned on Kinetics-400 from its ImageNet-1k weights (exp/k400/videomamba_middle/run_f16x224.sh):
# VideoMamba-Ti's recipe (configs/video/videomamba_tiny_k400_ft.py) with 16 GPUs x 16 videos x 2 clips = 512 clips per
# step (lr 1e-4 per 256 -> 2e-4, warm-up / min lr 1e-6 per 256 -> 2e-6), 50 epochs (5 warm-up + 45), drop path 0.8,
# weight decay 0.05 and the default RandAugment rand-m7-n4-mstd0.5-inc1. MODEL_ZOO top-1 (4x3): 81.9 (f16); f8 80.6
# (whose script uses 16 x 32 videos and lr 2e-4 per 256).
#   model.pretrained_file=videomamba_m16_in1k_res224.pth; torchrun --nproc_per_node 8 on 2 nodes for the recipe
_base_ = ['./videomamba_tiny_k400_ft.py']

model = dict(name='videomamba_middle', drop_path_rate=0.8)
augment = dict(auto_augment='rand-m7-n4-mstd0.5-inc1')
epochs = 45  # + 5 warm-up epochs = 50
batch_size = 16  # videos per GPU (x num_sample clips), on 16 GPUs
optimizer = dict(lr_base=1e-4, weight_decay=0.05)
scheduler = dict(warmup_lr=2e-6, min_lr=2e-6)
