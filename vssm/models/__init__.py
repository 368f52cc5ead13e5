"""Model families; importing a family module registers its variants with timm."""
