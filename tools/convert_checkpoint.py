#!/usr/bin/env python
"""Convert an official checkpoint file into a vssm safetensors file.

    python tools/convert_checkpoint.py MODEL CHECKPOINT OUTPUT.safetensors [--model-args KEY=VALUE ...]
    python tools/convert_checkpoint.py --official-config CONFIG.json CHECKPOINT OUTPUT.safetensors

MODEL is a registered timm name (``vim_small_patch16_224``, ``vmamba_tiny``, ...): the checkpoint goes through the
``checkpoint_filter_fn`` of the family that registered the name (``vssm.convert.checkpoint_filter_for``). With
``--official-config`` (a JSON with ``family``, ``kwargs`` and optionally ``official_entry``, as in the shared fixtures)
any configuration of the official code is built through ``vssm.convert.load_official`` instead. Nested checkpoints ({'model': ...}, {'state_dict': ...}, 'module.' prefixes)
are accepted. The weights are loaded strictly, so a checkpoint that does not fit fails here, and the output is written
atomically. Load it with ``model.load_state_dict(safetensors.torch.load_file(OUTPUT))``.
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    from vssm.engine.config import key_value_action

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", help="registered timm model name (omit with --official-config)")
    parser.add_argument("checkpoint", help="official checkpoint file (.pth, .ckpt, .safetensors)")
    parser.add_argument("output", help="the vssm safetensors file to write")
    parser.add_argument("--official-config", help="JSON with family, kwargs and official_entry of the official model")
    parser.add_argument("--model-args", nargs="+", action=key_value_action(), default={}, metavar="KEY=VALUE",
                        help="keyword arguments of timm.create_model, e.g. num_classes=100 img_size=384")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow pickled Python objects in the file (some official checkpoints hold them)")
    args = parser.parse_args(argv)
    if (args.model is None) == (args.official_config is None):
        parser.error("give either MODEL or --official-config")
    return args


def convert(args):
    """The converted vssm module, with the official weights loaded strictly."""
    import timm

    from vssm.convert import load_official
    from vssm.engine import UserError
    from vssm.engine.checkpoint import load_model_weights, read_checkpoint, state_dict_of

    state_dict = state_dict_of(read_checkpoint(args.checkpoint, trust=args.trust_checkpoint), args.checkpoint)
    if args.official_config is not None:
        try:
            config = json.loads(Path(args.official_config).read_text())
            family, kwargs = config["family"], config["kwargs"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserError(f"official config {args.official_config}: {error}") from None
        entry = config.get("official_entry")
        try:
            return load_official(family, state_dict, kwargs, entry.split("::")[-1] if entry else None)
        except (KeyError, RuntimeError, ValueError) as error:
            raise UserError(f"checkpoint {args.checkpoint} does not fit the official {family} config: "
                            f"{type(error).__name__}: {' '.join(str(error).split())}") from None
    if not timm.is_model(args.model):
        raise UserError(f"unknown model {args.model!r}")
    model = timm.create_model(args.model, **args.model_args)
    load_model_weights(model, state_dict, args.checkpoint)  # the family's checkpoint_filter_fn, then strictly
    return model


def save_safetensors(module, path: str, metadata: dict) -> None:
    """The module's state dict as safetensors, written atomically."""
    from safetensors.torch import save

    from vssm.engine.checkpoint import write_atomic

    tensors = {key: value.detach().contiguous() for key, value in module.state_dict().items()}
    write_atomic(path, lambda file: file.write(save(tensors, metadata=metadata)))


def main(argv=None) -> int:
    args = parse_args(argv)
    from vssm.engine import USER_ERRORS, one_line

    try:
        module = convert(args)
        save_safetensors(module, args.output, {"source": os.path.basename(args.checkpoint),
                                                "model": args.model or args.official_config})
    except USER_ERRORS as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    count = sum(p.numel() for p in module.parameters())
    print(f"wrote {args.output}: {len(module.state_dict())} tensors, {count / 1e6:.2f}M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
