"""Test set-up: without a GPU, the Triton kernels run through Triton's CPU interpreter (with one, TF32 is off);
hypothesis draws the same examples on every run (derandomized), so CI is reproducible and a red run points at a
change, not at a new draw."""
import os

import pytest
import torch
from hypothesis import settings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# on a GPU, the fixture and kernel checks compare float32 numbers: no TF32 in cuDNN's convolutions or in matmuls
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

settings.register_profile("reproducible", derandomize=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "reproducible"))


@pytest.fixture
def fresh_dynamo():
    """A clean dynamo state and one thread for each compiling test (tiny tensors; a shared CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(threads)
