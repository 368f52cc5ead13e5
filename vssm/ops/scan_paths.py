"""Scan paths: the orders in which the selective-scan mixers visit the tokens of a sequence, image or video grid.

A path set is a ``LongTensor`` of shape ``(K, Lp)``: row ``k`` lists, in visiting order, the row-major flat spatial
index of the token that direction ``k`` reads at each step. ``PAD`` (-1) marks a zero-padding step; only the ``local``
kind produces them. ``inverse`` turns a path set into the ``(K, L)`` visit step of every real token, which is what
scatters a scanned sequence back onto the grid.

Kinds:
    raster: ``K=1``, row-major order, on ``(L,)``, ``(H, W)`` or ``(T, H, W)``.
    bidirectional: ``K=2``, raster and its reverse (Vim; on ``(T, H, W)`` this is VideoMamba's spatial-first order).
    spatiotemporal: the ``bidirectional`` rows, for ``(T, H, W)`` only (VideoMamba).
    cross: ``K=4`` on ``(H, W)``: row-major, column-major, row-major reversed, column-major reversed (VMamba).
    zigzag: ``K=4`` on ``(H, W)``: row snake, its reverse, column snake, its reverse (PlainMamba).
    local: one row per name in the ``directions`` option on ``(H, W)`` (LocalVMamba), see ``LOCAL_DIRECTIONS``.

Results are cached and shared between callers: treat every returned tensor as read-only (``clone()`` it to edit).
Inside torch.compile the cached tensor is a graph constant (``vssm.ops.common.graph_constant``): the same tensor
at every call of the compiled graph, so the ops do not check it again.

Validation: the scan ops take any integer ``(K, Lp)`` tensor as ``paths``, and ``check`` is their gate (it lives in
``vssm.ops.common``, which the Triton launchers import too, as ``check_paths``). A valid path
set for a map of ``L`` tokens has ``Lp >= L`` and every row a permutation of ``range(L)`` with ``PAD`` steps anywhere
(so each token read exactly once per route, every token read); anything else raises a ``ValueError`` naming the route
(row) and the bad index before a kernel runs. A tensor is validated once: ``build`` marks its results as valid, and
``check`` remembers every tensor it passed (by identity, ``_version`` and data pointer, through a weak reference), so
repeated calls cost a dictionary look-up and no device-to-host copy. An in-place edit of a remembered tensor bumps its
``_version`` and makes it checked again. Fake and meta tensors (torch.compile, torch.export tracing) have no values
and are not checked; the registered scan ops check the real tensors they run on.
"""
from __future__ import annotations

import math
import operator
import re
from collections.abc import Sequence

import torch

from .common import check_paths as check
from .common import check_paths_layout as check_layout
from .common import graph_constant, mark_valid_paths, trace_quiet

__all__ = ["KINDS", "LOCAL_DIRECTIONS", "MOVE_CODES", "PAD", "build", "check", "check_layout", "direction_codes",
           "inverse"]

KINDS = ("raster", "bidirectional", "spatiotemporal", "cross", "zigzag", "local")
# Default ``local`` directions. ``h``: row-major, ``v``: column-major, ``wK``: KxK windows in row-major order over the
# window grid, row-major inside each window, on the map zero-padded at the bottom/right to multiples of K.
# ``_flip`` reverses the whole route (padding included). Any ``wK``/``wK_flip`` with K >= 1 is accepted.
LOCAL_DIRECTIONS = ("h", "h_flip", "v", "v_flip", "w2", "w2_flip", "w7", "w7_flip")
# ``direction_codes`` values: the index of each move name is its code.
MOVE_CODES = ("start", "right", "left", "up", "down")
PAD = -1  # also ``vssm.ops.common.PATH_PAD``

_RANKS = {
    "raster": (1, 2, 3),
    "bidirectional": (1, 2, 3),
    "spatiotemporal": (3,),
    "cross": (2,),
    "zigzag": (2,),
    "local": (2,),
}
_RANK_NAMES = {1: "1-D (L,)", 2: "2-D (H, W)", 3: "3-D (T, H, W)"}
_LOCAL_NAME = re.compile(r"(h|v|w(\d+))(_flip)?")
_CACHE_SIZE = 256


@trace_quiet
def build(kind: str, shape: Sequence[int], *, device: torch.device | str | None = None, **options) -> torch.Tensor:
    """Visiting orders of ``kind`` on a grid of ``shape``.

    Args:
        kind: One of ``KINDS``.
        shape: ``(L,)``, ``(H, W)`` or ``(T, H, W)``, as the kind allows.
        device: Device of the result; CPU when None.
        **options: ``directions`` for ``local`` (default ``LOCAL_DIRECTIONS``); the other kinds take none.

    Returns:
        LongTensor ``(K, Lp)`` of row-major flat indices in visiting order, ``PAD`` at zero-padding steps and at the
        end of routes shorter than ``Lp``. Cached and shared: do not modify it in place.

    Raises:
        ValueError: Unknown kind, shape of the wrong rank or with non-positive sizes, or bad options.
    """
    sizes = _check_kind_and_shape("build", kind, shape)
    directions = _check_options("build", kind, options)
    if torch.compiler.is_compiling():
        if not all(type(size) is int for size in sizes):
            # symbolic sizes (dynamic shapes): the routes become graph ops, computed where the graph runs
            return _build_paths(kind, sizes, directions, _as_device(device))
        return _build_cached(kind, sizes, directions, _as_device(device))  # a graph constant
    return _build_cached.cache(kind, sizes, directions, _as_device(device))


@trace_quiet
def inverse(paths: torch.Tensor) -> torch.Tensor:
    """Visit step of every real token, so that ``paths[k, inv[k, p]] == p``.

    Args:
        paths: LongTensor ``(K, Lp)``, e.g. from ``build``; each row holds ``range(L)`` in some order plus ``PAD``
            entries anywhere.

    Returns:
        LongTensor ``(K, L)`` on the device of ``paths``: ``inv[k, p]`` is the step at which row ``k`` visits ``p``.

    Raises:
        ValueError: ``paths`` is not a 2-D LongTensor, or a row without its ``PAD`` entries is not a permutation of
            ``range(L)`` with the same ``L`` for every row.
    """
    if paths.dim() != 2 or paths.shape[0] == 0 or paths.dtype != torch.long:
        raise ValueError(
            f"scan_paths.inverse: paths must be a LongTensor (K, Lp) with K >= 1, "
            f"got {paths.dtype} of shape {tuple(paths.shape)}"
        )
    num_directions, num_steps = paths.shape
    real = paths != PAD
    tokens_per_row = real.sum(dim=1)
    num_tokens = int(tokens_per_row[0])
    if not bool((tokens_per_row == num_tokens).all()):
        raise ValueError(f"scan_paths.inverse: rows hold different numbers of real tokens: {tokens_per_row.tolist()}")
    real_tokens = paths[real].view(num_directions, num_tokens)
    if bool(((real_tokens < 0) | (real_tokens >= num_tokens)).any()):
        raise ValueError(f"scan_paths.inverse: entries must be {PAD} (padding) or lie in [0, {num_tokens})")
    real_steps = torch.arange(num_steps, device=paths.device).expand(num_directions, -1)[real]
    real_steps = real_steps.view(num_directions, num_tokens)
    inv = torch.zeros_like(real_tokens).scatter_(1, real_tokens, real_steps)
    identity = torch.arange(num_tokens, device=paths.device).expand(num_directions, -1)
    if not torch.equal(paths.gather(1, inv), identity):
        raise ValueError(f"scan_paths.inverse: a row is not a permutation of range({num_tokens}) without its padding")
    return inv


@trace_quiet
def direction_codes(
    kind: str, shape: Sequence[int], *, device: torch.device | str | None = None, **options
) -> torch.Tensor:
    """Move taken at every step of the ``zigzag`` routes, whose steps all go to a 4-neighbour.

    Codes index ``MOVE_CODES``: 0 start (step 0), 1 right (column + 1), 2 left (column - 1), 3 up (row - 1),
    4 down (row + 1). Reversed routes get the codes of their own moves along the reversed order.

    Args:
        kind: ``"zigzag"``, the only kind whose every step is a 4-neighbour move.
        shape: ``(H, W)``.
        device: Device of the result; CPU when None.
        **options: None accepted; present so that the call mirrors ``build``.

    Returns:
        LongTensor ``(K, Lp)`` aligned with ``build(kind, shape)``. Cached and shared: do not modify it in place.

    Raises:
        ValueError: As ``build``, or a kind other than ``zigzag``.
    """
    sizes = _check_kind_and_shape("direction_codes", kind, shape)
    if kind != "zigzag":
        raise ValueError(
            f"scan_paths.direction_codes: defined only for kind 'zigzag', whose steps all move to a 4-neighbour; "
            f"got {kind!r}"
        )
    _check_options("direction_codes", kind, options)
    if torch.compiler.is_compiling():
        if not all(type(size) is int for size in sizes):
            return _codes(kind, sizes, _as_device(device))
        return _codes_cached(kind, sizes, _as_device(device))
    return _codes_cached.cache(kind, sizes, _as_device(device))


def _as_device(device: torch.device | str | None) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


def _check_kind_and_shape(caller: str, kind: str, shape: Sequence[int]) -> tuple[int, ...]:
    if kind not in KINDS:
        raise ValueError(f"scan_paths.{caller}: unknown kind {kind!r}; expected one of {KINDS}")
    try:
        sizes = tuple(operator.index(size) for size in shape)
    except TypeError:
        raise ValueError(f"scan_paths.{caller}: shape must be a sequence of ints, got {shape!r}") from None
    if len(sizes) not in _RANKS[kind]:
        expected = " or ".join(_RANK_NAMES[rank] for rank in _RANKS[kind])
        raise ValueError(f"scan_paths.{caller}: kind {kind!r} needs a {expected} shape, got rank {len(sizes)} {sizes}")
    if min(sizes) < 1:
        raise ValueError(f"scan_paths.{caller}: shape sizes must be positive, got {sizes}")
    return sizes


def _check_options(caller: str, kind: str, options: dict) -> tuple[str, ...] | None:
    """Validated ``local`` directions as a hashable tuple; None for the kinds without options."""
    if kind != "local":
        if options:
            raise ValueError(f"scan_paths.{caller}: kind {kind!r} takes no options, got {sorted(options)}")
        return None
    unknown = sorted(set(options) - {"directions"})
    if unknown:
        raise ValueError(f"scan_paths.{caller}: kind 'local' takes only the option 'directions', got {unknown}")
    directions = options.get("directions", LOCAL_DIRECTIONS)
    if isinstance(directions, str) or not isinstance(directions, Sequence) or len(directions) == 0:
        raise ValueError(f"scan_paths.{caller}: directions must be a non-empty sequence of names, got {directions!r}")
    for name in directions:
        _parse_local_direction(caller, name)
    return tuple(directions)


def _parse_local_direction(caller: str, name: str) -> tuple[str, int | None, bool]:
    """Split a ``local`` direction name into (route ``h``/``v``/``w``, window size or None, flipped)."""
    match = _LOCAL_NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise ValueError(
            f"scan_paths.{caller}: unknown local direction {name!r}; expected h, v or wK (K >= 1), each optionally "
            f"with '_flip', e.g. {LOCAL_DIRECTIONS}"
        )
    window = None if match[2] is None else int(match[2])
    if window is not None and window < 1:
        raise ValueError(f"scan_paths.{caller}: window must be a positive int, got {window} (direction {name!r})")
    return match[1][0], window, match[3] is not None


@graph_constant(maxsize=_CACHE_SIZE)  # cached; a constant of torch.compile graphs
def _build_cached(
    kind: str, shape: tuple[int, ...], directions: tuple[str, ...] | None, device: torch.device
) -> torch.Tensor:
    paths = _build_paths(kind, shape, directions, device)
    mark_valid_paths(paths, math.prod(shape))  # valid by construction
    return paths


def _build_paths(
    kind: str, shape: tuple[int, ...], directions: tuple[str, ...] | None, device: torch.device
) -> torch.Tensor:
    grid = torch.arange(math.prod(shape)).view(shape)
    raster = grid.flatten()
    if kind == "raster":
        paths = raster.unsqueeze(0)
    elif kind in ("bidirectional", "spatiotemporal"):
        paths = torch.stack((raster, raster.flip(0)))
    elif kind == "cross":
        column_major = grid.t().flatten()
        paths = torch.stack((raster, column_major, raster.flip(0), column_major.flip(0)))
    elif kind == "zigzag":
        row_snake, column_snake = _snake(grid), _snake(grid.t())
        paths = torch.stack((row_snake, row_snake.flip(0), column_snake, column_snake.flip(0)))
    else:
        paths = _stack_end_padded([_local_route(grid, name) for name in directions])
    return paths.to(device)


@graph_constant(maxsize=_CACHE_SIZE)
def _codes_cached(kind: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return _codes(kind, shape, device)


def _codes(kind: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    paths = _build_paths(kind, shape, None, torch.device("cpu"))
    width = shape[1]
    row_moves = paths.div(width, rounding_mode="floor").diff(dim=1)
    column_moves = paths.remainder(width).diff(dim=1)
    codes = torch.zeros_like(paths)
    codes[:, 1:] = (
        (column_moves == 1) * MOVE_CODES.index("right")
        + (column_moves == -1) * MOVE_CODES.index("left")
        + (row_moves == -1) * MOVE_CODES.index("up")
        + (row_moves == 1) * MOVE_CODES.index("down")
    )
    return codes.to(device)


def _snake(grid: torch.Tensor) -> torch.Tensor:
    """Boustrophedon order (L,) of an (R, C) index grid: even rows left to right, odd rows right to left."""
    snake = grid.clone()
    snake[1::2] = grid[1::2].flip(-1)
    return snake.flatten()


def _local_route(grid: torch.Tensor, name: str) -> torch.Tensor:
    """Route (length H*W, or Hp*Wp with ``PAD`` for windows) of one validated ``local`` direction on an (H, W) grid."""
    route, window, flipped = _parse_local_direction("build", name)
    if route == "h":
        order = grid.flatten()
    elif route == "v":
        order = grid.t().flatten()
    else:
        order = _window_order(grid, window)
    return order.flip(0) if flipped else order


def _window_order(grid: torch.Tensor, window: int) -> torch.Tensor:
    """Window-by-window raster (Hp*Wp,) of an (H, W) grid zero-padded at the bottom/right to multiples of ``window``."""
    height, width = grid.shape
    window_rows, window_columns = -(-height // window), -(-width // window)
    padded = grid.new_full((window_rows * window, window_columns * window), PAD)
    padded[:height, :width] = grid
    return padded.view(window_rows, window, window_columns, window).permute(0, 2, 1, 3).flatten()


def _stack_end_padded(routes: list[torch.Tensor]) -> torch.Tensor:
    """Stack 1-D routes into (K, Lp), right-padding the shorter ones with ``PAD``."""
    paths = routes[0].new_full((len(routes), max(len(route) for route in routes)), PAD)
    for row, route in zip(paths, routes):
        row[: len(route)] = route
    return paths
