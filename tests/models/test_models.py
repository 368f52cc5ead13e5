"""timm's model contract (``contract.py``, after timm's tests/test_models.py) over every model ``import vssm``
registers.

The names come from timm's registry (every entrypoint whose module is in the vssm package), so a new family is covered
by registering its models; each model's input comes from its pretrained cfg and attributes (``contract.small_input``:
a 32 px side, fixed-size models built for it, clips for video models). The default run is cheap:

* every model, full size, at the small input, sharing one built model per name: forward (and grad checkpointing),
  forward_intermediates against feature_info and forward_features, the default-cfg checks;
* the tiny ``test_*`` variants (timm's convention): also backward (every parameter gets a gradient), features_only, the
  default cfg at the cfg input size (pool size, ``num_classes=0``), FX and TorchScript.

The same checks on the full-size variants, and a forward at the cfg input size for every model, are marked ``slow``
(``pytest -m slow tests/models/test_models.py``).
"""
import pytest
import timm
import torch

from .contract import (
    check_backward, check_default_cfg, check_features_only, check_forward, check_forward_intermediates, check_fx,
    check_torchscript, small_input, vssm_model_names,
)

NAMES = vssm_model_names()
TINY = [name for name in NAMES if name.startswith("test_")]  # timm's tiny CI variants: every check by default


def tiny_by_default(names):
    """``names`` as parameters, the full-size ones marked slow."""
    return [pytest.param(name, marks=() if name in TINY else pytest.mark.slow) for name in names]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared CPU they cost a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_family_is_covered():
    """Guards against a silently empty or partial parametrisation: every vssm model module registers names here, and
    each has its tiny test variant."""
    modules = {timm.models.model_entrypoint(name).__module__ for name in NAMES}
    assert {f"vssm.models.{m}" for m in ("vim", "vmamba", "local_vmamba", "plainmamba", "simba", "videomamba")} <= \
        modules
    for module in modules:
        assert any(timm.models.model_entrypoint(t).__module__ == module for t in TINY), f"{module}: no test_* variant"


@pytest.mark.parametrize("name", NAMES, scope="class")
class TestSmallInput:
    """The cheap checks, on one model per name built at the small input (the tests run in this order: the default
    cfg check, which resets the classifier, comes last)."""

    @pytest.fixture(scope="class")
    def built(self, name):
        spec = small_input(name)
        return timm.create_model(name, **spec.kwargs), spec

    def test_forward(self, name, built):
        model, spec = built
        model.set_grad_checkpointing(False)
        check_forward(name, size=spec.size, frames=spec.frames, model=model)

    def test_forward_intermediates(self, name, built):
        model, spec = built
        model.set_grad_checkpointing(False)
        check_forward_intermediates(name, size=spec.size, frames=spec.frames, model=model)

    def test_default_cfg(self, name, built):
        model, spec = built
        check_default_cfg(name, size=spec.size, frames=spec.frames, model=model)


@pytest.mark.parametrize("name", tiny_by_default(NAMES))
def test_backward(name):
    spec = small_input(name)
    check_backward(name, size=spec.size, frames=spec.frames, **spec.kwargs)


@pytest.mark.parametrize("name", tiny_by_default(NAMES))
def test_features_only(name):
    spec = small_input(name)
    check_features_only(name, size=spec.size, frames=spec.frames, **spec.kwargs)


@pytest.mark.parametrize("name", tiny_by_default(NAMES))
def test_default_cfg_at_cfg_size(name):
    """At the cfg input size, as built by default: pool size, ``create_model(num_classes=0)``."""
    check_default_cfg(name)


@pytest.mark.parametrize("name", tiny_by_default(NAMES))
def test_fx(name):
    spec = small_input(name)
    check_fx(name, size=spec.size, frames=spec.frames, **spec.kwargs)


@pytest.mark.parametrize("name", tiny_by_default(NAMES))
def test_torchscript(name):
    spec = small_input(name)
    check_torchscript(name, size=spec.size, frames=spec.frames, **spec.kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_forward_at_cfg_size(name):
    """The model as registered on its cfg input (224 px; video: the model's frames)."""
    check_forward(name, size=None)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_backward_at_timm_size(name):
    """timm's backward input (128 px, or the cfg's fixed size) with the model as registered."""
    model_cfg = timm.models.get_pretrained_cfg(name).to_dict()
    check_backward(name, size=None if model_cfg.get("fixed_input_size") else 128)
