#!/usr/bin/env python
"""Train a timm-registered model (any vssm zoo model included) from an mmengine config.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--overwrite] [--trust-checkpoint]
                          [--cfg-options KEY=VALUE ...]
    torchrun --nproc_per_node N tools/train.py CONFIG ...    # DDP: NCCL on GPUs, gloo on CPU; fsdp=True for FSDP2

Multi-node: torchrun's own rendezvous flags (--nnodes, --node_rank, --rdzv_endpoint, ...). Every key is documented in
vssm/engine/config.py. Outputs in the work dir (default work_dirs/<config name>): config.py (resolved), train.log,
summary.csv, curves.png, last.pth and best.pth. SIGTERM or Ctrl-C ends the current step, writes a resumable last.pth
(mid-epoch; --resume then ends where an uninterrupted run ends) and exits with 128 + the signal's number.
"""
import argparse
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    from vssm.engine.config import key_value_action

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="mmengine config file (configs/...)")
    parser.add_argument("--work-dir", help="output folder (default: the config's work_dir, else work_dirs/<name>)")
    parser.add_argument("--resume", nargs="?", const="auto", metavar="CKPT",
                        help="continue from CKPT, or from the work dir's last.pth when no path is given")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the outputs of an earlier run in the work dir")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow pickled Python objects in model.pretrained_file (some official checkpoints hold "
                             "them; only for files from a trusted source)")
    parser.add_argument("--cfg-options", nargs="+", action=key_value_action(), default={}, metavar="KEY=VALUE",
                        help="override config keys, e.g. epochs=10 optimizer.lr_base=1e-3 model.drop_path_rate=0.1")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from vssm.engine import USER_ERRORS, TrainingInterrupted, load_config, one_line, train

    try:
        cfg = load_config(args.config, args.cfg_options)
        name = os.path.splitext(os.path.basename(args.config))[0]
        work_dir = args.work_dir or cfg.work_dir or os.path.join("work_dirs", name)
        train(cfg, work_dir, resume=args.resume, overwrite=args.overwrite, trust=args.trust_checkpoint)
    except USER_ERRORS as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:  # SIGTERM / SIGINT: a resumable checkpoint was written
        print(str(stop), file=sys.stderr)
        return 128 + stop.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
