"""Parameters that carry their own hyper-parameters (``param._optim``, as S4ND's kernel parameters) keep them in the
trainer's optimizer; the others follow the global weight decay and its exclusions."""
import torch
from timm.models import register_model
from torch import nn

from vssm.engine import load_config, train
from vssm.engine.optim import param_groups

from .helpers import tiny_config, write_config


class _KernelNet(nn.Module):
    """A classifier with an 'SSM kernel' whose parameters train at lr 1e-3 without weight decay (A) or at lr 1e-3 with
    the global weight decay (C), as the official S4 code registers them."""

    def __init__(self, num_classes: int = 3, in_chans: int = 3, **kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(in_chans, 8, 3, padding=1)
        self.A = nn.Parameter(torch.randn(8, 4))
        self.C = nn.Parameter(torch.randn(8, 4))
        self.A._optim = {"lr": 1e-3, "weight_decay": 0.0}
        self.C._optim = {"lr": 1e-3}
        self.head = nn.Linear(8, num_classes)
        self.pretrained_cfg = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0,
                               "interpolation": "bilinear", "classifier": "head"}

    def forward(self, x):
        x = self.conv(x).mean((2, 3))
        return self.head(x + (self.A.sum() + self.C.sum()) * 0)


@register_model
def _test_kernel_net(pretrained: bool = False, **kwargs) -> _KernelNet:
    return _KernelNet(**kwargs)


def _group_of(groups, param):
    return next(group for group in groups if any(p is param for p in group["params"]))


def test_param_groups_apply_the_overrides_and_keep_the_exclusions():
    model = _KernelNet()
    groups = param_groups(model, weight_decay=0.05)
    assert _group_of(groups, model.A)["lr"] == 1e-3 and _group_of(groups, model.A)["weight_decay"] == 0.0
    assert _group_of(groups, model.C)["lr"] == 1e-3 and _group_of(groups, model.C)["weight_decay"] == 0.05
    assert "lr" not in _group_of(groups, model.conv.weight) and _group_of(groups, model.conv.weight)[
        "weight_decay"] == 0.05
    assert _group_of(groups, model.conv.bias)["weight_decay"] == 0.0  # 1-D: no weight decay, as timm does
    assert sum(len(group["params"]) for group in groups) == len(list(model.parameters()))


def test_trainer_optimizer_honours_the_overrides(tmp_path, image_root):
    cfg = load_config(write_config(tmp_path, tiny_config(image_root, model="dict(name='_test_kernel_net')",
                                                          optimizer="dict(opt='adamw', lr=5e-3, weight_decay=0.05)")))
    train(cfg, str(tmp_path / "run"))
    state = torch.load(tmp_path / "run" / "last.pth", weights_only=True)["optimizer"]
    groups = {name: group for group in state["param_groups"] for name in group["params"]}
    assert groups["A"]["initial_lr"] == 1e-3 and groups["A"]["weight_decay"] == 0.0
    assert groups["C"]["initial_lr"] == 1e-3 and groups["C"]["weight_decay"] == 0.05
    assert groups["conv.weight"]["initial_lr"] == 5e-3 and groups["conv.weight"]["weight_decay"] == 0.05
    assert groups["conv.bias"]["initial_lr"] == 5e-3 and groups["conv.bias"]["weight_decay"] == 0.0


# VideoMamba's fine-tuning exclusions: 1-D parameters, biases and these names; the stacked per-direction vectors
# (official 1-D D, conv bias, dt bias) by pattern; A_log decays
VIDEOMAMBA_NO_WEIGHT_DECAY = ("pos_embed", "cls_token", "temporal_pos_embedding", "*.D", "*.conv_bias",
                              "*.dt_proj_bias")


def _settings_by_name(model, groups) -> dict:
    """name -> (lr_scale, weight_decay) of the one group holding each parameter."""
    settings = {}
    for name, param in model.named_parameters():
        holding = [group for group in groups if any(p is param for p in group["params"])]
        assert len(holding) == 1, f"{name} is in {len(holding)} groups"
        settings[name] = (holding[0].get("lr_scale", 1.0), holding[0]["weight_decay"])
    return settings


def test_official_videomamba_layer_ids():
    from vssm.engine.optim import videomamba_official_layer_id

    depth = 24
    for name in ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"):
        assert videomamba_official_layer_id(name, depth) == 0
    for name in ("temporal_pos_embedding", "blocks.0.mixer.in_proj.weight", "blocks.23.norm.weight", "norm.weight",
                 "head.weight", "head.bias", "pos_embed_extra"):
        assert videomamba_official_layer_id(name, depth) == depth + 1


def test_official_videomamba_layer_decay_leaves_the_blocks_undecayed():
    import timm

    import vssm  # noqa: F401  (registers the models)

    model = timm.create_model("test_videomamba", num_classes=5)  # depth 3
    groups = param_groups(model, weight_decay=0.1, layer_decay=0.75, no_weight_decay=VIDEOMAMBA_NO_WEIGHT_DECAY,
                          layer_decay_rule="videomamba_official")
    settings = _settings_by_name(model, groups)
    embedding_scale = 0.75 ** 4  # layer_decay ** (depth + 1)
    assert settings["cls_token"] == (embedding_scale, 0.0) and settings["pos_embed"] == (embedding_scale, 0.0)
    assert settings["patch_embed.proj.weight"] == (embedding_scale, 0.1)
    assert settings["patch_embed.proj.bias"] == (embedding_scale, 0.0)
    for name, (scale, decay) in settings.items():
        if not name.startswith(("cls_token", "pos_embed", "patch_embed.")):
            assert scale == 1.0, name  # blocks, temporal embedding, final norm, head: the full lr
    assert settings["temporal_pos_embedding"] == (1.0, 0.0)
    assert settings["blocks.0.mixer.A_log"][1] == 0.1 and settings["blocks.2.mixer.in_proj.weight"][1] == 0.1
    for name in ("blocks.1.mixer.D", "blocks.1.mixer.conv_bias", "blocks.1.mixer.dt_proj_bias", "blocks.1.norm.weight",
                 "norm.weight", "head.bias"):
        assert settings[name][1] == 0.0, name
    assert settings["head.weight"] == (1.0, 0.1)


def test_timm_layer_decay_rule_decays_block_by_block():
    import timm

    import vssm  # noqa: F401

    model = timm.create_model("test_videomamba", num_classes=5)
    settings = _settings_by_name(model, param_groups(model, 0.1, layer_decay=0.5,
                                                     no_weight_decay=VIDEOMAMBA_NO_WEIGHT_DECAY))
    assert settings["cls_token"][0] == settings["temporal_pos_embedding"][0] == 0.5 ** 4  # the stem
    assert [settings[f"blocks.{i}.mixer.in_proj.weight"][0] for i in range(3)] == [0.5 ** 3, 0.5 ** 2, 0.5]
    assert settings["norm.weight"][0] == 0.5  # timm's matcher puts the final norm with the last block
    assert settings["head.weight"][0] == 1.0


def test_layer_decay_rule_errors_name_the_problem():
    import pytest

    with pytest.raises(ValueError, match="unknown layer_decay_rule 'beit'"):
        param_groups(_KernelNet(), 0.05, layer_decay=0.75, layer_decay_rule="beit")
    with pytest.raises(ValueError, match="needs a model with a 'blocks' list"):
        param_groups(_KernelNet(), 0.05, layer_decay=0.75, layer_decay_rule="videomamba_official")
    groups = param_groups(_KernelNet(), 0.05, layer_decay_rule="videomamba_official")  # no layer decay: rule unused
    assert all("lr_scale" not in group for group in groups)
