"""``python -m vssm.seg.nnunet``: print the shell line that lets nnU-Net find the vssm trainers, e.g.
``eval "$(python -m vssm.seg.nnunet)"``; warns on stderr when the installed nnunetv2 cannot use it."""
import importlib.metadata
import os
import sys

from . import EXT_TRAINER_FOLDER


def main() -> int:
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    folders = current if EXT_TRAINER_FOLDER in current else current + [EXT_TRAINER_FOLDER]
    print(f"export nnUNet_extTrainer={os.pathsep.join(folders)}")
    try:
        version = importlib.metadata.version("nnunetv2")
    except importlib.metadata.PackageNotFoundError:
        print("vssm.seg.nnunet: nnunetv2 is not installed here (pip install 'vssm[nnunet]')", file=sys.stderr)
        return 0
    major_minor = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if major_minor < (2, 8):
        print(f"vssm.seg.nnunet: nnunetv2 {version} does not read nnUNet_extTrainer (added in 2.8.0); upgrade it",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
