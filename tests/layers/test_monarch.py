"""MonarchLinear against an explicit P2 R P1 L product of block-diagonal and permutation matrices; weight counts,
full mixing, the Monarch MLP, TorchScript."""
import pytest
import torch
import torch.nn.functional as F

from vssm.layers.monarch import MonarchLinear, MonarchMlp


def stride_permutation(rows: int, cols: int) -> torch.Tensor:
    """Permutation matrix that reads a length rows*cols vector as (rows, cols) and returns its transpose, flattened."""
    index = torch.arange(rows * cols).reshape(rows, cols).t().reshape(-1)
    return torch.eye(rows * cols)[index]


def dense_monarch(layer: MonarchLinear) -> torch.Tensor:
    """(m, n) dense matrix P2 R P1 L, built from the factors with block_diag and permutation matrices."""
    L = torch.block_diag(*layer.blkdiag1)  # (b * mid, n)
    R = torch.block_diag(*layer.blkdiag2)  # (m, b * mid)
    mid, out_block = layer.blkdiag1.shape[1], layer.blkdiag2.shape[1]
    P1 = stride_permutation(layer.nblocks, mid)
    P2 = stride_permutation(layer.nblocks, out_block)
    return P2 @ R @ P1 @ L


@pytest.mark.parametrize("n, m", [(16, 64), (64, 16), (32, 32), (48, 16)])
def test_matches_explicit_factor_product(n, m):
    torch.manual_seed(0)
    layer = MonarchLinear(n, m)
    x = torch.randn(3, 5, n)
    torch.testing.assert_close(layer(x), x @ dense_monarch(layer).t() + layer.bias)


@pytest.mark.parametrize("n, m", [(16, 64), (64, 16), (32, 32)])
def test_weight_count_and_full_mixing(n, m):
    """(n + m) * min(n, m) / nblocks weights, and every output depends on every input."""
    torch.manual_seed(0)
    layer = MonarchLinear(n, m, bias=False)
    assert sum(p.numel() for p in layer.parameters()) == (n + m) * min(n, m) // 4
    assert (dense_monarch(layer).abs() > 0).all()


def test_rejects_indivisible_sizes():
    with pytest.raises(ValueError, match="divisible"):
        MonarchLinear(10, 16)


def test_monarch_mlp():
    """fc1 -> depthwise 3x3 (on the map) -> GELU -> fc2; without the conv it acts on any (..., C) tokens."""
    torch.manual_seed(0)
    mlp = MonarchMlp(16, 64)
    x = torch.randn(2, 3, 5, 16)
    hidden = mlp.dwconv(mlp.fc1(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(mlp(x), mlp.fc2(F.gelu(hidden)))
    tokens = MonarchMlp(16, 64, dwconv=False)
    assert tokens(torch.randn(2, 1, 16)).shape == (2, 1, 16) and "dwconv.weight" not in tokens.state_dict()
    scripted = torch.jit.script(mlp)
    torch.testing.assert_close(scripted(x), mlp(x))
