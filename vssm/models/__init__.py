"""Model families; importing a family module registers its variants with timm."""
from . import plainmamba  # noqa: F401
from . import simba  # noqa: F401
from . import videomamba  # noqa: F401
from . import vim  # noqa: F401
