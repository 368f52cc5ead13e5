"""Video data: the official sampling formulas on worked examples, spatial views, decoding of real (tiny) mp4s, broken
and stuck files, every annotation format, score averaging and the moving-shapes generator."""
import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vssm.data import DataError
from vssm.data.moving_shapes import CLASSES, render_clip, write_moving_shapes
from vssm.data.video import (
    PROTOCOL_NAMES, DecodePool, DenseSampler, SegmentSampler, SparseSampler, UniformSecondsSampler, crop_offsets,
    decode_views, normalise_views, resize_short_side, video_protocol,
)
from vssm.data.video_annotations import (
    kinetics_file_name, read_hmdb51_splits, read_kinetics_csv, read_path_label_list, read_ssv2,
)
from vssm.data.video_errors import (
    AnnotationError, EmptyAnnotationError, UnknownLabelError, VideoDecodeError, VideoNotFoundError,
    VideoTimeoutError, VideoTooShortError,
)
from vssm.engine.video_eval import accuracy_metrics, video_scores

from .video_fixtures import crashing_decode, frame_index, sleepy_decode, write_counter_video
from .video_fixtures import video_dir  # noqa: F401 (a session fixture)


# ---------------------------------------------------------------------------------------------------- samplers

def test_videomamba_k400_sparse_indices():
    """Kinetics_sparse on a 300-frame video, T=16, 4 clips (and the 1-clip validation sampling)."""
    clips = SparseSampler(16, 4).clips(300)
    assert len(clips) == 4 and all(len(c) == 16 for c in clips)
    assert clips[0][:3] == [3, 22, 40] and clips[0][-1] == 283
    assert clips[3][:2] == [14, 33] and clips[3][-1] == 294
    seg = 299 / 16
    assert clips[1] == [min(round(seg * i) + int(seg / 5 * 2), 299) for i in range(16)]
    assert SparseSampler(16, 1).clips(300)[0][:3] == [9, 28, 46] and SparseSampler(16, 1).clips(300)[0][-1] == 289
    short = SparseSampler(16, 2).clips(10)  # shorter than T: indices repeat, never past the end
    assert all(0 <= i <= 9 for c in short for i in c) and short[0] == sorted(short[0])


def test_videomamba_ssv2_views():
    starts, centres = SegmentSampler(8).clips(48)
    assert starts == list(range(0, 48, 6)) and centres == list(range(3, 48, 6))
    view0, view1 = SegmentSampler(16).clips(10)  # below 2T frames starts and centres interleave
    assert view0[:6] == [0, 0, 1, 1, 2, 3] and len(view0) == len(view1) == 16
    with pytest.raises(ValueError, match="exactly 2"):
        SegmentSampler(8, 3)


def test_mmaction_dense_sample_frames():
    clips = DenseSampler(clip_len=16, frame_interval=4, num_clips=5).clips(300)
    # span 61, max offset 239: offsets round(k * 239 / 4) = 0, 60 (59.75), 120 (119.5 -> 120), 179, 239
    assert [c[0] for c in clips] == [0, 60, 120, 179, 239]
    assert clips[0] == list(range(0, 64, 4))
    assert DenseSampler(4, 2, 1).clips(20) == [[6, 8, 10, 12]]  # one clip: max_offset // 2
    assert DenseSampler(8, 2, 1).clips(10) == [[0, 2, 4, 6, 8, 0, 2, 4]]  # shorter than the span: looped


def test_s4nd_uniform_two_second_clips():
    sampler = UniformSecondsSampler(num_frames=30, clip_seconds=2.0)
    clips = sampler.clips(150, fps=30.0)  # 5 s: clips [0, 2) and [2, 4); the last second is not a full clip
    assert len(clips) == 2 and all(len(c) == 30 for c in clips)
    assert clips[0][0] == 0 and clips[0][-1] == 59 and clips[1][0] == 60 and clips[1][-1] == 119
    assert clips[0] == np.arange(60)[np.linspace(0, 59, 30).astype(int)].tolist()
    assert len(sampler.clips(120, fps=30.0)) == 2 and len(sampler.clips(20, fps=30.0)) == 1  # 4 s; shorter than 2 s
    assert max(sampler.clips(20, fps=30.0)[0]) == 19


def test_presets_describe_themselves_and_reject_unknown_settings():
    for name in PROTOCOL_NAMES:
        text = video_protocol(name).describe()
        assert text.startswith(name + ":") and "crop" in text and "score" in text
    assert "seg=(n-1)/T" in video_protocol("videomamba_k400").describe()
    assert "mean of logits" in video_protocol("s4nd_hmdb51").describe()
    custom = video_protocol("videomamba_k400", num_frames=8, num_clips=2, crop_size=64, short_side=64)
    assert custom.sampler == SparseSampler(8, 2) and custom.num_frames == 8
    with pytest.raises(ValueError, match="no setting 'clip_len'"):
        video_protocol("videomamba_k400", clip_len=8)
    with pytest.raises(ValueError, match="unknown video protocol"):
        video_protocol("kinetics")


# ---------------------------------------------------------------------------------------------------- spatial views

def test_crop_offsets_follow_each_convention():
    assert crop_offsets(398, 224, 224, 3, "videomamba") == [(0, 0), (87, 0), (174, 0)]
    assert crop_offsets(398, 224, 224, 1, "videomamba") == [(87, 0)]
    assert crop_offsets(399, 224, 224, 3, "mmaction") == [(0, 0), (174, 0), (87, 0)]  # left, right, centre
    assert crop_offsets(341, 256, 224, 1, "centre") == [(58, 16)]
    with pytest.raises(ValueError):
        crop_offsets(300, 200, 224, 3, "videomamba")


def test_resize_short_side_is_bilinear_on_uint8():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 12, 20, 3), dtype=np.uint8)
    out = resize_short_side(frames, 30)  # upsampling: no antialiasing question, compare with torch's bilinear
    assert out.shape == (2, 30, 50, 3) and out.dtype == np.uint8
    ref = F.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(30, 50), mode="bilinear",
                        align_corners=False).round().clamp(0, 255).permute(0, 2, 3, 1).numpy()
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    assert resize_short_side(frames, 7).shape == (2, 7, 11, 3)  # long side int(7 * 20 / 12) = 11
    assert resize_short_side(frames, 7, "round").shape == (2, 7, 12, 3)  # int(20 * 7 / 12 + 0.5) = 12


# ---------------------------------------------------------------------------------------------------- decoding

def test_decode_views_reads_the_sampled_frames(video_dir):
    protocol = video_protocol("videomamba_ssv2", num_frames=8, short_side=16, crop_size=16)
    video = decode_views(str(video_dir / "counter48.mp4"), protocol)
    assert video.num_frames == 48 and video.fps == pytest.approx(8.0)
    assert video.views.shape == (6, 8, 16, 16, 3) and video.views.dtype == np.uint8  # 2 clips x 3 crops
    assert video.keys == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [frame_index(f) for f in video.views[0]] == list(range(0, 48, 6))
    assert [frame_index(f) for f in video.views[3]] == list(range(3, 48, 6))
    x = normalise_views(video.views, protocol)
    assert x.shape == (6, 3, 8, 16, 16) and x.dtype == torch.float32


def test_decode_views_crops_portrait_videos_along_the_height(video_dir):
    protocol = video_protocol("videomamba_k400", num_frames=4, num_clips=1, short_side=16, crop_size=16)
    video = decode_views(str(video_dir / "counter20_portrait.mp4"), protocol)  # 64x32 -> 32x16, crops down the height
    assert video.views.shape == (3, 4, 16, 16, 3)


def test_short_video_pads_or_fails(video_dir):
    protocol = video_protocol("videomamba_k400", num_frames=16, num_clips=1, short_side=16, crop_size=16,
                              num_crops=1)
    padded = decode_views(str(video_dir / "counter10.mp4"), protocol)
    assert [frame_index(f) for f in padded.views[0]] == SparseSampler(16, 1).clips(10)[0]
    with pytest.raises(VideoTooShortError, match="counter10.mp4: 10 frames, one clip needs 16"):
        decode_views(str(video_dir / "counter10.mp4"), protocol, short_video="fail")


@pytest.mark.parametrize("name", ["corrupt.mp4", "truncated.mp4"])
def test_unreadable_video_names_the_file(video_dir, name):
    protocol = video_protocol("videomamba_k400", num_frames=4, num_clips=1, short_side=16, crop_size=16)
    with pytest.raises(VideoDecodeError, match=name) as info:
        decode_views(str(video_dir / name), protocol)
    assert isinstance(info.value, DataError) and len(str(info.value)) < 400


def test_missing_video_is_a_named_error(video_dir):
    with pytest.raises(VideoNotFoundError, match="nope.mp4"):
        decode_views(str(video_dir / "nope.mp4"), video_protocol("videomamba_k400"))


def test_decode_pool_kills_a_stuck_worker_and_goes_on(video_dir, tmp_path):
    """A decode that never returns (decord stuck holding the GIL, simulated by a sleep) is killed after the time limit,
    reported by path, and a fresh worker decodes the remaining files; a worker that dies is reported the same way."""
    protocol = video_protocol("videomamba_k400", num_frames=4, num_clips=1, short_side=16, crop_size=16,
                              num_crops=1)
    good = str(video_dir / "counter48.mp4")
    hang = str(tmp_path / "hang.mp4")
    write_counter_video(tmp_path / "hang.mp4", 8)
    pool = DecodePool(sleepy_decode, dict(protocol=protocol), workers=1, timeout=2.0)
    start = time.monotonic()
    results = {r.task: r for r in pool.map([(0, good), (1, hang), (2, good), (3, str(video_dir / "corrupt.mp4"))])}
    assert time.monotonic() - start < 30
    assert results[0].value.views.shape == (1, 4, 16, 16, 3) and results[2].error is None
    assert isinstance(results[1].error, VideoTimeoutError) and "hang.mp4" in str(results[1].error)
    assert results[1].error.reason == "timeout" and pool.killed == [hang]
    assert isinstance(results[3].error, VideoDecodeError) and "corrupt.mp4" in str(results[3].error)

    crash = str(tmp_path / "crash.mp4")
    write_counter_video(tmp_path / "crash.mp4", 8)
    pool = DecodePool(crashing_decode, dict(protocol=protocol), workers=2, timeout=20.0)
    results = {r.task: r for r in pool.map([(0, crash), (1, good), (2, good)])}
    assert "decoder process died (exit code 3)" in str(results[0].error) and results[1].error is None
    assert results[2].error is None


# ---------------------------------------------------------------------------------------------------- annotations

def test_path_label_lists_with_comma_or_space(tmp_path):
    (tmp_path / "k400.csv").write_text("a/x.mp4,3\nb/y y.mp4,0\n\n")
    (tmp_path / "ssv2.txt").write_text("1.webm 5\n2.webm  7\n")
    k400 = read_path_label_list(str(tmp_path / "k400.csv"), root="/data", delimiter=",")
    assert [(r.path, r.label) for r in k400.records] == [("/data/a/x.mp4", 3), ("/data/b/y y.mp4", 0)]
    assert k400.num_classes == 4
    auto = read_path_label_list(str(tmp_path / "ssv2.txt"), root="/v")
    assert [(r.path, r.label) for r in auto.records] == [("/v/1.webm", 5), ("/v/2.webm", 7)]
    (tmp_path / "bad.txt").write_text("a.mp4 1\nb.mp4 cat\n")
    with pytest.raises(AnnotationError, match=r"bad.txt:2: label 'cat' is not an integer"):
        read_path_label_list(str(tmp_path / "bad.txt"))
    with pytest.raises(UnknownLabelError, match=r"k400.csv:1: label 3 outside 0..2"):
        read_path_label_list(str(tmp_path / "k400.csv"), num_classes=3)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(EmptyAnnotationError, match="lists no video"):
        read_path_label_list(str(tmp_path / "empty.txt"))
    with pytest.raises(AnnotationError, match="not found"):
        read_path_label_list(str(tmp_path / "none.txt"))


def test_kinetics_csv_file_names_and_alphabetical_ids(tmp_path):
    (tmp_path / "val.csv").write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        "zumba,abc,10,20,val,0\n"
        '"passing American football (in game)",x-y_z,3,13,val,0\n'
        "abseiling,qqq,0,10,train,0\n")
    (tmp_path / "videos" / "zumba").mkdir(parents=True)
    (tmp_path / "videos" / "zumba" / "abc_000010_000020.mp4").write_bytes(b"")
    assert kinetics_file_name("x-y_z", "3", "13") == "x-y_z_000003_000013.mp4"
    videos = read_kinetics_csv(str(tmp_path / "val.csv"), str(tmp_path / "videos"), split="val")
    assert videos.classes == ["passing American football (in game)", "zumba"]  # alphabetical
    assert videos.records[0].path.endswith("videos/zumba/abc_000010_000020.mp4")  # found in its class folder
    assert videos.records[1].path.endswith("videos/x-y_z_000003_000013.mp4") and videos.records[1].label == 0
    everything = read_kinetics_csv(str(tmp_path / "val.csv"), str(tmp_path / "videos"), layout="flat")
    assert everything.classes[0] == "abseiling" and len(everything.records) == 3
    with pytest.raises(UnknownLabelError, match="class 'zumba' is not in the class list"):
        read_kinetics_csv(str(tmp_path / "val.csv"), classes=["abseiling", "passing American football (in game)"])


def test_ssv2_json_labels(tmp_path):
    labels = {"Approaching something with your camera": "0", "Holding something next to something": "1"}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    entries = [{"id": "78687", "label": "holding potato next to vicks", "template": "Holding [something] next to "
                "[something]", "placeholders": ["potato", "vicks"]},
               {"id": "42326", "template": "Approaching [something] with your camera"}]
    (tmp_path / "validation.json").write_text(json.dumps(entries))
    videos = read_ssv2(str(tmp_path / "validation.json"), str(tmp_path / "labels.json"), "/ssv2")
    assert [(r.path, r.label) for r in videos.records] == [("/ssv2/78687.webm", 1), ("/ssv2/42326.webm", 0)]
    assert videos.num_classes == 2
    (tmp_path / "test.json").write_text(json.dumps([{"id": "1"}]))
    with pytest.raises(UnknownLabelError, match="no 'template'"):
        read_ssv2(str(tmp_path / "test.json"), str(tmp_path / "labels.json"))
    (tmp_path / "other.json").write_text(json.dumps([{"id": "2", "template": "Dropping [something]"}]))
    with pytest.raises(UnknownLabelError, match="'Dropping something' is not in"):
        read_ssv2(str(tmp_path / "other.json"), str(tmp_path / "labels.json"))


def test_hmdb51_split_files(tmp_path):
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "wave_test_split1.txt").write_text("w1.avi 1 \nw2.avi 2 \nw3.avi 0 \n")
    (splits / "brush_hair_test_split1.txt").write_text("b1.avi 2 \n")
    (splits / "brush_hair_test_split2.txt").write_text("b1.avi 1 \n")
    test = read_hmdb51_splits(str(splits), "/hmdb")
    assert test.classes == ["brush_hair", "wave"]
    assert [(r.path, r.label) for r in test.records] == [("/hmdb/brush_hair/b1.avi", 0), ("/hmdb/wave/w2.avi", 1)]
    assert [r.path for r in read_hmdb51_splits(str(splits), "/hmdb", subset="train").records] == ["/hmdb/wave/w1.avi"]
    with pytest.raises(EmptyAnnotationError):
        read_hmdb51_splits(str(splits), split_id=3)


# ---------------------------------------------------------------------------------------------------- scoring

def test_scores_average_each_view_once():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0], [5.0, 0.0]])
    keys = [("/a/v.mp4", 0, 0), ("/a/v.mp4", 1, 0), ("/a/v.mp4", 0, 0),  # a padded repeat of view (0, 0)
            ("/b/v.mp4", 0, 0), ("/b/v.mp4", 0, 1)]  # same stem, another folder: another video
    paths, probs, labels = video_scores(keys, logits, [0, 0, 0, 1, 1], "prob")
    assert paths == ["/a/v.mp4", "/b/v.mp4"] and labels.tolist() == [0, 1]
    expected = (logits[0].softmax(0) + logits[1].softmax(0)).double() / 2
    torch.testing.assert_close(probs[0], expected)
    _, means, _ = video_scores(keys, logits, [0, 0, 0, 1, 1], "logit")
    torch.testing.assert_close(means[1], torch.tensor([2.5, 1.5], dtype=torch.float64))
    metrics = accuracy_metrics(means, labels, num_classes=2)
    assert metrics == {"top1": 50.0, "top5": 100.0, "mean_class_accuracy": 50.0}


def test_mean_class_accuracy_weights_classes_equally():
    scores = torch.eye(3)[[0, 0, 0, 1, 0]].double()  # class 0: 3/3 right, class 1: 1/2 right
    metrics = accuracy_metrics(scores, torch.tensor([0, 0, 0, 1, 1]), num_classes=3)
    assert metrics["top1"] == pytest.approx(80.0) and metrics["mean_class_accuracy"] == pytest.approx(75.0)


# ---------------------------------------------------------------------------------------------------- moving shapes

def _centre(frame: np.ndarray) -> np.ndarray:
    bright = frame.max(axis=-1) >= 150
    rows, cols = np.nonzero(bright)
    return np.array([rows.mean(), cols.mean()])


def test_moving_shapes_need_frame_order(tmp_path):
    rng = np.random.default_rng(0)
    for name, axis, sign in (("left", 1, -1), ("right", 1, 1), ("up", 0, -1), ("down", 0, 1)):
        clip = render_clip(name, rng, num_frames=8, size=32)
        motion = _centre(clip[-1]) - _centre(clip[0])
        assert np.sign(motion[axis]) == sign and abs(motion[1 - axis]) < 1e-6
    lists = write_moving_shapes(str(tmp_path / "ms"), train_per_class=1, val_per_class=1, num_frames=8, size=32)
    videos = read_path_label_list(lists["val"], lists["root"])
    assert [r.label for r in videos.records] == [0, 1, 2, 3] and CLASSES == ("left", "right", "up", "down")
    protocol = video_protocol("videomamba_k400", num_frames=8, num_clips=1, num_crops=1, short_side=32, crop_size=32)
    right = decode_views(videos.records[1].path, protocol).views[0]
    assert _centre(right[-1])[1] > _centre(right[0])[1] + 8  # the decoded mp4 still moves right
    before = (tmp_path / "ms" / "val.txt").stat().st_mtime_ns
    write_moving_shapes(str(tmp_path / "ms"), train_per_class=1, val_per_class=1, num_frames=8, size=32)
    assert (tmp_path / "ms" / "val.txt").stat().st_mtime_ns == before  # already there: not rewritten


def test_clip_dataset_for_training_and_validation(video_dir):
    from vssm.data.video import VideoClipDataset
    from vssm.data.video_annotations import VideoRecord

    protocol = video_protocol("videomamba_k400", num_frames=4, num_clips=4, short_side=16, crop_size=16)
    records = [VideoRecord(str(video_dir / "counter48.mp4"), 1)]
    val = VideoClipDataset(records, protocol, training=False)
    clip, label = val[0]
    assert clip.shape == (3, 4, 16, 16) and label == 1 and len(val) == 1
    mean, std = torch.tensor(protocol.mean).view(3, 1, 1, 1), torch.tensor(protocol.std).view(3, 1, 1, 1)
    levels = ((clip * std + mean) * 255).mean(dim=(0, 2, 3))  # grey levels of the frames: the middle of each segment
    assert [int(round(v / 5)) for v in levels.tolist()] == SparseSampler(4, 1).clips(48)[0]
    train = VideoClipDataset(records, protocol, training=True)
    np.random.seed(0)
    first, _ = train[0]
    np.random.seed(0)
    again, _ = train[0]
    assert first.shape == (3, 4, 16, 16) and torch.equal(first, again)  # a function of the global seed
    with pytest.raises(ValueError, match="no training sampler"):
        VideoClipDataset(records, video_protocol("mmaction_dense"), training=True)


class _OverReporting:
    """A decord reader whose container claims more frames than it holds (dmlc/decord #373)."""

    def __init__(self, reader, reported: int):
        self.reader, self.reported, self.real = reader, reported, len(reader)

    def __len__(self):
        return self.reported

    def __getitem__(self, i):
        if i >= self.real:
            raise RuntimeError("Error seeking")
        return self.reader[i]

    def get_avg_fps(self):
        return self.reader.get_avg_fps()

    def seek(self, i):
        self.reader.seek(min(i, self.real - 1))

    def get_batch(self, indices):
        if max(indices) >= self.real:
            raise RuntimeError("[11:59:05] video_reader.cc: Error seeking to frame, file content follows: \x00\x01")
        return self.reader.get_batch(indices)


def test_sampling_is_redone_on_the_decodable_length(video_dir):
    from vssm.data.video import open_video

    protocol = video_protocol("videomamba_k400", num_frames=8, num_clips=1, short_side=16, crop_size=16, num_crops=1)
    video = decode_views(str(video_dir / "counter48.mp4"), protocol,
                         open_fn=lambda path, threads: _OverReporting(open_video(path, threads), 71))
    assert video.reported_frames == 71 and video.num_frames == 48
    assert [frame_index(f) for f in video.views[0]] == SparseSampler(8, 1).clips(48)[0]


def test_s4nd_protocol_reads_two_second_clips_at_the_video_frame_rate(video_dir):
    protocol = video_protocol("s4nd_hmdb51", num_frames=6, short_side=32, crop_size=16)
    video = decode_views(str(video_dir / "counter48.mp4"), protocol)  # 48 frames at 8 fps: three 2-s clips
    assert video.keys == [(0, 0), (1, 0), (2, 0)] and video.views.shape == (3, 6, 16, 16, 3)
    for k, view in enumerate(video.views):
        assert [frame_index(f) for f in view] == [16 * k + i for i in (0, 3, 6, 9, 12, 15)]


# ---------------------------------------------------------------------------------------- training augmentation

def _rand_augment_reference(size: int):
    """timm's RandAugment with the hyper-parameters of VideoMamba's create_random_augment (built independently)."""
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform

    transform = rand_augment_transform("rand-m9-n3-mstd0.5-inc1", {"translate_const": int(size * 0.45),
                                                                   "interpolation": Image.BICUBIC})
    return lambda frame: np.asarray(transform(Image.fromarray(frame)))


def _seed_all(seed: int) -> None:
    """Seed the generators the clip augmentation draws from (as vssm.engine.data.SeededSamples does per sample)."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_rand_augment_applies_the_same_ops_to_every_frame():
    from vssm.data.video import rand_augment_clip

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(5, 24, 40, 3), dtype=np.uint8)
    constant = np.repeat(frames[:1], 5, axis=0)
    reference = _rand_augment_reference(32)
    outputs = []
    for seed in range(6):
        _seed_all(seed)
        out = rand_augment_clip(constant, "rand-m9-n3-mstd0.5-inc1", 32)
        assert out.shape == constant.shape and out.dtype == np.uint8
        assert all(np.array_equal(out[t], out[0]) for t in range(5))  # a constant clip stays constant
        outputs.append(out[0])
        _seed_all(seed)
        varied = rand_augment_clip(frames, "rand-m9-n3-mstd0.5-inc1", 32)
        for t in range(5):  # each frame: exactly what timm's RandAugment makes of it from the same generator state
            _seed_all(seed)
            assert np.array_equal(varied[t], reference(frames[t]))
    distinct = {out.tobytes() for out in outputs}
    assert len(distinct) >= 4  # other seeds, other op chains
    assert any(not np.array_equal(out, constant[0]) for out in outputs)


def test_rand_augment_leaves_the_generators_as_one_image_would():
    import random

    from vssm.data.video import rand_augment_clip

    frames = np.random.default_rng(1).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    _seed_all(7)
    rand_augment_clip(frames, "rand-m9-n3-mstd0.5-inc1", 32)
    after_clip = (random.random(), np.random.random())
    _seed_all(7)
    _rand_augment_reference(32)(frames[0])
    assert (random.random(), np.random.random()) == after_clip


def test_random_erasing_erases_one_box_per_clip():
    import random

    from vssm.data.video import erase_clip

    clip = torch.zeros(3, 6, 20, 20)
    for seed in range(5):
        random.seed(seed)
        torch.manual_seed(seed)
        erased = erase_clip(clip, probability=1.0, mode="pixel")
        box = (erased != 0).any(dim=0)  # (T, H, W)
        assert box[0].any() and all(torch.equal(box[t], box[0]) for t in range(6))  # the same box in every frame
        assert not torch.equal(erased[:, 0], erased[:, 1])  # fresh noise per frame
        assert torch.equal(clip, torch.zeros_like(clip))  # the input is left alone
    assert torch.equal(erase_clip(clip, probability=0.0), clip)
    random.seed(0)
    two = (erase_clip(clip, probability=1.0, max_count=2) != 0).any(dim=0)
    assert not two[:3].any() and two[3:].any()  # re_count 2: the official skips the first T // 2 frames


def test_random_resized_box_and_its_fallback():
    from vssm.data.video import random_resized_box

    rng = np.random.default_rng(0)
    for _ in range(20):
        top, left, h, w = random_resized_box(30, 50, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= top <= 30 - h and 0 <= left <= 50 - w and 0.08 * 1500 * 0.8 <= h * w <= 1500
    # an area that never fits: the official centre fall-back, the frame clamped to the aspect range
    assert random_resized_box(10, 40, (2.0, 3.0), (3 / 4, 4 / 3), rng) == (0, 13, 10, 13)
    assert random_resized_box(40, 10, (2.0, 3.0), (3 / 4, 4 / 3), rng) == (13, 0, 13, 10)
    assert random_resized_box(20, 22, (2.0, 3.0), (3 / 4, 4 / 3), rng) == (0, 0, 20, 22)


def test_num_sample_augments_one_decoded_clip_several_times(video_dir, tmp_path):
    from vssm.data.video import ClipAugment, VideoClipDataset
    from vssm.data.video_annotations import VideoRecord

    from .video_fixtures import write_shapes_list

    protocol = video_protocol("videomamba_k400", num_frames=4, short_side=16, crop_size=16)
    counter = VideoClipDataset([VideoRecord(str(video_dir / "counter48.mp4"), 1)], protocol, training=True,
                               augment=ClipAugment(scale=(0.2, 1.0)), num_sample=2)
    mean, std = torch.tensor(protocol.mean).view(1, 3, 1, 1, 1), torch.tensor(protocol.std).view(1, 3, 1, 1, 1)
    for seed in range(3):
        _seed_all(seed)
        views, label = counter[0]
        assert views.shape == (2, 3, 4, 16, 16) and label == 1
        levels = ((views * std + mean) * 255 / 5).mean(dim=(1, 3, 4)).round()  # (view, frame): the frame index
        assert torch.equal(levels[0], levels[1])  # both views augment the same decoded frames
    assert VideoClipDataset(counter.records, protocol, training=False, num_sample=2).num_sample == 1

    write_shapes_list(tmp_path, ["right"], name="list.txt")
    augment = ClipAugment(auto_augment="rand-m9-n2-mstd0.5-inc1", scale=(0.2, 1.0), re_prob=0.5)
    shapes = VideoClipDataset([VideoRecord(str(tmp_path / "0_right.mp4"), 1)], protocol, training=True,
                              augment=augment, num_sample=2)
    _seed_all(3)
    first, _ = shapes[0]
    assert first.shape == (2, 3, 4, 16, 16) and not torch.equal(first[0], first[1])  # independent augmentations
    _seed_all(3)
    assert torch.equal(shapes[0][0], first)  # a function of the generators' state
    with pytest.raises(ValueError, match="num_sample"):
        VideoClipDataset(counter.records, protocol, training=True, num_sample=0)
