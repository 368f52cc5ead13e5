# Swin-UMamba fine-tuning on an nnU-Net raw dataset, nnU-Net's '2d' configuration, as the official
# nnUNetTrainerSwinUMamba trains (github.com/JiarunLiu/Swin-UMamba, swin_umamba/nnunetv2/training/nnUNetTrainer/
# nnUNetTrainerSwinUMamba.py): nnU-Net's defaults (_base_/nnunet_trainer.py: 1000 epochs of 250 iterations, Dice + CE,
# gradient clipping at 12, nnU-Net's augmentation) with the ImageNet VMamba-T v0 encoder (stochastic depth 0.2),
# UNETR decoder blocks, deep supervision at 4 scales, AdamW lr 1e-4 (betas 0.9 / 0.999, eps 1e-5, weight decay 0.05)
# with a cosine decay to 1e-6 over the epochs (torch's CosineAnnealingLR, T_max = epochs), the encoder but its patch
# embedding frozen for the first 10 epochs.
#   python tools/train_seg.py configs/medical/swin_umamba_2d.py --cfg-options raw=/data/nnUNet_raw/Dataset702_AbdomenMR
# The official scripts train on fold 'all' and predict imagesTs without test-time mirroring from an intermediate
# checkpoint of the 1000-epoch schedule (checkpoint_99.pth AbdomenMR, _249 Endovis17, _349 NeurIPSCell): that schedule
# up to epoch 100 is --cfg-options epochs=100 optimizer.t_max=1000; then
#   python tools/predict_seg.py -i imagesTs -o predictions -m work_dirs/swin_umamba_2d --disable-tta
# The patch is the plan's; set patch_size to multiples of 32 if the plan's is not.
_base_ = ['./_base_/nnunet_trainer.py']
configuration = '2d'
fold = 'all'
net = dict(name='swin_umamba', encoder_name='vmamba_tiny_v0', pretrained=True, drop_path_rate=0.2)
deep_supervision = True
freeze_encoder_epochs = 10
optimizer = dict(_delete_=True, name='adamw', lr=1e-4, betas=(0.9, 0.999), eps=1e-5, weight_decay=0.05,
                 schedule='cosine', min_lr=1e-6)
validation = dict(enable=False)  # fold 'all' has no held-out case: score imagesTs with tools/predict_seg.py
