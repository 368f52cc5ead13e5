# VideoMamba-Ti fine-tuned on Kinetics-400 from its ImageNet-1k weights, by the official recipe (OpenGVLab/VideoMamba
# f3427e4: videomamba/video_sm/exp/k400/videomamba_tiny/run_f16x224.sh and run_class_finetuning.py's defaults).
# 16 frames, one random frame per segment (sparse sampling: no sampling rate), 224 px, tubelets of 1 frame. 8 GPUs x 64
# videos, each decoded once and augmented twice (data.num_sample=2, repeated sampling) = 1024 clips per step. AdamW
# (0.9, 0.999), eps 1e-8; lr 2e-4 per 256 clips -> 8e-4 (the official lr x batch x num_sample / 256), warm-up from and
# cosine down to 1e-6 per 256 clips -> 4e-6 (absolute here: they assume the recipe's 8 GPUs), stepped per update;
# 5 warm-up epochs, then 65 of cosine (70 in all: epochs counts the decay after the warm-up prefix). Weight decay 0.1,
# not on 1-D parameters, biases, pos_embed, cls_token, temporal_pos_embedding (A_log decays, as officially). Drop path
# 0.1. RandAugment rand-m5-n2-mstd0.25-inc1 (bicubic; one draw per clip), random-resized crop (0.08-1, 3/4-4/3) and
# flip shared by the frames, random erasing 0.25 'pixel' (one box per clip, as the official RandomErasing(cube=True));
# Mixup 0.8 + CutMix 1.0 on whole clips, label smoothing 0.1; bf16. Validation each epoch: 1 clip, centre crop.
# Layer decay 0.75 by the official rule (optimizer.layer_decay_rule='videomamba_official'): its name matching misses
# the blocks, so only cls_token, pos_embed and patch_embed are scaled (0.75 ** 25) and every block trains at the full
# lr: how the released models were trained. optimizer.layer_decay_rule='timm' decays block by block instead (the
# maintainers report it does not help VideoMamba-M).
# MODEL_ZOO top-1, 4 clips x 3 crops: 78.1 (f16); f8: 76.9 (model.num_frames=8 data.protocol.num_frames=8
# final_test.protocol.num_frames=8).
#   python tools/train.py configs/video/videomamba_tiny_k400_ft.py --cfg-options data.root=/data/k400 \
#       data.video.train.annotation=/data/k400/train.csv data.video.val.annotation=/data/k400/val.csv \
#       model.pretrained_file=videomamba_t16_in1k_res224.pth
#   torchrun --nproc_per_node 8 tools/train.py ...   (the recipe's 8 GPUs)
# At the end, best.pth is re-tested under the official test protocol, 4 clips x 3 crops (final_test; the result in
# work_dirs/videomamba_tiny_k400_ft/test_best.json); the same by hand:
#   python tools/eval_video.py configs/video/videomamba_k400_eval.py \
#       --checkpoint work_dirs/videomamba_tiny_k400_ft/best.pth --cfg-options model.name=videomamba_tiny \
#       data.root=/data/k400 data.annotation=/data/k400/val.csv
# Annotation: VideoMamba's / UniFormerV2's csv ('path,label', K400 ids in alphabetical class order); the raw K400 csv
# works with data.video.format='kinetics_csv' (see configs/video/videomamba_k400_eval.py).
model = dict(name='videomamba_tiny', num_frames=16, drop_path_rate=0.1,
             pretrained_file=None)  # the ImageNet-1k checkpoint (videomamba_t16_in1k_res224.pth), inflated to clips
data = dict(
    dataset='video', root=None, num_classes=400, workers=12, num_sample=2,
    video=dict(format='list', delimiter=',', num_classes=400,
               train=dict(annotation=None), val=dict(annotation=None)),  # train.csv, val.csv
    protocol=dict(name='videomamba_k400', num_frames=16, num_clips=4, num_crops=3, short_side=224, crop_size=224),
)
augment = dict(auto_augment='rand-m5-n2-mstd0.25-inc1', interpolation='bicubic', scale=(0.08, 1.0),
               ratio=(3 / 4, 4 / 3), hflip=0.5, re_prob=0.25, re_mode='pixel', re_count=1)
final_test = dict(protocol=dict(name='videomamba_k400', num_frames=16, num_clips=4, num_crops=3, short_side=224,
                                crop_size=224))  # validation during training: 1 clip, centre crop
mixup = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch')
smoothing = 0.1
epochs = 65  # + 5 warm-up epochs = 70
batch_size = 64  # videos per GPU (x num_sample clips), on 8 GPUs
optimizer = dict(opt='adamw', lr_base=2e-4, lr_base_size=256, lr_base_scale='linear', weight_decay=0.1, eps=1e-8,
                 betas=(0.9, 0.999), layer_decay=0.75, layer_decay_rule='videomamba_official',
                 no_weight_decay=('pos_embed', 'cls_token', 'temporal_pos_embedding', '*.D', '*.conv_bias',
                                  '*.dt_proj_bias'))
scheduler = dict(sched='cosine', on_updates=True, warmup_epochs=5, warmup_prefix=True, warmup_lr=4e-6, min_lr=4e-6,
                 cooldown_epochs=0)
amp = 'bf16'
activation_recompute = 2  # the Mamba mixers' backward recomputes their conv output, delta and scan states (a quarter
#   of their activations kept): with everything kept, the recipe's 128 clips per GPU ran out of memory on an 80 GB H100
#   (BENCHMARKS.md); 1 (the models' default) is faster where memory allows
seed = 0
log_interval = 50
