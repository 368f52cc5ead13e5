#!/usr/bin/env python
"""Export a zoo model to ONNX (every vssm custom op lowered to standard ONNX) and check it in onnxruntime.

    python tools/export_onnx.py MODEL OUTPUT.onnx [--checkpoint PATH] [--img-size H [W]] [--num-frames T]
                                [--opset 18] [--static-batch] [--optimize] [--check] [--trust-checkpoint] [--ema]

MODEL is a registered name (``vim_tiny_patch16_224``, ``vmamba_tiny``, ``videomamba_tiny``, ...). PATH is a training
checkpoint of tools/train.py or an official release checkpoint, converted as tools/test.py converts it; without it the
weights are random. The batch axis is dynamic unless --static-batch; the other input axes are fixed (the graph's
metadata_props say so). --check runs the graph in onnxruntime on a random batch of 3 and prints the largest
difference to PyTorch. Prints one JSON line: model, output, input_shape, opset (and max_abs_diff with --check).
Python: ``vssm.export.export_onnx``.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="registered model name")
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument("--checkpoint", help="training checkpoint or official checkpoint file")
    parser.add_argument("--img-size", type=int, nargs="+", metavar="PX", help="input size: H, or H W")
    parser.add_argument("--num-frames", type=int, help="frames per clip (video models)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default and minimum 18)")
    parser.add_argument("--static-batch", action="store_true", help="fix the batch axis at 1")
    parser.add_argument("--optimize", action="store_true",
                        help="run onnxscript's optimizer on the graph (minutes for full-size models)")
    parser.add_argument("--check", action="store_true", help="compare onnxruntime with PyTorch on a batch of 3")
    parser.add_argument("--ema", action="store_true", help="export the EMA weights of a training checkpoint")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow pickled Python objects in the file (some official checkpoints hold them)")
    args = parser.parse_args(argv)
    if args.img_size is not None and len(args.img_size) not in (1, 2):
        parser.error("--img-size takes H or H W")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from vssm.engine import USER_ERRORS, one_line
    from vssm.export import DEFAULT_OPSET, check_onnx, export_onnx

    img_size = None if args.img_size is None else (args.img_size * 2)[:2]
    try:
        result = export_onnx(args.model, args.output, checkpoint=args.checkpoint, img_size=img_size,
                             num_frames=args.num_frames, opset=args.opset or DEFAULT_OPSET,
                             dynamic_batch=not args.static_batch, use_ema=args.ema,
                             trust_checkpoint=args.trust_checkpoint, optimize=args.optimize)
        line = {"model": result.model_name, "output": result.path,
                "input_shape": list(result.input_shape), "opset": result.opset}
        if args.check:
            import torch

            batch = 1 if args.static_batch else 3
            x = torch.randn(batch, *result.input_shape[1:])
            line["max_abs_diff"] = check_onnx(result.path, result.model, x)
    except USER_ERRORS as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
