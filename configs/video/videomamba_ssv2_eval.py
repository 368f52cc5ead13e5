# VideoMamba on Something-Something-V2 by the official test protocol: 8 or 16 frames, 2 temporal views (segment
# starts and centres) x 3 spatial crops at 224, never flipped, softmax per view averaged per video. MODEL_ZOO top-1
# (2x3): Ti 66.0, S 67.7, M 68.3 at 16 frames.
#   python tools/eval_video.py configs/video/videomamba_ssv2_eval.py --checkpoint videomamba_s16_ssv2_f16_res224.pth \
#       --cfg-options data.root=/data/ssv2/videos data.annotation=/data/ssv2/validation.json \
#       data.labels=/data/ssv2/something-something-v2-labels.json
# (or data.format='list' with VideoMamba's 'path label' list, space separated)
model = dict(name='videomamba_small', num_frames=16, num_classes=174)
data = dict(format='ssv2', root=None, annotation=None, labels=None, num_classes=174)
protocol = dict(name='videomamba_ssv2', num_frames=16, short_side=224, crop_size=224)
batch_size = 12
workers = 8
amp = 'bf16'
