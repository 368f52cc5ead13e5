"""A synthetic image-classification dataset for smoke tests and throughput runs: no files, no decoding.

Sample ``i`` is generated from a generator seeded with ``(seed, i)``: a per-class colour plus Gaussian noise, already a
normalised (C, H, W) float tensor, so a model can learn it (the loss falls) and the data pipeline costs next to
nothing. Transforms are not applied.
"""
import torch
from torch.utils.data import Dataset


class SyntheticDataset(Dataset):
    """``num_samples`` random images of ``num_classes`` learnable classes; label ``i % num_classes``.

    Args:
        num_samples: Length of the dataset.
        num_classes: Number of classes.
        img_size: Side of the square images.
        in_chans: Number of channels.
        seed: Seeds the class colours and every sample; use different seeds for train and validation splits.
        noise: Standard deviation of the per-pixel noise around the class colour.
    """

    def __init__(
            self,
            num_samples: int,
            num_classes: int = 10,
            img_size: int = 224,
            in_chans: int = 3,
            seed: int = 0,
            noise: float = 1.0,
    ):
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.img_shape = (in_chans, img_size, img_size)
        self.seed = seed
        self.noise = noise
        self.class_colours = torch.randn(num_classes, in_chans, 1, 1, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        generator = torch.Generator().manual_seed(self.seed * 1_000_000_007 + index)
        target = index % self.num_classes
        image = self.class_colours[target] + self.noise * torch.randn(self.img_shape, generator=generator)
        return image, target
