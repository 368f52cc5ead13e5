"""Tests for vssm.ops.scan_paths: hand-written small grids, permutation/inverse properties, caching, errors."""
import math
import re

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vssm.ops import scan_paths

PAD = scan_paths.PAD
_ = PAD  # shorthand in the hand-written padded routes below

ALL_RANK_KINDS = ("raster", "bidirectional")
GRID_2D_KINDS = ("cross", "zigzag", "local")
EXPECTED_NUM_DIRS = {"raster": 1, "bidirectional": 2, "spatiotemporal": 2, "cross": 4, "zigzag": 4, "local": 8}
DEVICES = ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])

sizes = st.integers(min_value=1, max_value=9)
shapes_1d = st.tuples(sizes)
shapes_2d = st.tuples(sizes, sizes)
shapes_3d = st.tuples(st.integers(1, 4), sizes, sizes)
kind_and_shape = st.one_of(
    st.tuples(st.sampled_from(ALL_RANK_KINDS), st.one_of(shapes_1d, shapes_2d, shapes_3d)),
    st.tuples(st.just("spatiotemporal"), shapes_3d),
    st.tuples(st.sampled_from(GRID_2D_KINDS), shapes_2d),
)
local_directions = st.lists(
    st.sampled_from(scan_paths.LOCAL_DIRECTIONS + ("w1", "w3_flip", "w4", "w10_flip")), min_size=1, max_size=5
)


def rows(*routes):
    """(K, L) LongTensor from hand-written routes."""
    return torch.tensor(routes, dtype=torch.long)


def assert_rows_are_permutations(paths, num_tokens):
    for row in paths:
        assert torch.equal(row[row != PAD].sort().values, torch.arange(num_tokens))


def assert_inverse_composes_to_identity(paths, num_tokens):
    inv = scan_paths.inverse(paths)
    identity = torch.arange(num_tokens).expand(paths.shape[0], -1)
    assert inv.shape == (paths.shape[0], num_tokens) and inv.dtype == torch.long
    assert torch.equal(paths.gather(1, inv), identity)
    real = paths != PAD
    steps = torch.arange(paths.shape[1]).expand_as(paths)
    assert torch.equal(inv.gather(1, paths.clamp(min=0))[real], steps[real])


# ----------------------------------------------------------------------------------------------- hand-written grids


@pytest.mark.parametrize("kind", ["raster", "bidirectional"])
@pytest.mark.parametrize("shape", [(2, 3), (3, 4)])
def test_raster_and_bidirectional_small_grids(kind, shape):
    forward = list(range(math.prod(shape)))
    expected = rows(forward) if kind == "raster" else rows(forward, forward[::-1])
    assert torch.equal(scan_paths.build(kind, shape), expected)


def test_cross_2x3():
    expected = rows(
        [0, 1, 2, 3, 4, 5],
        [0, 3, 1, 4, 2, 5],
        [5, 4, 3, 2, 1, 0],
        [5, 2, 4, 1, 3, 0],
    )
    assert torch.equal(scan_paths.build("cross", (2, 3)), expected)


def test_cross_3x4():
    expected = rows(
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11],
        [11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
        [11, 7, 3, 10, 6, 2, 9, 5, 1, 8, 4, 0],
    )
    assert torch.equal(scan_paths.build("cross", (3, 4)), expected)


def test_zigzag_2x3():
    expected = rows(
        [0, 1, 2, 5, 4, 3],
        [3, 4, 5, 2, 1, 0],
        [0, 3, 4, 1, 2, 5],
        [5, 2, 1, 4, 3, 0],
    )
    assert torch.equal(scan_paths.build("zigzag", (2, 3)), expected)


def test_zigzag_3x4():
    expected = rows(
        [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11],
        [11, 10, 9, 8, 4, 5, 6, 7, 3, 2, 1, 0],
        [0, 4, 8, 9, 5, 1, 2, 6, 10, 11, 7, 3],
        [3, 7, 11, 10, 6, 2, 1, 5, 9, 8, 4, 0],
    )
    assert torch.equal(scan_paths.build("zigzag", (3, 4)), expected)


def test_zigzag_direction_codes_3x4():
    # 0 start, 1 right, 2 left, 3 up, 4 down
    expected = rows(
        [0, 1, 1, 1, 4, 2, 2, 2, 4, 1, 1, 1],
        [0, 2, 2, 2, 3, 1, 1, 1, 3, 2, 2, 2],
        [0, 4, 4, 1, 3, 3, 1, 4, 4, 1, 3, 3],
        [0, 4, 4, 2, 3, 3, 2, 4, 4, 2, 3, 3],
    )
    assert torch.equal(scan_paths.direction_codes("zigzag", (3, 4)), expected)
    assert scan_paths.MOVE_CODES == ("start", "right", "left", "up", "down")


def test_local_window2_on_3x4_pads_bottom_row():
    paths = scan_paths.build("local", (3, 4), directions=("h", "w2", "w2_flip"))
    expected = rows(
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, _, _, _, _],
        [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, _, _, 10, 11, _, _],
        [_, _, 11, 10, _, _, 9, 8, 7, 6, 3, 2, 5, 4, 1, 0],
    )
    assert torch.equal(paths, expected)
    assert torch.equal(scan_paths.inverse(paths)[1], torch.tensor([0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13]))


def test_local_line_routes_on_2x3():
    paths = scan_paths.build("local", (2, 3), directions=("h", "h_flip", "v", "v_flip"))
    expected = rows(
        [0, 1, 2, 3, 4, 5],
        [5, 4, 3, 2, 1, 0],
        [0, 3, 1, 4, 2, 5],
        [5, 2, 4, 1, 3, 0],
    )
    assert torch.equal(paths, expected)


def test_local_default_directions_are_the_canonical_eight():
    default = scan_paths.build("local", (3, 4))
    assert torch.equal(default, scan_paths.build("local", (3, 4), directions=scan_paths.LOCAL_DIRECTIONS))
    assert default.shape == (8, 49)  # w7 pads 3x4 up to 7x7


@pytest.mark.parametrize("kind", ["spatiotemporal", "bidirectional"])
def test_video_2x2x3_is_frame_major(kind):
    forward = list(range(12))
    assert torch.equal(scan_paths.build(kind, (2, 2, 3)), rows(forward, forward[::-1]))


def test_raster_on_a_sequence():
    assert torch.equal(scan_paths.build("raster", (5,)), rows([0, 1, 2, 3, 4]))


# ----------------------------------------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(kind_and_shape)
@example(("zigzag", (1, 7)))
@example(("zigzag", (7, 1)))
@example(("cross", (1, 5)))
@example(("cross", (5, 1)))
@example(("local", (1, 9)))
@example(("local", (9, 1)))
@example(("local", (7, 5)))
@example(("bidirectional", (1, 1, 1)))
def test_rows_are_permutations_and_inverse_composes(case):
    kind, shape = case
    paths = scan_paths.build(kind, shape)
    num_tokens = math.prod(shape)
    assert paths.dtype == torch.long and paths.dim() == 2
    assert paths.shape[0] == EXPECTED_NUM_DIRS[kind]
    if kind != "local":
        assert paths.shape[1] == num_tokens
    assert_rows_are_permutations(paths, num_tokens)
    assert_inverse_composes_to_identity(paths, num_tokens)


@settings(max_examples=40, deadline=None)
@given(shapes_2d, local_directions)
def test_local_routes_pad_only_inside_windows_and_at_the_end(shape, directions):
    height, width = shape
    paths = scan_paths.build("local", shape, directions=directions)
    route_lengths = []
    for name, row in zip(directions, paths):
        route_name = name.removesuffix("_flip")
        if route_name in ("h", "v"):
            window_rows, window_columns, window = height, width, 1
        else:
            window = int(route_name[1:])
            window_rows, window_columns = -(-height // window), -(-width // window)
        length = window_rows * window_columns * window**2
        route_lengths.append(length)
        assert bool((row[length:] == PAD).all())
        forward = row[:length].flip(0) if name.endswith("_flip") else row[:length]
        if route_name == "v":
            forward = forward.view(width, height).t().flatten()
        # Undo the window-by-window order: the padded map must be the row-major grid plus PAD at the bottom/right.
        padded = forward.view(window_rows, window_columns, window, window).permute(0, 2, 1, 3)
        padded = padded.reshape(window_rows * window, window_columns * window)
        assert torch.equal(padded[:height, :width].flatten(), torch.arange(height * width))
        assert bool((padded[height:] == PAD).all()) and bool((padded[:, width:] == PAD).all())
    assert paths.shape == (len(directions), max(route_lengths))
    assert_rows_are_permutations(paths, height * width)
    assert_inverse_composes_to_identity(paths, height * width)


@settings(max_examples=40, deadline=None)
@given(shapes_2d)
@example((1, 6))
@example((6, 1))
def test_zigzag_codes_replay_the_routes(shape):
    width = shape[1]
    paths = scan_paths.build("zigzag", shape)
    codes = scan_paths.direction_codes("zigzag", shape)
    assert codes.shape == paths.shape and bool((codes[:, 0] == 0).all())
    move_offsets = torch.tensor([0, 1, -1, -width, width])  # start, right, left, up, down
    replayed = paths[:, :1] + move_offsets[codes].cumsum(dim=1)
    assert torch.equal(replayed, paths)
    assert bool((codes[:, 1:] > 0).all())


@settings(max_examples=30, deadline=None)
@given(shapes_2d)
def test_cross_column_major_is_raster_of_transpose(shape):
    height, width = shape
    column_major = scan_paths.build("cross", shape)[1]
    visit = torch.arange(height * width)
    assert torch.equal(column_major, (visit % height) * width + visit // height)


def test_large_grids_build():
    for kind in ("raster", "bidirectional", "cross", "zigzag", "local"):
        assert_rows_are_permutations(scan_paths.build(kind, (128, 128)), 128 * 128)
    assert_inverse_composes_to_identity(scan_paths.build("spatiotemporal", (16, 14, 14)), 16 * 14 * 14)


# ------------------------------------------------------------------------------------------------ device and cache


@pytest.mark.parametrize("device", DEVICES)
def test_device_is_respected(device):
    paths = scan_paths.build("cross", (3, 4), device=device)
    codes = scan_paths.direction_codes("zigzag", (3, 4), device=device)
    assert paths.device.type == codes.device.type == torch.device(device).type
    assert paths.dtype == codes.dtype == torch.long
    assert paths.shape == codes.shape == (4, 12)


def test_same_arguments_return_the_cached_tensor():
    assert scan_paths.build("zigzag", (5, 6)) is scan_paths.build("zigzag", [5, 6], device="cpu")
    local = scan_paths.build("local", (5, 6), directions=["h", "w2"])
    assert local is scan_paths.build("local", (5, 6), directions=("h", "w2"))
    assert scan_paths.direction_codes("zigzag", (5, 6)) is scan_paths.direction_codes("zigzag", (5, 6))


def test_different_device_or_options_are_separate_entries():
    on_cpu = scan_paths.build("cross", (5, 6))
    assert scan_paths.build("cross", (5, 6), device="meta") is not on_cpu
    assert scan_paths.build("cross", (5, 6), device="meta").device.type == "meta"
    assert on_cpu.device.type == "cpu"
    with_windows = scan_paths.build("local", (5, 6), directions=("h", "w2"))
    assert not torch.equal(with_windows, scan_paths.build("local", (5, 6), directions=("h", "w3")))


# ------------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: scan_paths.build("foo", (3, 4)), "unknown kind 'foo'"),
        (lambda: scan_paths.build("cross", (2, 2, 3)), "kind 'cross' needs a 2-D (H, W) shape, got rank 3"),
        (lambda: scan_paths.build("zigzag", (12,)), "kind 'zigzag' needs a 2-D (H, W) shape, got rank 1"),
        (lambda: scan_paths.build("spatiotemporal", (4, 4)), "needs a 3-D (T, H, W) shape"),
        (lambda: scan_paths.build("raster", (2, 2, 2, 2)), "rank 4"),
        (lambda: scan_paths.build("raster", (3, 0)), "sizes must be positive, got (3, 0)"),
        (lambda: scan_paths.build("raster", 7), "shape must be a sequence of ints"),
        (lambda: scan_paths.build("raster", (2.5, 3)), "shape must be a sequence of ints"),
        (lambda: scan_paths.build("raster", (3, 4), window=2), "kind 'raster' takes no options, got ['window']"),
        (lambda: scan_paths.build("local", (3, 4), directions=("h", "d")), "unknown local direction 'd'"),
        (lambda: scan_paths.build("local", (3, 4), directions=("w2_flipped",)), "unknown local direction"),
        (lambda: scan_paths.build("local", (3, 4), directions=("w0",)), "window must be a positive int, got 0"),
        (lambda: scan_paths.build("local", (3, 4), directions="h"), "directions must be a non-empty sequence"),
        (lambda: scan_paths.build("local", (3, 4), directions=()), "directions must be a non-empty sequence"),
        (lambda: scan_paths.build("local", (3, 4), window=2), "takes only the option 'directions', got ['window']"),
        (lambda: scan_paths.direction_codes("cross", (3, 4)), "defined only for kind 'zigzag'"),
        (lambda: scan_paths.inverse(torch.arange(4)), "must be a LongTensor (K, Lp)"),
        (lambda: scan_paths.inverse(rows([0, 1, 1])), "not a permutation of range(3)"),
        (lambda: scan_paths.inverse(rows([0, 3, 1])), "lie in [0, 3)"),
        (lambda: scan_paths.inverse(rows([0, 1, PAD], [0, 1, 2])), "different numbers of real tokens"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()
