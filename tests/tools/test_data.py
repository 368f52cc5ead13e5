"""The data pieces of the trainer: seeded sharding, evaluation padding, seeded samples, the bundled datasets."""
import pytest
import torch

from vssm.data import DataError, DigitsDataset, StrictImageFolder, SyntheticDataset
from vssm.engine.data import EvalSampler, SampleKey, SeededSamples, TrainSampler


def global_batches(num_samples, batch_size, world_size, seed=3, epoch=1, repeats=1):
    """The keys of each global batch, gathered from every rank's sampler."""
    per_rank = []
    for rank in range(world_size):
        sampler = TrainSampler(num_samples, batch_size, world_size, rank, seed, repeats)
        sampler.set_epoch(epoch)
        per_rank.append(list(sampler))
    steps = len(per_rank[0]) // batch_size
    return [sorted(key for keys in per_rank for key in keys[step * batch_size:(step + 1) * batch_size])
            for step in range(steps)]


def test_global_batches_do_not_depend_on_the_number_of_ranks():
    one = global_batches(50, batch_size=8, world_size=1)
    two = global_batches(50, batch_size=4, world_size=2)
    four = global_batches(50, batch_size=2, world_size=4)
    assert one == two == four and len(one) == 6  # 50 // 8 steps, the remainder dropped
    indices = [key.index for batch in one for key in batch]
    assert len(set(indices)) == len(indices)  # a permutation: no image twice in an epoch


def test_epochs_and_seeds_reshuffle():
    assert global_batches(40, 8, 1, epoch=0) != global_batches(40, 8, 1, epoch=1)
    assert global_batches(40, 8, 1, seed=0) != global_batches(40, 8, 1, seed=1)
    assert global_batches(40, 8, 1) == global_batches(40, 8, 1)


def test_repeated_augmentation_spreads_copies_over_ranks():
    sampler = TrainSampler(24, batch_size=3, world_size=3, rank=0, seed=0, repeats=3)
    batch = global_batches(24, 3, 3, repeats=3)[0]
    assert len({key.index for key in batch}) == 3  # three images, each seen three times, with different seeds
    assert len({key.seed for key in batch}) == 9
    assert len(sampler) == 24 // 9 * 3


def test_eval_shards_cover_every_image_once_with_marked_padding():
    shards = [list(EvalSampler(10, world_size=4, rank=rank)) for rank in range(4)]
    assert {len(shard) for shard in shards} == {3}
    real = sorted(key.index for shard in shards for key in shard if not key.padding)
    assert real == list(range(10)) and sum(key.padding for shard in shards for key in shard) == 2


def test_seeded_samples_depend_only_on_the_key():
    dataset = SeededSamples(SyntheticDataset(4, num_classes=2, img_size=8))
    torch.manual_seed(123)
    first = dataset[SampleKey(1, seed=7)]
    torch.randn(5)  # global generator state must not matter, and must be left as it was
    state = torch.random.get_rng_state()
    assert torch.equal(dataset[SampleKey(1, seed=7)][0], first[0])
    assert torch.equal(torch.random.get_rng_state(), state)
    assert dataset[SampleKey(1, seed=7, padding=True)][1] == -1


def test_digits_splits():
    train, val = DigitsDataset("train", size=16), DigitsDataset("val", size=16)
    assert (len(train), len(val)) == (1348, 449)
    image, target = val[0]
    assert image.size == (16, 16) and image.mode == "RGB" and 0 <= target < 10
    with pytest.raises(DataError, match="splits 'train' and 'val'"):
        DigitsDataset("test")


def test_strict_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="data directory not found"):
        StrictImageFolder(str(tmp_path / "missing"))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        StrictImageFolder(str(tmp_path / "empty"))
