#!/usr/bin/env python
"""Preprocess an nnU-Net raw dataset for configurations of its plans (crop, resample, normalise; one npz per case).

    python tools/preprocess_seg.py RAW_DATASET -p PLANS.json [-c 2d 3d_fullres] [-o OUT_ROOT] [-j WORKERS]

Each configuration's cases go to ``OUT_ROOT/<data_identifier>/`` (``<case>.npz`` + ``<case>.json``; default
``OUT_ROOT``: the plans file's folder, as in nnU-Net's ``nnUNet_preprocessed/<dataset>/``). Cases already done with the
same settings are skipped, so an interrupted run resumes (``vssm.seg.preprocess``). Plans from ``tools/plan_seg.py``
or nnU-Net's own (either layout) are accepted.
"""
import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("raw_dataset", help="nnU-Net raw dataset folder (DatasetXXX_Name)")
    parser.add_argument("-p", "--plans", required=True, help="plans file (nnUNetPlans.json / plans.json)")
    parser.add_argument("-c", "--configurations", nargs="+", help="configurations (default: every one planned)")
    parser.add_argument("-o", "--output-root", help="folder holding one sub-folder per data_identifier (default: the "
                                                    "plans file's folder)")
    parser.add_argument("-j", "--workers", type=int, default=0, help="worker processes (default 0: this process)")
    parser.add_argument("--verify", action="store_true", help="check the raw dataset's integrity first")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from vssm.data.errors import DataError
    from vssm.seg.plans import configuration, configuration_names, load_plans
    from vssm.seg.preprocess import preprocess_dataset

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        plans = load_plans(args.plans)
        root = Path(args.output_root) if args.output_root else Path(plans.source).parent
        for name in args.configurations or configuration_names(plans):
            identifier = configuration(plans, name).data_identifier or f"{plans.get('plans_name', 'plans')}_{name}"
            out_dir = root / identifier
            done = preprocess_dataset(args.raw_dataset, plans, name, out_dir, num_workers=args.workers,
                                      verify=args.verify)
            print(f"{name}: {len(done)} case(s) preprocessed into {out_dir}")
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
