# Synthetic images (vssm.data.SyntheticDataset): learnable random classes, generated per sample, no files and no
# decoding. For smoke tests and training-throughput runs; image size from the model's pretrained cfg or data.img_size.
data = dict(dataset='synthetic', num_classes=1000, synthetic_train_size=25600, synthetic_val_size=1024, workers=8)
augment = dict(no_aug=True)
smoothing = 0.1
