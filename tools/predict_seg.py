#!/usr/bin/env python
"""Predict a folder of raw-format images with a segmentation net trained by tools/train_seg.py, as nnUNetv2_predict.

    python tools/predict_seg.py -i IMAGES -o OUT -m WORK_DIR_OR_CHECKPOINT [--fold N] [--checkpoint final|best|latest]
                                [--disable-tta] [--step-size 0.5] [--save-probabilities] [--overwrite]
                                [--device cpu|cuda] [--amp bf16] [--batch-size 1] [--threads N]

IMAGES holds ``{CASE}_{XXXX}{file_ending}`` files (one per channel, as imagesTr / imagesTs); OUT receives
``{CASE}{file_ending}`` in the input's format and geometry (NIfTI: the input's affine), ``{CASE}.npz`` with the
probabilities when asked, and the dataset.json and plans.json used. The net, its plans, dataset.json and mirror axes
come from the checkpoint (a work dir's checkpoint_final.pth by default; -m may also name the file, or a folder of
fold_N work dirs with --fold). Cases already predicted are skipped unless --overwrite. On a shared CPU, --threads 1
is often the fastest. Prints one JSON line.
"""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

CHECKPOINTS = ("final", "best", "latest")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-i", "--input", required=True, help="folder of {CASE}_{XXXX}{file_ending} images")
    parser.add_argument("-o", "--output", required=True, help="folder for the predictions (created)")
    parser.add_argument("-m", "--model", required=True,
                        help="a training work dir, a folder of fold_N work dirs (with --fold), or a checkpoint file")
    parser.add_argument("-f", "--fold", help="fold of a folder of fold_N work dirs")
    parser.add_argument("--checkpoint", choices=CHECKPOINTS, default="final",
                        help="which checkpoint of the work dir (default: final, as nnU-Net)")
    parser.add_argument("--disable-tta", action="store_true", help="no mirror test-time augmentation (faster)")
    parser.add_argument("--step-size", type=float, default=0.5, help="window step as a fraction of the patch")
    parser.add_argument("--save-probabilities", action="store_true", help="also write {CASE}.npz (probabilities)")
    parser.add_argument("--overwrite", action="store_true", help="predict cases whose output exists too")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    parser.add_argument("--amp", choices=("bf16", "fp16"), help="autocast on CUDA")
    parser.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    parser.add_argument("--threads", type=int, help="intra-op CPU threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def checkpoint_file(model: str, fold=None, which: str = "final") -> Path:
    """The checkpoint a -m / --fold / --checkpoint choice names."""
    from vssm.engine import UserError

    path = Path(model)
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"-m {model}: no such work dir or checkpoint file")
    if fold is not None:
        if not (path / f"fold_{fold}").is_dir():
            raise UserError(f"-m {model} has no fold_{fold} folder (folds present: "
                            f"{sorted(p.name for p in path.glob('fold_*')) or 'none'})")
        path = path / f"fold_{fold}"
    file = path / f"checkpoint_{which}.pth"
    if not file.is_file():
        present = sorted(p.name for p in path.glob("checkpoint_*.pth"))
        raise UserError(f"{file} not found (checkpoints in {path}: {present or 'none'}; a run writes "
                        f"checkpoint_final.pth when its last epoch ends)")
    return file


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from vssm.data.nnunet_raw import DatasetValidationError
    from vssm.engine import USER_ERRORS, one_line
    from vssm.seg.plans import configuration
    from vssm.seg.predict import predict_folder
    from vssm.seg.training import load_trained_net

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        file = checkpoint_file(args.model, args.fold, args.checkpoint)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        net, checkpoint = load_trained_net(str(file), device)
        info = checkpoint["net"]
        # the windows are the net's training patch (config key patch_size may differ from the plan's)
        config = dataclasses.replace(configuration(checkpoint["plans"], info["configuration"]),
                                     patch_size=tuple(info["patch_size"]))
        axes = checkpoint.get("mirror_axes")  # the axes mirrored in training; None: every axis
        mirror = False if args.disable_tta else (True if axes is None else tuple(axes))
        written = predict_folder(net, args.input, args.output, checkpoint["plans"], config, checkpoint["dataset_json"],
                                 mirror=mirror, step_size=args.step_size, save_probabilities=args.save_probabilities,
                                 overwrite=args.overwrite, batch_size=args.batch_size, amp=args.amp,
                                 progress=not args.no_progress)
    except USER_ERRORS as error:
        # badly named inputs are listed one per line; other errors are one line
        print(f"error: {error if isinstance(error, DatasetValidationError) else one_line(error)}", file=sys.stderr)
        return 2
    print(json.dumps({"checkpoint": str(file), "output": args.output, "predicted": len(written),
                      "tta": not args.disable_tta}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
