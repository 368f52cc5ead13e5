"""vssm: state-space-model backbones for vision and video, registered in timm.

Importing the package registers every model family with timm (``timm.create_model('vim_tiny_patch16_224')``).
"""
__version__ = "0.1.0"

from . import ops  # noqa: F401  (the scan engine)
from . import models  # noqa: F401  (registers the zoo with timm)
