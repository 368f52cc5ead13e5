# VM-UNet's training recipe (github.com/JCruan519/VM-UNet: configs/config_setting.py and config_setting_synapse.py,
# train.py, engine.py, utils.py), shared by configs/medical/vm_unet_*.py: VMamba-S v0 ImageNet weights in an encoder
# of 2 blocks per stage, a decoder of (2, 2, 2, 1) VSS blocks whose blocks are copied from the mirrored encoder stages
# (the official load_from), stochastic depth 0.2, AdamW lr 1e-3 (betas 0.9 / 0.999, eps 1e-8, weight decay 1e-2) with
# torch's CosineAnnealingLR stepped per epoch down to 1e-5 (T_max: per dataset), 300 epochs of one shuffled pass over
# the training images, batch 32, float32, no gradient clipping, no foreground oversampling, one output (no deep
# supervision). The dataset files set the input size, the loss and the augmentation. Every key: vssm/seg/seg_config.py.
# The official split is one train / val list (the val list is its test set): give it as a one-fold splits_final.json,
#   --cfg-options raw=/data/nnUNet_raw/DatasetXXX_Name splits=/data/official_split.json
# NOTE: the official code loads ./pre_trained_weights/vmamba_small_e238_ema.pth; pretrained=True here loads the
# VMamba-S v0 release of timm's 'vmamba_small_v0.in1k' (epoch 238); encoder_kwargs.pretrained_cfg_overlay=dict(file=...)
# loads a local file instead.
configuration = '2d'
fold = 0
net = dict(name='vm_unet', encoder_name='vmamba_small_v0', depths=(2, 2, 2, 1), drop_path_rate=0.2, pretrained=True,
           encoder_kwargs=dict(depths=(2, 2, 2, 2), pretrained_strict=False))
init_decoder_from_encoder = True
deep_supervision = False
epochs = 300
iterations_per_epoch = None  # one pass over the training images per epoch, as the official DataLoader
val_iterations = None
batch_size = 32
oversample_foreground = 0.0
optimizer = dict(name='adamw', lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, schedule='cosine',
                 min_lr=1e-5)
clip_grad = None
amp = None
seed = 42
workers = 8
validation = dict(enable=True, step_size=0.5, mirror=False, nsd_tolerance=2.0)  # the official tests without TTA
