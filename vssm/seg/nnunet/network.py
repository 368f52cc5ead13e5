"""Build a vssm segmentation net from what nnU-Net hands a trainer's ``build_network_architecture``, in each of the
three call forms nnunetv2 has used (this module does not import nnunetv2):

* <= 2.2: ``(plans_manager, dataset_json, configuration_manager, num_input_channels, enable_deep_supervision)``; the
  number of outputs comes from the plans' label manager;
* 2.3 - 2.6: ``(architecture_class_name, arch_init_kwargs, arch_init_kwargs_req_import, num_input_channels,
  num_output_channels, enable_deep_supervision)``; no patch size is passed, so the vssm trainers record it in their
  plans' ``arch_kwargs`` under ``PATCH_SIZE_KEY`` (the copy nnU-Net saves as the model's ``plans.json``);
* >= 2.7: ``(plans_manager, configuration_manager, num_input_channels, num_output_channels,
  enable_deep_supervision)``.

The plan's network (either plans layout) becomes a ``vssm.seg.plans.NetworkPlan`` and the net comes from
``vssm.seg.nets.build_seg_net``.
"""
import copy
import inspect
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from torch import nn

from ..nets import build_seg_net
from ..plans import NetworkPlan, _network_new_layout, _Reader, configuration

__all__ = ["PATCH_SIZE_KEY", "build_nnunet_network", "nnunet_call_form", "record_patch_size", "round_up_patch_size"]

# the arch_kwargs key under which the vssm trainers keep the patch size (nnU-Net 2.3-2.6 passes none)
PATCH_SIZE_KEY = "vssm_patch_size"


def _call_signature(*names: str) -> inspect.Signature:
    """A ``build_network_architecture`` signature: ``names`` then ``enable_deep_supervision=True``."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature([inspect.Parameter(name, kind) for name in names] +
                             [inspect.Parameter("enable_deep_supervision", kind, default=True)])


# nnunetv2 version range -> the arguments its trainers and predictor pass to build_network_architecture
CALL_FORMS = {
    "<=2.2": _call_signature("plans_manager", "dataset_json", "configuration_manager", "num_input_channels"),
    "2.3-2.6": _call_signature("architecture_class_name", "arch_init_kwargs", "arch_init_kwargs_req_import",
                               "num_input_channels", "num_output_channels"),
    ">=2.7": _call_signature("plans_manager", "configuration_manager", "num_input_channels", "num_output_channels"),
}


def nnunet_call_form(args: Sequence[Any], kwargs: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """Which nnunetv2 version's ``build_network_architecture`` call ``(*args, **kwargs)`` is, and its arguments by name.

    Told apart by the arguments themselves: a class name (str) first is 2.3 - 2.6, a ``dataset_json`` dict second is
    <= 2.2, anything else is >= 2.7 (keyword calls by their names).

    Raises:
        TypeError: The arguments do not fit the form (missing or surplus ones).
    """
    if "architecture_class_name" in kwargs or "arch_init_kwargs" in kwargs or (args and isinstance(args[0], str)):
        form = "2.3-2.6"
    elif "dataset_json" in kwargs or (len(args) > 1 and isinstance(args[1], Mapping)):
        form = "<=2.2"
    else:
        form = ">=2.7"
    try:
        bound = CALL_FORMS[form].bind(*args, **kwargs)
    except TypeError as error:
        raise TypeError(f"build_network_architecture: the arguments look like nnunetv2 {form}'s call form "
                        f"{CALL_FORMS[form]}, but {error}") from None
    bound.apply_defaults()
    return form, dict(bound.arguments)


def _configuration_network(plans: Mapping, configuration_dict: Mapping) -> Tuple[NetworkPlan, Tuple[int, ...]]:
    """The network and patch size of one resolved nnU-Net configuration (a ``ConfigurationManager.configuration``),
    read by ``vssm.seg.plans`` (either layout)."""
    config = copy.deepcopy(dict(configuration_dict))
    config.pop("inherits_from", None)  # already resolved by nnU-Net
    name = str(config.get("data_identifier", "nnU-Net configuration"))
    single = {"configurations": {name: config}}
    for key in ("transpose_forward", "transpose_backward"):
        single[key] = plans[key]
    seg_config = configuration(single, name)
    return seg_config.network, seg_config.patch_size


def _architecture_network(class_name: str, arch_kwargs: Mapping, requires_import) -> Tuple[NetworkPlan,
                                                                                          Tuple[int, ...]]:
    """The network and patch size of nnunetv2 2.3 - 2.6's arguments (the patch size from ``PATCH_SIZE_KEY``)."""
    reader = _Reader({}, "build_network_architecture (nnunetv2 2.3-2.6 call)", None)
    architecture = {"network_class_name": class_name, "arch_kwargs": dict(arch_kwargs),
                    "_kw_requires_import": list(requires_import or ())}
    try:
        network, _ = _network_new_layout(architecture, reader)
    except ValueError as error:  # NetworkPlan's own checks
        raise reader.error(str(error)) from None
    patch_size = arch_kwargs.get(PATCH_SIZE_KEY)
    if patch_size is None:
        raise ValueError(
            f"build_network_architecture: nnunetv2 2.3-2.6 passes no patch size, and arch_init_kwargs lack "
            f"{PATCH_SIZE_KEY!r}, which the vssm trainers write into their plans when training starts; build from "
            "the plans.json of a model trained with a vssm trainer, or add the configuration's patch_size there")
    return network, tuple(int(p) for p in patch_size)


def build_nnunet_network(seg_net_name: str, seg_net_kwargs: Optional[Mapping[str, Any]], *args, **kwargs) -> nn.Module:
    """The registered vssm net ``seg_net_name`` for nnU-Net's ``build_network_architecture(*args, **kwargs)``.

    Args:
        seg_net_name: A name of ``vssm.seg.seg_net_names()``.
        seg_net_kwargs: Keyword options of that net's builder.
        *args, **kwargs: The arguments nnU-Net passes, in any of its three call forms (module docstring).

    Returns:
        The net: (B, C_in, *patch) -> logits (B, C_out, *patch), or a list of them, highest resolution first, while
        ``net.decoder.deep_supervision`` is on.

    Raises:
        TypeError: Arguments that fit none of the call forms.
        vssm.seg.plans.PlansError: A configuration without the keys a network needs.
        ValueError: An unknown net name, or a patch size the net cannot take.
    """
    form, arguments = nnunet_call_form(args, kwargs)
    if form == "2.3-2.6":
        network, patch_size = _architecture_network(arguments["architecture_class_name"],
                                                    arguments["arch_init_kwargs"],
                                                    arguments["arch_init_kwargs_req_import"])
        num_output_channels = arguments["num_output_channels"]
    else:
        plans_manager = arguments["plans_manager"]
        network, patch_size = _configuration_network(plans_manager.plans,
                                                     arguments["configuration_manager"].configuration)
        if form == "<=2.2":
            label_manager = plans_manager.get_label_manager(arguments["dataset_json"])
            num_output_channels = label_manager.num_segmentation_heads
        else:
            num_output_channels = arguments["num_output_channels"]
    return build_seg_net(seg_net_name, network, int(arguments["num_input_channels"]), int(num_output_channels),
                         patch_size, deep_supervision=bool(arguments["enable_deep_supervision"]),
                         **dict(seg_net_kwargs or {}))


def record_patch_size(plans: Dict[str, Any], configuration_name: str, configuration_dict: Dict[str, Any]) -> None:
    """Write the configuration's patch size into its ``architecture.arch_kwargs`` under ``PATCH_SIZE_KEY``, both in
    the resolved ``configuration_dict`` (what the trainer builds from) and in the raw ``plans`` (what nnU-Net saves
    as the model's ``plans.json``; an inherited architecture is copied into the configuration). Plans of the old
    layout (no ``architecture``, nnunetv2 <= 2.2) are left as they are: those versions pass the configuration."""
    architecture = configuration_dict.get("architecture")
    if not isinstance(architecture, dict) or not isinstance(architecture.get("arch_kwargs"), dict):
        return
    architecture["arch_kwargs"][PATCH_SIZE_KEY] = [int(p) for p in configuration_dict["patch_size"]]
    plans["configurations"][configuration_name]["architecture"] = copy.deepcopy(architecture)


def round_up_patch_size(plans: Dict[str, Any], configuration_name: str, configuration_dict: Dict[str, Any],
                        multiple: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Round the configuration's patch size up to multiples of ``multiple`` (nets whose input sides must be, such as
    VM-UNet's 32), in the resolved ``configuration_dict`` and in the raw ``plans`` saved with the model, so that
    nnU-Net's data loading, validation and inference all use it. Returns (old, new) patch size."""
    old = tuple(int(p) for p in configuration_dict["patch_size"])
    new = tuple(-(-p // multiple) * multiple for p in old)
    configuration_dict["patch_size"] = list(new)
    plans["configurations"][configuration_name]["patch_size"] = list(new)
    return old, new
