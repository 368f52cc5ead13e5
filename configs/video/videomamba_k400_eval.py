# VideoMamba on Kinetics-400 by the official test protocol: 16 frames, 4 temporal clips x 3 spatial crops at 224
# (VideoMamba's Kinetics_sparse sampling), softmax per view averaged per video. MODEL_ZOO top-1 (4x3): Ti 78.1,
# S 80.8, M 81.9 at 16 frames.
#   python tools/eval_video.py configs/video/videomamba_k400_eval.py --checkpoint videomamba_s16_k400_f16_res224.pth \
#       --cfg-options data.root=/data/k400/val data.annotation=/data/k400/val.csv
# Annotation: UniFormerV2's / VideoMamba's csv ('path,label' lines, K400 labels in alphabetical class order), or the
# raw K400 csv with data.format='kinetics_csv' (label,youtube_id,time_start,time_end,split; files
# <youtube_id>_<start:06d>_<end:06d>.mp4) and data.classes=label_map_k400.txt.
model = dict(name='videomamba_small', num_frames=16, num_classes=400)
data = dict(format='list', root=None, annotation=None, delimiter=',', num_classes=400)
protocol = dict(name='videomamba_k400', num_frames=16, num_clips=4, num_crops=3, short_side=224, crop_size=224)
batch_size = 12
workers = 8
amp = 'bf16'
