"""What every training loop of the engine shares around its steps: the work dir's checks, process settings, autocast,
stop signals, the non-finite-loss guard, data-loader failures as one line, and the config keys that changed on
resume."""
import contextlib
import os
import shutil
import signal
import threading
from typing import Optional

import torch

from .distributed import DistContext
from .errors import UserError, one_line

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_work_dir(ctx: DistContext, work_dir: str, resume_path: Optional[str], overwrite: bool,
                   latest_name: str) -> None:
    """Refuse to write into an earlier run's work dir (one that holds ``latest_name``) unless resuming or
    overwriting, and a resume from a checkpoint that does not exist; rank 0 decides, every rank raises."""
    problem = None
    latest = os.path.join(work_dir, latest_name)
    if ctx.is_main:
        if resume_path is not None and not os.path.isfile(resume_path):
            problem = f"nothing to resume: checkpoint not found: {resume_path}"
            if resume_path == latest and os.path.isfile(os.path.join(work_dir, "train.log")):
                problem += (" (the earlier run in this work dir stopped before its first epoch ended; run again "
                            "without --resume to start it over)")
        elif resume_path is None and not overwrite and os.path.isfile(latest):
            problem = (f"work dir {work_dir} already holds a run ({latest}); pass --resume to continue it or "
                       "--overwrite to start over")
    problem = ctx.broadcast(problem)
    if problem:
        raise UserError(problem)


def refuse_nonfinite_weights(ctx: DistContext, state: Optional[dict], epoch: int, latest_name: str) -> None:
    """Raise UserError on every rank if the checkpoint ``state`` (rank 0's; None elsewhere) holds NaN/Inf weights, so
    that they are never written and ``latest_name`` keeps the last finite epoch (collective)."""
    problem = None
    if state is not None:
        bad = [key for key, value in state["model"].items()
               if value.is_floating_point() and not torch.isfinite(value).all()]
        if bad:
            problem = (f"after epoch {epoch} the weights hold NaN/Inf ({len(bad)} tensors, first {bad[0]}); the "
                       f"run stopped without writing them ({latest_name} holds the last finite epoch)")
    problem = ctx.broadcast(problem)
    if problem:
        raise UserError(problem)


def prepare_work_dir(ctx: DistContext, work_dir: str, resume_path: Optional[str], outputs: tuple,
                     output_folders: tuple = ()) -> None:
    """Create the work dir; unless resuming, remove an earlier run's ``outputs`` files and ``output_folders`` (rank
    0; anything else in the folder stays); then wait for every rank."""
    if ctx.is_main:
        os.makedirs(work_dir, exist_ok=True)
        if resume_path is None:  # overwrite, or the leftovers of a run that ended before its first epoch
            for name in outputs:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(work_dir, name))
            for name in output_folders:
                shutil.rmtree(os.path.join(work_dir, name), ignore_errors=True)
    ctx.barrier()


@contextlib.contextmanager
def process_settings(cfg, cudnn_benchmark: bool = False):
    """Run the block with the config's intra-op CPU threads and deterministic-algorithm setting (``cfg.cpu_threads``,
    ``cfg.deterministic``), then restore both. ``cudnn_benchmark``: let cuDNN time its convolution algorithms for each
    new input shape and keep the fastest (for fixed training shapes; never with ``cfg.deterministic``)."""
    saved_threads = torch.get_num_threads()
    saved_deterministic = (torch.are_deterministic_algorithms_enabled(),
                           torch.is_deterministic_algorithms_warn_only_enabled())
    saved_benchmark = torch.backends.cudnn.benchmark
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic matmuls
        torch.use_deterministic_algorithms(True, warn_only=True)  # warn about ops that have no deterministic kernel
    if cudnn_benchmark and not cfg.deterministic:
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(saved_deterministic[0], warn_only=saved_deterministic[1])
        torch.backends.cudnn.benchmark = saved_benchmark


def autocast(device: torch.device, amp: Optional[str], cache_enabled: bool = True):
    """Autocast to ``amp`` ('bf16', 'fp16') on ``device``; disabled for None. ``cache_enabled=False`` for a step
    captured in a CUDA graph (the cast cache would hold tensors of the capture across replays)."""
    return torch.autocast(device.type, dtype=AMP_DTYPES.get(amp, torch.float32), enabled=amp is not None,
                          cache_enabled=cache_enabled)


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs (nested dicts compared key by key)."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed


@contextlib.contextmanager
def loader_failures(workers_key: str = "data.workers"):
    """A data-loading worker that died (killed, out of memory) as one line naming the cause and the config key of the
    worker count."""
    try:
        yield
    except RuntimeError as error:
        if "DataLoader worker" not in str(error):
            raise
        raise UserError(f"a data-loading worker died ({one_line(error)}); if the machine ran out of memory, lower "
                        f"{workers_key} or batch_size") from None


class StopSignals:
    """SIGTERM and SIGINT during a run (what schedulers send before a kill, and Ctrl-C): remembered, so that the loop
    ends after the current step with a resumable checkpoint; a second SIGINT interrupts at once. A no-op outside the
    main thread (signals can only be handled there)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class NonFiniteGuard:
    """Watches one epoch's training loss for NaN/Inf, as config key ``nonfinite`` says.

    'stop': the first non-finite step is recorded on the device (no host synchronisation per step) and ``check()``, at
    each log line and at the epoch's end, stops the run with one line naming the step, epoch and learning rate; the
    epoch is never saved. 'skip': every step is checked on the host, agreed across ranks, and an update any of whose
    micro-batches had a non-finite loss is skipped and counted.
    """

    def __init__(self, policy: str, ctx: DistContext, epoch: int, checkpoint_name: str = "last.pth"):
        """``checkpoint_name``: the resumable checkpoint the stop message points to."""
        self.policy, self.ctx, self.epoch = policy, ctx, epoch
        self.checkpoint_name = checkpoint_name
        self.skipped = 0
        self._skip_next_update = False
        self._first_bad = torch.full((), -1, dtype=torch.long, device=ctx.device)  # 'stop': first bad step or -1
        self._step_info: dict[int, tuple[int, float]] = {}  # step -> (update, lr), for the message

    def observe(self, loss: torch.Tensor, step: int, update: int, lr: float) -> bool:
        """Record one micro-batch's loss; False when it is non-finite and skipped (it then counts in no mean)."""
        if self.policy == "skip":
            bad = self.ctx.sum([float(not torch.isfinite(loss.detach()).all())])[0] > 0
            self._skip_next_update |= bad
            return not bad
        self._step_info[step] = (update, lr)
        bad = ~torch.isfinite(loss.detach()).all()
        self._first_bad = torch.where(bad & (self._first_bad < 0), torch.full_like(self._first_bad, step),
                                      self._first_bad)
        return True

    def skip_update(self) -> bool:
        """Whether the update that ends here must be skipped ('skip' only); counts it."""
        skip, self._skip_next_update = self._skip_next_update, False
        self.skipped += skip
        return skip

    def check(self) -> None:
        """'stop': raise UserError if any rank saw a non-finite loss so far this epoch (collective)."""
        if self.policy != "stop":
            return
        bad = [step for step in self.ctx.gather(int(self._first_bad.item())) if step >= 0]
        if bad:
            step = min(bad)
            update, lr = self._step_info.get(step, (-1, float("nan")))
            raise UserError(f"the training loss became non-finite at epoch {self.epoch + 1} step {step + 1} (update "
                            f"{update + 1}), learning rate {lr:.3e}; the run stopped and nothing of this epoch was "
                            f"written ({self.checkpoint_name} holds the last finite epoch). Lower the learning rate, "
                            "set clip_grad, or set nonfinite='skip' to skip such steps")
