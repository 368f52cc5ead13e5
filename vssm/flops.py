"""Model FLOPs as the SSM papers count them.

``count_flops(model, x)`` runs one forward under ``torch.utils.flop_counter.FlopCounterMode`` and splits its count:

* dense work: the GEMMs and convolutions (including the per-direction causal convs), as multiply-adds, which is what
  the papers' fvcore and mmcv tables call FLOPs (1 MAC = 1 FLOP). Norms, activations, elementwise work and FFTs are
  not counted.
* the scans: 9 B L D N per direction, plus B L D each for the D skip and the z gate (the rule of the VMamba,
  LocalMamba and PlainMamba tables, ``vssm.ops.scan_core.scan_flops``).

GFLOPs = dense GMACs + scan GFLOPs. Under a dispatch mode every vssm kernel call runs as its registered custom op, so
the count is the same on the CPU and on the GPU.
"""
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["FlopCount", "count_flops"]


@dataclass(frozen=True)
class FlopCount:
    """One forward's work: ``dense_macs`` multiply-adds of GEMMs and convolutions, ``scan_flops`` by the 9 B L D N
    rule."""
    dense_macs: int
    scan_flops: int

    @property
    def gflops(self) -> float:
        """The papers' figure: dense GMACs + scan GFLOPs."""
        return (self.dense_macs + self.scan_flops) / 1e9


def count_flops(model: nn.Module, *inputs, **kwargs) -> FlopCount:
    """Count one eval-mode forward of ``model(*inputs, **kwargs)`` without gradients (the model's mode is restored).
    Give a batch of 1 for the per-image figure."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs, **kwargs)
    finally:
        model.train(training)
    counts = counter.get_flop_counts()["Global"]
    scan = sum(n for op, n in counts.items() if op is torch.ops.vssm.scan_fwd)
    dense_flops = counter.get_total_flops() - scan  # 2 per multiply-add
    return FlopCount(dense_macs=dense_flops // 2, scan_flops=scan)
