"""Model families; importing a family module registers its variants with timm."""
from . import simba  # noqa: F401
from . import vmamba  # noqa: F401
from . import plainmamba  # noqa: F401
from . import vim  # noqa: F401
from . import videomamba  # noqa: F401
from . import local_vmamba  # noqa: F401
from . import s4nd  # noqa: F401
