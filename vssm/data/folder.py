"""An image folder (``root/<class>/<image>``) read through timm's folder reader, strict about corrupt files.

timm's ``ImageDataset`` logs a warning and silently substitutes the next sample when an image fails to decode, which
changes what a run trains on without failing it. ``StrictImageFolder`` raises a ``DataError`` naming the file.
"""
import os
from typing import Optional

from PIL import Image
from timm.data import ImageDataset

from .errors import DataError


class StrictImageFolder(ImageDataset):
    """timm's image-folder dataset; a file that cannot be decoded raises ``DataError`` with its path.

    Args:
        root: The split folder, holding one sub-folder per class.
        class_map: Class-name -> index mapping (pass the training split's to a validation split, so that indices agree
            even if a class is missing there; a class folder outside it is an error); None: sorted sub-folder names.
            Class folders without an image are listed in ``empty_classes``.
        transform: Applied to the PIL image.
    """

    def __init__(self, root: str, class_map: Optional[dict] = None, transform=None):
        if not os.path.isdir(root):
            raise DataError(f"data directory not found: {root}")
        if class_map:  # timm's reader drops the images of classes outside the map without a word
            unknown = sorted(name for name in _class_folders(root) if name not in class_map)
            if unknown:
                raise DataError(f"{root} has class folder(s) that the training split lacks: {', '.join(unknown)} "
                                f"(their images cannot be scored; the training classes are {', '.join(class_map)})")
        try:
            super().__init__(root, class_map=class_map or "", transform=transform)
        except RuntimeError:  # timm's folder reader found no image
            raise DataError(f"no images found in {root} (expected {root}/<class>/<image>)") from None
        self.empty_classes = sorted(set(_class_folders(root)) - set(self.class_to_idx))  # folders without an image

    @property
    def class_to_idx(self) -> dict:
        """Class-name -> index mapping of the folder reader."""
        return self.reader.class_to_idx

    def __getitem__(self, index: int):
        file, target = self.reader[index]
        try:
            with file, Image.open(file) as image:
                image = image.convert(self.input_img_mode)  # decodes the pixels, so truncated files fail here
        except (OSError, ValueError) as error:  # PIL raises UnidentifiedImageError (an OSError) or ValueError
            raise DataError(f"corrupt image {self.filename(index, absolute=True)}: {error}") from None
        if self.transform is not None:
            image = self.transform(image)
        return image, target


def _class_folders(root: str) -> list[str]:
    """The class sub-folders of a split folder (hidden ones skipped)."""
    return [entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith(".")]
