"""Model families; importing a family module registers its variants with timm."""
from . import vim  # noqa: F401
from . import videomamba  # noqa: F401
