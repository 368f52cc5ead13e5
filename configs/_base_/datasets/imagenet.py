# ImageNet-1k as an image folder: <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG (1000 classes; the
# validation images sorted into class folders). DeiT's augmentation, the starting point of every zoo recipe; evaluation
# resize / crop / interpolation / mean / std come from the model's pretrained cfg.
data = dict(dataset='imagefolder', root='data/imagenet', train_split='train', val_split='val', num_classes=1000,
            workers=8)
augment = dict(scale=(0.08, 1.0), hflip=0.5, color_jitter=0.4, auto_augment='rand-m9-mstd0.5-inc1',
               interpolation='bicubic', re_prob=0.25, re_mode='pixel', re_count=1)
mixup = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch')
smoothing = 0.1
