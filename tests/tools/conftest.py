"""Fixtures of the tool tests: one intra-op thread, a tiny generated image folder."""
from pathlib import Path

import pytest
import torch

from .helpers import make_image_folder


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny models run fastest (and steadiest on a shared CPU) on one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def image_root(tmp_path_factory) -> Path:
    """A generated image folder (see ``helpers.make_image_folder``), shared by the session's tests."""
    return make_image_folder(tmp_path_factory.mktemp("images"))
