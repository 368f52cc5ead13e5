"""Process-group set-up from torchrun's environment, and the few collectives the loops need.

One process (``python tools/train.py``) needs no process group. Under ``torchrun`` (WORLD_SIZE > 1; multi-node through
torchrun's own rendezvous flags) each process drives the GPU of its LOCAL_RANK through NCCL, or the CPU through gloo.
"""
import os
from typing import Any, Optional

import torch
import torch.distributed as dist


class DistContext:
    """Rank, world size and device of this process; ``close()`` tears the process group down.

    Args:
        device: 'cuda', 'cpu' or None (CUDA if available).
    """

    def __init__(self, device: Optional[str] = None):
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device_type = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device_type == "cuda":
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device(device_type)
        self.distributed = self.world_size > 1
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, device_id=self.device if backend == "nccl" else None)
        # host-side flags (a stop request) are agreed over gloo, so that checking one costs no device synchronisation
        self._control_group = None
        if self.distributed:
            self._control_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files and logs."""
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (float64)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, obj: Any) -> list:
        """``obj`` of every rank, in rank order (picklable objects)."""
        if not self.distributed:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any rank (over the CPU; no device synchronisation)."""
        if not self.distributed:
            return flag
        tensor = torch.tensor([int(flag)])
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self._control_group)
        return bool(tensor.item())

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group (if this context is distributed)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
