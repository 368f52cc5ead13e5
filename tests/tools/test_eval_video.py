"""tools/eval_video.py and vssm.engine.video_eval on tiny generated mp4s with test_videomamba: the JSON line, per-view
logits that re-score to the same numbers, bad and stuck videos skipped and counted (or fatal), and a 2-process gloo
run that counts every view once."""
import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import timm
import torch

from vssm.data import DataError
from vssm.data.video_errors import VideoDecodeError
from vssm.engine import UserError
from vssm.engine.video_eval import (
    check_clip_input, build_protocol, evaluate_video, load_video_eval_config, rescore, video_scores,
)

from ..data.video_fixtures import sleepy_decode, write_corrupt, write_shapes_list, write_truncated
from .helpers import REPO, load_tool, subprocess_env, write_config

PROTOCOL = "dict(name='videomamba_k400', num_frames=4, num_clips=2, num_crops=1, short_side=64, crop_size=64)"


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    """``good.txt``: 5 moving-shapes videos, two of them with the same file name in different folders (an odd
    count: the 2-rank split pads one); ``bad.txt``: those plus a corrupt, a truncated, a stuck and a missing file;
    a test_videomamba checkpoint (4 classes)."""
    root = tmp_path_factory.mktemp("clips")
    write_shapes_list(root, ["left", "right", "up", "down"], name="base.txt")
    (root / "a").mkdir()
    (root / "b").mkdir()
    shutil.copy(root / "0_left.mp4", root / "a" / "same.mp4")
    shutil.copy(root / "1_right.mp4", root / "b" / "same.mp4")
    good = ["0_left.mp4 0", "1_right.mp4 1", "2_up.mp4 2", "a/same.mp4 0", "b/same.mp4 1"]
    (root / "good.txt").write_text("\n".join(good) + "\n")
    write_corrupt(root / "corrupt.mp4")
    write_truncated(root / "2_up.mp4", root / "truncated.mp4")
    shutil.copy(root / "3_down.mp4", root / "hang.mp4")
    bad = good[:2] + ["corrupt.mp4 0", "truncated.mp4 1", "hang.mp4 3", "missing.mp4 2"]
    (root / "bad.txt").write_text("\n".join(bad) + "\n")
    torch.manual_seed(0)
    model = timm.create_model("test_videomamba", num_classes=4)
    torch.save(model.state_dict(), root / "model.pth")
    return root


def _config(root, folder, annotation="good.txt", **extra) -> str:
    text = textwrap.dedent(f"""\
        model = dict(name='test_videomamba')
        data = dict(format='list', annotation={str(root / annotation)!r}, root={str(root)!r}, num_classes=4)
        protocol = {PROTOCOL}
        batch_size = 8
        workers = 1
        cpu_threads = 1
        views_file = {str(folder / 'views.pt')!r}
        """)
    return write_config(folder, text + "".join(f"{k} = {v!r}\n" for k, v in extra.items()), "eval.py")


def test_eval_video_prints_one_json_line_and_saves_rescorable_views(clips, tmp_path, capsys):
    tool = load_tool("eval_video")
    config = _config(clips, tmp_path)
    assert tool.main([config, "--checkpoint", str(clips / "model.pth"), "--no-progress"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("top1", "top5", "mean_class_accuracy", "videos_found", "videos_decoded", "videos_failed",
                "protocol", "views_file"):
        assert key in metrics
    assert metrics["videos_found"] == metrics["videos_decoded"] == 5 and metrics["videos_failed"] == 0
    assert metrics["views"] == 10 and metrics["protocol"].startswith("videomamba_k400: sparse T=4 x 2 clip(s)")
    saved = torch.load(metrics["views_file"], weights_only=True)
    assert len({tuple(k) for k in saved["keys"]}) == 10  # same file name in two folders: two videos
    assert {k[0] for k in saved["keys"]} >= {str(clips / "a" / "same.mp4"), str(clips / "b" / "same.mp4")}
    rows = [i for i, k in enumerate(saved["keys"]) if k[0] == str(clips / "2_up.mp4")]
    paths, scores, _ = video_scores(saved["keys"], saved["logits"], saved["labels"], "prob")
    torch.testing.assert_close(scores[paths.index(str(clips / "2_up.mp4"))],
                               saved["logits"][rows].double().softmax(-1).mean(0))
    again = rescore(metrics["views_file"])
    assert again["top1"] == metrics["top1"] and again["mean_class_accuracy"] == metrics["mean_class_accuracy"]
    assert tool.main(["--rescore", metrics["views_file"], "--score", "logit"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == "logit"
    assert tool.main(["--rescore", str(tmp_path / "none.pt")]) == 2
    assert "cannot read views file" in capsys.readouterr().err


def test_bad_and_stuck_videos_are_reported_skipped_and_counted(clips, tmp_path):
    """A corrupt, a truncated and a stuck file (its decoder killed after the time limit) are skipped and counted, the
    missing one too; nothing is scored in their place. With on_error='fatal' the first one stops the run."""
    lines = []
    cfg = load_video_eval_config(_config(clips, tmp_path, "bad.txt", timeout=3.0))
    metrics = evaluate_video(cfg, str(clips / "model.pth"), decode_fn=sleepy_decode, report=lines.append)
    assert metrics["videos_listed"] == 6 and metrics["videos_found"] == 5 and metrics["videos_missing"] == 1
    assert metrics["videos_decoded"] == 2 and metrics["videos_failed"] == 3 and metrics["views"] == 4
    reasons = {entry["path"].rsplit("/", 1)[-1]: entry["reason"] for entry in metrics["failures"]}
    assert reasons == {"corrupt.mp4": "decode", "truncated.mp4": "decode", "hang.mp4": "timeout"}
    assert any("missing.mp4" in line for line in lines) and any("hang.mp4" in line for line in lines)

    cfg.on_error = "fatal"
    with pytest.raises(DataError, match="missing.mp4"):
        evaluate_video(cfg, str(clips / "model.pth"))
    (tmp_path / "corrupt_first.txt").write_text("corrupt.mp4 0\n0_left.mp4 0\n")
    cfg.data.annotation = str(tmp_path / "corrupt_first.txt")
    with pytest.raises(VideoDecodeError, match="corrupt.mp4: cannot open"):
        evaluate_video(cfg, str(clips / "model.pth"))


def test_config_errors_say_what_to_fix(clips, tmp_path):
    with pytest.raises(UserError, match="unknown config key 'protcol'"):
        load_video_eval_config(_config(clips, tmp_path, protcol=1))
    with pytest.raises(UserError, match="'data.format' must be one of"):
        load_video_eval_config(_config(clips, tmp_path, data=dict(format="k400")))
    cfg = load_video_eval_config(_config(clips, tmp_path))
    cfg.protocol = dict(name="videomamba_k400", num_frames=8, short_side=64, crop_size=64)
    with pytest.raises(UserError, match="takes clips of 4 frames x 64x64, the protocol gives 8 x 64x64"):
        evaluate_video(cfg, str(clips / "model.pth"))


def test_quickstart_eval_config_matches_its_model():
    cfg = load_video_eval_config(str(REPO / "configs" / "demo" / "video_quickstart_eval.py"))
    assert cfg.data.format == "moving_shapes"
    model = timm.create_model(cfg.model["name"], num_classes=4, **{k: v for k, v in cfg.model.items() if k != "name"})
    check_clip_input(model, build_protocol(cfg), cfg.model["name"])


def test_two_process_gloo_run_counts_every_view_once(clips, tmp_path):
    """5 videos on 2 ranks (one padded in): the same views and logits as one process, each counted once."""
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    one = evaluate_video(load_video_eval_config(_config(clips, tmp_path / "one")), str(clips / "model.pth"))
    config = _config(clips, tmp_path / "two")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tools" / "eval_video.py"), config, "--checkpoint", str(clips / "model.pth")]
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads(result.stdout.strip().splitlines()[-1])
    assert two["videos_decoded"] == 5 and two["views"] == 10 and two["top1"] == pytest.approx(one["top1"])
    assert two["mean_class_accuracy"] == pytest.approx(one["mean_class_accuracy"])
    saved_one = torch.load(one["views_file"], weights_only=True)
    saved_two = torch.load(two["views_file"], weights_only=True)
    by_key = {tuple(k): row for k, row in zip(map(tuple, saved_two["keys"]), saved_two["logits"])}
    assert len(by_key) == len(saved_two["keys"]) == 10
    for key, row in zip(saved_one["keys"], saved_one["logits"]):
        torch.testing.assert_close(by_key[tuple(key)], row, rtol=1e-4, atol=1e-5)
