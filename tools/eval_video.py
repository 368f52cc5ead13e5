#!/usr/bin/env python
"""Evaluate a video classifier with a named multi-view protocol: top-1, top-5 and mean-class accuracy.

    python tools/eval_video.py CONFIG --checkpoint PATH [--views-file OUT.pt] [--cfg-options KEY=VALUE ...]
    torchrun --nproc_per_node N tools/eval_video.py CONFIG --checkpoint PATH    # shards the videos
    python tools/eval_video.py --rescore OUT.pt [--score prob|logit]           # re-score saved per-view logits

CONFIG is an mmengine file with the keys of vssm.engine.video_eval.VideoEvalConfig (model, data, protocol, ...);
PATH a checkpoint written by tools/train.py or an official release checkpoint (converted on the fly). Prints one JSON
line: top1, top5, mean_class_accuracy, videos_found / videos_decoded / videos_failed (and listed, missing), the
protocol's description and the file holding the per-view logits. Skipped videos are named on stderr.
"""
import argparse
import json
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    from vssm.engine.config import key_value_action

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", help="mmengine video evaluation config (configs/...)")
    parser.add_argument("--checkpoint", help="training checkpoint or official checkpoint file")
    parser.add_argument("--views-file", help="where to save the per-view logits (default: the config's views_file)")
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow pickled Python objects in the file (some official checkpoints hold them)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--rescore", metavar="VIEWS_FILE", help="re-score a saved views file instead of evaluating")
    parser.add_argument("--score", choices=("prob", "logit"), help="with --rescore: the averaging rule")
    parser.add_argument("--cfg-options", nargs="+", action=key_value_action(), default={}, metavar="KEY=VALUE",
                        help="override config keys, e.g. data.root=/data/k400 workers=8 protocol.num_clips=4")
    args = parser.parse_args(argv)
    if args.rescore is None and (args.config is None or args.checkpoint is None):
        parser.error("CONFIG and --checkpoint are required (or --rescore VIEWS_FILE)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from vssm.engine import USER_ERRORS, one_line
    from vssm.engine.video_eval import default_views_file, evaluate_video, load_video_eval_config, rescore

    try:
        if args.rescore:
            print(json.dumps({"views_file": args.rescore, **rescore(args.rescore, args.score)}))
            return 0
        cfg = load_video_eval_config(args.config, args.cfg_options)
        cfg.views_file = args.views_file or cfg.views_file or default_views_file(args.checkpoint, args.config)
        metrics = evaluate_video(cfg, args.checkpoint, trust=args.trust_checkpoint, use_ema=args.ema,
                                 progress=False if args.no_progress else None)
    except USER_ERRORS as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps({"model": cfg.model["name"], "checkpoint": args.checkpoint, **metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
