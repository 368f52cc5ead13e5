"""Datasets, transforms and loaders for training and evaluation, seeded so that a run is reproducible.

Each sample a loader reads is named by a ``SampleKey``: its dataset index and the seed of its augmentation. The
samplers decide the keys in the main process; ``SeededSamples`` reseeds Python's, NumPy's and torch's CPU generator
from the key's seed around each sample's transform (restoring them after). So what a sample looks like depends only on
(run seed, epoch, position in the epoch): not on the number of workers or ranks, and not on the loader's history,
which is what makes an interrupted and resumed run end where the uninterrupted run ends.

Sharding: a training epoch is one seeded permutation cut into global batches of ``batch_size * world_size``; rank r
reads every world_size-th sample of each global batch, so the samples of a global batch are the same for any number of
ranks. Evaluation shards are padded to equal length with keys marked as padding (their target becomes -1, and the
metrics skip them), so every rank runs the same number of forward passes (which FSDP needs).

On the device: image loaders can yield uint8 batches that ``DeviceBatches`` normalises and randomly erases on the
training device (timm's prefetcher; the erasing of a sample is seeded by its key, like its CPU transform), and
``DeviceSplit`` holds a generated split (the synthetic data) on the device, each batch an index into it.
"""
import contextlib
import math
import os
import random
from typing import Iterator, NamedTuple, Optional

import numpy as np
import torch
from timm.data import create_dataset, create_transform, resolve_data_config
from timm.data.random_erasing import RandomErasing
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from vssm.data import DataError, DigitsDataset, StrictImageFolder, SyntheticDataset
from vssm.data.video import ClipAugment, VideoClipDataset, VideoProtocol

from .config import AugmentConfig, DataConfig, TrainConfig, protocol_of_section
from .errors import UserError
from .video_eval import VideoDataConfig, open_video_list, video_data_config

SYNTHETIC_NUM_CLASSES = 10  # classes of the synthetic dataset when data.num_classes is not set
_SYNTHETIC_VAL_SEED_OFFSET = 1  # the synthetic validation split is generated from seed + 1


class SampleKey(NamedTuple):
    """What a loader asks a dataset for: ``index`` in the dataset, ``seed`` of its augmentation, and ``padding``
    (a filler that evens out evaluation shards; its target is reported as -1)."""
    index: int
    seed: int
    padding: bool = False


@contextlib.contextmanager
def _seeded_cpu_rngs(seed: int):
    """Seed Python's, NumPy's and torch's CPU generators for the duration of the block, then restore them."""
    saved = random.getstate(), np.random.get_state(), torch.random.default_generator.get_state()
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.default_generator.set_state(saved[2])


class SeededSamples(Dataset):
    """Wraps a (image, target, ...) dataset so that ``dataset[SampleKey]`` is a function of the key alone."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey):
        with _seeded_cpu_rngs(key.seed):
            image, target = self.dataset[key.index][:2]
        return image, -1 if key.padding else target


class TrainSampler(Sampler):
    """This rank's training keys for one epoch (call ``set_epoch`` before each epoch; a resumed epoch starts after the
    steps it had done).

    Args:
        num_samples: Length of the dataset.
        batch_size: Per-rank batch size.
        world_size: Number of ranks.
        rank: This rank.
        seed: Run seed.
        repeats: Repeated augmentation: each image of the permutation appears this many times in a row (landing on
            different ranks), the stream is cut back to ``num_samples``.
        steps_multiple: The number of steps per epoch is rounded down to a multiple of this (gradient accumulation).
    """

    def __init__(
            self,
            num_samples: int,
            batch_size: int,
            world_size: int,
            rank: int,
            seed: int,
            repeats: int = 1,
            steps_multiple: int = 1,
    ):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.repeats = repeats
        global_batch = batch_size * world_size
        self.steps = num_samples // global_batch // steps_multiple * steps_multiple
        if self.steps == 0:
            raise UserError(f"the training set has {num_samples} images, fewer than one optimizer step needs "
                            f"(batch_size {batch_size} x {world_size} processes x {steps_multiple} accumulation steps)")
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Iterate ``epoch``'s keys from step ``start_step`` on (the steps before it were done before a resume)."""
        if not 0 <= start_step <= self.steps:
            raise ValueError(f"start_step must be in [0, {self.steps}], got {start_step}")
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.batch_size

    def __iter__(self) -> Iterator[SampleKey]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        if self.repeats > 1:
            order = order.repeat_interleave(self.repeats)[:self.num_samples]
        order = order.tolist()
        for step in range(self.start_step, self.steps):
            for position, seed in zip(self._positions(step), self.sample_seeds(step)):
                yield SampleKey(order[position], seed)

    def _positions(self, step: int) -> range:
        """Positions in the epoch's permutation of this rank's samples at ``step``."""
        global_batch = self.batch_size * self.world_size
        return range(step * global_batch + self.rank, (step + 1) * global_batch, self.world_size)

    def sample_seeds(self, step: int) -> list[int]:
        """The augmentation seeds of this rank's samples at ``step`` of the current epoch (their keys' ``seed``)."""
        epoch_seed = (self.seed * 1_000_003 + self.epoch) * self.num_samples
        return [(epoch_seed + position) % 2 ** 63 for position in self._positions(step)]


class EvalSampler(Sampler):
    """This rank's evaluation keys: positions rank, rank + world_size, ..., padded to ceil(N / world_size) keys."""

    def __init__(self, num_samples: int, world_size: int, rank: int):
        self.num_samples = num_samples
        self.world_size = world_size
        self.rank = rank
        self.per_rank = math.ceil(num_samples / world_size)

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[SampleKey]:
        for position in range(self.rank, self.per_rank * self.world_size, self.world_size):
            padding = position >= self.num_samples
            yield SampleKey(self.num_samples - 1 if padding else position, position, padding)


def open_train_set(data: DataConfig, required: bool = True) -> Optional[Dataset]:
    """The training split without transforms; None for 'synthetic' (built once the input size is known), and when
    ``required`` is False, also for an image folder without its training split (evaluation needs only validation)."""
    if data.num_sample != 1 and (data.dataset != "video" or not isinstance(data.num_sample, int)
                                 or data.num_sample < 1):
        raise UserError(f"config key 'data.num_sample' must be a positive integer, and more than 1 only for "
                        f"data.dataset='video' (got {data.num_sample!r} with dataset {data.dataset!r})")
    if data.dataset == "synthetic":
        return None
    if not required and data.dataset == "imagefolder" and data.root is not None:
        if not os.path.isdir(os.path.join(data.root, data.train_split)):
            return None
    return _open(data, data.train_split, training=True)


def open_val_set(data: DataConfig, train_set: Optional[Dataset]) -> Dataset:
    """The validation split without transforms, class indices agreeing with ``train_set`` (when given)."""
    return _open(data, data.val_split, training=False, class_map=class_map_of(train_set))


def open_synthetic(data: DataConfig, num_classes: int, input_size: tuple, seed: int, training: bool) -> Dataset:
    """The synthetic training or validation split at ``input_size`` (C, H, W)."""
    in_chans, height, width = input_size
    if height != width:
        raise UserError(f"the synthetic dataset makes square images, the model wants {height}x{width}")
    size = data.synthetic_train_size if training else data.synthetic_val_size
    split_seed = seed if training else seed + _SYNTHETIC_VAL_SEED_OFFSET
    return SyntheticDataset(size, num_classes, height, in_chans, split_seed)


def _open(data: DataConfig, split: str, training: bool, class_map: Optional[dict] = None) -> Dataset:
    if data.dataset == "video":
        return _open_video(data, split, training)
    if data.dataset == "digits":
        return DigitsDataset(split, size=data.digits_size)
    if data.dataset == "imagefolder":
        if not data.root:
            raise UserError("config key 'data.root' must name the dataset folder (root/<split>/<class>/<image>)")
        if not os.path.isdir(data.root):
            raise DataError(f"data directory not found: {data.root}")
        return StrictImageFolder(os.path.join(data.root, split), class_map=class_map)
    try:
        return create_dataset(data.dataset, root=data.root, split=split, is_training=training, class_map=class_map,
                              download=False)
    except (OSError, RuntimeError, ValueError, AssertionError) as error:
        raise DataError(f"cannot open dataset {data.dataset!r} split {split!r} at {data.root}: {error}") from None


def video_protocol_of(data: DataConfig) -> VideoProtocol:
    """The clip protocol of a 'video' data config."""
    return protocol_of_section(data.protocol, "data.protocol", "videomamba_k400")


def video_split_config(data: DataConfig, split: str) -> VideoDataConfig:
    """The annotated videos of ``split`` of a 'video' data config: ``data.video``'s shared keys, then its sub-dict for
    ``split``; ``root`` is ``data.root`` unless set there."""
    shared = {key: value for key, value in data.video.items() if not isinstance(value, dict)}
    settings = {"root": data.root, "split": split, **shared, **data.video.get(split, {})}
    return video_data_config(settings, prefix=f"data.video.{split}.")


def _open_video(data: DataConfig, split: str, training: bool) -> Dataset:
    """One clip per annotated video of ``split`` (its sub-dict in ``data.video`` adds to the shared keys)."""
    videos = open_video_list(video_split_config(data, split))
    return VideoClipDataset(videos.records, video_protocol_of(data), training,
                            num_sample=data.num_sample if training else 1)


def clip_augment_of(aug: AugmentConfig) -> ClipAugment:
    """The training augmentation of clips from the augment section (``color_jitter``, ``vflip`` and ``no_aug`` are
    image-only: RandAugment is the colour augmentation of the video recipes)."""
    if aug.auto_augment and not aug.auto_augment.startswith("rand"):
        raise UserError(f"config key 'augment.auto_augment': clips take a RandAugment string such as "
                        f"'rand-m7-n4-mstd0.5-inc1', got {aug.auto_augment!r}")
    if aug.re_mode not in ("pixel", "rand", "const"):
        raise UserError(f"config key 'augment.re_mode' must be 'pixel', 'rand' or 'const', got {aug.re_mode!r}")
    return ClipAugment(auto_augment=aug.auto_augment, interpolation=aug.interpolation, scale=tuple(aug.scale),
                       ratio=tuple(aug.ratio), hflip=aug.hflip, re_prob=aug.re_prob, re_mode=aug.re_mode,
                       re_count=aug.re_count)


def clips_per_item(data: DataConfig) -> int:
    """Training samples one dataset item yields: ``data.num_sample`` augmented clips of a video, else 1."""
    return data.num_sample if data.dataset == "video" else 1


def collate_repeated(batch: list):
    """VideoMamba's ``multiple_samples_collate``: items (views (S, ...), target) -> (B * S, ...) views and targets,
    the S views of a video next to each other."""
    views, targets = default_collate(batch)
    return views.flatten(0, 1), targets.repeat_interleave(views.shape[1])


def class_map_of(dataset: Optional[Dataset]) -> Optional[dict]:
    """Class-name -> index mapping of a folder dataset (None for others)."""
    reader = getattr(dataset, "reader", None)
    return getattr(reader, "class_to_idx", None)


def count_classes(dataset: Dataset) -> int:
    """Number of classes of a training split (for the model's head when the config does not say)."""
    if getattr(dataset, "num_classes", None):
        return dataset.num_classes
    class_map = class_map_of(dataset)
    if class_map:
        return len(class_map)
    raise UserError("cannot tell the number of classes of this dataset; set config key 'data.num_classes'")


def resolve_input_config(cfg: TrainConfig, model: torch.nn.Module) -> dict:
    """Input size, interpolation, mean, std, crop: the config's values where set, else the model's pretrained cfg.

    The input size is ``data.img_size``, else the model's own ``model.img_size`` argument, else the pretrained cfg's;
    for videos, (3, frames, crop, crop) of the clip protocol.
    """
    if cfg.data.dataset == "video":  # clips: the protocol's frames and crop, its normalisation (applied by the dataset)
        protocol = video_protocol_of(cfg.data)
        return {"input_size": (3, protocol.num_frames, protocol.crop_size, protocol.crop_size),
                "mean": protocol.mean, "std": protocol.std, "crop_pct": 1.0, "interpolation": "bilinear"}
    in_chans = cfg.model.get("in_chans", 3)
    img_size = cfg.data.img_size if cfg.data.img_size is not None else cfg.model.get("img_size")
    if isinstance(img_size, int):
        img_size = (img_size, img_size)
    overrides = dict(input_size=None if img_size is None else (in_chans, *img_size), crop_pct=cfg.data.crop_pct,
                     interpolation=cfg.data.interpolation, mean=cfg.data.mean, std=cfg.data.std, in_chans=in_chans)
    return resolve_data_config(args=overrides, model=model)


def build_transforms(cfg: TrainConfig, input_config: dict, use_prefetcher: bool = False):
    """timm's training and evaluation transforms: (train_transform, eval_transform). ``use_prefetcher``: they end with
    the uint8 image tensor (no normalisation, no random erasing: ``DeviceBatches`` applies both on the device)."""
    aug = cfg.augment
    train_transform = create_transform(
        input_config["input_size"],
        is_training=True,
        use_prefetcher=use_prefetcher,
        no_aug=aug.no_aug,
        scale=aug.scale,
        ratio=aug.ratio,
        hflip=aug.hflip,
        vflip=aug.vflip,
        color_jitter=aug.color_jitter,
        auto_augment=aug.auto_augment,
        interpolation=aug.interpolation,
        mean=input_config["mean"],
        std=input_config["std"],
        re_prob=aug.re_prob,
        re_mode=aug.re_mode,
        re_count=aug.re_count,
    )
    eval_transform = create_transform(
        input_config["input_size"],
        is_training=False,
        use_prefetcher=use_prefetcher,
        interpolation=input_config["interpolation"],
        mean=input_config["mean"],
        std=input_config["std"],
        crop_pct=input_config["crop_pct"],
        crop_mode=input_config.get("crop_mode"),
    )
    return train_transform, eval_transform


def build_loader(dataset: Dataset, sampler: Sampler, batch_size: int, workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader over ``SeededSamples(dataset)`` that leaves the global random generators alone; a dataset whose
    items hold ``num_sample > 1`` views gives batches of ``batch_size * num_sample`` (``collate_repeated``)."""
    return DataLoader(
        SeededSamples(dataset),
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_repeated if getattr(dataset, "num_sample", 1) > 1 else None,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        generator=torch.Generator(),  # the workers' base seed would otherwise be drawn from the global generator
    )


def normalize_uint8(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, C, H, W) -> float32 ``(x / 255 - mean) / std``, the operations of torchvision's ``ToTensor`` and
    ``Normalize`` in their order (so the numbers equal the CPU transform's); ``mean``, ``std``: (1, C, 1, 1)."""
    return images.to(torch.float32).div_(255).sub_(mean).div_(std)


def erasing_seed(sample_seed: int) -> int:
    """The seed of a sample's random erasing on the device: its augmentation seed (``SampleKey.seed``) mixed by
    splitmix64, so that the erasing draws are unrelated to those of the sample's CPU transform."""
    mask = 2 ** 64 - 1
    z = (sample_seed + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) % 2 ** 63


def _torch_generator(device: torch.device) -> torch.Generator:
    """The default torch generator that random ops on ``device`` draw from."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.random.default_generator


def erase_samples(images: torch.Tensor, erasing, seeds: list[int]) -> None:
    """timm's ``RandomErasing`` applied in place to each image of ``images`` (B, C, H, W) on its device, sample i
    drawing its boxes (Python's generator) and noise (the device's torch generator) from ``erasing_seed(seeds[i])``;
    both generators are restored afterwards."""
    generator = _torch_generator(images.device)
    saved = random.getstate(), generator.get_state()
    try:
        for image, seed in zip(images, seeds):
            seed = erasing_seed(seed)
            random.seed(seed)
            generator.manual_seed(seed)
            erasing(image)
    finally:
        random.setstate(saved[0])
        generator.set_state(saved[1])


def erasing_of(aug: AugmentConfig, device: torch.device) -> Optional[RandomErasing]:
    """The augment section's random erasing as timm's ``RandomErasing`` on ``device`` (the settings timm's CPU transform
    uses); None when ``re_prob`` is 0."""
    if aug.re_prob <= 0:
        return None
    return RandomErasing(aug.re_prob, mode=aug.re_mode, max_count=aug.re_count, device=device)


class DeviceBatches:
    """A loader of uint8 image batches served on ``device`` as normalised float32 batches (timm's ``PrefetchLoader``
    pattern): each batch is copied without blocking (from pinned memory) and normalised there; on CUDA the next batch
    is prepared on a side stream while the current one trains. The normalisation is ``normalize_uint8``, so the images
    equal those of the CPU transform. ``erasing`` erases the samples of a training batch with ``erase_samples`` and the
    seeds of their keys (``TrainSampler.sample_seeds``): what a batch looks like depends neither on how far ahead it
    was prepared nor on the number of workers or ranks.

    Args:
        loader: A DataLoader of (uint8 images (B, C, H, W), targets) over ``SeededSamples`` and a ``TrainSampler`` or
            ``EvalSampler``.
        device: Where the batches go.
        mean: Per-channel mean, in [0, 1] units.
        std: Per-channel standard deviation, in [0, 1] units.
        erasing: timm's ``RandomErasing`` for ``device`` (``erasing_of``); None: no erasing.
    """

    def __init__(self, loader: DataLoader, device: torch.device, mean: tuple, std: tuple, erasing=None):
        self.loader = loader
        self.device = device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.erasing = erasing
        self._stream = None  # one side stream for the loader's lifetime (the allocator pools blocks per stream)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def sampler(self) -> Sampler:
        return self.loader.sampler

    @property
    def num_workers(self) -> int:
        return self.loader.num_workers

    def _prepare(self, images: torch.Tensor, targets: torch.Tensor, step: int):
        images = normalize_uint8(images.to(self.device, non_blocking=True), self.mean, self.std)
        targets = targets.to(self.device, non_blocking=True)
        if self.erasing is not None:
            erase_samples(images, self.erasing, self.sampler.sample_seeds(step))
        return images, targets

    def __iter__(self):
        first_step = getattr(self.sampler, "start_step", 0)
        if self.device.type != "cuda":
            for step, (images, targets) in enumerate(self.loader, start=first_step):
                yield self._prepare(images, targets, step)
            return
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        consumer = torch.cuda.current_stream(self.device)
        pending = None
        for step, (images, targets) in enumerate(self.loader, start=first_step):
            with torch.cuda.stream(self._stream):
                ready = self._prepare(images, targets, step)
            for tensor in ready:  # its memory is not reused before the consumer's work on it is done
                tensor.record_stream(consumer)
            if pending is not None:
                yield pending  # the consumer queues its step on the previous batch
            consumer.wait_stream(self._stream)  # ... and whatever it queues next comes after this batch's preparation
            pending = ready
        if pending is not None:
            yield pending


class DeviceSplit:
    """A dataset generated once and held on ``device`` (the synthetic splits): each batch of ``sampler``'s keys is an
    index into it, so the data is never the limit. Yields the images and targets (-1 for padding keys) that a loader
    over ``SeededSamples(dataset)`` with the same sampler yields.

    Args:
        dataset: A dataset of (image tensor, target) without augmentation.
        sampler: A ``TrainSampler`` or ``EvalSampler`` over it.
        batch_size: Samples per batch (the last evaluation batch may be smaller).
        device: Where the split is held.
        workers: Loader workers that generate the samples, once.
    """

    def __init__(self, dataset: Dataset, sampler: Sampler, batch_size: int, device: torch.device, workers: int):
        self.sampler = sampler
        self.batch_size = batch_size
        self.device = device
        self.num_workers = 0
        generate = DataLoader(SeededSamples(dataset), batch_size=256, sampler=EvalSampler(len(dataset), 1, 0),
                              num_workers=workers, generator=torch.Generator())
        self.images, self.targets, start = None, torch.empty(len(dataset), dtype=torch.long, device=device), 0
        for images, targets in generate:
            if self.images is None:
                self.images = torch.empty((len(dataset), *images.shape[1:]), dtype=images.dtype, device=device)
            self.images[start:start + len(images)].copy_(images)
            self.targets[start:start + len(images)].copy_(targets)
            start += len(images)

    @property
    def nbytes(self) -> int:
        """Bytes of the images held on the device."""
        return self.images.numel() * self.images.element_size()

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self):
        keys = list(self.sampler)  # one epoch's keys, moved to the device at once
        index = torch.tensor([key.index for key in keys], dtype=torch.long).to(self.device)
        padding = torch.tensor([key.padding for key in keys], dtype=torch.bool).to(self.device)
        for rows, pad in zip(index.split(self.batch_size), padding.split(self.batch_size)):
            yield self.images.index_select(0, rows), self.targets.index_select(0, rows).masked_fill(pad, -1)
