#!/usr/bin/env python
"""Train a segmentation net (U-Mamba or any registered one) on an nnU-Net raw dataset, as nnU-Net trains.

    python tools/train_seg.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--overwrite] [--cfg-options KEY=VALUE ...]
    torchrun --nproc_per_node N tools/train_seg.py CONFIG ...    # DDP: NCCL on GPUs, gloo on CPU

Every key is documented in vssm/seg/seg_config.py (configs/medical/ holds recipes). The raw dataset is checked before
anything runs, planned when the plans file is missing, and preprocessed on first use. Outputs in the work dir (default:
the config's work_dir, else work_dirs/<config name>): config.py, train.log, summary.csv, progress.png,
checkpoint_latest.pth / checkpoint_best.pth / checkpoint_final.pth, plans.json, dataset.json, and validation/
(predictions of the fold's validation cases and their summary.json). SIGTERM or Ctrl-C ends the current step, writes a
resumable checkpoint_latest.pth (mid-epoch; --resume then ends where an uninterrupted run ends) and exits with 128 +
the signal's number.
"""
import argparse
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    from vssm.engine.config import key_value_action

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="mmengine config file (configs/medical/...)")
    parser.add_argument("--work-dir", help="output folder (default: the config's work_dir, else work_dirs/<name>)")
    parser.add_argument("--resume", nargs="?", const="auto", metavar="CKPT",
                        help="continue from CKPT, or from the work dir's checkpoint_latest.pth when no path is given")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the outputs of an earlier run in the work dir (preprocessed data are kept)")
    parser.add_argument("--cfg-options", nargs="+", action=key_value_action(), default={}, metavar="KEY=VALUE",
                        help="override config keys, e.g. fold=1 epochs=100 optimizer.lr=1e-3 raw=/data/Dataset001_X")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from vssm.data.nnunet_raw import DatasetValidationError
    from vssm.engine import USER_ERRORS, TrainingInterrupted, one_line
    from vssm.seg.seg_config import load_seg_config
    from vssm.seg.training import train_seg

    try:
        cfg = load_seg_config(args.config, args.cfg_options)
        name = os.path.splitext(os.path.basename(args.config))[0]
        work_dir = args.work_dir or cfg.work_dir or os.path.join("work_dirs", name)
        train_seg(cfg, work_dir, resume=args.resume, overwrite=args.overwrite)
    except USER_ERRORS as error:
        # the dataset check lists every problem it found, one per line; other errors are one line
        print(f"error: {error if isinstance(error, DatasetValidationError) else one_line(error)}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:  # SIGTERM / SIGINT: a resumable checkpoint was written
        print(str(stop), file=sys.stderr)
        return 128 + stop.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
