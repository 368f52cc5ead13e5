"""Export zoo models to ONNX with every vssm custom op lowered to standard ONNX, and check them in onnxruntime.

    from vssm.export import export_onnx
    result = export_onnx("vim_tiny_patch16_224", "vim_tiny.onnx", checkpoint="vim_t_midclstok_76p1acc.pth")

The models run our scan engine through registered ``torch.library`` custom ops (``vssm::scan_fwd``, and on the GPU
``vssm::causal_conv1d_fwd`` and ``vssm::layer_norm_fwd``), which an ONNX runtime cannot execute. The export traces
the model with ``torch.export`` (the ops stay opaque nodes), then replaces each custom op node by a decomposition into
standard ATen ops (``ExportedProgram.run_decompositions``), and hands the program to the dynamo exporter
(``torch.onnx.export``), which sees only standard ops:

* the selective scan -> ``vssm.ops.onnx_scan.scan_fwd_parallel``: chunks of at most 32 steps run one after the
  other, all chunks at once, their carries by a Hillis-Steele scan over the chunk totals, the read-out with C inside
  each chunk; no loop, so a graph of bounded size for any L, in element-wise products and sums, slices, pads and
  gathers that onnxruntime runs vectorised on every core;
* the causal conv -> ``causal_conv1d_ref``: a padded depthwise (grouped) ONNX Conv per direction;
* our LayerNorm / RMSNorm -> ``layer_norm_ref`` / ``rms_norm_ref``: ONNX LayerNormalization, and the RMSNorm's six
  element-wise ops.

S4ND has no custom op but generates its kernels with complex arithmetic, from a value-dependent length (its stateful
``l_kernel``), and convolves by FFT. At a fixed input size the kernels are constants:
``vssm.layers.s4nd.direct_kernels`` computes them once before the trace, and each S4ND then runs the same convolution as
real-valued depthwise convolutions along each axis (``vssm.ops.fft_conv.direct_conv_nd``, ONNX Conv; the taps are
initializers, at most 2 L - 1 per axis and channel): no complex numbers or DFTs in the graph.

The lowering is a property of the export only: the models' eager, compiled and GPU paths are untouched. On a CPU
trace the conv and norms already run their PyTorch references (only the scan is a custom op); the other two
decompositions cover a model traced with the Triton backend forced.

The graph's batch axis is dynamic (``batch``); its other input axes are fixed at export (the scan paths, position
embeddings and window partitions are built for one grid), which the model's ``metadata_props`` say
(``fixed_input_size``, ``input_size``); export again with another ``img_size`` / ``num_frames`` for another size.
``metadata_props`` also carry the preprocessing of the model's pretrained cfg (mean, std, crop_pct, interpolation).
"""
from __future__ import annotations

import contextlib
import difflib
import json
import os
import pkgutil
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from vssm.engine.checkpoint import load_model_weights, read_checkpoint
from vssm.engine.errors import UserError
from vssm.layers.s4nd import S4ND, direct_kernels
from vssm.ops.causal_conv import causal_conv1d_ref
from vssm.ops.layer_norm import layer_norm_ref, rms_norm_ref
from vssm.ops.onnx_scan import scan_fwd_parallel

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "ExportError", "ExportResult", "InputSizeError", "OpsetError",
           "UnknownModelError", "UnsupportedOpError", "check_onnx", "create_export_model", "export_onnx",
           "exportable_models", "lowering_table", "run_onnx"]

MIN_OPSET = 18  # the dynamo exporter's floor (its translations target opset 18; LayerNormalization and DFT are 17)
DEFAULT_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class ExportError(UserError):
    """An export the input does not allow; the message says what and why, in one line."""


class UnknownModelError(ExportError):
    """The name is not a model registered by vssm."""


class InputSizeError(ExportError):
    """The model does not take the requested input size (or frame count)."""


class OpsetError(ExportError):
    """The requested ONNX opset is outside what the exporter and the lowered ops support."""


class UnsupportedOpError(ExportError):
    """The traced model holds an op that has no lowering to standard ONNX."""


# ----------------------------------------------------------------------------------------------------------------
# Lowering of the custom ops.


def _causal_conv1d_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], reverse_mask: int, silu: bool) -> Tensor:
    reverse = [bool(reverse_mask >> k & 1) for k in range(weight.shape[0])]
    return causal_conv1d_ref(x, weight, bias, reverse, "silu" if silu else None)


def _layer_norm_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], eps: float, out_dtype: torch.dtype,
                    rms: bool) -> Tuple[Tensor, Tensor, Tensor]:
    # the statistics are saved for a backward only; an inference graph drops them as dead code
    xf = x.float().flatten(0, -2)
    if rms:
        y = rms_norm_ref(x, weight, eps, out_dtype)
        mean = x.new_empty(0, dtype=torch.float32)
        rstd = torch.rsqrt(xf.pow(2).mean(-1) + eps)
    else:
        y = layer_norm_ref(x, weight, bias, eps, out_dtype)
        mean = xf.mean(-1)
        rstd = torch.rsqrt(xf.var(-1, unbiased=False) + eps)
    return y, mean, rstd


def lowering_table() -> dict:
    """Custom op overload -> decomposition into standard ATen ops (for ``ExportedProgram.run_decompositions``)."""
    return {
        torch.ops.vssm.scan_fwd.default: scan_fwd_parallel,
        torch.ops.vssm.causal_conv1d_fwd.default: _causal_conv1d_fwd,
        torch.ops.vssm.layer_norm_fwd.default: _layer_norm_fwd,
    }


# ----------------------------------------------------------------------------------------------------------------
# Models.


def _family_modules() -> list:
    import vssm.models

    return [info.name for info in pkgutil.iter_modules(vssm.models.__path__) if not info.name.startswith("_")]


def exportable_models(pattern: str = "") -> list:
    """Names of every model registered by vssm's families (optionally filtered by a timm wildcard pattern)."""
    import timm

    import vssm  # noqa: F401  (registers the zoo)

    return timm.list_models(pattern or "", module=_family_modules())


def _video_frames(model: nn.Module) -> Optional[int]:
    """Frames per clip of a video model (clips (B, C, T, H, W)); None for image models."""
    frames = getattr(getattr(model, "patch_embed", None), "num_frames", None)
    if frames is None and getattr(model, "input_spatial_dims", 2) == 3:  # S4ND-ConvNeXt-3D
        frames = getattr(model, "num_frames", None)
    return frames if isinstance(frames, int) else None


def _has_s4nd(model: nn.Module) -> bool:
    return any(isinstance(m, S4ND) for m in model.modules())


def _as_size(img_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(img_size, int):
        return img_size, img_size
    size = tuple(int(s) for s in img_size)
    if len(size) != 2:
        raise InputSizeError(f"img_size must be an int or (H, W), got {img_size!r}")
    return size


def create_export_model(name: str, *, checkpoint: Optional[str] = None, img_size=None, num_frames: Optional[int] = None,
                        use_ema: bool = False, trust_checkpoint: bool = False) -> Tuple[nn.Module, Tuple[int, ...]]:
    """Build a registered model for export, load ``checkpoint`` as ``tools/test.py`` does (training checkpoints and
    official ones, converted by the family's ``checkpoint_filter_fn``), and check that it takes its input size.

    Returns:
        (model in eval mode on the CPU, input shape without the batch axis: (C, H, W), or (C, T, H, W) for video).

    Raises:
        UnknownModelError, InputSizeError; UserError for a checkpoint that cannot be read or does not fit.
    """
    import timm

    names = exportable_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see vssm.export.exportable_models()"
        raise UnknownModelError(f"model {name!r} is not a vssm model that can be exported{hint}")
    kwargs = {}
    if img_size is not None:
        kwargs["img_size"] = _as_size(img_size)
    if num_frames is not None:
        kwargs["num_frames"] = int(num_frames)
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as error:
        if isinstance(error, TypeError) and "num_frames" in str(error):
            raise InputSizeError(f"model {name} takes images, not clips: num_frames applies to video models "
                                 f"only") from None
        sizes = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        raise InputSizeError(f"model {name} cannot be built for {sizes}: {' '.join(str(error).split())}") from None
    frames = _video_frames(model)
    if num_frames is not None and frames is None:
        raise InputSizeError(f"model {name} takes images, not clips: num_frames applies to video models only")
    if checkpoint is not None:
        load_model_weights(model, read_checkpoint(checkpoint, trust=trust_checkpoint), checkpoint, use_ema=use_ema)
    model.eval()
    cfg_size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    chans = cfg_size[0]
    hw = _as_size(img_size) if img_size is not None else tuple(cfg_size[-2:])
    input_shape = (chans, frames, *hw) if frames is not None else (chans, *hw)
    return model, input_shape


def _check_input_size(model: nn.Module, name: str, example: Tensor) -> Tensor:
    """One eager forward (it also fills the models' caches of scan paths outside the trace); an error there means the
    model refuses the size."""
    try:
        with torch.no_grad():
            return model(example)
    except (RuntimeError, ValueError, AssertionError, IndexError) as error:
        shape = "x".join(str(s) for s in example.shape[1:])
        raise InputSizeError(f"model {name} does not take inputs of size {shape}: "
                             f"{' '.join(str(error).split())}") from None


# ----------------------------------------------------------------------------------------------------------------
# Export.


@dataclass
class ExportResult:
    """What ``export_onnx`` wrote.

    Attributes:
        path: The .onnx file.
        model_name: The registered name ('' for a module passed directly).
        input_shape: The input's shape with the batch axis first ('batch' when dynamic).
        opset: The ONNX opset of the graph.
        metadata: The graph's ``metadata_props``.
        model: The exported module (eval mode, CPU, float32), e.g. for ``check_onnx``.
    """
    path: str
    model_name: str
    input_shape: tuple
    opset: int
    metadata: dict = field(default_factory=dict)
    model: Optional[nn.Module] = field(default=None, repr=False)


def _check_opset(opset: int) -> int:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise OpsetError(f"opset {opset} is too old: the exporter and the lowered ops (LayerNormalization, the DFT of "
                         f"S4ND's FFT convolution, opset-18 reductions) need opset {MIN_OPSET} or newer")
    if opset > newest:
        raise OpsetError(f"opset {opset} is newer than the installed onnx knows ({newest})")
    return opset


def _metadata(model: nn.Module, name: str, input_shape: tuple, dynamic_batch: bool, opset: int) -> dict:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    video = len(input_shape) == 4
    size = "x".join(str(s) for s in input_shape)
    again = "img_size / num_frames" if video else "img_size"
    s4nd = _has_s4nd(model)
    built_for = ("the S4ND kernels are computed for one input size" if s4nd else
                 "scan paths and position embeddings are built for one grid")
    lowering = ("S4ND kernels computed at export, FFT convolution -> depthwise Conv per axis; layer norm -> "
                "LayerNormalization" if s4nd else
                "vssm::scan_fwd -> chunked scan with carries over the chunks (vssm.ops.onnx_scan); "
                "causal conv -> Conv; layer norm -> LayerNormalization")
    meta = {
        "model_name": name,
        "input_layout": "NCTHW" if video else "NCHW",
        "input_size": json.dumps(list(input_shape)),
        "dynamic_axes": "batch" if dynamic_batch else "",
        "fixed_input_size": "true",
        "input_size_note": (f"the graph takes {size} inputs only ({built_for}); export again with another {again} "
                            f"for another size"),
        "num_classes": str(getattr(model, "num_classes", cfg.get("num_classes", ""))),
        "opset": str(opset),
        "lowering": lowering,
    }
    for key in ("mean", "std", "crop_pct", "interpolation", "crop_mode"):
        if cfg.get(key) is not None:
            meta[key] = json.dumps(list(cfg[key]) if isinstance(cfg[key], tuple) else cfg[key])
    try:
        from importlib.metadata import version

        meta["vssm_version"] = version("vssm")
    except Exception:  # not installed as a distribution (a source checkout on sys.path)
        pass
    return meta


def export_onnx(model: Union[str, nn.Module], output: Union[str, os.PathLike], *, checkpoint: Optional[str] = None,
                img_size=None, num_frames: Optional[int] = None, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = True, input_shape: Optional[Sequence[int]] = None, use_ema: bool = False,
                trust_checkpoint: bool = False, optimize: bool = False) -> ExportResult:
    """Export a zoo model (by name, or a built module) to an ONNX file that standard runtimes execute.

    Args:
        model: A registered model name (``exportable_models()``), or an ``nn.Module`` (then ``input_shape`` or its
            pretrained cfg gives the input size; ``checkpoint``, ``img_size`` and ``num_frames`` apply to names).
        output: The .onnx file to write.
        checkpoint: Weights to load: a training checkpoint or an official release (converted as ``tools/test.py``
            does); random weights without.
        img_size: Input H, W (int or pair); the model's default without.
        num_frames: Frames per clip (video models).
        opset: ONNX opset, ``MIN_OPSET`` or newer.
        dynamic_batch: Make the batch axis dynamic (else it is fixed at 1).
        input_shape: Input shape without the batch axis, for a module passed directly.
        use_ema: Export a training checkpoint's EMA weights.
        trust_checkpoint: Allow pickled Python objects in the checkpoint (some official ones hold them).
        optimize: Run onnxscript's graph optimizer on the exported graph. Off by default: its pattern rewriter takes
            many minutes on a full-size model (thousands of nodes), and onnxruntime folds constants and fuses ops when
            it loads the graph anyway.

    Returns:
        An ``ExportResult``.

    Raises:
        UnknownModelError, InputSizeError, OpsetError, UnsupportedOpError (all ``ExportError``, a ``UserError``).
    """
    opset = _check_opset(opset)
    if isinstance(model, str):
        name = model
        model, shape = create_export_model(name, checkpoint=checkpoint, img_size=img_size, num_frames=num_frames,
                                           use_ema=use_ema, trust_checkpoint=trust_checkpoint)
    else:
        name = ""
        model = model.eval()
        frames = _video_frames(model)
        if input_shape is not None:
            shape = tuple(int(s) for s in input_shape)
        else:
            cfg_size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
            shape = (cfg_size[0], frames, *cfg_size[-2:]) if frames else cfg_size
    model = model.float().cpu()
    # the trace's example batch is 2: a batch of 1 would be specialised as a constant
    batch = 2 if dynamic_batch else 1
    example = torch.randn(batch, *shape)
    _check_input_size(model, name or type(model).__name__, example[:1])
    with direct_kernels(model, example[:1]) if _has_s4nd(model) else contextlib.nullcontext():
        program = trace_lowered(model, example, dynamic_batch)
    onnx_program = torch.onnx.export(program, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                                     output_names=[OUTPUT_NAME], verbose=False, optimize=optimize)
    proto = onnx_program.model_proto
    if dynamic_batch:
        _rename_dim(proto, proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param, "batch")
    metadata = _metadata(model, name, shape, dynamic_batch, opset)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    output = os.fspath(output)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    import onnx

    onnx.save(proto, output)
    return ExportResult(output, name, ("batch" if dynamic_batch else 1, *shape), opset, metadata, model)


def trace_lowered(model: nn.Module, example: Tensor, dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` the model (batch axis dynamic if asked) and lower every vssm custom op to standard ATen ops.

    Raises:
        UnsupportedOpError: A ``vssm::`` op without a lowering remains.
    """
    # Dim.DYNAMIC, not a named range: size thresholds in the models (the norms pick a kernel by numel, which on the
    # CPU is the same PyTorch op either way) narrow the traced range, and an ONNX graph carries no guards; the tests run
    # batches of 1 and 3 through every exported model
    dynamic_shapes = ({0: torch.export.Dim.DYNAMIC},) if dynamic_batch else None
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes, strict=False)
    program = program.run_decompositions(lowering_table())
    # The exporter traces the program once more under its own decompositions, where complex ops (EinFFT's FFTs) get
    # other strides than in this trace, and a view recorded here may no longer apply: record reshapes, which the
    # re-trace turns into views or copies as its strides allow (a reshape of a viewable tensor is that view)
    for node in program.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.view.default:
            node.target = torch.ops.aten.reshape.default
    program.graph_module.recompile()
    left = sorted({str(node.target) for node in program.graph.nodes
                   if node.op == "call_function" and str(node.target).startswith("vssm.")})
    if left:
        raise UnsupportedOpError(f"no ONNX lowering for the custom ops {', '.join(left)} (vssm.export.onnx."
                                 f"lowering_table)")
    return program


def _rename_dim(proto, old: str, new: str) -> None:
    """Rename the symbolic dimension ``old`` (the exporter's symbol for the batch, e.g. 's77') in every typed value."""
    graph = proto.graph
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == old:
                dim.dim_param = new


# ----------------------------------------------------------------------------------------------------------------
# onnxruntime.


def run_onnx(path: Union[str, os.PathLike], x, threads: Optional[int] = None):
    """Run the exported graph on the CPU in onnxruntime; x a tensor or array (batch, ...). Returns a numpy array."""
    session = ort_session(path, threads)
    x = x.detach().cpu().numpy() if isinstance(x, Tensor) else x
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def ort_session(path: Union[str, os.PathLike], threads: Optional[int] = None, low_memory: bool = False):
    """An onnxruntime CPU session of the graph (``threads`` intra-op threads; onnxruntime's default without).
    ``low_memory``: without onnxruntime's CPU memory arena and memory-pattern planner, so the scan's large
    intermediates are freed as soon as they are consumed: about half the peak memory of the scan-heavy graphs, for
    20-40% of the speed (BENCHMARKS.md; SiMBA-S at batch 8 needs it on a 24 GiB machine)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only (its constant folding warns about CastLike nodes it leaves alone)
    if low_memory:
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def check_onnx(path: Union[str, os.PathLike], model: nn.Module, x: Tensor) -> float:
    """Max abs difference between the graph in onnxruntime and the model in PyTorch (eager, float32) on x."""
    with torch.no_grad():
        expected = model.eval()(x).float().numpy()
    got = run_onnx(path, x.float())
    if got.shape != expected.shape:
        raise AssertionError(f"onnxruntime output {got.shape} != PyTorch output {expected.shape}")
    return float(abs(got - expected).max())
