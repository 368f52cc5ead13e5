# scikit-learn's handwritten digits (vssm.data.DigitsDataset): 1,348 training and 449 validation images of 10 classes,
# shipped inside scikit-learn (no download). The 8x8 grey images are upsampled to 32x32; digits are not mirror
# symmetric, so no flips; mild crops only (a digit cropped too hard becomes another digit).
data = dict(dataset='digits', digits_size=32, img_size=32, crop_pct=1.0, interpolation='bicubic',
            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), workers=0)
augment = dict(scale=(0.7, 1.0), ratio=(0.8, 1.25), hflip=0.0, color_jitter=0.0, interpolation='bicubic')
