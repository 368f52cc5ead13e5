# Video quick start: train a tiny VideoMamba to tell which way a shape moves, on a CPU, with nothing to download.
#   python tools/train.py configs/demo/video_quickstart.py
#   python tools/eval_video.py configs/demo/video_quickstart_eval.py --checkpoint work_dirs/video_quickstart/best.pth
# The first run writes 128 training and 32 validation mp4 clips (64x64, 16 frames, PyAV) into data/moving_shapes;
# decord reads them. The four classes (left, right, up, down) need frame order to tell apart.
# tubelets of 2 frames: the patch embedding sees motion directly (one-frame tubelets learned direction far slower)
model = dict(name='test_videomamba', num_frames=8, embed_dim=64, depth=4, tubelet_size=2)
data = dict(
    dataset='video', root='data/moving_shapes', workers=1,
    video=dict(format='moving_shapes'),  # split 'train' / 'val' come from data.train_split / data.val_split
    # VideoMamba's K400 sampling (T frames, one per segment; a random frame per segment in training) at 64 px
    protocol=dict(name='videomamba_k400', num_frames=8, short_side=64, crop_size=64),
)
augment = dict(scale=(0.6, 1.0), hflip=0.0)  # no flips: a flipped clip moving left moves right
epochs = 40
batch_size = 8
optimizer = dict(opt='adamw', lr=2e-3, weight_decay=0.05)
scheduler = dict(sched='cosine', warmup_epochs=1, warmup_lr=1e-4, min_lr=1e-5)
smoothing = 0.0
log_interval = 5
seed = 0
cpu_threads = 1
