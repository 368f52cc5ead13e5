"""tools/train.py on clips: a video dataset kind feeds the trainer (clip protocol, one validation clip, Mixup/CutMix on
clips), and tools/test.py and tools/eval_video.py score its checkpoint."""
import json

import pytest
import torch

from vssm.engine import load_config, train
from vssm.engine.trainer import _mix

from ..data.video_fixtures import write_shapes_list
from .helpers import load_tool, write_config

DIRECTIONS = ["left", "right", "up", "down"] * 2


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    write_shapes_list(root, DIRECTIONS, name="train.txt", seed=1)
    write_shapes_list(root, DIRECTIONS[:4], name="val.txt", seed=2)
    return root


def video_config(root, **extra) -> str:
    lines = [
        "model = dict(name='test_videomamba', num_frames=4)",
        f"data = dict(dataset='video', root={str(root)!r}, workers=0, num_classes=4,",
        f"            video=dict(format='list', train=dict(annotation={str(root / 'train.txt')!r}),",
        f"                       val=dict(annotation={str(root / 'val.txt')!r})),",
        "            protocol=dict(name='videomamba_k400', num_frames=4, short_side=64, crop_size=64))",
        "augment = dict(hflip=0.0, scale=(0.6, 1.0))",
        "epochs = 1", "batch_size = 4", "smoothing = 0.0", "log_interval = 1",
        "optimizer = dict(opt='adamw', lr=1e-3, weight_decay=0.05)", "scheduler = dict(warmup_epochs=0)",
    ]
    return "\n".join(lines + [f"{key} = {value}" for key, value in extra.items()]) + "\n"


def test_training_on_clips_writes_a_checkpoint_that_test_py_scores(tmp_path, clips, capsys):
    config = write_config(tmp_path, video_config(clips))
    result = train(load_config(config), str(tmp_path / "run"))
    assert result["epoch"] == 1 and 0 <= result["eval_top1"] <= 100
    checkpoint = tmp_path / "run" / "last.pth"
    capsys.readouterr()
    assert load_tool("test").main([config, "--checkpoint", str(checkpoint)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["num_samples"] == 4 and metrics["top1"] == pytest.approx(result["eval_top1"])


def test_mixup_and_cutmix_mix_whole_clips(tmp_path, clips):
    from timm.data import Mixup

    mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=4)
    clips_in = torch.arange(2 * 3 * 4 * 8 * 8, dtype=torch.float32).view(2, 3, 4, 8, 8)
    mixed, targets = _mix(mixup, clips_in.clone(), torch.tensor([0, 1]))
    assert mixed.shape == clips_in.shape and targets.shape == (2, 4)
    changed = (mixed != clips_in).any(dim=(0, 1))  # (T, H, W): where the CutMix box landed
    assert torch.equal(changed, changed[:1].expand_as(changed))  # the same box in every frame

    config = write_config(tmp_path, video_config(clips, mixup="dict(mixup_alpha=0.8, cutmix_alpha=1.0)"))
    assert train(load_config(config), str(tmp_path / "run"))["epoch"] == 1


def test_model_and_protocol_that_disagree_are_named(tmp_path, clips, capsys):
    config = write_config(tmp_path, video_config(clips))
    capsys.readouterr()
    status = load_tool("train").main([config, "--work-dir", str(tmp_path / "run"), "--cfg-options",
                                      "data.protocol.num_frames=8"])
    err = capsys.readouterr().err
    assert status == 2 and "model test_videomamba takes clips of 4 frames" in err and "the protocol gives 8" in err
