#!/usr/bin/env python
"""Fingerprint an nnU-Net raw dataset and write its plans (nnU-Net v2's plans.json, '2d' and '3d_fullres').

    python tools/plan_seg.py RAW_DATASET [-o PLANS.json] [--gpu-memory-gb 8] [-c 2d 3d_fullres] [--no-verify]

RAW_DATASET is a folder in nnU-Net's raw format (``DatasetXXX_Name`` with ``dataset.json``, ``imagesTr``,
``labelsTr``). The dataset is validated first (every problem listed by file), then fingerprinted (spacings, shapes
after cropping, foreground intensity statistics) and planned with nnU-Net's ExperimentPlanner rules
(``vssm.seg.planner``). The plans go to ``-o`` (default: ``$nnUNet_preprocessed/<dataset>/nnUNetPlans.json``, or
``./nnUNet_preprocessed/<dataset>/nnUNetPlans.json`` without that variable); ``dataset_fingerprint.json`` and a copy
of ``dataset.json`` are written beside it, as nnU-Net lays out its preprocessed folder. Next step:
``tools/preprocess_seg.py``.
"""
import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def default_plans_path(raw_dataset: str) -> Path:
    """``$nnUNet_preprocessed/<dataset>/nnUNetPlans.json`` (``./nnUNet_preprocessed`` when the variable is unset)."""
    root = Path(os.environ.get("nnUNet_preprocessed") or "nnUNet_preprocessed")
    return root / Path(raw_dataset).resolve().name / "nnUNetPlans.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("raw_dataset", help="nnU-Net raw dataset folder (DatasetXXX_Name)")
    parser.add_argument("-o", "--output", help="plans file to write (default: see the module docstring)")
    parser.add_argument("--gpu-memory-gb", type=float, default=8.0, help="GPU memory budget per process (default 8)")
    parser.add_argument("-c", "--configurations", nargs="+", default=["2d", "3d_fullres"],
                        choices=["2d", "3d_fullres"], help="configurations to plan (default: both)")
    parser.add_argument("--no-verify", action="store_true", help="skip the dataset integrity check")
    parser.add_argument("--foreground-samples", type=float, default=10e7,
                        help="foreground intensities sampled for the statistics (default 1e8, as nnU-Net)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from vssm.data.errors import DataError
    from vssm.seg.planner import configuration_summary, plan_dataset

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    output = Path(args.output) if args.output else default_plans_path(args.raw_dataset)
    try:
        plans = plan_dataset(args.raw_dataset, output, gpu_memory_gb=args.gpu_memory_gb,
                             configurations=args.configurations, verify=not args.no_verify,
                             num_foreground_voxels=args.foreground_samples)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {output} (and dataset_fingerprint.json, dataset.json beside it)")
    print(f"transpose_forward {plans['transpose_forward']}")
    for name, line in configuration_summary(plans).items():
        print(f"{name}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
