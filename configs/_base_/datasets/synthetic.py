# Synthetic images (vssm.data.SyntheticDataset): learnable random classes, no files and no decoding, generated once and
# held on the training device (data.synthetic_on_device; float32, 0.6 GiB per 1024 images at 224 px), so the data is
# never the limit. For smoke tests and training-throughput runs; image size from the model's pretrained cfg or
# data.img_size.
data = dict(dataset='synthetic', num_classes=1000, synthetic_train_size=6400, synthetic_val_size=1024, workers=8)
augment = dict(no_aug=True)
smoothing = 0.1
