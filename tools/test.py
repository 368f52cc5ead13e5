#!/usr/bin/env python
"""Evaluate top-1 / top-5 accuracy of a checkpoint on a config's validation split.

    python tools/test.py CONFIG --checkpoint PATH [--ema] [--trust-checkpoint] [--cfg-options KEY=VALUE ...]
    torchrun --nproc_per_node N tools/test.py CONFIG --checkpoint PATH    # shards the validation set

PATH is a checkpoint written by tools/train.py (last.pth, best.pth) or an official release checkpoint of the model,
converted on the fly by the model's checkpoint_filter_fn. Prints one JSON line: top1, top5, loss, num_samples.
"""
import argparse
import json
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    from vssm.engine.config import key_value_action

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="mmengine config file (configs/...)")
    parser.add_argument("--checkpoint", required=True, help="training checkpoint or official checkpoint file")
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow pickled Python objects in the file (some official checkpoints hold them)")
    parser.add_argument("--cfg-options", nargs="+", action=key_value_action(), default={}, metavar="KEY=VALUE",
                        help="override config keys, e.g. data.root=/data/imagenet batch_size=256")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from vssm.engine import USER_ERRORS, evaluate_checkpoint, load_config, one_line

    try:
        cfg = load_config(args.config, args.cfg_options)
        metrics = evaluate_checkpoint(cfg, args.checkpoint, use_ema=args.ema, trust=args.trust_checkpoint)
    except USER_ERRORS as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps({"model": cfg.model["name"], "checkpoint": args.checkpoint, **metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
