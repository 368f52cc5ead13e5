"""Model FLOPs as the SSM papers count them.

``count_flops(model, x)`` runs one forward under ``torch.utils.flop_counter.FlopCounterMode`` and splits its count:

* dense work: the real GEMMs and convolutions (including the per-direction causal convs), as multiply-adds, which is
  what the papers' fvcore and mmcv tables call FLOPs (1 MAC = 1 FLOP). Norms, activations, elementwise work and FFTs
  are not counted.
* the scans: 9 B L D N per direction, plus B L D each for the D skip and the z gate (the rule of the VMamba,
  LocalMamba and PlainMamba tables, ``vssm.ops.scan_core.scan_flops``).
* S4ND's FFT convolution (the S4ND paper gives no FLOPs; ours are the first): real flops, 5 N log2 N per 1-D FFT of
  length N (every axis of every N-D transform, real or complex, forward or inverse; the real axis over the full grid,
  the others over the half spectrum), 6 per complex product and 8 per complex multiply-add in the spectral products,
  the kernel generation of every forward (the Cauchy or Vandermonde sums and the kernels' inverse FFTs: the training
  cost; in eval the layer caches its kernels) and the D skip: ``S4ND.fft_conv_flops``, broken down in
  ``FlopCount.s4nd``. Complex GEMMs run only there and are left out of the dense count. S4ND layers run their FFT
  path while counted: the count is the FFT rule's whichever path they run (the Toeplitz path's real GEMMs are the same
  convolution, not dense work).

GFLOPs = dense GMACs + scan GFLOPs + S4ND GFLOPs. Under a dispatch mode every vssm kernel call runs as its registered
custom op, so the count is the same on the CPU and on the GPU.
"""
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, addmm_flop, baddbmm_flop, bmm_flop, mm_flop

from .layers.s4nd import S4ND

__all__ = ["FlopCount", "count_flops"]


@dataclass(frozen=True)
class FlopCount:
    """One forward's work: ``dense_macs`` multiply-adds of real GEMMs and convolutions, ``scan_flops`` by the
    9 B L D N rule, ``s4nd_flops`` of S4ND's FFT convolutions (``s4nd``: by part, see ``S4ND.fft_conv_flops``)."""
    dense_macs: int
    scan_flops: int
    s4nd_flops: int = 0
    s4nd: Dict[str, int] = field(default_factory=dict, compare=False)

    @property
    def gflops(self) -> float:
        """The table's figure: dense GMACs + scan GFLOPs + S4ND GFLOPs."""
        return (self.dense_macs + self.scan_flops + self.s4nd_flops) / 1e9


def _real_only(formula):
    """A GEMM formula that counts real GEMMs only (complex ones belong to S4ND's count)."""
    def count(*args, out_val=None, **kwargs):
        if any(isinstance(a, torch.Tensor) and a.is_complex() for a in args):
            return 0
        return formula(*args, out_val=out_val, **kwargs)  # (torch's formulas take the tensors' shapes themselves)
    count._get_raw = True
    return count


_GEMMS = {torch.ops.aten.mm: mm_flop, torch.ops.aten.addmm: addmm_flop, torch.ops.aten.bmm: bmm_flop,
          torch.ops.aten.baddbmm: baddbmm_flop}


def count_flops(model: nn.Module, *inputs, **kwargs) -> FlopCount:
    """Count one eval-mode forward of ``model(*inputs, **kwargs)`` without gradients (the model's mode is restored).
    Give a batch of 1 for the per-image figure."""
    training = model.training
    s4nd = Counter()

    def add_s4nd(layer, args, layer_kwargs, output):
        rate = args[1] if len(args) > 1 else layer_kwargs.get("rate", 1.0)
        s4nd.update(layer.fft_conv_flops(args[0].shape, rate))

    # after the forward: a fresh kernel has set up its C~ length by then
    layers = [m for m in model.modules() if isinstance(m, S4ND)]
    handles = [m.register_forward_hook(add_s4nd, with_kwargs=True) for m in layers]
    conv_modes = [m.conv_mode for m in layers]
    model.eval()
    try:
        for layer in layers:
            layer.conv_mode = "fft"
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping={
                op: _real_only(formula) for op, formula in _GEMMS.items()}) as counter:
            model(*inputs, **kwargs)
    finally:
        model.train(training)
        for layer, conv_mode in zip(layers, conv_modes):
            layer.conv_mode = conv_mode
        for handle in handles:
            handle.remove()
    counts = counter.get_flop_counts()["Global"]
    scan = sum(n for op, n in counts.items() if op is torch.ops.vssm.scan_fwd)
    dense_flops = counter.get_total_flops() - scan  # 2 per multiply-add
    return FlopCount(dense_macs=dense_flops // 2, scan_flops=scan, s4nd_flops=sum(s4nd.values()), s4nd=dict(s4nd))
