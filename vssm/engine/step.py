"""What makes the trainer's step fast: the optimizer implementation (fused / foreach), foreach gradient clipping, and
the capture of the whole step in a CUDA graph.

A step in eager mode costs the host one dispatch per operator, and a small model at batch 128 waits for the host.
``CapturedStep`` records forward, loss, backward, clipping and the optimizer step once in a CUDA graph and replays it:
one launch per step. What a capture needs: static input buffers (each batch is copied into them), the gradients
allocated by the captured backward (they are written afresh on each replay, so no zero_grad), an optimizer whose step
runs on the device alone (torch's Adam / AdamW with ``capturable=True``, SGD with ``fused=True``) and whose learning
rate is a device tensor that the scheduler's value is written into before each replay, and autocast without its cast
cache. Everything with host decisions stays outside the graph: Mixup / CutMix,
random erasing, the non-finite guard (which reads the graph's loss), the EMA and the scheduler.
"""
import contextlib
from typing import Callable, Iterable, Optional

import torch
from timm.utils import adaptive_clip_grad

from .config import TrainConfig

FUSED_OPTIMIZERS = ("adam", "adamw", "sgd", "momentum")  # timm names of torch's optimizers with a fused step
CAPTURABLE_ADAM = ("adam", "adamw")  # capturable=True keeps their step on the device
CAPTURABLE_SGD = ("sgd", "momentum")  # fused=True takes a tensor learning rate
GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before the capture


def optimizer_implementation(cfg: TrainConfig, params: list[torch.nn.Parameter], sharded: bool,
                             capture: bool) -> dict:
    """Keyword arguments for timm's ``create_optimizer_v2`` that pick the optimizer's implementation.

    ``optimizer.fused`` None: fused for Adam / AdamW / SGD when every parameter is on a CUDA device and not ``sharded``
    (FSDP) and ``optimizer.foreach`` is not set. ``optimizer.foreach``: passed on (None: torch's default). ``capture``
    (the step will be captured in a CUDA graph): ``capturable=True`` for Adam / AdamW, ``fused=True`` for SGD. Keys the
    config's ``optimizer.kwargs`` sets are left to it.
    """
    opt = cfg.optimizer
    name = opt.opt.lower()
    fused = opt.fused
    if fused is None:
        fused = (name in FUSED_OPTIMIZERS and not sharded and opt.foreach is None and bool(params)
                 and all(p.device.type == "cuda" for p in params))
    if capture and name in CAPTURABLE_SGD:
        fused = True
    chosen = {"foreach": opt.foreach}
    if fused:
        chosen["fused"] = True
        chosen["foreach"] = None
    if capture and name in CAPTURABLE_ADAM:
        chosen["capturable"] = True
    return {key: value for key, value in chosen.items() if key not in opt.kwargs}


def graph_obstacle(cfg: TrainConfig, device: torch.device, distributed: bool) -> Optional[str]:
    """Why the training step cannot be captured in a CUDA graph under ``cfg``; None when it can be tried."""
    name = cfg.optimizer.opt.lower()
    if device.type != "cuda":
        return f"the device is {device.type}"
    if distributed:
        return "DDP and FSDP steps are not captured (one process only)"
    if cfg.compile:
        return "torch.compile runs the step (its compile_mode='reduce-overhead' captures CUDA graphs itself)"
    if cfg.amp == "fp16":
        return "amp='fp16' loss scaling decides on the host; use amp='bf16'"
    if cfg.grad_accum_steps > 1:
        return "grad_accum_steps > 1"
    if cfg.nonfinite == "skip":
        return "nonfinite='skip' decides on the host at every step"
    if name not in CAPTURABLE_ADAM + CAPTURABLE_SGD:
        return f"optimizer {cfg.optimizer.opt!r} has no capturable step (adam, adamw, sgd and momentum have)"
    if name in CAPTURABLE_SGD and (cfg.optimizer.fused is False or cfg.optimizer.kwargs.get("fused") is False):
        return "SGD is captured only with its fused step (optimizer.fused=False is set)"
    if name in CAPTURABLE_ADAM and cfg.optimizer.kwargs.get("capturable") is False:
        return "optimizer.kwargs sets capturable=False"
    return None


def clip_gradients(params: list[torch.nn.Parameter], value: float, mode: str = "norm",
                   foreach: Optional[bool] = None) -> None:
    """Clip the gradients of ``params`` in place: 'norm' (total 2-norm at most ``value``), 'value' (each element in
    [-value, value]) or 'agc' (timm's adaptive clipping); 'norm' and 'value' with torch's multi-tensor kernels when
    ``foreach`` (None: where torch supports them). No host synchronisation."""
    if mode == "norm":
        torch.nn.utils.clip_grad_norm_(params, value, foreach=foreach)
    elif mode == "value":
        torch.nn.utils.clip_grad_value_(params, value, foreach=foreach)
    elif mode == "agc":
        adaptive_clip_grad(params, value)
    else:
        raise ValueError(f"unknown clip mode {mode!r} (known: norm, value, agc)")


class CaptureFailed(RuntimeError):
    """The capture of the training step raised; the message says why."""


class CapturedStep:
    """The training step (``step_fn(images, targets) -> loss``: forward, loss, backward, clipping, optimizer step, no
    zero_grad) run from a CUDA graph.

    The first ``warmup`` calls run it eagerly on a side stream: they are real training steps, and they create the
    optimizer state, cuBLAS workspaces and compiled kernels outside the capture. The next call captures it (inputs
    copied into static buffers, the learning rates as device tensors) and replays it; every later call copies its batch
    into the buffers, writes the groups' current learning rates (set by the scheduler as floats) into the lr tensors
    and replays. Returns the step's loss: a static tensor that the next call overwrites.

    Args:
        step_fn: The step on given inputs.
        optimizer: Its optimizer (``capturable`` Adam / AdamW or fused SGD).
        warmup: Eager steps before the capture.
    """

    def __init__(self, step_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 optimizer: torch.optim.Optimizer, warmup: int = GRAPH_WARMUP_STEPS):
        self.step_fn = step_fn
        self.optimizer = optimizer
        self.warmup = warmup
        self.steps_run = 0
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self._inputs: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self._loss: Optional[torch.Tensor] = None
        self._lrs: list[torch.Tensor] = []
        self._lr_values: list[Optional[float]] = []
        self._side_stream: Optional[torch.cuda.Stream] = None

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self._load(images, targets)
        if self.steps_run < self.warmup:
            loss = self._eager_on_side_stream()
        else:
            if self.graph is None:
                self._capture()
            self._write_lrs()
            self.graph.replay()
            loss = self._loss
        self.steps_run += 1
        return loss

    def _load(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        """Copy the batch into the static buffers (allocated at the first call, in the batch's layout)."""
        if self._inputs is None:
            self._inputs = (torch.empty_like(images), torch.empty_like(targets))
        for buffer, value in zip(self._inputs, (images, targets)):
            if buffer.shape != value.shape or buffer.dtype != value.dtype:
                raise RuntimeError(f"a captured training step takes batches of one shape: {tuple(buffer.shape)} "
                                   f"{buffer.dtype}, got {tuple(value.shape)} {value.dtype}")
            buffer.copy_(value)

    def _eager_on_side_stream(self) -> torch.Tensor:
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream()
        current = torch.cuda.current_stream()
        self._side_stream.wait_stream(current)
        with torch.cuda.stream(self._side_stream):
            loss = self.step_fn(*self._inputs)
            self.optimizer.zero_grad(set_to_none=True)
        current.wait_stream(self._side_stream)
        loss.record_stream(current)  # read there after this returns
        return loss

    def _capture(self) -> None:
        """Record the step in a CUDA graph (nothing runs); the gradients are None so that the captured backward
        allocates them in the graph's memory and each replay writes them afresh."""
        groups = self.optimizer.param_groups
        self._lrs = [torch.tensor(float(group["lr"]), dtype=torch.float32, device=self._inputs[0].device)
                     for group in groups]
        self._lr_values = [float(group["lr"]) for group in groups]
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with _tensor_lrs(groups, self._lrs), torch.cuda.graph(graph):
                self._loss = self.step_fn(*self._inputs)
        except Exception as error:  # e.g. an op that waits for the device, which a capture forbids
            self.optimizer.zero_grad(set_to_none=True)
            with contextlib.suppress(RuntimeError):  # surface a broken stream here rather than at the next op
                torch.cuda.synchronize()
            raise CaptureFailed(" ".join(f"{type(error).__name__}: {error}".split())[:300]) from error
        self.graph = graph

    def _write_lrs(self) -> None:
        """The scheduler's current learning rates into the tensors the graph reads (a fill per changed group)."""
        for index, group in enumerate(self.optimizer.param_groups):
            value = float(group["lr"])
            if value != self._lr_values[index]:
                self._lrs[index].fill_(value)
                self._lr_values[index] = value


@contextlib.contextmanager
def _tensor_lrs(groups: list[dict], lrs: list[torch.Tensor]):
    """The param groups' learning rates as the given device tensors during the block (the capture), floats after."""
    floats = [group["lr"] for group in groups]
    for group, lr in zip(groups, lrs):
        group["lr"] = lr
    try:
        yield
    finally:
        for group, value in zip(groups, floats):
            group["lr"] = value


def reset_implementation(optimizer: torch.optim.Optimizer) -> None:
    """After loading a checkpoint written with another implementation (fused, foreach, capturable): the choice this
    optimizer was built with back in every param group, and Adam's step counters where that choice keeps them (on the
    parameter's device when capturable or fused, else on the CPU, where reading them costs no synchronisation)."""
    built = optimizer.defaults
    on_device = bool(built.get("capturable") or built.get("fused"))
    for group in optimizer.param_groups:
        for key in ("fused", "foreach", "capturable"):
            if key in group and key in built:
                group[key] = built[key]
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                state["step"] = step.to(dtype=torch.float32, device=param.device if on_device else "cpu")


def trainable(params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """The parameters that train (``requires_grad``), as a list the per-step calls can reuse."""
    return [p for p in params if p.requires_grad]
