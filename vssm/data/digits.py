"""scikit-learn's handwritten digits as an image-classification dataset that needs no download.

The 1,797 images (8x8 grey, 16 intensity levels, classes 0-9; the UCI "Optical Recognition of Handwritten Digits"
test set) ship inside scikit-learn. They are upsampled once to ``size`` pixels so that crop augmentation works at a
useful resolution, and served as RGB PIL images, like any image folder.
"""
import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .errors import DataError

_VAL_FRACTION = 0.25
_SPLIT_SEED = 0


class DigitsDataset(Dataset):
    """The digits, split once and for all into 1,348 training and 449 validation images (a seeded permutation).

    Args:
        split: 'train' or 'val'.
        size: Side of the upsampled square images, in pixels.
        transform: Applied to the PIL image.
    """
    num_classes = 10

    def __init__(self, split: str = "train", size: int = 32, transform=None):
        if split not in ("train", "val"):
            raise DataError(f"digits has the splits 'train' and 'val', not {split!r}")
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise DataError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
        digits = load_digits()
        order = np.random.default_rng(_SPLIT_SEED).permutation(len(digits.target))
        num_val = round(_VAL_FRACTION * len(order))
        chosen = order[:num_val] if split == "val" else order[num_val:]
        grey = (digits.images[chosen] * (255 / 16)).round().astype(np.uint8)  # (N, 8, 8), 0..16 -> 0..255
        self.images = [Image.fromarray(image).resize((size, size), Image.BICUBIC).convert("RGB") for image in grey]
        self.targets = digits.target[chosen].tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]
