# VideoMamba-Ti fine-tuned on Something-Something-V2 from its ImageNet-1k weights (exp/ssv2/videomamba_tiny/
# run_f16x224.sh): the K400 recipe (configs/video/videomamba_tiny_k400_ft.py) with SSv2's sampling (16 frames, one
# random frame per segment of len // 16 frames), NO flips (the labels say left and right), 174 classes, 35 epochs
# (5 warm-up + 30), lr 4e-4 per 256 clips -> 1.6e-3 at 8 GPUs x 64 videos x 2 clips (warm-up / min lr 4e-6); weight
# decay 0.1, drop path 0.1, RandAugment rand-m5-n2-mstd0.25-inc1, random erasing 0.25, Mixup / CutMix, layer decay 0.75
# by the official rule, bf16 as there. MODEL_ZOO top-1, 2 views x 3 crops: 66.0 (f16); f8 65.1.
#   python tools/train.py configs/video/videomamba_tiny_ssv2_ft.py --cfg-options data.root=/data/ssv2/videos \
#       data.video.labels=/data/ssv2/something-something-v2-labels.json \
#       data.video.train.annotation=/data/ssv2/train.json data.video.val.annotation=/data/ssv2/validation.json \
#       model.pretrained_file=videomamba_t16_in1k_res224.pth
# At the end, best.pth is re-tested under the official test protocol, 2 views x 3 crops (final_test:
# work_dirs/videomamba_tiny_ssv2_ft/test_best.json); the same by hand:
#       python tools/eval_video.py configs/video/videomamba_ssv2_eval.py \
#       --checkpoint work_dirs/videomamba_tiny_ssv2_ft/best.pth --cfg-options model.name=videomamba_tiny ...
# VideoMamba's own 'path label' lists (space separated): data.video.format='list' data.video.delimiter=' '.
_base_ = ['./videomamba_tiny_k400_ft.py']

data = dict(
    num_classes=174,
    video=dict(_delete_=True, format='ssv2', labels=None,  # something-something-v2-labels.json
               train=dict(annotation=None), val=dict(annotation=None)),  # train.json, validation.json
    protocol=dict(_delete_=True, name='videomamba_ssv2', num_frames=16, short_side=224, crop_size=224),
)
final_test = dict(protocol=dict(_delete_=True, name='videomamba_ssv2', num_frames=16, short_side=224, crop_size=224))
augment = dict(hflip=0.0)
epochs = 30  # + 5 warm-up epochs = 35
optimizer = dict(lr_base=4e-4)
