# S4ND-ConvNeXt-3D-T fine-tuned on HMDB-51 (official split 1) from a 2-D ImageNet S4ND-ConvNeXt-T, by the official
# recipe (state-spaces/s4 e757cef: configs/experiment/s4nd/convnext/convnext_timm_tiny_inflate3d_s4nd_hmdb.yaml with the
# README's ConvNeXt-3D-S4ND launch overrides; configs/dataset/hmdb51.yaml; src/dataloaders/vision.py).
# Model: patch stem (2x4x4 tubelets), conv downsampling, 3-D S4ND blocks, 30 frames at 224, drop path 0.2, head dropout
# 0.2; its S4ND kernel parameters train at lr 1e-4 without weight decay (C with it), as the official layer lr follows
# optimizer.lr. Start: model.pretrained_file = a 2-D s4nd_convnext_tiny checkpoint trained with stem_type='patch',
# downsample_type='conv' (no weights are released), inflated on load (vssm.models.s4nd.inflate_2d_to_3d: 2-D kernels
# -> the height / width kernels, conv weights repeated over time, fresh time kernels: the README's _reinit hook is
# passed under a key the official train.py never reads).
# Data: pytorchvideo's HMDB-51 reader of the official 70/30 split files (testTrainMulti_7030_splits), split 1; the
# test split is the validation split. Training: one random 2-s clip per video and epoch (RandomClipSampler), 30 frames
# by linspace, RandAugment 1 layer magnitude 7 (p 0.5, gaussian magnitude std 0.5: timm's rand-m7-n1-mstd0.5 with
# bilinear ops; pytorchvideo's op set lacks SolarizeAdd), short side scaled to 256-320 then a random 224 crop (here the
# same range as a square random-resized crop of 0.367-0.574 of a 4:3 HMDB-51 frame's area), flip 0.5, Kinetics
# mean/std on the 0-255 scale; plain cross-entropy (no smoothing, Mixup or erasing), no EMA.
# 1 GPU x 8 clips x 8 accumulated = 64 per step, AdamW (0.9, 0.999) lr 1e-4 (per 64 clips), weight decay 0.2 (not on
# biases and norms), cosine per epoch to 0 over 50 epochs without warm-up, fp16, seed 1112.
# Validation each epoch: the centre 2-s clip of every test video; the best checkpoint is then re-tested under the full
# S4ND protocol (every consecutive 2-s clip, centre crop, video score = mean of logits: the official
# aggregate_accuracy; final_test -> test_best.json).
#   python tools/train.py configs/video/s4nd_hmdb51_ft.py --cfg-options data.root=/data/hmdb51/videos \
#       data.video.annotation=/data/hmdb51/testTrainMulti_7030_splits model.pretrained_file=s4nd_convnext_2d.pth
# (videos as <root>/<class>/<name>.avi). Re-test any checkpoint the same way with configs/video/s4nd_hmdb51_eval.py.
model = dict(name='s4nd_convnext_tiny_3d', num_frames=30, drop_path_rate=0.2, drop_rate=0.2,
             pretrained_file=None)  # the 2-D ImageNet S4ND-ConvNeXt-T checkpoint, inflated to clips
data = dict(
    dataset='video', root=None, num_classes=51, workers=12, train_split='train', val_split='test',
    video=dict(format='hmdb51', annotation=None, split_id=1),  # annotation: the testTrainMulti_7030_splits folder
    protocol=dict(name='s4nd_hmdb51', num_frames=30, clip_seconds=2.0, short_side=256, crop_size=224),
)
final_test = dict(protocol=dict(name='s4nd_hmdb51', num_frames=30, clip_seconds=2.0, short_side=256, crop_size=224))
augment = dict(auto_augment='rand-m7-n1-mstd0.5', interpolation='bilinear', scale=(0.367, 0.574), ratio=(1.0, 1.0),
               hflip=0.5, re_prob=0.0)
smoothing = 0.0
epochs = 50
batch_size = 8  # clips per GPU, on 1 GPU
grad_accum_steps = 8  # 64 clips per optimizer step
optimizer = dict(opt='adamw', lr_base=1e-4, lr_base_size=64, lr_base_scale='linear', weight_decay=0.2, eps=1e-8,
                 betas=(0.9, 0.999))
scheduler = dict(sched='cosine', on_updates=False, warmup_epochs=0, min_lr=0.0, cooldown_epochs=0)
amp = 'fp16'
seed = 1112
log_interval = 20
