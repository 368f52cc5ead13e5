"""Monarch matrices as drop-in linear layers, and the Monarch MLP used as a SiMBA channel mixer.

A Monarch matrix (Dao et al., "Monarch: Expressive Structured Matrices for Efficient and Accurate Training",
arXiv 2204.00595) is M = P2 R P1 L: a block-diagonal factor L, a stride permutation P1, a second block-diagonal
factor R and a stride permutation P2. "Monarch Mixer" (Fu et al., arXiv 2310.12109) builds its dimension mixer by
replacing the dense matrices of the MLP with such matrices; ``MonarchMlp`` does exactly that to SiMBA's MLP channel
mixer. With b = ``nblocks`` blocks per factor, a map from n to m features holds (n + m) * min(n, m) / b weights:

    n <= m: L = b blocks (n/b x n/b), R = b blocks (m/b x n/b)   -> (n^2 + m n) / b weights
    n >  m: L = b blocks (m/b x n/b), R = b blocks (m/b x m/b)   -> (m n + m^2) / b weights

(the ``MonarchLinear`` layout of HazyResearch's fly code), so a C -> 8C -> C MLP costs 9 C^2 / 2 weights instead of
16 C^2 with b = 4. P1 hands every block of R one slice of every block of L, so each output depends on every input.
NOTE: M2-BERT's released MLP keeps only the first factor (one block-diagonal matrix per projection); the two-factor
form used here is the Monarch matrix of both papers, and its parameter counts are the ones that land within a few
percent of the SiMBA paper's Monarch rows (the one-factor form gives 17.2M for SiMBA-S against the paper's 18.5M).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MonarchLinear", "MonarchMlp"]


class MonarchLinear(nn.Module):
    """Linear layer whose weight is a Monarch matrix P2 R P1 L (two block-diagonal factors, stride permutations)."""

    def __init__(
            self,
            in_features: int,
            out_features: int,
            nblocks: int = 4,
            bias: bool = True,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_features: Input size n, divisible by ``nblocks``.
            out_features: Output size m, divisible by ``nblocks``.
            nblocks: Blocks per factor.
            bias: Add a learned bias of size m.
        """
        super().__init__()
        if in_features % nblocks or out_features % nblocks:
            raise ValueError(f"MonarchLinear: in_features={in_features} and out_features={out_features} must be "
                             f"divisible by nblocks={nblocks}")
        dd = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.nblocks = in_features, out_features, nblocks
        in_block, out_block = in_features // nblocks, out_features // nblocks
        mid_block = min(in_block, out_block)
        self.blkdiag1 = nn.Parameter(torch.empty(nblocks, mid_block, in_block, **dd))  # L: (blocks, out, in)
        self.blkdiag2 = nn.Parameter(torch.empty(nblocks, out_block, mid_block, **dd))  # R: (blocks, out, in)
        self.bias = nn.Parameter(torch.empty(out_features, **dd)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        """nn.Linear's default initialisation, per factor (fan-in of each factor's blocks)."""
        for blocks in (self.blkdiag1, self.blkdiag2):
            bound = 1 / math.sqrt(blocks.shape[-1])
            nn.init.uniform_(blocks, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(self.in_features), 1 / math.sqrt(self.in_features))

    def forward(self, x: Tensor) -> Tensor:
        """Apply M (and the bias).

        Args:
            x: (..., in_features).

        Returns:
            (..., out_features).
        """
        x = x.unflatten(-1, (self.nblocks, -1))  # (..., b, n/b)
        x = torch.einsum("...bi,boi->...bo", x, self.blkdiag1)  # L: (..., b, mid)
        x = x.transpose(-1, -2).flatten(-2).unflatten(-1, (self.nblocks, -1))  # P1: block j of R gets rows of all
        x = torch.einsum("...bi,boi->...bo", x, self.blkdiag2)  # R: (..., b, m/b)
        x = x.transpose(-1, -2).flatten(-2)  # P2: (..., m)
        return x if self.bias is None else x + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nblocks={self.nblocks}, "
                f"bias={self.bias is not None}")


class MonarchMlp(nn.Module):
    """Monarch MLP on a (B, H, W, C) map: Monarch fc1 -> [3x3 depthwise conv] -> GELU -> Monarch fc2.

    With ``dwconv=True`` this is the PVT-v2 FFN of SiMBA's released MLP mixer with both dense projections replaced
    by ``MonarchLinear``; with ``dwconv=False`` it is the plain FFN of SiMBA's class-token block, likewise.
    """

    def __init__(
            self,
            dim: int,
            hidden_dim: int,
            nblocks: int = 4,
            dwconv: bool = True,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: Channels C.
            hidden_dim: Hidden channels.
            nblocks: Blocks per Monarch factor.
            dwconv: Apply the 3x3 depthwise conv (with bias) on the hidden map.
        """
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.use_dwconv = dwconv
        self.fc1 = MonarchLinear(dim, hidden_dim, nblocks, **dd)
        self.dwconv = (nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim, **dd) if dwconv
                       else nn.Identity())
        self.fc2 = MonarchLinear(hidden_dim, dim, nblocks, **dd)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H, W, C), or (B, L, C) without the depthwise conv -> same shape."""
        x = self.fc1(x)
        if self.use_dwconv:
            x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.fc2(F.gelu(x))
