# Video quick start, evaluation: score a checkpoint on the generated moving-shapes videos (no download; the 128
# training and 32 validation mp4s, 64x64, 16 frames at 8 fps, are written into data/moving_shapes on first use).
#   python tools/eval_video.py configs/demo/video_quickstart_eval.py --checkpoint work_dirs/video_quickstart/best.pth
# The label is the direction a shape moves (left/right/up/down), so a model that ignores frame order stays near 50%.
model = dict(name='test_videomamba', num_frames=8, embed_dim=64, depth=4, tubelet_size=2)  # must match the model configs/demo/video_quickstart.py trains
data = dict(format='moving_shapes', root='data/moving_shapes', split='val')
# VideoMamba's K400 test sampling at the demo's size: 8 frames x 2 temporal clips x 3 spatial crops of 64 px (on the
# square demo frames the three crops coincide)
protocol = dict(name='videomamba_k400', num_frames=8, num_clips=2, num_crops=3, short_side=64, crop_size=64)
batch_size = 16
workers = 1
timeout = 30.0
cpu_threads = 1
views_file = 'work_dirs/video_quickstart/views_val.pt'
