"""scan_core helpers: the allocation-free dense-layout check agrees with the layouts ``torch.empty_like`` keeps."""
import pytest
import torch

from vssm.ops.scan_core import dense_strides

BASE = torch.zeros(2, 3, 4, 5)
LAYOUTS = {
    "contiguous": BASE,
    "transposed": BASE.transpose(1, 3),
    "permuted": BASE.permute(2, 0, 3, 1),
    "channels_last": BASE.contiguous(memory_format=torch.channels_last),
    "size_one_axis": torch.zeros(2, 1, 5).transpose(0, 1),
    "expanded": torch.zeros(2, 1, 5).expand(2, 3, 5),
    "sliced_last": BASE[..., :3],
    "strided_step": BASE[:, ::2],
    "leading_slice": BASE[1:],
    "overlapping": torch.zeros(8).as_strided((3, 4), (1, 1)),
    "scalar": torch.zeros(()),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_dense_strides_matches_empty_like(name):
    x = LAYOUTS[name]
    assert dense_strides(x) == (torch.empty_like(x).stride() == x.stride()), name
