"""``python nnunet_command.py NAME ARGS...``: run nnU-Net's console command NAME (an ``nnunetv2`` console-scripts entry
point, e.g. ``nnUNetv2_plan_and_preprocess``) in this process with ARGS, unchanged except for one number: the dataset
fingerprint samples ``FOREGROUND_SAMPLES`` foreground intensities in total instead of nnU-Net's 1e8 (only CT
normalisation reads them; 1e8 samples take minutes and gigabytes on a small CPU)."""
import sys
from importlib.metadata import entry_points

FOREGROUND_SAMPLES = 100_000


def main() -> int:
    if len(sys.argv) < 2:
        raise SystemExit(f"usage: {sys.argv[0]} NNUNET_COMMAND [ARGS...]")
    name = sys.argv[1]
    matches = [point for point in entry_points(group="console_scripts") if point.name == name]
    if not matches:
        raise SystemExit(f"{name}: not an installed console command")
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

    nnunet_init = DatasetFingerprintExtractor.__init__

    def init_with_fewer_samples(self, *args, **kwargs):
        nnunet_init(self, *args, **kwargs)
        self.num_foreground_voxels_for_intensitystats = FOREGROUND_SAMPLES

    DatasetFingerprintExtractor.__init__ = init_with_fewer_samples
    sys.argv = [name] + sys.argv[2:]
    return matches[0].load()()


if __name__ == "__main__":
    sys.exit(main())
