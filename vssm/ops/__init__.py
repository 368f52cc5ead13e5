"""The scan engine: selective scan (S6), scan paths over 2-D/3-D grids, and the fused multi-direction scan."""
from . import scan_paths
from .multi_scan import multi_scan, multi_scan_ref
from .selective_scan import selective_scan, selective_scan_chunked, selective_scan_ref

__all__ = ["selective_scan", "selective_scan_ref", "selective_scan_chunked", "multi_scan", "multi_scan_ref",
           "scan_paths"]
