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
