#!/usr/bin/env python
"""Score predicted label maps against references: Dice and normalised surface Dice per class and case, nnU-Net's
summary.json.

    python tools/evaluate_seg.py REF_FOLDER PRED_FOLDER [-d dataset.json] [--tolerance-mm 2] [-o summary.json]
                                 [--no-nsd] [--chill]

Both folders hold ``{CASE}{file_ending}`` label maps (REF: e.g. a raw dataset's labelsTr). The classes (labels, or
regions), the ignore label and the file ending come from dataset.json (default: PRED's, as tools/predict_seg.py writes
it, else the one beside REF). NSD distances use each reference file's spacing in mm (2-D natural images: pixels).
Writes summary.json (default: PRED/summary.json) and prints one JSON line: the mean over foreground classes and the
per-class means.
"""
import argparse
import json
import math
import sys


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reference", help="folder of reference label maps")
    parser.add_argument("prediction", help="folder of predicted label maps")
    parser.add_argument("-d", "--dataset-json", help="dataset.json (default: PRED's, else the one beside REF)")
    parser.add_argument("--tolerance-mm", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    parser.add_argument("--no-nsd", action="store_true", help="Dice only (the NSD's distance maps cost time)")
    parser.add_argument("-o", "--output", help="summary.json path (default: PRED/summary.json)")
    parser.add_argument("--chill", action="store_true", help="allow reference cases without a prediction")
    return parser.parse_args(argv)


def _rounded(values: dict) -> dict:
    return {k: (None if math.isnan(v) else round(v, 4)) for k, v in values.items() if k in ("Dice", "NSD")}


def main(argv=None) -> int:
    args = parse_args(argv)
    from pathlib import Path

    from vssm.engine import USER_ERRORS, one_line
    from vssm.seg.metrics import class_key
    from vssm.seg.predict import evaluate_predictions

    output = args.output or str(Path(args.prediction) / "summary.json")
    try:
        summary = evaluate_predictions(args.reference, args.prediction, args.dataset_json,
                                       None if args.no_nsd else args.tolerance_mm, output, strict=not args.chill)
    except (*USER_ERRORS, FileNotFoundError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    print(json.dumps({"cases": len(summary["metric_per_case"]), "foreground_mean": _rounded(summary["foreground_mean"]),
                      "mean": {class_key(c): _rounded(v) for c, v in summary["mean"].items()}, "summary": output}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
