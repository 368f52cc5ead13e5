"""nnU-Net v2 plans files (``nnUNetPlans.json``, ``plans.json``) read into one typed configuration, from either layout.

A plans file holds dataset-level keys (``transpose_forward``/``transpose_backward``,
``foreground_intensity_properties_per_channel``, ...) and ``configurations`` ('2d', '3d_fullres', ...), each with its
patch size, batch size, target spacing, normalisation and network. nnU-Net changed how a configuration describes its
network in version 2.4:

* old layout (<= 2.3, also U-Mamba's vendored 2.1.1): ``UNet_class_name``, ``UNet_base_num_features``,
  ``unet_max_num_features``, ``conv_kernel_sizes``, ``pool_op_kernel_sizes``, ``n_conv_per_stage_encoder``,
  ``n_conv_per_stage_decoder``; features of stage i = ``min(base * 2**i, max)``.
* new layout (>= 2.4): ``architecture = {network_class_name, arch_kwargs: {n_stages, features_per_stage, conv_op,
  kernel_sizes, strides, n_conv_per_stage (plain U-Net) or n_blocks_per_stage (residual encoders),
  n_conv_per_stage_decoder, ...}, _kw_requires_import}``.

Both become the same ``NetworkPlan``. A configuration may name another in ``inherits_from``: its keys then update a
copy of the parent's (resolved recursively), as nnU-Net's ``PlansManager`` does.
"""
import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from ..data.errors import DataError

__all__ = [
    "NetworkPlan", "SegConfiguration", "Plans", "load_plans", "configuration", "configuration_names", "PlansError",
    "PlansFileError", "PlansFormatError", "MissingPlansKeyError", "UnknownConfigurationError",
]

PathLike = Union[str, Path]

# file names nnU-Net gives a plans file: in a trained model's folder, and the default planner's in nnUNet_preprocessed
PLANS_FILE_NAMES = ("plans.json", "nnUNetPlans.json")
OLD_LAYOUT_KEYS = ("UNet_base_num_features", "unet_max_num_features", "conv_kernel_sizes", "pool_op_kernel_sizes",
                   "n_conv_per_stage_encoder", "n_conv_per_stage_decoder")
CONFIGURATION_KEYS = ("patch_size", "batch_size", "spacing", "normalization_schemes", "use_mask_for_norm")
RESAMPLING_KEYS = ("resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_seg", "resampling_fn_seg_kwargs",
                   "resampling_fn_probabilities", "resampling_fn_probabilities_kwargs")


# --- errors --------------------------------------------------------------------------------------------------------

class PlansError(DataError):
    """A plans file (or dict) that cannot be used; ``path`` is the file when there is one."""

    def __init__(self, message: str, path: Optional[PathLike] = None):
        super().__init__(message if path is None else f"{path}: {message}")
        self.path = None if path is None else str(path)


class PlansFileError(PlansError):
    """The plans file is missing, unreadable or not valid JSON."""


class PlansFormatError(PlansError):
    """The plans do not have nnU-Net's structure (no ``configurations``, a value of the wrong type or length)."""


class MissingPlansKeyError(PlansFormatError):
    """A key that nnU-Net's plans always hold is missing."""


class UnknownConfigurationError(PlansError):
    """The requested configuration is not in the plans; the message lists the available ones."""


# --- typed views ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NetworkPlan:
    """The network of a configuration, whichever plans layout it came from.

    Attributes:
        n_stages: Resolution stages of the encoder.
        features_per_stage: Channels per stage.
        kernel_sizes: Per stage, per axis conv kernel sizes.
        strides: Per stage, per axis downsampling (nnU-Net's pool_op_kernel_sizes; the first is all ones).
        n_conv_per_stage_encoder: Convs (plain U-Net) or residual blocks (residual encoders, U-Mamba) per stage.
        n_conv_per_stage_decoder: Per decoder stage, deepest first (n_stages - 1 entries).
        dim: 2 or 3.
    """
    n_stages: int
    features_per_stage: Tuple[int, ...]
    kernel_sizes: Tuple[Tuple[int, ...], ...]
    strides: Tuple[Tuple[int, ...], ...]
    n_conv_per_stage_encoder: Tuple[int, ...]
    n_conv_per_stage_decoder: Tuple[int, ...]
    dim: int

    def __post_init__(self):
        problems = []
        if self.dim not in (2, 3):
            problems.append(f"dim must be 2 or 3, got {self.dim}")
        if self.n_stages < 1:
            problems.append(f"n_stages must be >= 1, got {self.n_stages}")
        per_stage = dict(features_per_stage=self.features_per_stage, kernel_sizes=self.kernel_sizes,
                         strides=self.strides, n_conv_per_stage_encoder=self.n_conv_per_stage_encoder)
        for name, values in per_stage.items():
            if len(values) != self.n_stages:
                problems.append(f"{name} needs {self.n_stages} entries (n_stages), got {len(values)}")
        if len(self.n_conv_per_stage_decoder) != self.n_stages - 1:
            problems.append(f"n_conv_per_stage_decoder needs {self.n_stages - 1} entries (n_stages - 1), got "
                            f"{len(self.n_conv_per_stage_decoder)}")
        for name in ("kernel_sizes", "strides"):
            if any(len(size) != self.dim for size in getattr(self, name)):
                problems.append(f"every {name} entry needs {self.dim} axes, got {getattr(self, name)}")
        counts = self.features_per_stage + self.n_conv_per_stage_encoder + self.n_conv_per_stage_decoder
        if any(v < 1 for v in counts) or any(v < 1 for sizes in self.kernel_sizes + self.strides for v in sizes):
            problems.append("features, kernel sizes, strides and conv counts must be positive")
        if problems:
            raise ValueError("invalid NetworkPlan: " + "; ".join(problems))

    @property
    def size_divisor(self) -> Tuple[int, ...]:
        """Per axis, the product of the strides (patch sizes are multiples of it)."""
        return tuple(math.prod([stride[axis] for stride in self.strides]) for axis in range(self.dim))


@dataclass(frozen=True)
class SegConfiguration:
    """One configuration of a plans file ('2d', '3d_fullres', ...), inheritance resolved.

    Attributes:
        name: The configuration's name.
        patch_size: Training patch size (voxels, in the transposed axis order).
        batch_size: Training batch size.
        spacing: Target spacing (mm) of the configuration's axes.
        normalization_schemes: Per input channel, nnU-Net's normalisation class name (e.g. 'CTNormalization',
            'ZScoreNormalization').
        use_mask_for_norm: Per input channel, whether normalisation uses the nonzero mask only.
        network: The network, from either layout.
        network_class_name: The plan's network class (``network_class_name`` or the old ``UNet_class_name``).
        transpose_forward, transpose_backward: The dataset's axis permutation into and out of the planned order.
        foreground_intensity_properties: Per channel index (str), the foreground intensity statistics (mean, std,
            percentile_00_5, percentile_99_5, ...) that CT normalisation uses; empty if the plans hold none.
        data_identifier, preprocessor_name, median_image_size_in_voxels, batch_dice: As in the plans (None if absent).
        resampling: The ``resampling_fn_*`` entries present in the plans.
        source: The plans file, if read from one.
    """
    name: str
    patch_size: Tuple[int, ...]
    batch_size: int
    spacing: Tuple[float, ...]
    normalization_schemes: Tuple[str, ...]
    use_mask_for_norm: Tuple[bool, ...]
    network: NetworkPlan
    network_class_name: str
    transpose_forward: Tuple[int, ...]
    transpose_backward: Tuple[int, ...]
    foreground_intensity_properties: Dict[str, Dict[str, float]] = field(default_factory=dict)
    data_identifier: Optional[str] = None
    preprocessor_name: Optional[str] = None
    median_image_size_in_voxels: Optional[Tuple[float, ...]] = None
    batch_dice: Optional[bool] = None
    resampling: Dict[str, Any] = field(default_factory=dict)
    source: Optional[str] = None

    @property
    def dim(self) -> int:
        return self.network.dim


class Plans(dict):
    """A plans dict (the JSON as nnU-Net writes it) that remembers the file it came from (``source``) for error
    messages; it serialises as the plain dict."""

    def __init__(self, data: Mapping, source: Optional[PathLike] = None):
        super().__init__(data)
        self.source = None if source is None else str(source)


# --- reading -------------------------------------------------------------------------------------------------------

def _plans_file(path: Path) -> Path:
    if path.is_dir():
        for name in PLANS_FILE_NAMES:
            if (path / name).is_file():
                return path / name
        found = sorted(p.name for p in path.glob("*.json"))
        raise PlansFileError(f"no plans file in this folder (looked for {', '.join(PLANS_FILE_NAMES)}; JSON files "
                             f"present: {found or 'none'})", path)
    if not path.is_file():
        raise PlansFileError("plans file not found", path)
    return path


def load_plans(path_or_dict: Union[PathLike, Mapping]) -> Plans:
    """Read and check an nnU-Net plans file (or a plans dict, copied).

    Args:
        path_or_dict: A plans JSON file, a folder holding ``plans.json`` (a trained model) or ``nnUNetPlans.json``
            (nnUNet_preprocessed), or the plans as a dict.

    Returns:
        ``Plans``: the dict, with ``source`` set to the file.

    Raises:
        PlansFileError: Missing file, unreadable file, invalid JSON.
        PlansFormatError: Not a JSON object, no non-empty ``configurations`` object, a configuration that is not an
            object, or an ``inherits_from`` naming an unknown configuration or forming a cycle.
    """
    if isinstance(path_or_dict, Plans):
        return path_or_dict
    if isinstance(path_or_dict, Mapping):
        plans = Plans(copy.deepcopy(dict(path_or_dict)))
    else:
        path = _plans_file(Path(path_or_dict))
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise PlansFileError(f"cannot read the plans file: {error}", path) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PlansFileError(f"not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); the file "
                                 "is corrupt or truncated", path) from None
        if not isinstance(data, dict):
            raise PlansFormatError(f"a plans file holds a JSON object, got {type(data).__name__}", path)
        plans = Plans(data, source=path)
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict) or not configurations:
        raise (MissingPlansKeyError if configurations is None else PlansFormatError)(
            "plans need a non-empty 'configurations' object (nnU-Net's plans always have one)", plans.source)
    for name, config in configurations.items():
        if not isinstance(config, dict):
            raise PlansFormatError(f"configuration {name!r} must be a JSON object, got {type(config).__name__}",
                                   plans.source)
        _resolve(plans, name)  # inheritance checked early
    return plans


def configuration_names(plans: Union[PathLike, Mapping]) -> List[str]:
    """The configurations of the plans, in file order."""
    return list(load_plans(plans)["configurations"])


def _resolve(plans: Plans, name: str, visited: Tuple[str, ...] = ()) -> dict:
    """The configuration dict with its ``inherits_from`` chain applied (parent keys updated by the child's)."""
    configurations = plans["configurations"]
    config = configurations[name]
    parent = config.get("inherits_from")
    if parent is None:
        return copy.deepcopy(config)
    if parent not in configurations:
        raise PlansFormatError(f"configuration {name!r} inherits from {parent!r}, which the plans do not have "
                               f"(available: {', '.join(configurations)})", plans.source)
    if parent in visited + (name,):
        raise PlansFormatError(f"configurations inherit in a cycle: {' -> '.join(visited + (name, parent))}",
                               plans.source)
    resolved = _resolve(plans, parent, visited + (name,))
    resolved.update(copy.deepcopy(config))
    del resolved["inherits_from"]
    return resolved


class _Reader:
    """Typed access to one configuration's keys, with errors naming the key, the configuration and the file."""

    def __init__(self, values: Mapping, where: str, source: Optional[str]):
        self.values, self.where, self.source = values, where, source

    def error(self, message: str) -> PlansFormatError:
        return PlansFormatError(f"{self.where}: {message}", self.source)

    def get(self, key: str):
        if key not in self.values:
            raise MissingPlansKeyError(f"{self.where} lacks the key {key!r}", self.source)
        return self.values[key]

    def ints(self, key: str, length: Optional[int] = None, value=None) -> Tuple[int, ...]:
        value = self.get(key) if value is None else value
        if isinstance(value, int) and not isinstance(value, bool) and length is not None:
            value = [value] * length
        if (not isinstance(value, (list, tuple)) or
                not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise self.error(f"{key} must be a list of integers, got {value!r}")
        if length is not None and len(value) != length:
            raise self.error(f"{key} needs {length} entries, got {len(value)}: {value!r}")
        return tuple(value)

    def sizes(self, key: str, n_stages: int, dim: int, value=None) -> Tuple[Tuple[int, ...], ...]:
        value = self.get(key) if value is None else value
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value] * n_stages
        if not isinstance(value, (list, tuple)) or len(value) != n_stages:
            raise self.error(f"{key} needs one entry per stage ({n_stages}), got {value!r}")
        return tuple(self.ints(key, dim, [v] * dim if isinstance(v, int) else v) for v in value)

    def positive_int(self, key: str) -> int:
        value = self.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise self.error(f"{key} must be a positive integer, got {value!r}")
        return value

    def numbers(self, key: str, length: Optional[int] = None) -> Tuple[float, ...]:
        value = self.get(key)
        if (not isinstance(value, (list, tuple)) or
                not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) or
                (length is not None and len(value) != length)):
            expected = "numbers" if length is None else f"{length} numbers"
            raise self.error(f"{key} must be a list of {expected}, got {value!r}")
        return tuple(float(v) for v in value)


def _conv_dim(conv_op, reader: _Reader) -> Optional[int]:
    if conv_op is None:
        return None
    name = str(conv_op).rsplit(".", 1)[-1]
    if name not in ("Conv2d", "Conv3d"):
        raise reader.error(f"conv_op {conv_op!r} is not a 2-D or 3-D convolution")
    return int(name[-2])


def _network_new_layout(architecture, reader: _Reader) -> Tuple[NetworkPlan, str]:
    if not isinstance(architecture, dict) or not isinstance(architecture.get("arch_kwargs"), dict):
        raise reader.error(f"architecture must be an object with 'arch_kwargs' (nnU-Net >= 2.4), got {architecture!r}")
    arch = _Reader(architecture["arch_kwargs"], f"{reader.where} architecture.arch_kwargs", reader.source)
    n_stages = arch.positive_int("n_stages")
    kernel_sizes = arch.get("kernel_sizes")
    dim = _conv_dim(architecture["arch_kwargs"].get("conv_op"), arch)
    if dim is None:
        first = kernel_sizes[0] if isinstance(kernel_sizes, (list, tuple)) and kernel_sizes else None
        if not isinstance(first, (list, tuple)):
            raise arch.error("give conv_op or per-axis kernel_sizes, so that the network's dimension is known")
        dim = len(first)
    blocks = [key for key in ("n_blocks_per_stage", "n_conv_per_stage") if key in arch.values]
    if not blocks:
        raise MissingPlansKeyError(f"{arch.where} lacks 'n_conv_per_stage' (plain U-Net) or 'n_blocks_per_stage' "
                                   "(residual encoders)", reader.source)
    if len(blocks) == 2 and arch.values[blocks[0]] != arch.values[blocks[1]]:
        raise arch.error("n_blocks_per_stage and n_conv_per_stage disagree; give one of them")
    network = NetworkPlan(
        n_stages=n_stages,
        features_per_stage=arch.ints("features_per_stage", n_stages),
        kernel_sizes=arch.sizes("kernel_sizes", n_stages, dim),
        strides=arch.sizes("strides", n_stages, dim),
        n_conv_per_stage_encoder=arch.ints(blocks[0], n_stages),
        n_conv_per_stage_decoder=arch.ints("n_conv_per_stage_decoder", n_stages - 1),
        dim=dim,
    )
    return network, str(architecture.get("network_class_name", ""))


def _network_old_layout(reader: _Reader) -> Tuple[NetworkPlan, str]:
    missing = [key for key in OLD_LAYOUT_KEYS if key not in reader.values]
    if missing:
        raise MissingPlansKeyError(
            f"{reader.where} has no 'architecture' (nnU-Net >= 2.4) and lacks the old-layout (<= 2.3) keys "
            f"{missing}", reader.source)
    kernels = reader.get("conv_kernel_sizes")
    if not isinstance(kernels, (list, tuple)) or not kernels or not isinstance(kernels[0], (list, tuple)):
        raise reader.error(f"conv_kernel_sizes must be a list of per-axis kernel sizes, got {kernels!r}")
    n_stages, dim = len(kernels), len(kernels[0])
    base = reader.positive_int("UNet_base_num_features")
    maximum = reader.positive_int("unet_max_num_features")
    network = NetworkPlan(
        n_stages=n_stages,
        features_per_stage=tuple(min(base * 2 ** i, maximum) for i in range(n_stages)),
        kernel_sizes=reader.sizes("conv_kernel_sizes", n_stages, dim),
        strides=reader.sizes("pool_op_kernel_sizes", n_stages, dim),
        n_conv_per_stage_encoder=reader.ints("n_conv_per_stage_encoder", n_stages),
        n_conv_per_stage_decoder=reader.ints("n_conv_per_stage_decoder", n_stages - 1),
        dim=dim,
    )
    return network, str(reader.values.get("UNet_class_name", ""))


def _transposes(plans: Plans) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    reader = _Reader(plans, "plans", plans.source)
    forward = reader.ints("transpose_forward")
    backward = reader.ints("transpose_backward", len(forward))
    identity = list(range(len(forward)))
    if sorted(forward) != identity or sorted(backward) != identity or [forward[b] for b in backward] != identity:
        raise reader.error(f"transpose_forward {list(forward)} must be a permutation and transpose_backward "
                           f"{list(backward)} its inverse")
    return forward, backward


def _foreground_properties(plans: Plans) -> Dict[str, Dict[str, float]]:
    properties = plans.get("foreground_intensity_properties_per_channel",
                           plans.get("foreground_intensity_properties_by_modality", {}))
    if not isinstance(properties, dict):
        raise PlansFormatError(f"foreground_intensity_properties_per_channel must be an object, got {properties!r}",
                               plans.source)
    return {str(k): dict(v) for k, v in properties.items()}


def configuration(plans: Union[PathLike, Mapping], name: str) -> SegConfiguration:
    """One configuration of the plans, checked and typed, from either plans layout.

    Args:
        plans: Plans as ``load_plans`` takes them (a file, a folder, a dict or ``Plans``).
        name: The configuration ('2d', '3d_fullres', '3d_lowres', ...).

    Raises:
        UnknownConfigurationError: ``name`` is not in the plans (the message lists the available ones).
        MissingPlansKeyError: A key nnU-Net's plans always hold is missing (named with its configuration and file).
        PlansFormatError: A value of the wrong type or length, or a network the plans describe inconsistently.
        PlansFileError: As ``load_plans``.
    """
    plans = load_plans(plans)
    available = list(plans["configurations"])
    if name not in available:
        raise UnknownConfigurationError(f"no configuration {name!r} in the plans; available: {', '.join(available)}",
                                        plans.source)
    values = _resolve(plans, name)
    reader = _Reader(values, f"configuration {name!r}", plans.source)
    for key in CONFIGURATION_KEYS:
        reader.get(key)
    try:
        if "architecture" in values:
            network, class_name = _network_new_layout(values["architecture"], reader)
        else:
            network, class_name = _network_old_layout(reader)
    except ValueError as error:  # NetworkPlan's own checks
        raise reader.error(str(error)) from None
    patch_size = reader.ints("patch_size", network.dim)
    if any(p < 1 for p in patch_size):
        raise reader.error(f"patch_size must be positive, got {list(patch_size)}")
    schemes = values["normalization_schemes"]
    if not isinstance(schemes, (list, tuple)) or not all(isinstance(s, str) for s in schemes):
        raise reader.error(f"normalization_schemes must be a list of names, got {schemes!r}")
    use_mask = values["use_mask_for_norm"]
    if (not isinstance(use_mask, (list, tuple)) or len(use_mask) != len(schemes) or
            not all(isinstance(m, bool) for m in use_mask)):
        raise reader.error(f"use_mask_for_norm must hold one bool per channel ({len(schemes)}), got {use_mask!r}")
    median = values.get("median_image_size_in_voxels")
    batch_dice = values.get("batch_dice")
    transpose_forward, transpose_backward = _transposes(plans)
    return SegConfiguration(
        name=name,
        patch_size=patch_size,
        batch_size=reader.positive_int("batch_size"),
        spacing=reader.numbers("spacing"),
        normalization_schemes=tuple(schemes),
        use_mask_for_norm=tuple(use_mask),
        network=network,
        network_class_name=class_name,
        transpose_forward=transpose_forward,
        transpose_backward=transpose_backward,
        foreground_intensity_properties=_foreground_properties(plans),
        data_identifier=values.get("data_identifier"),
        preprocessor_name=values.get("preprocessor_name"),
        median_image_size_in_voxels=None if median is None else reader.numbers("median_image_size_in_voxels"),
        batch_dice=None if batch_dice is None else bool(batch_dice),
        resampling={key: copy.deepcopy(values[key]) for key in RESAMPLING_KEYS if key in values},
        source=plans.source,
    )
