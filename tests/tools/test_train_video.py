"""tools/train.py on clips: a video dataset kind feeds the trainer (clip protocol, one validation clip, Mixup/CutMix on
clips), and tools/test.py and tools/eval_video.py score its checkpoint."""
import json
import math

import numpy as np
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
    from vssm.engine.config import final_test_protocol
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
    final = final_test_protocol(cfg)  # best.pth re-tested by the official test protocol: K400 4x3, SSv2 2x3
    assert final.name == ("videomamba_k400" if "k400" in name else "videomamba_ssv2")
    assert final.sampler.num_clips == (4 if "k400" in name else 2) and final.num_crops == 3
    check_clip_input(model, final, model_name)


# --------------------------------------------------------------------------------------------------------------------
# the final re-test of best.pth under the full protocol

FULL_PROTOCOL = "dict(name='videomamba_k400', num_frames=4, num_clips=2, num_crops=3, short_side=64, crop_size=64)"


def _eval_video_config(folder, root, views_file) -> str:
    """tools/eval_video.py's config for the run of ``video_config``: its model, validation list and FULL_PROTOCOL."""
    return write_config(folder, "\n".join([
        "model = dict(name='test_videomamba', num_frames=4)",
        f"data = dict(format='list', annotation={str(root / 'val.txt')!r}, root={str(root)!r}, num_classes=4)",
        f"protocol = {FULL_PROTOCOL}", "batch_size = 4", "workers = 0", f"views_file = {str(views_file)!r}",
    ]) + "\n", "eval.py")


@pytest.mark.parametrize("use_ema", [False, True], ids=["model", "ema"])
def test_final_test_rescores_best_pth_as_eval_video_does(tmp_path, clips, capsys, use_ema):
    """test_best.json holds the full protocol's views (4 videos x 2 clips x 3 crops) and the numbers and per-view
    logits of tools/eval_video.py on best.pth (its EMA weights when an EMA metric chose best.pth)."""
    extra = {"final_test": f"dict(protocol={FULL_PROTOCOL}, workers=0)"}
    if use_ema:
        extra.update(ema="dict(enable=True, decay=0.5)", best_metric="'ema_eval_top1'")
    work_dir = tmp_path / "run"
    result = train(load_config(write_config(tmp_path, video_config(clips, **extra))), str(work_dir))
    saved = json.loads((work_dir / "test_best.json").read_text())
    assert saved == result["final_test"]
    assert saved["views"] == 4 * 2 * 3 and saved["videos_decoded"] == 4 and saved["videos_failed"] == 0
    assert saved["protocol"].startswith("videomamba_k400: sparse T=4 x 2 clip(s)") and "x 3 videomamba crop(s)" in \
        saved["protocol"]
    assert saved["best_epoch"] == 1 and saved["weights"] == ("ema" if use_ema else "model")
    assert f"final test of best.pth (epoch 1): top1 {saved['top1']:.2f}" in (work_dir / "train.log").read_text()

    capsys.readouterr()
    views_file = tmp_path / "views.pt"
    args = [_eval_video_config(tmp_path, clips, views_file), "--checkpoint", str(work_dir / "best.pth"),
            "--no-progress"] + (["--ema"] if use_ema else [])
    assert load_tool("eval_video").main(args) == 0
    tool = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("top1", "top5", "mean_class_accuracy", "videos_decoded", "videos_failed", "views", "protocol"):
        assert saved[key] == tool[key], key
    ours, theirs = torch.load(saved["views_file"], weights_only=True), torch.load(views_file, weights_only=True)
    assert ours["keys"] == theirs["keys"]
    torch.testing.assert_close(ours["logits"], theirs["logits"])


def test_final_test_is_kept_on_resume_and_redone_under_another_protocol(tmp_path, clips, monkeypatch):
    from vssm.engine import trainer

    config = write_config(tmp_path, video_config(clips, final_test=f"dict(protocol={FULL_PROTOCOL}, workers=0)"))
    work_dir = str(tmp_path / "run")
    first = train(load_config(config), work_dir)["final_test"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("the final test ran again")

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "evaluate_video", must_not_run)
        kept = train(load_config(config), work_dir, resume="auto")["final_test"]  # complete: nothing to train
    assert kept == first
    log = (tmp_path / "run" / "train.log").read_text()
    assert "already holds best.pth (epoch 1) under this protocol; not redone" in log
    redone = train(load_config(config, {"final_test.protocol.num_clips": 1}), work_dir, resume="auto")["final_test"]
    assert redone["views"] == 4 * 1 * 3 and "x 1 clip(s)" in redone["protocol"]
    assert json.loads((tmp_path / "run" / "test_best.json").read_text()) == redone


def test_final_test_settings_are_checked_by_name(tmp_path, clips):
    config = write_config(tmp_path, video_config(clips, final_test=f"dict(protocol={FULL_PROTOCOL})"))
    cases = {
        "final_test.protocol.name": ("nope", r"'final_test.protocol': unknown video protocol 'nope'"),
        "final_test.protocol.num_frames": (8, r"'final_test.protocol' gives num_frames 8, the clips the model trains "
                                              r"on \(data.protocol\) 4"),
        "final_test.protocol.mean": ([0.5, 0.5, 0.5], r"'final_test.protocol' gives mean \(0.5, 0.5, 0.5\)"),
        "final_test.on_error": ("ignore", r"'final_test.on_error' must be 'skip' or 'fatal'"),
        "final_test.workers": (-1, r"'final_test.workers' must be an integer >= 0"),
        "data.dataset": ("synthetic", r"'final_test.protocol' re-tests video runs"),
    }
    for key, (value, message) in cases.items():
        with pytest.raises(UserError, match=message):
            load_config(config, {key: value})


# --------------------------------------------------------------------------------------------------------------------
# the S4ND HMDB-51 recipe

def test_s4nd_random_two_second_training_clip():
    """pytorchvideo's RandomClipSampler + UniformTemporalSubsample: a clip starting uniformly in [0, duration - 2] s,
    its frames ceil(start * fps) <= i < ceil(end * fps) subsampled by linspace; the validation view is the centre clip.
    """
    from vssm.data.video import UniformSecondsSampler, VideoClipDataset, video_protocol

    class Start:  # a generator whose clip start is fixed
        def __init__(self, start):
            self.start = start

        def uniform(self, low, high):
            assert low == 0.0
            self.high = high
            return self.start

    sampler = UniformSecondsSampler(num_frames=30, clip_seconds=2.0)
    start = Start(1.5)
    clip = sampler.train_clip(150, start, fps=30.0)  # 5 s at 30 fps: starts in [0, 3] s; [1.5, 3.5) s = frames 45..104
    assert start.high == 3.0 and len(clip) == 30 and clip[0] == 45 and clip[-1] == 104
    assert clip == (45 + np.linspace(0, 59, 30).astype(int)).tolist()
    assert sampler.train_clip(40, Start(0.0), fps=30.0)[-1] == 39  # shorter than 2 s: the whole video
    rng = np.random.default_rng(0)
    for _ in range(50):
        indices = sampler.train_clip(150, rng, fps=30.0)
        assert 0 <= indices[0] <= 90 and indices[-1] - indices[0] == 59
    with pytest.raises(ValueError, match="needs the video's frame rate"):
        sampler.train_clip(150, rng, fps=0.0)
    centre = VideoClipDataset([], video_protocol("s4nd_hmdb51"), training=False)._eval_protocol.sampler
    assert centre.clips(150, fps=30.0) == [sampler.clips(150, fps=30.0)[1]]  # clips [0, 2) and [2, 4) s: the second


def test_s4nd_hmdb51_recipe_has_the_official_values():
    from vssm.engine.config import final_test_protocol
    from vssm.engine.trainer import build_model
    from vssm.engine.video_eval import build_protocol, load_video_eval_config

    from .helpers import REPO

    cfg = load_config(str(REPO / "configs" / "video" / "s4nd_hmdb51_ft.py"))
    assert cfg.model["name"] == "s4nd_convnext_tiny_3d" and cfg.model["num_frames"] == 30
    assert cfg.model["drop_path_rate"] == cfg.model["drop_rate"] == 0.2
    assert cfg.data.dataset == "video" and cfg.data.video["format"] == "hmdb51" and cfg.data.video["split_id"] == 1
    assert cfg.data.val_split == "test" and cfg.data.num_classes == 51 and cfg.data.num_sample == 1
    for protocol in (video_protocol_of(cfg.data), final_test_protocol(cfg)):
        assert protocol.name == "s4nd_hmdb51" and protocol.num_frames == 30 and protocol.sampler.clip_seconds == 2.0
        assert protocol.short_side == 256 and protocol.crop_size == 224 and protocol.score == "logit"
    evaluation = load_video_eval_config(str(REPO / "configs" / "video" / "s4nd_hmdb51_eval.py"))
    assert final_test_protocol(cfg) == build_protocol(evaluation)  # the re-test is the eval config's protocol
    opt, sched = cfg.optimizer, cfg.scheduler
    clips_per_step = cfg.batch_size * cfg.grad_accum_steps
    assert clips_per_step == 64 and opt.lr_base * clips_per_step / opt.lr_base_size == pytest.approx(1e-4)
    assert opt.opt == "adamw" and opt.weight_decay == 0.2 and opt.betas == (0.9, 0.999) and opt.layer_decay is None
    assert cfg.epochs == 50 and sched.sched == "cosine" and not sched.on_updates and sched.warmup_epochs == 0
    assert sched.min_lr == 0.0 and sched.cooldown_epochs == 0
    assert cfg.amp == "fp16" and cfg.seed == 1112 and cfg.smoothing == 0.0 and not cfg.ema.enable
    assert cfg.mixup.mixup_alpha == cfg.mixup.cutmix_alpha == 0.0 and cfg.augment.re_prob == 0.0
    assert cfg.augment.auto_augment == "rand-m7-n1-mstd0.5" and cfg.augment.hflip == 0.5
    with torch.device("meta"):  # the full-size model, without allocating it
        model = build_model(cfg, cfg.data.num_classes)
    assert model.num_classes == 51 and sum(p.numel() for p in model.parameters()) == 30_113_235


def _write_hmdb51(root, videos_per_class: int = 3):
    """HMDB-51's layout: ``root/videos/<class>/<name>.mp4`` (8 frames at 8 fps) and ``root/splits/<class>_test_
    split1.txt`` (the first videos of a class for training (1), the last for testing (2))."""
    from vssm.data.moving_shapes import render_clip, write_video

    rng = np.random.default_rng(0)
    (root / "splits").mkdir()
    for direction in ("left", "right", "up", "down"):
        (root / "videos" / direction).mkdir(parents=True)
        lines = []
        for i in range(videos_per_class):
            write_video(str(root / "videos" / direction / f"{i}.mp4"), render_clip(direction, rng, 8, 64))
            lines.append(f"{i}.mp4 {1 if i < videos_per_class - 1 else 2}\n")
        (root / "splits" / f"{direction}_test_split1.txt").write_text("".join(lines))


def test_s4nd_hmdb51_recipe_trains_from_an_inflated_2d_checkpoint(tmp_path):
    """The recipe at a tiny size (test_s4nd_convnext_3d, 4 frames of 0.5-s clips at 32 px): the 2-D checkpoint is
    inflated into the 3-D model, an epoch trains, and best.pth is re-tested under the S4ND protocol (every 0.5-s clip
    of the 1-s test videos: 2 clips each, 1 centre crop)."""
    import timm
    from einops import repeat

    from vssm.engine.trainer import build_model

    from .helpers import REPO

    _write_hmdb51(tmp_path)
    torch.manual_seed(0)
    image_model = timm.create_model("test_s4nd_convnext", stem_type="patch", downsample_type="conv")
    torch.save(image_model.state_dict(), tmp_path / "s4nd_2d.pth")
    tiny = dict(name="s4nd_hmdb51", num_frames=4, clip_seconds=0.5, short_side=40, crop_size=32)
    options = {"model.name": "test_s4nd_convnext_3d", "model.num_frames": 4,
               "model.pretrained_file": str(tmp_path / "s4nd_2d.pth"), "data.root": str(tmp_path / "videos"),
               "data.video.annotation": str(tmp_path / "splits"), "data.num_classes": 4, "data.workers": 0,
               "data.protocol": tiny, "final_test.protocol": tiny, "final_test.workers": 0, "epochs": 1,
               "batch_size": 2, "grad_accum_steps": 2, "amp": None, "cpu_threads": 1}
    cfg = load_config(str(REPO / "configs" / "video" / "s4nd_hmdb51_ft.py"), options)

    inflated, image = build_model(cfg, 4).state_dict(), image_model.state_dict()
    height_kernel = "stages.0.blocks.0.conv_dw.kernel.1.A_imag"  # the 3-D (time, height, width) kernels
    torch.testing.assert_close(inflated[height_kernel], image["stages.0.blocks.0.conv_dw.kernel.0.A_imag"])
    torch.testing.assert_close(inflated["stem.conv.weight"],
                               repeat(image["stem.conv.weight"], "... h w -> ... t h w", t=2))

    result = train(cfg, str(tmp_path / "run"))
    assert result["epoch"] == 1 and math.isfinite(result["train_loss"])
    final = result["final_test"]
    assert final["videos_decoded"] == 4 and final["views"] == 4 * 2 * 1
    assert final["protocol"].startswith("s4nd_hmdb51: uniform 0.5-s clips, all of the video, 4 frames each")


def test_two_process_gloo_run_shards_the_final_test(tmp_path, clips):
    """torchrun with 2 CPU processes: each rank re-tests its shard of the 3 validation videos (one padded in), rank 0
    writes test_best.json with every view once and the numbers of one process's evaluation of the same best.pth."""
    import subprocess
    import sys

    from vssm.engine.video_eval import evaluate_video, load_video_eval_config

    from .helpers import REPO, subprocess_env

    (tmp_path / "val3.txt").write_text("".join((clips / "val.txt").read_text().splitlines(keepends=True)[:3]))
    config = write_config(tmp_path, video_config(clips, final_test=f"dict(protocol={FULL_PROTOCOL}, workers=0)"))
    work_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tools" / "train.py"), config, "--work-dir", str(work_dir), "--cfg-options",
               "batch_size=2", f"data.video.val.annotation={tmp_path / 'val3.txt'}"]
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((work_dir / "test_best.json").read_text())
    assert saved["videos_decoded"] == 3 and saved["views"] == 3 * 2 * 3

    eval_config = _eval_video_config(tmp_path, clips, tmp_path / "views.pt")
    one = evaluate_video(load_video_eval_config(eval_config, {"data.annotation": str(tmp_path / "val3.txt")}),
                         str(work_dir / "best.pth"))
    for key in ("top1", "top5", "mean_class_accuracy", "views"):
        assert saved[key] == pytest.approx(one[key]), key
    ours, theirs = torch.load(saved["views_file"], weights_only=True), torch.load(one["views_file"], weights_only=True)
    by_key = dict(zip(map(tuple, ours["keys"]), ours["logits"]))
    assert len(by_key) == len(ours["keys"]) == 18
    for key, row in zip(theirs["keys"], theirs["logits"]):
        torch.testing.assert_close(by_key[tuple(key)], row, rtol=1e-4, atol=1e-5)
