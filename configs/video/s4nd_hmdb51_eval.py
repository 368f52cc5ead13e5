# S4ND-ConvNeXt-3D-T on HMDB-51 (split 1) by the S4ND protocol: consecutive 2 s clips covering each video, 30 frames
# each, short side 256, centre crop 224, Kinetics mean/std, video score = mean of the clips' logits.
#   python tools/eval_video.py configs/video/s4nd_hmdb51_eval.py --checkpoint s4nd_3d_hmdb.ckpt \
#       --cfg-options data.root=/data/hmdb51/videos data.annotation=/data/hmdb51/testTrainMulti_7030_splits
model = dict(name='s4nd_convnext_tiny_3d', num_classes=51)
data = dict(format='hmdb51', root=None, annotation=None, split_id=1, split='test', num_classes=51)
protocol = dict(name='s4nd_hmdb51')
batch_size = 4
workers = 8
amp = 'bf16'
