"""Multi-view video evaluation (what ``tools/eval_video.py`` calls): top-1, top-5 and mean-class accuracy of a
checkpoint on an annotated video set under a named protocol (``vssm.data.video``), in one process or under torchrun.

Each rank decodes its share of the videos in decoder processes (a per-video time limit; a stuck worker is killed and
replaced), runs the model on every view, and rank 0 merges the per-view logits keyed by (full path, clip, crop), so a
view padded in by the distributed split, or two files with the same name in different folders, count once each.
Video score: softmax per view then the mean (``score='prob'``), or the mean of logits (``'logit'``), as the protocol
says. A video that cannot be used is reported by path and skipped and counted, or fatal (``on_error``); no other
video is ever scored in its place. The per-view logits are saved (``views_file``) so that a run can be re-scored
(``rescore``).

The config is an mmengine file with the keys of ``VideoEvalConfig`` (unknown keys are an error), e.g.::

    model = dict(name='videomamba_tiny', num_frames=16)
    data = dict(format='list', annotation='data/k400/val.csv', root='data/k400/videos', delimiter=',')
    protocol = dict(name='videomamba_k400', num_frames=16, num_clips=4)
"""
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import timm
import torch

from vssm.data.video import (
    PROTOCOL_NAMES, DecodePool, VideoProtocol, decode_views, normalise_views, video_protocol,
)
from vssm.data.video_annotations import (
    VideoList, read_class_names, read_hmdb51_splits, read_kinetics_csv, read_path_label_list, read_ssv2,
)
from vssm.data.video_errors import VideoError, VideoNotFoundError

from . import checkpoint as ckpt
from .config import build_dataclass
from .distributed import DistContext
from .errors import UserError

DATA_FORMATS = ("list", "kinetics_csv", "ssv2", "hmdb51", "moving_shapes")
ON_ERROR = ("skip", "fatal")
SHORT_VIDEO = ("pad", "fail")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class VideoDataConfig:
    """The annotated videos."""
    format: str = "list"  # 'list' (path label lines), 'kinetics_csv', 'ssv2', 'hmdb51', 'moving_shapes' (generated)
    annotation: Optional[str] = None  # list / csv / SSv2 annotation json / HMDB-51 split folder
    root: Optional[str] = None  # the folder the listed paths are relative to (moving_shapes: generated here)
    delimiter: Optional[str] = None  # list: ',' or ' '; None: ',' on lines holding one, else white space
    classes: Optional[str] = None  # class names, one a line (list, kinetics_csv: label_map_k400.txt); None: list:
    #                                1 + the largest label, kinetics_csv: the csv's classes sorted alphabetically
    labels: Optional[str] = None  # ssv2: something-something-v2-labels.json
    split: Optional[str] = None  # kinetics_csv: keep rows of this 'split' value; hmdb51: 'test' (None) or 'train';
    #                              moving_shapes: 'val' (None) or 'train'
    split_id: int = 1  # hmdb51: official split 1, 2 or 3
    layout: str = "auto"  # kinetics_csv: 'flat', 'by_class' or 'auto'
    ext: Optional[str] = None  # file extension where the format builds names (kinetics .mp4, ssv2 .webm)
    num_classes: Optional[int] = None  # None: from the class names, else 1 + the largest label


@dataclass
class VideoEvalConfig:
    """A video evaluation run."""
    model: dict = field(default_factory=dict)  # name=<timm model name> and timm.create_model kwargs
    data: VideoDataConfig = field(default_factory=VideoDataConfig)
    protocol: dict = field(default_factory=lambda: {"name": "videomamba_k400"})  # a preset of
    #   vssm.data.video.PROTOCOL_NAMES and its overrides (num_frames, num_clips, crop_size, short_side, ...)
    batch_size: int = 12  # views per forward pass
    workers: int = 2  # decoder processes per rank (0: decode in this process, without a time limit)
    decode_threads: int = 1  # decord's threads per decoder
    timeout: float = 120.0  # seconds one video may take to decode before its decoder is killed
    on_error: str = "skip"  # a missing / unreadable / stuck video: 'skip' (reported and counted) or 'fatal'
    short_video: str = "pad"  # fewer frames than one clip: 'pad' (repeat frames, as the official samplers do) or
    #                           'fail' (an error handled as on_error says)
    device: Optional[str] = None  # None: CUDA if available, else CPU
    amp: Optional[str] = None  # None, 'bf16' or 'fp16'
    cpu_threads: Optional[int] = None  # torch.set_num_threads; None: torch's default
    views_file: Optional[str] = None  # where the per-view logits go; None: work_dirs/<config name>/views_<checkpoint
    #                                   name>.pt


def video_data_config(values: dict, prefix: str = "data.") -> VideoDataConfig:
    """A checked ``VideoDataConfig`` from a dict (unknown keys and formats are errors naming ``prefix``)."""
    data = build_dataclass(VideoDataConfig, values, prefix, sections={})
    if data.format not in DATA_FORMATS:
        raise UserError(f"config key '{prefix}format' must be one of {DATA_FORMATS}, got {data.format!r}")
    return data


def video_eval_config_from_dict(values: dict) -> VideoEvalConfig:
    """Build and check a VideoEvalConfig from a plain dict (an mmengine config's ``to_dict()``)."""
    cfg = build_dataclass(VideoEvalConfig, {k: v for k, v in values.items() if not k.startswith("_")},
                          sections={VideoEvalConfig: {"data": VideoDataConfig}})
    if not isinstance(cfg.model.get("name"), str):
        raise UserError("config key 'model.name' must name a timm model")
    choices = {"data.format": (cfg.data.format, DATA_FORMATS), "on_error": (cfg.on_error, ON_ERROR),
               "short_video": (cfg.short_video, SHORT_VIDEO), "amp": (cfg.amp, (None, "bf16", "fp16"))}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise UserError(f"config key '{key}' must be one of {allowed}, got {value!r}")
    for key in ("batch_size", "decode_threads"):
        if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 1:
            raise UserError(f"config key '{key}' must be a positive integer, got {getattr(cfg, key)!r}")
    if not isinstance(cfg.workers, int) or cfg.workers < 0:
        raise UserError(f"config key 'workers' must be an integer >= 0, got {cfg.workers!r}")
    if not cfg.timeout or cfg.timeout <= 0:
        raise UserError(f"config key 'timeout' must be a positive number of seconds, got {cfg.timeout!r}")
    build_protocol(cfg)  # checks the protocol section
    return cfg


def load_video_eval_config(path: str, options: Optional[dict] = None) -> VideoEvalConfig:
    """Read an mmengine config file (with ``_base_`` files), apply ``--cfg-options``, check every key."""
    from mmengine.config import Config

    try:
        mm_cfg = Config.fromfile(path)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except Exception as error:
        raise UserError(f"cannot read config {path}: {error}") from None
    if options:
        try:
            mm_cfg.merge_from_dict(options)
        except Exception as error:
            raise UserError(f"cannot apply --cfg-options {options}: {error}") from None
    return video_eval_config_from_dict(mm_cfg.to_dict())


def build_protocol(cfg: VideoEvalConfig) -> VideoProtocol:
    """The config's protocol preset with its overrides."""
    settings = dict(cfg.protocol)
    name = settings.pop("name", None)
    if name not in PROTOCOL_NAMES:
        raise UserError(f"config key 'protocol.name' must be one of {', '.join(PROTOCOL_NAMES)}, got {name!r}")
    try:
        return video_protocol(name, **settings)
    except (TypeError, ValueError) as error:
        raise UserError(f"config section 'protocol': {error}") from None


def open_video_list(data: VideoDataConfig) -> VideoList:
    """The annotated videos of the config (raises AnnotationError subclasses naming the file)."""
    fmt = data.format
    if fmt == "moving_shapes":
        from vssm.data.moving_shapes import write_moving_shapes

        if not data.root:
            raise UserError("config key 'data.root' must say where the moving-shapes videos are (generated there)")
        lists = write_moving_shapes(data.root)
        split = data.split or "val"
        if split not in ("train", "val"):
            raise UserError(f"moving_shapes split must be 'train' or 'val', got {split!r}")
        videos = read_path_label_list(lists[split], data.root)
        videos.classes = read_class_names(lists["classes"])
        return videos
    if not data.annotation:
        raise UserError(f"config key 'data.annotation' must name the annotation of format {fmt!r}")
    if fmt == "list":
        classes = read_class_names(data.classes) if data.classes else None
        limit = data.num_classes or (len(classes) if classes else None)
        videos = read_path_label_list(data.annotation, data.root, data.delimiter, limit)
        videos.classes = classes
        return videos
    if fmt == "kinetics_csv":
        classes = read_class_names(data.classes) if data.classes else None
        return read_kinetics_csv(data.annotation, data.root, classes, data.split, data.layout, data.ext or ".mp4")
    if fmt == "ssv2":
        if not data.labels:
            raise UserError("config key 'data.labels' must name something-something-v2-labels.json")
        return read_ssv2(data.annotation, data.labels, data.root, data.ext or ".webm")
    return read_hmdb51_splits(data.annotation, data.root, data.split_id, data.split or "test")


# --------------------------------------------------------------------------------------------------------------------
# scoring

def video_scores(keys: list[tuple], logits: torch.Tensor, labels: list[int], score: str = "prob"):
    """Per-video scores from per-view logits, each view counted once.

    Args:
        keys: ``(path, clip, crop)`` of each row of ``logits``; repeated keys (distributed padding) count once.
        logits: (V, num_classes).
        labels: The video label of each row.
        score: ``'prob'`` (softmax per view, then the mean) or ``'logit'`` (mean of logits).

    Returns:
        (paths, scores (N, num_classes) float64, labels (N,) int64), videos in first-seen order.
    """
    rows: dict[str, dict[tuple, int]] = {}
    video_label: dict[str, int] = {}
    for row, key in enumerate(keys):
        path = key[0]
        rows.setdefault(path, {}).setdefault(tuple(key[1:]), row)
        video_label.setdefault(path, int(labels[row]))
    values = logits.double()
    if score == "prob":
        values = values.softmax(dim=-1)
    paths = list(rows)
    scores = torch.stack([values[list(rows[p].values())].mean(0) for p in paths]) if paths else values[:0]
    return paths, scores, torch.tensor([video_label[p] for p in paths], dtype=torch.int64)


def accuracy_metrics(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """top1 / top5 (top-min(5, classes)) and mean-class accuracy (mean over the classes that have videos) in %."""
    if len(labels) == 0:
        return {"top1": None, "top5": None, "mean_class_accuracy": None}
    k = min(5, num_classes)
    top = scores.topk(k, dim=-1).indices
    hit1 = top[:, 0] == labels
    hit5 = (top == labels[:, None]).any(dim=-1)
    per_class = [hit1[labels == c].double().mean().item() for c in labels.unique().tolist()]
    return {"top1": 100 * hit1.double().mean().item(), "top5": 100 * hit5.double().mean().item(),
            "mean_class_accuracy": 100 * float(np.mean(per_class))}


def rescore(views_file: str, score: Optional[str] = None) -> dict:
    """The metrics of a saved run (``views_file`` written by ``evaluate_video``), optionally with another
    ``score`` rule ('prob' or 'logit')."""
    try:
        saved = torch.load(views_file, map_location="cpu", weights_only=True)
    except Exception as error:  # missing, truncated, or not a torch file
        raise UserError(f"cannot read views file {views_file}: {type(error).__name__}: {error}") from None
    absent = {"keys", "logits", "labels", "score"} - set(saved if isinstance(saved, dict) else ())
    if absent:
        raise UserError(f"{views_file} is not a views file of tools/eval_video.py (no {', '.join(sorted(absent))})")
    rule = score or saved["score"]
    if rule not in ("prob", "logit"):
        raise UserError(f"score must be 'prob' or 'logit', got {rule!r}")
    _, scores, labels = video_scores(saved["keys"], saved["logits"], saved["labels"], rule)
    return {**accuracy_metrics(scores, labels, saved["logits"].shape[-1]), "videos_decoded": len(labels),
            "score": rule}


# --------------------------------------------------------------------------------------------------------------------
# the run

def check_clip_input(model: torch.nn.Module, protocol: VideoProtocol, name: str) -> None:
    """A model with a fixed clip shape (VideoMamba's patch embed) must get the protocol's; say how to fix it."""
    embed = getattr(model, "patch_embed", None)
    frames, size = getattr(embed, "num_frames", None), getattr(embed, "img_size", None)
    if not getattr(embed, "strict_img_size", False):
        return
    size = tuple(size)[-2:] if size is not None else None
    want = (protocol.crop_size, protocol.crop_size)
    if (frames is not None and frames != protocol.num_frames) or (size is not None and size != want):
        raise UserError(f"model {name} takes clips of {frames} frames x {size[0]}x{size[1]}, the protocol gives "
                        f"{protocol.num_frames} x {want[0]}x{want[1]}: set model.num_frames / model.img_size, or "
                        "protocol.num_frames / protocol.crop_size to agree")


def _shard(count: int, world_size: int, rank: int) -> list[int]:
    """This rank's positions: rank, rank + world_size, ..., padded with the last position to ceil(count / world)."""
    per_rank = math.ceil(count / world_size)
    return [min(p, count - 1) for p in range(rank, per_rank * world_size, world_size)]


def _gather_to_main(ctx: DistContext, obj: Any) -> Optional[list]:
    """Every rank's ``obj`` on rank 0 (None elsewhere): per-view logits can be large, so not on every rank."""
    if not ctx.distributed:
        return [obj]
    import torch.distributed as dist

    gathered = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def default_views_file(checkpoint: str, config: Optional[str] = None) -> str:
    """``work_dirs/<config name or 'eval_video'>/views_<checkpoint name>.pt``."""
    folder = os.path.splitext(os.path.basename(config))[0] if config else "eval_video"
    return os.path.join("work_dirs", folder, f"views_{os.path.splitext(os.path.basename(checkpoint))[0]}.pt")


def _merge(gathered: list, protocol: VideoProtocol, videos: VideoList, found: list, missing: list, num_classes: int,
           name: str, checkpoint: str, views_file: str, report: Callable[[str], None]) -> dict:
    """Rank 0: merge the ranks' views (each key once), score the videos, save the views, report the failures."""
    all_keys = [tuple(k) for part in gathered for k in part[0]]
    all_logits = torch.cat([part[1] for part in gathered])
    all_labels = [label for part in gathered for label in part[2]]
    failures: dict[str, tuple[str, str]] = {}
    for part in gathered:
        failures.update(part[3])
    unique: dict[tuple, int] = {}
    for row, key in enumerate(all_keys):
        unique.setdefault(key, row)
    rows = list(unique.values())
    all_keys, all_logits = [all_keys[r] for r in rows], all_logits[rows]
    all_labels = [all_labels[r] for r in rows]
    paths, scores, video_labels = video_scores(all_keys, all_logits, all_labels, protocol.score)
    for path, (reason, message) in failures.items():
        report(f"video skipped ({reason}): {path}: {message}")
    failed = [p for p, (reason, _) in failures.items() if reason != "missing"]
    os.makedirs(os.path.dirname(os.path.abspath(views_file)), exist_ok=True)
    torch.save({"keys": [list(k) for k in all_keys], "logits": all_logits, "labels": all_labels,
                "score": protocol.score, "protocol": protocol.describe(), "classes": videos.classes,
                "failures": {p: list(f) for p, f in failures.items()}, "checkpoint": checkpoint, "model": name},
               views_file)
    if not paths:
        return {"error": f"no video could be decoded ({len(failed)} failed, {len(missing)} missing of "
                         f"{len(videos.records)} listed in {videos.source})"}
    return {**accuracy_metrics(scores, video_labels, num_classes), "videos_listed": len(videos.records),
            "videos_found": len(found), "videos_missing": len(missing), "videos_decoded": len(paths),
            "videos_failed": len(failed), "views": len(all_keys), "num_classes": num_classes,
            "protocol": protocol.describe(), "views_file": views_file,
            "failures": [{"path": p, "reason": failures[p][0]} for p in failed[:20]]}


def evaluate_video(cfg: VideoEvalConfig, checkpoint: str, trust: bool = False, use_ema: bool = False,
                   decode_fn: Callable = decode_views, progress: Optional[bool] = None,
                   report: Optional[Callable[[str], None]] = None, ctx: Optional[DistContext] = None) -> dict:
    """Evaluate ``checkpoint`` on the config's videos under its protocol (this process's part under torchrun).

    Args:
        cfg: The config (``load_video_eval_config``).
        checkpoint: A vssm training checkpoint or an official one (converted by the model family's filter).
        trust: Allow pickled Python objects in the checkpoint.
        use_ema: Evaluate the EMA weights of a training checkpoint.
        decode_fn: ``decode_fn(path, protocol=, num_threads=, short_video=)`` -> DecodedVideo (tests replace it).
        progress: Show a progress bar on rank 0; None: when stderr is a terminal.
        report: Called with one line per video that is skipped (rank 0); None: printed to stderr.
        ctx: The process's distributed context when the caller holds one (the trainer's final test; left open);
            None: one of its own (torchrun's environment), torn down at the end.

    Returns:
        top1, top5, mean_class_accuracy (%), the video counts (listed, found, missing, decoded, failed), views,
        protocol (its description), views_file, and failures (path and reason of each, at most 20).
    """
    report = report or (lambda line: print(line, file=sys.stderr, flush=True))
    own_ctx = ctx is None
    ctx = DistContext(cfg.device) if own_ctx else ctx
    saved_threads = torch.get_num_threads()
    try:
        if cfg.cpu_threads:
            torch.set_num_threads(cfg.cpu_threads)
        protocol = build_protocol(cfg)
        videos = open_video_list(cfg.data)
        num_classes = cfg.data.num_classes or videos.num_classes
        name = cfg.model["name"]
        if not timm.is_model(name):
            raise UserError(f"unknown model {name!r}")
        kwargs = {k: v for k, v in cfg.model.items() if k != "name"}
        try:
            model = timm.create_model(name, num_classes=num_classes, **kwargs)
        except TypeError as error:
            raise UserError(f"model {name!r}: {error}") from None
        check_clip_input(model, protocol, name)
        ckpt.load_model_weights(model, ckpt.read_checkpoint(checkpoint, trust=trust), checkpoint, use_ema=use_ema)
        model.to(ctx.device).eval()

        found = [r for r in videos.records if os.path.isfile(r.path)]
        missing = [r.path for r in videos.records if not os.path.isfile(r.path)]
        if missing and cfg.on_error == "fatal":
            raise VideoNotFoundError(missing[0], f"no such file ({len(missing)} of {len(videos.records)} listed "
                                     "videos are missing)")
        failures: dict[str, tuple[str, str]] = {path: ("missing", "no such file") for path in missing}
        keys, logits, labels = [], [], []
        positions = _shard(len(found), ctx.world_size, ctx.rank) if found else []
        label_of = {i: found[i].label for i in range(len(found))}
        show = progress if progress is not None else sys.stderr.isatty()
        from tqdm import tqdm

        bar = tqdm(total=len(positions), desc="videos", unit="video", disable=not (show and ctx.is_main),
                   file=sys.stderr)
        pool = DecodePool(decode_fn, dict(protocol=protocol, num_threads=cfg.decode_threads,
                                          short_video=cfg.short_video), cfg.workers, cfg.timeout)
        batch: list[tuple[tuple, int, torch.Tensor]] = []
        fatal: Optional[VideoError] = None

        def flush():
            if not batch:
                return
            clips = torch.cat([views for _, _, views in batch]).to(ctx.device)
            with torch.no_grad(), torch.autocast(ctx.device.type, dtype=_AMP_DTYPES.get(cfg.amp, torch.float32),
                                                 enabled=cfg.amp is not None):
                out = torch.cat([model(chunk) for chunk in clips.split(cfg.batch_size)]).float().cpu()
            row = 0
            for view_keys, label, views in batch:
                keys.extend(view_keys)
                labels.extend([label] * len(view_keys))
                logits.append(out[row:row + len(view_keys)])
                row += len(view_keys)
            batch.clear()

        results = pool.map([(p, found[p].path) for p in positions])
        try:
            for result in results:
                bar.update(1)
                error = result.error
                if error is None:
                    decoded = result.value
                    views = normalise_views(decoded.views, protocol)
                    batch.append(([(result.path, *k) for k in decoded.keys], label_of[result.task], views))
                    if sum(len(v) for _, _, v in batch) >= cfg.batch_size:
                        flush()
                else:
                    failures[result.path] = (error.reason, str(error)[len(error.path) + 2:])
                    if cfg.on_error == "fatal":
                        fatal = error
                if ctx.distributed and cfg.on_error == "fatal":  # every rank sees as many results: stop together
                    if ctx.any(fatal is not None):
                        break
                elif fatal is not None:
                    break
            flush()
        finally:
            results.close()
            bar.close()
        if ctx.distributed and cfg.on_error == "fatal":
            errors = [e for e in ctx.gather(None if fatal is None else str(fatal)) if e]
            if errors:
                raise UserError(f"video {errors[0]} (on_error='fatal')")
        elif fatal is not None:
            raise fatal

        local = (keys, torch.cat(logits) if logits else torch.zeros(0, num_classes), labels, failures)
        gathered = _gather_to_main(ctx, local)
        outcome: dict = {}
        if ctx.is_main:
            outcome = _merge(gathered, protocol, videos, found, missing, num_classes, name, checkpoint,
                             cfg.views_file or default_views_file(checkpoint), report)
        outcome = ctx.broadcast(outcome)
        if "error" in outcome:
            raise UserError(outcome["error"])
        return outcome
    finally:
        torch.set_num_threads(saved_threads)
        if own_ctx:
            ctx.close()
