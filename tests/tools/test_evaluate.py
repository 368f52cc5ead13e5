"""tools/test.py and model.pretrained_file with official checkpoints; evaluation of a folder without a train split."""
import json
from argparse import Namespace
import shutil

import torch

from tests.models.contract import fixture_dir, load_case
from vssm.engine import build_model, load_config
from vssm.engine.checkpoint import load_model_weights, read_checkpoint

from .helpers import load_tool, tiny_config, write_config

CASE = "vim_midcls_v2_div2"  # official Vim: 32 px, patch 8, depth 4, width 64, middle class token, 10 classes


def official_config(tmp_path, meta: dict, extra: str = "") -> str:
    kw = meta["kwargs"]
    return write_config(tmp_path, (
        f"model = dict(name='test_vim', img_size={kw['img_size']}, patch_size={kw['patch_size']}, "
        f"embed_dim={kw['embed_dim']}, depth={kw['depth']}, d_state={kw['d_state']}{extra})\n"
        f"data = dict(dataset='synthetic', num_classes={kw['num_classes']}, synthetic_val_size=5, workers=0)\n"
        "batch_size = 4\n"))


def test_official_checkpoint_is_converted_for_test_py(tmp_path, capsys):
    meta, weights, io = load_case("vim", CASE)
    path = tmp_path / "vim_official.pth"  # as released: nested under 'model', DDP 'module.' prefixes, pickled args
    official = {"model": {f"module.{k}": v for k, v in weights.items()}, "epoch": 299, "args": Namespace(lr=1e-3)}
    torch.save(official, path)
    config = official_config(tmp_path, meta)

    model = build_model(load_config(config), meta["kwargs"]["num_classes"])
    load_model_weights(model, read_checkpoint(str(path), trust=True), str(path))  # what tools/test.py does
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(io["input"]), io["output"], atol=1e-4, rtol=1e-4)

    capsys.readouterr()
    assert load_tool("test").main([config, "--checkpoint", str(path), "--trust-checkpoint"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["model"] == "test_vim" and metrics["num_samples"] == 5 and 0 <= metrics["top1"] <= 100


def test_pretrained_file_starts_training_from_official_weights(tmp_path):
    """Fine-tuning start: every official weight converted and loaded; the classifier is re-initialised because the
    class count differs from the pretrained cfg's (timm's rule for pretrained weights)."""
    meta, weights, _ = load_case("vim", CASE)
    weights_file = fixture_dir("vim") / f"{CASE}.weights.safetensors"  # the official state dict, flat
    tuned = build_model(load_config(official_config(tmp_path, meta, f", pretrained_file={str(weights_file)!r}")),
                        meta["kwargs"]["num_classes"])
    converted = build_model(load_config(official_config(tmp_path, meta)), meta["kwargs"]["num_classes"])
    load_model_weights(converted, weights, str(weights_file))
    head = tuned.pretrained_cfg["classifier"]
    tuned_state, converted_state = tuned.state_dict(), converted.state_dict()
    for key, value in converted_state.items():
        if not key.startswith(head):
            assert torch.equal(tuned_state[key], value), key
    assert not torch.equal(tuned_state[f"{head}.weight"], converted_state[f"{head}.weight"])


def test_test_py_needs_only_the_validation_split(tmp_path, image_root, capsys):
    root = tmp_path / "val_only"
    shutil.copytree(image_root / "val", root / "val")
    config = write_config(tmp_path, tiny_config(root))
    model = build_model(load_config(config), num_classes=3)
    checkpoint = tmp_path / "weights.pth"
    torch.save(model.state_dict(), checkpoint)
    capsys.readouterr()
    assert load_tool("test").main([config, "--checkpoint", str(checkpoint)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_samples"] == 9
