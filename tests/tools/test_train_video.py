"""tools/train.py on clips: a video dataset kind feeds the trainer (clip protocol, one validation clip, Mixup/CutMix on
clips), and tools/test.py and tools/eval_video.py score its checkpoint."""
import json

import pytest
import torch

from vssm.engine import load_config, train
from vssm.engine.data import video_protocol_of
from vssm.engine import UserError
from vssm.engine.trainer import _mix
from vssm.engine.video_eval import check_clip_input

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


def test_mixup_counts_the_clips_of_a_step(tmp_path, clips):
    """Mixup/CutMix pairs the samples of a step: an odd batch of single clips is refused by name, an odd batch of
    videos with two clips each trains."""
    config = write_config(tmp_path, video_config(clips, mixup="dict(mixup_alpha=0.8, cutmix_alpha=1.0)"))
    with pytest.raises(UserError, match="even number of samples per step, got batch_size 3$"):
        train(load_config(config, {"batch_size": 3}), str(tmp_path / "odd"))
    assert train(load_config(config, {"batch_size": 1, "data.num_sample": 2}), str(tmp_path / "pairs"))["epoch"] == 1


def test_model_and_protocol_that_disagree_are_named(tmp_path, clips, capsys):
    config = write_config(tmp_path, video_config(clips))
    capsys.readouterr()
    status = load_tool("train").main([config, "--work-dir", str(tmp_path / "run"), "--cfg-options",
                                      "data.protocol.num_frames=8"])
    err = capsys.readouterr().err
    assert status == 2 and "model test_videomamba takes clips of 4 frames" in err and "the protocol gives 8" in err


def test_num_sample_doubles_the_batch_with_two_views_of_each_video(tmp_path, clips):
    from vssm.engine.data import TrainSampler, build_loader, clip_augment_of, open_train_set

    cfg = load_config(write_config(tmp_path, video_config(clips, augment="dict(scale=(0.3, 1.0), hflip=0.5)")),
                      {"data.num_sample": 2})
    train_set = open_train_set(cfg.data)
    train_set.augment = clip_augment_of(cfg.augment)
    loader = build_loader(train_set, TrainSampler(len(train_set), 2, 1, 0, seed=0), 2, 0, False)
    assert len(loader) == 4  # 8 videos, 2 per step: the epoch still passes each video once
    for views, targets in loader:
        assert views.shape == (4, 3, 4, 64, 64)  # 2 videos x 2 clips
        assert targets.tolist()[0::2] == targets.tolist()[1::2]  # the two clips of a video side by side
        assert not torch.equal(views[0], views[1]) and not torch.equal(views[2], views[3])


def test_recipe_augmentation_and_official_layer_decay_train(tmp_path, clips):
    """Repeated sampling, RandAugment, random erasing, Mixup/CutMix and the official layer decay in one run: the lr
    scales with the clips per step and the optimizer holds the official layer scales."""
    config = write_config(tmp_path, video_config(
        clips, augment="dict(auto_augment='rand-m7-n4-mstd0.5-inc1', re_prob=0.25, scale=(0.3, 1.0), hflip=0.0)",
        mixup="dict(mixup_alpha=0.8, cutmix_alpha=1.0)",
        optimizer="dict(opt='adamw', lr_base=1e-3, lr_base_size=16, weight_decay=0.1, layer_decay=0.75, "
                  "layer_decay_rule='videomamba_official', no_weight_decay=('pos_embed', 'cls_token', "
                  "'temporal_pos_embedding', '*.D', '*.conv_bias', '*.dt_proj_bias'))"))
    cfg = load_config(config, {"data.num_sample": 2, "batch_size": 2})
    result = train(cfg, str(tmp_path / "run"))
    assert result["epoch"] == 1
    state = torch.load(tmp_path / "run" / "last.pth", weights_only=True)["optimizer"]
    groups = {name: group for group in state["param_groups"] for name in group["params"]}
    assert groups["cls_token"]["initial_lr"] == pytest.approx(2 * 2 * 1e-3 / 16)  # 2 videos x 2 clips per step
    assert groups["cls_token"]["lr_scale"] == groups["patch_embed.proj.weight"]["lr_scale"] == 0.75 ** 4
    assert groups["blocks.0.mixer.in_proj.weight"]["lr_scale"] == groups["head.weight"]["lr_scale"] == 1.0
    assert groups["blocks.0.mixer.A_log"]["weight_decay"] == 0.1 and groups["blocks.0.mixer.D"]["weight_decay"] == 0


def test_num_sample_is_for_video_datasets_only(tmp_path, clips):
    from vssm.engine.data import open_train_set

    cfg = load_config(write_config(tmp_path, video_config(clips)), {"data.num_sample": 0})
    with pytest.raises(UserError, match="data.num_sample"):
        open_train_set(cfg.data)
    cfg = load_config(write_config(tmp_path, video_config(clips)), {"data.dataset": "synthetic", "data.num_sample": 2})
    with pytest.raises(UserError, match="only for data.dataset='video'"):
        open_train_set(cfg.data)


# the fine-tuning recipes (OpenGVLab/VideoMamba exp/{k400,ssv2}/videomamba_*/run_f16x224.sh): model, classes, videos
# per GPU, GPUs, epochs in all, effective lr (lr x GPUs x batch x 2 clips / 256), drop path, weight decay, RandAugment,
# flip probability
RECIPES = {
    "videomamba_tiny_k400_ft": ("videomamba_tiny", 400, 64, 8, 70, 8e-4, 0.1, 0.1, "rand-m5-n2-mstd0.25-inc1", 0.5),
    "videomamba_small_k400_ft": ("videomamba_small", 400, 32, 16, 50, 8e-4, 0.35, 0.05, "rand-m7-n4-mstd0.5-inc1", 0.5),
    "videomamba_middle_k400_ft": ("videomamba_middle", 400, 16, 16, 50, 2e-4, 0.8, 0.05, "rand-m7-n4-mstd0.5-inc1",
                                  0.5),
    "videomamba_tiny_ssv2_ft": ("videomamba_tiny", 174, 64, 8, 35, 1.6e-3, 0.1, 0.1, "rand-m5-n2-mstd0.25-inc1", 0.0),
    "videomamba_small_ssv2_ft": ("videomamba_small", 174, 32, 16, 30, 1.6e-3, 0.35, 0.05, "rand-m7-n4-mstd0.5-inc1",
                                 0.0),
    "videomamba_middle_ssv2_ft": ("videomamba_middle", 174, 16, 16, 30, 8e-4, 0.8, 0.05, "rand-m7-n4-mstd0.5-inc1",
                                  0.0),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_finetune_recipes_load_and_build(name):
    from vssm.engine.trainer import build_model

    from .helpers import REPO

    model_name, classes, per_gpu, gpus, epochs, lr, drop_path, decay, rand_augment, hflip = RECIPES[name]
    cfg = load_config(str(REPO / "configs" / "video" / f"{name}.py"))
    opt, sched = cfg.optimizer, cfg.scheduler
    clips_per_step = per_gpu * gpus * cfg.data.num_sample
    factor = clips_per_step / 256  # the official scaling of lr, min_lr and warmup_lr
    assert cfg.model["name"] == model_name and cfg.model["drop_path_rate"] == drop_path
    assert cfg.data.dataset == "video" and cfg.data.num_sample == 2 and cfg.batch_size == per_gpu
    assert opt.lr_base * clips_per_step / opt.lr_base_size == pytest.approx(lr)
    assert sched.min_lr == pytest.approx(1e-6 * factor) and sched.warmup_lr == pytest.approx(1e-6 * factor)
    assert sched.warmup_prefix and cfg.epochs + sched.warmup_epochs == epochs and sched.on_updates
    assert opt.weight_decay == decay and opt.layer_decay == 0.75 and opt.layer_decay_rule == "videomamba_official"
    assert opt.betas == (0.9, 0.999) and opt.eps == 1e-8 and cfg.amp == "bf16" and cfg.smoothing == 0.1
    assert cfg.augment.auto_augment == rand_augment and cfg.augment.hflip == hflip and cfg.augment.re_prob == 0.25
    assert cfg.mixup.mixup_alpha == 0.8 and cfg.mixup.cutmix_alpha == 1.0
    protocol = video_protocol_of(cfg.data)
    assert protocol.num_frames == cfg.model["num_frames"] == 16 and protocol.crop_size == 224
    with torch.device("meta"):  # the full-size model, without allocating it
        model = build_model(cfg, cfg.data.num_classes)
    assert model.num_classes == classes and model.patch_embed.num_frames == 16
    check_clip_input(model, protocol, model_name)
