"""Video evaluation data: frame samplers and spatial views as named protocols, decord decoding, and a pool of decoder
processes with a per-video time limit.

A **protocol** (``VideoProtocol``, built by ``video_protocol(name, **overrides)``) is everything that turns a file into
the views a model scores: the temporal sampler (which frame indices form each clip), the spatial views (short side,
crop size, crop offsets), the normalisation and how view scores are averaged. Every protocol prints itself
(``describe()``) so that a number is never reported without the protocol that produced it. Presets:

- ``videomamba_k400``: VideoMamba's ``Kinetics_sparse`` test sampling. ``seg = max(0, n - 1) / T``; clip ``k`` of
  ``S``: ``idx_i = min(round(seg * i) + int(seg / (S + 1) * (k + 1)), n - 1)``, i = 0..T-1 (300 frames, T=16, S=4:
  clip 0 = [3, 22, 40, ...]); x 3 crops of ``crop_size`` along the long side at ``int(c * (long - size) / 2)`` after
  resizing the short side to ``crop_size`` (long side ``int(size * long / short)``); ImageNet mean/std; softmax per
  view, then the mean.
- ``videomamba_ssv2``: VideoMamba's SSv2 test sampling, 2 views: ``tick = n / T``; segment starts ``int(tick * x)``
  and centres ``int(tick / 2 + tick * x)`` are concatenated and sorted; view k takes every other entry from k (48
  frames, T=8: [0, 6, ..., 42] and [3, 9, ..., 45]; below 2T frames the two interleave) x 3 crops; never flipped.
- ``mmaction_dense``: mmaction2's ``SampleFrames(clip_len, frame_interval, num_clips, test_mode=True)``: span
  ``(clip_len - 1) * frame_interval + 1``, ``max_offset = max(n - span, 0)``, clip offsets
  ``round(k * max_offset / (num_clips - 1))`` (one clip: ``max_offset // 2``), indices looped modulo n; then
  ``Resize((-1, short_side))`` (long side ``int(long * short_side / short + 0.5)``) and ``ThreeCrop`` (offsets 0,
  2 * step, step with ``step = (long - size) // 2``: left, right, centre); softmax mean (``average_clips='prob'``).
- ``s4nd_hmdb51``: S4ND's HMDB-51 protocol (pytorchvideo): consecutive non-overlapping 2-s clips covering the video
  (``UniformClipSampler``; at least one), each subsampled to 30 frames with ``linspace(0, t - 1, 30)`` (truncated),
  short side 256 (long side ``floor(long * 256 / short)``), centre crop 224, Kinetics mean/std on the 0-255 scale
  (the same as (0.43216, 0.394666, 0.37645) / (0.22803, 0.22145, 0.216989) on 0-1), video score = mean of logits.

Frames are resized on uint8 with bilinear interpolation (half-pixel centres, as cv2's ``INTER_LINEAR``) and rounded
back to uint8 before cropping, as the official pipelines do. Indices are clamped to the frames decord reports.

Decoding runs in worker processes (``DecodePool``): decord can hang forever in native code holding the GIL (dmlc/decord
#269, #375), so a worker that exceeds the per-video time limit is killed (SIGKILL), its file reported, and a fresh
worker started. A file that decord cannot read is reported by path, never replaced by another video.

Training clips (``VideoClipDataset`` with ``training=True``) follow VideoMamba's fine-tuning: the sampler's random
training clip (S4ND's HMDB-51 preset: a random 2-s clip, pytorchvideo's ``RandomClipSampler``), decoded once, then
``num_sample`` independent augmentations (``ClipAugment``: RandAugment with one draw per clip, a random-resized crop
and a flip shared by the frames, random erasing of one box per clip).
"""
import functools
import math
import multiprocessing
import os
import random
import signal
import time
from collections import deque
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np

from .video_errors import VideoDecodeError, VideoError, VideoNotFoundError, VideoTimeoutError, VideoTooShortError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)  # pytorchvideo's (110.2, 100.64, 96.0) / 255
KINETICS_STD = (0.22803, 0.22145, 0.216989)  # pytorchvideo's (58.14765, 56.46975, 55.332195) / 255


# --------------------------------------------------------------------------------------------------------------------
# temporal samplers: clips(n, fps) -> one list of frame indices per temporal clip

@dataclass(frozen=True)
class SparseSampler:
    """VideoMamba's ``Kinetics_sparse``: T frames, one per segment, S clips shifted by ``seg / (S + 1)``."""
    num_frames: int = 16
    num_clips: int = 4

    def clips(self, n: int, fps: Optional[float] = None) -> list[list[int]]:
        seg = max(0, n - 1) / self.num_frames
        shift = seg / (self.num_clips + 1)
        return [[min(round(seg * i) + int(shift * (k + 1)), n - 1) for i in range(self.num_frames)]
                for k in range(self.num_clips)]

    def train_clip(self, n: int, rng: np.random.Generator, fps: Optional[float] = None) -> list[int]:
        """One random index in ``[round(seg * i), round(seg * (i + 1))]`` per segment (the official training)."""
        seg = max(0, n - 1) / self.num_frames
        return [min(int(rng.integers(round(seg * i), round(seg * (i + 1)) + 1)), n - 1)
                for i in range(self.num_frames)]

    def min_frames(self) -> int:
        return self.num_frames

    def describe(self) -> str:
        return (f"sparse T={self.num_frames} x {self.num_clips} clip(s) (seg=(n-1)/T, "
                f"idx=min(round(seg*i)+int(seg/(S+1)*(k+1)), n-1))")


@dataclass(frozen=True)
class SegmentSampler:
    """VideoMamba's SSv2 test sampling: segment starts and centres, 2 views (the official step 2 is hard-coded)."""
    num_frames: int = 16
    num_clips: int = 2

    def __post_init__(self):
        if self.num_clips != 2:
            raise ValueError(f"the SSv2 protocol has exactly 2 temporal views (starts, centres), got {self.num_clips}")

    def clips(self, n: int, fps: Optional[float] = None) -> list[list[int]]:
        tick = n / self.num_frames
        merged = sorted([int(tick / 2 + tick * x) for x in range(self.num_frames)]
                        + [int(tick * x) for x in range(self.num_frames)])
        return [[min(i, n - 1) for i in merged[k::2]] for k in range(2)]

    def train_clip(self, n: int, rng: np.random.Generator, fps: Optional[float] = None) -> list[int]:
        """One random frame per segment of ``n // T`` frames (sorted random frames when shorter, as the official)."""
        duration = n // self.num_frames
        if duration > 0:
            return [i * duration + int(rng.integers(duration)) for i in range(self.num_frames)]
        if n > self.num_frames:
            return sorted(int(i) for i in rng.integers(n, size=self.num_frames))
        return [0] * self.num_frames

    def min_frames(self) -> int:
        return self.num_frames

    def describe(self) -> str:
        return (f"segments T={self.num_frames} x 2 views (tick=n/T: starts int(tick*x), centres int(tick/2+tick*x), "
                "sorted, view k = every 2nd from k)")


@dataclass(frozen=True)
class DenseSampler:
    """mmaction2's ``SampleFrames(clip_len, frame_interval, num_clips, test_mode=True)``, out-of-bound 'loop'."""
    clip_len: int = 16
    frame_interval: int = 4
    num_clips: int = 5

    @property
    def num_frames(self) -> int:
        return self.clip_len

    def clips(self, n: int, fps: Optional[float] = None) -> list[list[int]]:
        span = (self.clip_len - 1) * self.frame_interval + 1
        max_offset = max(n - span, 0)
        if self.num_clips > 1:
            offsets = np.round(np.arange(self.num_clips) * (max_offset / (self.num_clips - 1))).astype(np.int64)
        else:
            offsets = np.array([max_offset // 2])
        indices = offsets[:, None] + np.arange(self.clip_len)[None, :] * self.frame_interval
        return (indices % n).tolist()

    def min_frames(self) -> int:
        return (self.clip_len - 1) * self.frame_interval + 1

    def describe(self) -> str:
        return (f"dense SampleFrames(clip_len={self.clip_len}, frame_interval={self.frame_interval}, "
                f"num_clips={self.num_clips}) (offsets round(k*max(n-span,0)/(clips-1)), loop)")


@dataclass(frozen=True)
class UniformSecondsSampler:
    """pytorchvideo's ``UniformClipSampler(clip_seconds)`` + ``UniformTemporalSubsample(num_frames)``: consecutive
    clips [2k, 2k + 2) s while the next clip still ends within the video (at least one clip), the frames of each
    (``ceil(start * fps) <= i < ceil(end * fps)``) subsampled by ``linspace(0, t - 1, num_frames)``. Training:
    pytorchvideo's ``RandomClipSampler``, one clip starting uniformly in ``[0, max(duration - clip_seconds, 0)]`` s.
    ``centre_only``: only the middle clip (clip ``count // 2``; validation during training)."""
    num_frames: int = 30
    clip_seconds: float = 2.0
    eps: float = 1e-6
    centre_only: bool = False

    def _check_fps(self, fps: Optional[float]) -> None:
        if not fps or fps <= 0:
            raise ValueError("the uniform-seconds sampler needs the video's frame rate")

    def _clip(self, start: float, end: float, n: int, fps: float) -> list[int]:
        """``num_frames`` indices of the frames of ``[start, end)`` s."""
        first = math.ceil(start * fps - self.eps)
        last = min(n, math.ceil(end * fps - self.eps)) - 1
        frames = np.arange(first, max(last, first) + 1)
        picks = np.linspace(0, len(frames) - 1, self.num_frames).astype(np.int64)
        return [min(int(i), n - 1) for i in frames[picks]]

    def clips(self, n: int, fps: Optional[float] = None) -> list[list[int]]:
        self._check_fps(fps)
        count = max(1, int(math.floor(n / fps / self.clip_seconds + self.eps)))
        starts = [count // 2] if self.centre_only else range(count)
        return [self._clip(k * self.clip_seconds, (k + 1) * self.clip_seconds, n, fps) for k in starts]

    def train_clip(self, n: int, rng: np.random.Generator, fps: Optional[float] = None) -> list[int]:
        """One clip of ``clip_seconds`` starting uniformly in ``[0, max(n / fps - clip_seconds, 0)]`` s."""
        self._check_fps(fps)
        start = rng.uniform(0.0, max(n / fps - self.clip_seconds, 0.0))
        return self._clip(start, start + self.clip_seconds, n, fps)

    def min_frames(self) -> int:
        return 1

    def describe(self) -> str:
        which = "the centre clip" if self.centre_only else "all of the video"
        return (f"uniform {self.clip_seconds:g}-s clips, {which}, {self.num_frames} frames each "
                "(linspace(0, t-1, T))")


# --------------------------------------------------------------------------------------------------------------------
# spatial views

def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of uint8 frames (T, H, W, 3) to (T, height, width, 3), rounded back to uint8. Sampling as
    cv2's ``INTER_LINEAR``: half-pixel centres, edges clamped, no antialiasing."""
    _, src_h, src_w, _ = frames.shape
    if (src_h, src_w) == (height, width):
        return frames
    out = frames.astype(np.float32)
    for axis, (src, dst) in ((1, (src_h, height)), (2, (src_w, width))):
        if src == dst:
            continue
        x = np.clip((np.arange(dst) + 0.5) * (src / dst) - 0.5, 0, src - 1)
        lo = np.floor(x).astype(np.int64)
        hi = np.minimum(lo + 1, src - 1)
        shape = [1, 1, 1, 1]
        shape[axis] = dst
        frac = (x - lo).astype(np.float32).reshape(shape)
        out = np.take(out, lo, axis=axis) * (1 - frac) + np.take(out, hi, axis=axis) * frac
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_short_side(frames: np.ndarray, short_side: int, rounding: str = "floor") -> np.ndarray:
    """Resize uint8 frames (T, H, W, 3) so that the short side is ``short_side`` (``resize_frames``).

    The long side is ``int(short_side * long / short)`` (``rounding='floor'``: VideoMamba, pytorchvideo) or
    ``int(long * short_side / short + 0.5)`` (``'round'``: mmcv's ``rescale_size``).
    """
    _, height, width, _ = frames.shape
    short, long = min(height, width), max(height, width)
    new_long = int(short_side * long / short) if rounding == "floor" else int(long * short_side / short + 0.5)
    return resize_frames(frames, *((short_side, new_long) if height <= width else (new_long, short_side)))


def crop_offsets(long: int, short: int, size: int, num_crops: int, mode: str) -> list[tuple[int, int]]:
    """(long-axis, short-axis) start of each crop of ``size`` x ``size``.

    Modes: ``'videomamba'`` (``int(c * (long - size) / (num_crops - 1))``, one crop: ``int((long - size) / 2)``),
    ``'mmaction'`` (``ThreeCrop``: 0, 2 * step, step with ``step = (long - size) // 2``; one crop: step),
    ``'centre'`` (``round((long - size) / 2)`` as torchvision's ``center_crop``; num_crops must be 1).
    The short axis is centred (``round((short - size) / 2)``; 0 where the crop spans it).
    """
    if size > short:
        raise ValueError(f"crop size {size} exceeds the resized short side {short}")
    across = int(round((short - size) / 2))
    if mode == "videomamba":
        if num_crops == 1:
            along = [int((long - size) / 2)]
        else:
            along = [int(c * (long - size) / (num_crops - 1)) for c in range(num_crops)]
    elif mode == "mmaction":
        step = (long - size) // 2
        if num_crops not in (1, 3):
            raise ValueError(f"mmaction crops are ThreeCrop (3) or a centre crop (1), got {num_crops}")
        along = [0, 2 * step, step] if num_crops == 3 else [step]
    elif mode == "centre":
        if num_crops != 1:
            raise ValueError(f"a centre crop is one crop, got num_crops={num_crops}")
        along = [int(round((long - size) / 2))]
    else:
        raise ValueError(f"unknown crop mode {mode!r} (known: videomamba, mmaction, centre)")
    return [(a, across) for a in along]


def spatial_views(frames: np.ndarray, size: int, num_crops: int, mode: str) -> list[np.ndarray]:
    """Crops of resized frames (T, H, W, 3) along the long side: ``num_crops`` arrays (T, size, size, 3)."""
    _, height, width, _ = frames.shape
    portrait = height > width
    views = []
    for along, across in crop_offsets(max(height, width), min(height, width), size, num_crops, mode):
        top, left = (along, across) if portrait else (across, along)
        views.append(frames[:, top:top + size, left:left + size])
    return views


# --------------------------------------------------------------------------------------------------------------------
# protocols

@dataclass(frozen=True)
class VideoProtocol:
    """How a video becomes scored views.

    Attributes:
        name: The preset's name.
        sampler: Temporal sampler (``clips(n, fps)``, ``describe()``).
        short_side: Frames are resized so that their short side is this (uint8, bilinear).
        crop_size: Side of the square crops.
        num_crops: Spatial crops per clip.
        crop_mode: ``'videomamba'``, ``'mmaction'`` or ``'centre'`` (see ``crop_offsets``).
        long_side_rounding: ``'floor'`` or ``'round'`` (see ``resize_short_side``).
        mean: Per-channel mean on the 0-1 scale.
        std: Per-channel std on the 0-1 scale.
        score: ``'prob'`` (softmax per view, then the mean) or ``'logit'`` (mean of logits).
    """
    name: str
    sampler: Any
    short_side: int
    crop_size: int
    num_crops: int = 3
    crop_mode: str = "videomamba"
    long_side_rounding: str = "floor"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    score: str = "prob"

    @property
    def num_frames(self) -> int:
        return self.sampler.num_frames

    def describe(self) -> str:
        """One line naming every choice that changes the numbers."""
        score = "softmax per view, mean" if self.score == "prob" else "mean of logits"
        mean = ",".join(f"{m:g}" for m in self.mean)
        std = ",".join(f"{s:g}" for s in self.std)
        return (f"{self.name}: {self.sampler.describe()} x {self.num_crops} {self.crop_mode} crop(s) "
                f"{self.crop_size} after short side {self.short_side} (bilinear uint8); mean ({mean}) std ({std}) "
                f"on 0-1; score: {score}; no flip")


_SAMPLER_ARGS = {
    SparseSampler: ("num_frames", "num_clips"),
    SegmentSampler: ("num_frames", "num_clips"),
    DenseSampler: ("clip_len", "frame_interval", "num_clips"),
    UniformSecondsSampler: ("num_frames", "clip_seconds"),
}


def _presets() -> dict[str, VideoProtocol]:
    return {
        "videomamba_k400": VideoProtocol("videomamba_k400", SparseSampler(16, 4), 224, 224, 3, "videomamba"),
        "videomamba_ssv2": VideoProtocol("videomamba_ssv2", SegmentSampler(16, 2), 224, 224, 3, "videomamba"),
        "mmaction_dense": VideoProtocol("mmaction_dense", DenseSampler(16, 4, 5), 224, 224, 3, "mmaction", "round"),
        "s4nd_hmdb51": VideoProtocol("s4nd_hmdb51", UniformSecondsSampler(30, 2.0), 256, 224, 1, "centre", "floor",
                                     KINETICS_MEAN, KINETICS_STD, "logit"),
    }


PROTOCOL_NAMES = tuple(_presets())


def video_protocol(name: str, **overrides) -> VideoProtocol:
    """A preset protocol, with sampler arguments (``num_frames``, ``num_clips``, ``clip_len``, ``frame_interval``,
    ``clip_seconds``) and view arguments (``short_side``, ``crop_size``, ``num_crops``, ``crop_mode``,
    ``long_side_rounding``, ``mean``, ``std``, ``score``) overridden. Unknown names and keys raise ValueError."""
    presets = _presets()
    if name not in presets:
        raise ValueError(f"unknown video protocol {name!r} (known: {', '.join(presets)})")
    protocol = presets[name]
    sampler_keys = _SAMPLER_ARGS[type(protocol.sampler)]
    view_keys = {"short_side", "crop_size", "num_crops", "crop_mode", "long_side_rounding", "mean", "std", "score"}
    unknown = sorted(set(overrides) - set(sampler_keys) - view_keys)
    if unknown:
        raise ValueError(f"protocol {name!r} has no setting {unknown[0]!r} (settings: "
                         f"{', '.join(sorted(set(sampler_keys) | view_keys))})")
    sampler_args = {k: v for k, v in overrides.items() if k in sampler_keys}
    view_args = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if k in view_keys}
    protocol = replace(protocol, sampler=replace(protocol.sampler, **sampler_args), **view_args)
    if protocol.score not in ("prob", "logit"):
        raise ValueError(f"protocol score must be 'prob' or 'logit', got {protocol.score!r}")
    if protocol.crop_size > protocol.short_side:
        raise ValueError(f"crop_size {protocol.crop_size} exceeds short_side {protocol.short_side}")
    crop_offsets(protocol.short_side * 2, protocol.short_side, protocol.crop_size, protocol.num_crops,
                 protocol.crop_mode)  # checks the crop settings
    return protocol


# --------------------------------------------------------------------------------------------------------------------
# decoding

class DecodedVideo(NamedTuple):
    """The views of one video: ``views`` uint8 (V, T, S, S, 3); ``keys[v] = (clip, crop)``; ``indices`` per clip;
    ``num_frames`` the decodable frames the sampling used, ``reported_frames`` the container's count."""
    path: str
    views: np.ndarray
    keys: list[tuple[int, int]]
    num_frames: int
    fps: float
    indices: list[list[int]]
    reported_frames: int


def _short_message(error: BaseException, limit: int = 200) -> str:
    """decord's errors can hold the file's bytes (dmlc/decord #299): one line, cut short."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def open_video(path: str, num_threads: int = 1):
    """A decord ``VideoReader`` (CPU), or a VideoNotFoundError / VideoDecodeError naming the path."""
    if not os.path.isfile(path):
        raise VideoNotFoundError(path, "no such file")
    try:
        from decord import VideoReader, cpu
    except ImportError:  # decord has wheels for x86-64 Linux and Windows only (dmlc/decord #213)
        raise VideoDecodeError(path, "decord is not installed (pip install decord: x86-64 Linux/Windows)") from None
    try:
        return VideoReader(path, num_threads=num_threads, ctx=cpu(0))
    except Exception as error:  # decord raises DECORDError (a RuntimeError) with the demuxer's message
        raise VideoDecodeError(path, f"cannot open: {_short_message(error)}") from None


def read_frames(reader, indices: Sequence[int], path: str = "") -> np.ndarray:
    """``reader.get_batch`` of ``indices`` clamped to [0, len - 1], as uint8 (N, H, W, 3)."""
    n = len(reader)
    if not n:
        raise VideoDecodeError(path, "no frames")
    clamped = [min(max(int(i), 0), n - 1) for i in indices]
    try:
        reader.seek(0)
        return reader.get_batch(clamped).asnumpy()
    except Exception as error:
        raise VideoDecodeError(path, f"cannot decode frames: {_short_message(error)}") from None


def decodable_length(reader, reported: int) -> int:
    """How many frames decord can decode: containers may over-report (dmlc/decord #373: 431 reported, 300 decodable).
    A binary search with single-frame reads (``reader[i]``, which work where ``get_batch`` fails, #375); 0 when even
    the first frame fails."""
    def readable(i: int) -> bool:
        try:
            reader[i].asnumpy()
            return True
        except Exception:
            return False

    if readable(reported - 1):
        return reported
    good, bad = -1, reported - 1
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if readable(middle) else (good, middle)
    return good + 1


def frame_rate(reader) -> float:
    """The reader's average frame rate; 0.0 for a container without timing (only the seconds-based sampler needs
    it, and says so)."""
    try:
        return float(reader.get_avg_fps())
    except Exception:
        return 0.0


def decode_views(path: str, protocol: VideoProtocol, num_threads: int = 1, short_video: str = "pad",
                 open_fn: Callable = open_video) -> DecodedVideo:
    """Decode the frames ``protocol`` samples from ``path`` and cut its views.

    When decoding the sampled frames fails and the container reports more frames than it holds, the sampling is
    redone on the decodable length (``DecodedVideo.num_frames``; ``reported_frames`` keeps the container's count).

    Args:
        path: The video file.
        protocol: The protocol (sampler and views).
        num_threads: decord's decoding threads.
        short_video: ``'pad'`` (a video shorter than one clip repeats frames, as the official samplers do) or
            ``'fail'`` (VideoTooShortError).
        open_fn: ``open_fn(path, num_threads)`` -> a decord VideoReader (tests pass a stand-in).
    """
    reader = open_fn(path, num_threads)
    reported = n = len(reader)
    if n < 1:
        raise VideoDecodeError(path, "no frames")
    fps = frame_rate(reader)

    def sample(n: int):
        if short_video == "fail" and n < protocol.sampler.min_frames():
            raise VideoTooShortError(path, f"{n} frames, one clip needs {protocol.sampler.min_frames()}")
        try:
            clips = protocol.sampler.clips(n, fps)
        except ValueError as error:
            raise VideoDecodeError(path, str(error)) from None
        return clips, sorted({i for clip in clips for i in clip})

    clips, unique = sample(n)
    try:
        frames = read_frames(reader, unique, path)
    except VideoDecodeError:
        n = decodable_length(reader, reported)
        if n in (0, reported):
            raise
        clips, unique = sample(n)
        frames = read_frames(reader, unique, path)
    del reader
    frames = resize_short_side(frames, protocol.short_side, protocol.long_side_rounding)
    position = {index: p for p, index in enumerate(unique)}
    views, keys = [], []
    for k, clip in enumerate(clips):
        clip_frames = frames[[position[i] for i in clip]]
        for c, view in enumerate(spatial_views(clip_frames, protocol.crop_size, protocol.num_crops,
                                               protocol.crop_mode)):
            views.append(view)
            keys.append((k, c))
    return DecodedVideo(path, np.stack(views), keys, n, fps, clips, reported)


def normalise_views(views: np.ndarray, protocol: VideoProtocol):
    """uint8 (V, T, S, S, 3) -> float32 tensor (V, 3, T, S, S), ``(x / 255 - mean) / std``."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(views)).permute(0, 4, 1, 2, 3).float().div_(255)
    mean = torch.tensor(protocol.mean, dtype=torch.float32).view(1, 3, 1, 1, 1)
    std = torch.tensor(protocol.std, dtype=torch.float32).view(1, 3, 1, 1, 1)
    return x.sub_(mean).div_(std)


# --------------------------------------------------------------------------------------------------------------------
# decoder processes

class DecodeResult(NamedTuple):
    """What the pool returns for one task: ``value`` (the decode function's result) or ``error`` (a VideoError)."""
    task: int
    path: str
    value: Any = None
    error: Optional[VideoError] = None


_ERROR_TYPES = {cls.__name__: cls for cls in (VideoError, VideoNotFoundError, VideoDecodeError, VideoTimeoutError,
                                              VideoTooShortError)}


def _describe_exception(path: str, error: BaseException) -> tuple[str, str, str]:
    """(error class name, path, message) — sent instead of the exception (VideoError's __init__ takes two args)."""
    if isinstance(error, VideoError):
        return type(error).__name__ if type(error).__name__ in _ERROR_TYPES else "VideoDecodeError", error.path, \
            str(error)[len(error.path) + 2:]
    return "VideoDecodeError", path, f"{type(error).__name__}: {_short_message(error)}"


def _rebuild_error(kind: str, path: str, message: str) -> VideoError:
    return _ERROR_TYPES.get(kind, VideoDecodeError)(path, message)


def _worker_main(conn, decode_fn: Callable, kwargs: dict) -> None:
    """A decoder process: decode the paths it receives; send a small header, then the result."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task, path = message
        try:
            value = decode_fn(path, **kwargs)
        except Exception as error:
            conn.send(("error", task, _describe_exception(path, error)))
            continue
        conn.send(("ok", task, None))  # small: never blocks, so the parent sees the decode finish in time
        conn.send(value)


@dataclass
class _Worker:
    process: Any
    conn: Any
    task: Optional[tuple[int, str]] = None
    deadline: float = 0.0


@dataclass
class DecodePool:
    """Decoder processes with a per-task time limit.

    ``map(tasks)`` yields a ``DecodeResult`` per ``(task id, path)`` in completion order. A task past ``timeout``
    seconds gets its worker killed (SIGKILL: decord may hang holding the GIL) and replaced, and yields a
    VideoTimeoutError; a worker that dies (a crash in native code) yields a VideoDecodeError for its file. With
    ``workers=0`` the tasks run in this process, without a time limit.

    Args:
        decode_fn: ``decode_fn(path, **kwargs)``; module-level (it is pickled for 'spawn'/'forkserver').
        kwargs: Its keyword arguments.
        workers: Decoder processes.
        timeout: Seconds per task.
        context: multiprocessing start method; None: 'fork' where available (no re-import), else 'spawn'.
    """
    decode_fn: Callable
    kwargs: dict = field(default_factory=dict)
    workers: int = 2
    timeout: float = 120.0
    context: Optional[str] = None
    killed: list = field(default_factory=list)  # paths whose worker was killed (for the report)

    def _start(self) -> _Worker:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context(self.context or ("fork" if "fork" in methods else "spawn"))
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_worker_main, args=(child, self.decode_fn, self.kwargs), daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    @staticmethod
    def _stop(worker: _Worker, kill: bool) -> None:
        if kill:
            worker.process.kill()
        else:
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        worker.process.join(timeout=None if kill else 5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()

    def map(self, tasks: Iterable[tuple[int, str]]) -> Iterator[DecodeResult]:
        if self.workers <= 0:
            for task, path in tasks:
                try:
                    yield DecodeResult(task, path, self.decode_fn(path, **self.kwargs))
                except Exception as error:
                    yield DecodeResult(task, path, error=_rebuild_error(*_describe_exception(path, error)))
            return
        pending = deque(tasks)
        pool: list[Optional[_Worker]] = [None] * self.workers  # started on demand; a killed one is replaced lazily
        try:
            while True:
                for i in range(len(pool)):
                    if pending and (pool[i] is None or pool[i].task is None):
                        pool[i] = self._assign(pool[i], pending.popleft())
                busy = [w for w in pool if w is not None and w.task is not None]
                if not busy:
                    return
                next_deadline = min(w.deadline for w in busy)
                ready = wait([w.conn for w in busy], timeout=max(0.0, next_deadline - time.monotonic()))
                for i, worker in enumerate(pool):
                    if worker is None or worker.task is None:
                        continue
                    task, path = worker.task
                    if worker.conn in ready or worker.conn.poll(0):
                        try:
                            status, _, detail = worker.conn.recv()
                            value = worker.conn.recv() if status == "ok" else None
                        except (EOFError, OSError):  # the process died: a crash in native code
                            worker.process.join(timeout=5)
                            code = worker.process.exitcode
                            self._stop(worker, kill=True)
                            pool[i] = None
                            yield DecodeResult(task, path, error=VideoDecodeError(
                                path, f"the decoder process died (exit code {code}) on this file"))
                            continue
                        worker.task = None
                        if status == "ok":
                            yield DecodeResult(task, path, value)
                        else:
                            yield DecodeResult(task, path, error=_rebuild_error(*detail))
                    elif time.monotonic() >= worker.deadline:
                        self._stop(worker, kill=True)  # SIGKILL: a decord call stuck holding the GIL ignores the rest
                        self.killed.append(path)
                        pool[i] = None
                        yield DecodeResult(task, path, error=VideoTimeoutError(
                            path, f"decoding took longer than {self.timeout:g} s; the decoder process was killed"))
        finally:
            for worker in pool:
                if worker is not None:
                    self._stop(worker, kill=worker.task is not None)

    def _assign(self, worker: Optional[_Worker], task: tuple[int, str]) -> _Worker:
        """Send ``task`` to ``worker`` (a fresh one if None or if it died while idle); its deadline starts now."""
        for attempt in range(2):
            if worker is None:
                worker = self._start()
            try:
                worker.conn.send(task)
                break
            except (BrokenPipeError, OSError):
                self._stop(worker, kill=True)
                worker = None
                if attempt:
                    raise
        worker.task, worker.deadline = task, time.monotonic() + self.timeout
        return worker


# --------------------------------------------------------------------------------------------------------------------
# training augmentation of whole clips, as VideoMamba's fine-tuning (UMT / VideoMAE ``_aug_frame``)

@dataclass(frozen=True)
class ClipAugment:
    """Training augmentation of one clip, every random choice made once per clip unless said otherwise.

    In this order (VideoMamba's ``_aug_frame``): RandAugment on the decoded frames (timm's
    ``rand_augment_transform(auto_augment)``; one op chain, one magnitude and one resampling filter per clip, so that
    every frame gets the same ops; ``translate_const = int(0.45 * crop_size)``, grey fill, as the official); a
    random-resized crop shared by the frames (area ``scale``, log-uniform aspect ``ratio``, 10 tries, then the official
    centre fall-back) resized to the crop size; a horizontal flip of the whole clip with probability ``hflip`` (0 for
    SSv2, whose labels say left and right); after normalisation, random erasing with probability ``re_prob`` per clip,
    as the official ``RandomErasing(cube=True)``: one box drawn per clip and erased in every frame, with noise drawn per
    frame (``re_mode='pixel'``: per pixel; 'rand': one colour per frame; 'const': zeros); ``re_count`` boxes at most,
    and with ``re_count > 1`` the first ``T // re_count`` frames are left alone (the official passes
    ``num_splits=re_count``).

    Attributes:
        auto_augment: timm RandAugment string ('rand-m7-n4-mstd0.5-inc1'); None: off.
        interpolation: RandAugment's resampling: 'bicubic' (the official ``train_interpolation``), 'bilinear', ...,
            or 'random' (drawn per clip).
        scale: Crop area range (fraction of the frame).
        ratio: Crop aspect-ratio range.
        hflip: Flip probability.
        re_prob: Random-erasing probability per clip.
        re_mode: 'pixel', 'rand' or 'const'.
        re_count: Most boxes per clip.
    """
    auto_augment: Optional[str] = None
    interpolation: str = "bicubic"
    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    hflip: float = 0.5
    re_prob: float = 0.0
    re_mode: str = "pixel"
    re_count: int = 1


@functools.lru_cache(maxsize=8)
def _rand_augment(config: str, crop_size: int, interpolation: str):
    """timm's RandAugment with the video hyper-parameters of VideoMamba's ``create_random_augment``."""
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.transforms import str_to_pil_interp

    if not config.startswith("rand"):
        raise ValueError(f"clip augmentation takes a RandAugment string ('rand-m7-n4-mstd0.5-inc1'), got {config!r}")
    hparams = {"translate_const": int(crop_size * 0.45)}
    if interpolation != "random":
        hparams["interpolation"] = str_to_pil_interp(interpolation)
    return rand_augment_transform(config, hparams)


def rand_augment_clip(frames: np.ndarray, config: str, crop_size: int, interpolation: str = "bicubic") -> np.ndarray:
    """timm's RandAugment on uint8 frames (T, H, W, 3) with the same random draws for every frame.

    timm draws the op chain (``np.random``), each op's application, magnitude and resampling filter (``random``) from
    the global generators; they are rewound to the same state before each frame, so every frame sees the draws the
    first one saw, and the generators end where one image's augmentation leaves them.
    """
    from PIL import Image

    transform = _rand_augment(config, crop_size, interpolation)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    out = np.empty_like(frames)
    for t, frame in enumerate(frames):
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        out[t] = np.asarray(transform(Image.fromarray(frame)))
    return out


def random_resized_box(height: int, width: int, scale: tuple, ratio: tuple,
                       rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random-resized crop, as the official ``_get_param_spatial_crop``: 10 tries of an area
    fraction uniform in ``scale`` and a log-uniform aspect in ``ratio``; else a centre crop of the frame clamped to the
    aspect range."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    frame_ratio = width / height
    if frame_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif frame_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def erase_clip(clip, probability: float, mode: str = "pixel", max_count: int = 1):
    """Random erasing of a normalised clip (3, T, S, S) as the official ``RandomErasing(cube=True)`` on (T, C, S, S):
    one decision and one box per clip, the same box in every frame, noise drawn per frame. timm's RandomErasing on the
    frames folded into the channels does exactly that. Returns a new tensor."""
    from timm.data.random_erasing import RandomErasing

    frames = clip.transpose(0, 1).contiguous()  # (T, C, S, S)
    start = frames.shape[0] // max_count if max_count > 1 else 0
    if start < frames.shape[0]:
        RandomErasing(probability, mode=mode, max_count=max_count, device="cpu")(
            frames[start:].view(-1, *frames.shape[2:]))  # (frames x channels, S, S), erased in place
    return frames.transpose(0, 1).contiguous()


class VideoClipDataset:
    """Clips for a training loop, as ``(float tensor (3, T, S, S), label)``.

    Training: the protocol sampler's ``train_clip`` (VideoMamba's random frame per segment: SparseSampler or
    SegmentSampler; S4ND's random 2-s clip: UniformSecondsSampler) decoded once, then ``num_sample`` independent
    ``ClipAugment`` augmentations of those frames (VideoMamba's repeated sampling: with ``num_sample > 1`` an item is a
    tensor (num_sample, 3, T, S, S); the loader flattens them into the batch). Evaluation: one temporal clip, one
    centre crop (the official per-epoch validation: segment middles; SSv2: segment centres; S4ND: the middle 2-s
    clip). Randomness comes from Python's, NumPy's and torch's global generators, so a loader that seeds them per
    sample (vssm.engine.data.SeededSamples) makes each sample a function of its seed. A bad file raises a VideoError
    naming it.

    Args:
        records: ``VideoRecord``s (``path``, ``label``), e.g. ``VideoList.records``.
        protocol: Sampler, sizes and normalisation.
        training: Random clips and augmentation, or the validation view.
        augment: The training augmentation.
        num_sample: Augmented clips per decoded video (training).
        num_threads: decord threads.
    """

    def __init__(self, records: Sequence, protocol: VideoProtocol, training: bool,
                 augment: ClipAugment = ClipAugment(), num_sample: int = 1, num_threads: int = 1):
        if training and not hasattr(protocol.sampler, "train_clip"):
            raise ValueError(f"protocol {protocol.name} has no training sampler (use videomamba_k400, "
                             "videomamba_ssv2 or s4nd_hmdb51)")
        if num_sample < 1:
            raise ValueError(f"num_sample must be >= 1, got {num_sample}")
        self.records = list(records)
        self.protocol = protocol
        self.training = training
        self.augment = augment
        self.num_sample = num_sample if training else 1
        self.num_threads = num_threads
        clips_one = ({} if isinstance(protocol.sampler, SegmentSampler) else
                     {"centre_only": True} if isinstance(protocol.sampler, UniformSecondsSampler) else {"num_clips": 1})
        self._eval_protocol = replace(protocol, sampler=replace(protocol.sampler, **clips_one), num_crops=1)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return 1 + max(record.label for record in self.records)

    def augment_frames(self, frames: np.ndarray, rng: np.random.Generator):
        """One training view of decoded uint8 frames (T, H, W, 3): float tensor (3, T, S, S)."""
        aug, size = self.augment, self.protocol.crop_size
        if aug.auto_augment:
            frames = rand_augment_clip(frames, aug.auto_augment, size, aug.interpolation)
        top, left, h, w = random_resized_box(frames.shape[1], frames.shape[2], aug.scale, aug.ratio, rng)
        clip = resize_frames(frames[:, top:top + h, left:left + w], size, size)
        if rng.uniform() < aug.hflip:
            clip = clip[:, :, ::-1]
        clip = normalise_views(clip[None], self.protocol)[0]
        if aug.re_prob > 0:
            clip = erase_clip(clip, aug.re_prob, aug.re_mode, aug.re_count)
        return clip

    def __getitem__(self, index: int):
        record = self.records[index]
        if not self.training:
            video = decode_views(record.path, self._eval_protocol, self.num_threads)
            view = 1 if isinstance(self.protocol.sampler, SegmentSampler) else 0  # SSv2 validates on the centres
            return normalise_views(video.views[view:view + 1], self.protocol)[0], record.label
        rng = np.random.default_rng(np.random.randint(0, 2 ** 31))
        reader = open_video(record.path, self.num_threads)
        try:
            indices = self.protocol.sampler.train_clip(len(reader), rng, frame_rate(reader))
        except ValueError as error:  # the seconds-based sampler on a container without timing
            raise VideoDecodeError(record.path, str(error)) from None
        frames = read_frames(reader, indices, record.path)
        del reader
        if self.num_sample == 1:
            return self.augment_frames(frames, rng), record.label
        import torch

        return torch.stack([self.augment_frames(frames, rng) for _ in range(self.num_sample)]), record.label
