"""Configs: _base_ inheritance, --cfg-options overrides, strict keys, the resolved copy, and every shipped config."""
from pathlib import Path

import pytest
import timm

import vssm  # noqa: F401  (registers the zoo)
from vssm.engine import UserError, load_config
from vssm.engine.config import config_from_dict, config_to_dict

from .helpers import REPO, load_tool, write_config

# training configs (evaluation-only configs, named *_eval.py, and the segmentation configs, configs/medical/ and
# configs/demo/seg_*.py, have their own schemas and tests)
SHIPPED = sorted(p for p in (REPO / "configs").rglob("*.py") if "_base_" not in p.parts and not p.stem.endswith("_eval")
                 and "medical" not in p.parts and not p.stem.startswith("seg_"))


def test_inheritance_merges_dicts_and_overrides_values():
    cfg = load_config(str(REPO / "configs" / "imagenet" / "vmamba_small.py"))
    assert cfg.model == {"name": "vmamba_small", "drop_path_rate": 0.3}  # the child's value wins
    assert cfg.optimizer.lr_base == 5e-4 and cfg.optimizer.weight_decay == 0.05  # from vmamba_tiny.py
    assert cfg.optimizer.eps == 1e-8 and cfg.optimizer.betas == (0.9, 0.999)  # from _base_/schedules
    assert cfg.augment.auto_augment == "rand-m9-mstd0.5-inc1" and cfg.mixup.cutmix_alpha == 1.0  # _base_/datasets
    assert cfg.amp == "bf16" and cfg.ema.enable and cfg.scheduler.warmup_epochs == 20
    assert cfg.data.workers == 8 and cfg.data.train_split == "train"


def test_cfg_options_override_nested_and_top_level_keys():
    args = load_tool("train").parse_args([
        str(REPO / "configs" / "demo" / "quickstart.py"), "--cfg-options", "epochs=1", "optimizer.lr=0.01",
        "model.drop_path_rate=0.1", "augment.scale=(0.5,1.0)", "data.workers=2",
    ])
    cfg = load_config(args.config, args.cfg_options)
    assert cfg.epochs == 1 and cfg.optimizer.lr == 0.01 and cfg.data.workers == 2
    assert cfg.model == {"name": "test_vmamba", "drop_path_rate": 0.1}
    assert cfg.augment.scale == (0.5, 1.0)
    assert cfg.optimizer.opt == "adamw" and cfg.data.dataset == "digits"  # untouched keys keep their values


@pytest.mark.parametrize("options, key", [
    ({"epochz": 3}, "epochz"),
    ({"optimizer.lrr": 0.1}, "optimizer.lrr"),
    ({"data.rot": "/x"}, "data.rot"),
])
def test_unknown_key_is_an_error_naming_it(options, key):
    with pytest.raises(UserError, match=f"unknown config key '{key}'"):
        load_config(str(REPO / "configs" / "demo" / "quickstart.py"), options)


@pytest.mark.parametrize("options, message", [
    ({"amp": "fp8"}, "config key 'amp'"),
    ({"epochs": 0}, "config key 'epochs'"),
    ({"cpu_threads": 0}, "config key 'cpu_threads'"),
    ({"model.name": None}, "config key 'model.name'"),
    ({"cuda_graph": "yes"}, "config key 'cuda_graph'"),
    ({"cuda_graph": 1}, "config key 'cuda_graph'"),
])
def test_bad_values_are_errors(options, message):
    with pytest.raises(UserError, match=message):
        load_config(str(REPO / "configs" / "demo" / "quickstart.py"), options)


def test_resolved_config_dump_loads_back_to_the_same_config(tmp_path):
    from mmengine.config import Config

    cfg = load_config(str(REPO / "configs" / "imagenet" / "vim_tiny_patch16_224.py"))
    path = tmp_path / "config.py"
    Config(config_to_dict(cfg)).dump(str(path))
    assert load_config(str(path)) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_missing_and_broken_config_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(str(tmp_path / "nope.py"))
    with pytest.raises(UserError, match="cannot read config"):
        load_config(write_config(tmp_path, "epochs = (\n"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_shipped_configs_load_and_name_registered_models(path: Path):
    cfg = load_config(str(path))
    assert timm.is_model(cfg.model["name"]), f"{path.name}: model {cfg.model['name']!r} is not registered"
    if "imagenet" in path.parts:
        assert cfg.data.num_classes == 1000 and cfg.epochs >= 300
