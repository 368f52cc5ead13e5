"""The scan engine: selective scan (S6), scan paths over 2-D/3-D grids, the fused multi-direction scan (alone or with
its input projections, SS2D's core), and the per-direction causal conv that feeds it."""
from . import scan_paths
from .causal_conv import causal_conv1d, causal_conv1d_ref
from .mamba_inner import mamba_inner, mamba_inner_composed
from .multi_scan import multi_scan, multi_scan_ref
from .projected_scan import projected_multi_scan, projected_multi_scan_composed
from .scan_reference import selective_scan_chunked, selective_scan_ref
from .selective_scan import selective_scan

__all__ = ["selective_scan", "selective_scan_ref", "selective_scan_chunked", "multi_scan", "multi_scan_ref",
           "projected_multi_scan", "projected_multi_scan_composed", "mamba_inner", "mamba_inner_composed", "scan_paths",
           "causal_conv1d", "causal_conv1d_ref"]
