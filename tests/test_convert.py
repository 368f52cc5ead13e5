"""vssm.convert: the converter of a model is found by its registered name, and an official release checkpoint loads
strictly through every entry point that takes one (timm's pretrained path, the trainer's ``model.pretrained_file``,
tools/test.py, tools/convert_checkpoint.py), also for models built on another family's class."""
import json

import pytest
import timm
import torch
from safetensors.torch import load_file

from vssm.convert import checkpoint_filter_for, registered_model, unwrap_checkpoint
from vssm.engine import build_model, load_config

from .models.contract import load_manifest
from .tools.helpers import load_tool, write_config

# (registered name, fixture family, keys a release adds to the manifest's): videomamba_*_image models are Vim
# instances, converted by VideoMamba's filter, which drops the self-distillation head that the middle and base image
# releases carry (Vim's converter would keep it, and strict loading would fail)
OFFICIAL_RELEASES = [
    ("vim_tiny_patch16_224", "vim", {}),
    ("videomamba_small_image", "videomamba", {"distill_head.weight": [1000, 384], "distill_head.bias": [1000]}),
]


def official_release(path, family: str, name: str, extra_keys: dict) -> dict:
    """An official checkpoint as released, from the ``*.keys.json`` manifest (plus ``extra_keys``): random tensors of
    the listed shapes, nested under 'model' with DDP 'module.' prefixes and an epoch counter beside them; saved to
    ``path``."""
    generator = torch.Generator().manual_seed(0)
    shapes = {**load_manifest(family, name)["state_dict"], **extra_keys}
    weights = {key: torch.randn(shape, generator=generator) * 0.02 for key, shape in shapes.items()}
    torch.save({"model": {f"module.{key}": value for key, value in weights.items()}, "epoch": 299}, path)
    return weights


def converted(name: str, weights: dict) -> dict:
    model = timm.create_model(name)
    return checkpoint_filter_for(name)(weights, model)


def assert_loaded(model: torch.nn.Module, expected: dict) -> None:
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_lookup_is_by_registered_name_not_by_class():
    vim_filter = checkpoint_filter_for("vim_tiny_patch16_224")
    video_filter = checkpoint_filter_for("videomamba_small_image")
    assert video_filter is not vim_filter and video_filter.__module__ == "vssm.models.videomamba"
    assert checkpoint_filter_for("local_vmamba_tiny").__module__ == "vssm.models.local_vmamba"
    assert checkpoint_filter_for("vim_tiny_patch16_224.in1k") is vim_filter
    model = timm.create_model("videomamba_tiny_image")
    assert type(model).__name__ == "Vim" and checkpoint_filter_for(model) is video_filter
    entry = registered_model("vim_tiny_patch16_224")
    assert entry.name == "vim_tiny_patch16_224" and entry.pretrained_cfg["hf_hub_id"].startswith("hustvl/")


def test_lookup_names_bad_input():
    with pytest.raises(ValueError, match="unknown model 'vim_tinny'"):
        checkpoint_filter_for("vim_tinny")
    with pytest.raises(ValueError, match="not built by timm.create_model"):
        checkpoint_filter_for(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="vim_tiny_patch16_224.nope"):
        registered_model("vim_tiny_patch16_224.nope")


@pytest.mark.parametrize("name,family,extra_keys", OFFICIAL_RELEASES)
def test_official_release_loads_through_every_entry_point(tmp_path, capsys, name, family, extra_keys):
    path = tmp_path / f"{name}_official.pth"
    weights = official_release(path, family, name, extra_keys)
    expected = converted(name, weights)

    # 1. timm's pretrained path: the family's checkpoint_filter_fn through pretrained_cfg_overlay
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert_loaded(model, expected)

    # 2. the trainer: model.pretrained_file
    config = write_config(tmp_path, (
        f"model = dict(name={name!r}, pretrained_file={str(path)!r})\n"
        "data = dict(dataset='synthetic', num_classes=1000, synthetic_val_size=2, workers=0)\n"
        "batch_size = 2\n"))
    assert_loaded(build_model(load_config(config), num_classes=1000), expected)

    # 3. tools/test.py --checkpoint (strict loading, else exit status 2)
    config = write_config(tmp_path, (
        f"model = dict(name={name!r})\n"
        "data = dict(dataset='synthetic', num_classes=1000, synthetic_val_size=2, workers=0)\n"
        "batch_size = 2\n"), name="eval.py")
    capsys.readouterr()
    assert load_tool("test").main([config, "--checkpoint", str(path)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_samples"] == 2

    # 4. tools/convert_checkpoint.py MODEL CHECKPOINT OUTPUT
    output = tmp_path / f"{name}.safetensors"
    assert load_tool("convert_checkpoint").main([name, str(path), str(output)]) == 0
    assert load_file(str(output)).keys() == expected.keys()
    for key, value in load_file(str(output)).items():
        assert torch.equal(value, expected[key]), key


def test_unwrap_checkpoint_strips_nesting_and_prefixes():
    weights = {"a": torch.zeros(1)}
    assert unwrap_checkpoint({"model": {"module.module.a": weights["a"]}, "epoch": 1}).keys() == {"a"}
    with pytest.raises(ValueError, match="no state dict of tensors"):
        unwrap_checkpoint({"model": {"a": "text"}})
