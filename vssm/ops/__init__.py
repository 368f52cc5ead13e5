"""The scan engine: selective scan (S6), scan paths over 2-D/3-D grids, the fused multi-direction scan (alone or with
its input projections, SS2D's core), and the per-direction causal conv that feeds it; and S4ND's structured-state-space
kernels (DPLR by the Cauchy sum, diagonal by the Vandermonde product) with the N-D FFT convolution that applies them."""
from . import scan_paths
from .causal_conv import causal_conv1d, causal_conv1d_ref
from .fft_conv import bidirectional_kernel, fft_conv_nd, fft_conv_nd_ref
from .mamba_inner import mamba_inner, mamba_inner_composed
from .multi_scan import multi_scan, multi_scan_ref
from .projected_scan import projected_multi_scan, projected_multi_scan_composed
from .scan_reference import selective_scan_chunked, selective_scan_ref
from .selective_scan import selective_scan
from .ssm_kernel import dplr_kernel, dplr_kernel_ref, diag_kernel, diag_kernel_ref

__all__ = ["selective_scan", "selective_scan_ref", "selective_scan_chunked", "multi_scan", "multi_scan_ref",
           "projected_multi_scan", "projected_multi_scan_composed", "mamba_inner", "mamba_inner_composed", "scan_paths",
           "causal_conv1d", "causal_conv1d_ref", "dplr_kernel", "dplr_kernel_ref", "diag_kernel", "diag_kernel_ref",
           "fft_conv_nd", "fft_conv_nd_ref", "bidirectional_kernel"]
