"""What a model says about the inputs users get wrong first: an unbatched tensor, the wrong channel count, the wrong
size for a fixed-size model; and the ``img_size`` / ``dynamic_img_size`` kwargs that timm users pass to any model."""
import pytest
import timm
import torch

import vssm  # noqa: F401  (registers the zoo)

TINY = sorted(name for name in timm.list_models("test_*")
              if timm.models.model_entrypoint(name).__module__.startswith("vssm."))


def _input_shape(model) -> tuple:
    shape = tuple(model.pretrained_cfg["input_size"])
    frames = getattr(model, "num_frames", None) or getattr(getattr(model, "patch_embed", None), "num_frames", None)
    return (shape[0], frames, *shape[1:]) if frames else shape


@pytest.mark.parametrize("name", TINY)
def test_unbatched_and_wrong_channel_inputs_are_named(name):
    model = timm.create_model(name).eval()
    shape = _input_shape(model)
    with pytest.raises(ValueError, match=r"got a tensor of shape .*add the batch axis with x\.unsqueeze\(0\)"):
        model(torch.randn(shape))
    with pytest.raises(ValueError, match=rf"expected {shape[0]} input channels"):
        model(torch.randn(1, shape[0] + 1, *shape[1:]))


@pytest.mark.parametrize("name", ["test_vmamba", "test_local_vmamba", "test_plainmamba", "test_simba"])
def test_hierarchical_and_resizable_models_accept_timm_size_kwargs(name):
    model = timm.create_model(name, img_size=64, dynamic_img_size=True).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, model.num_classes)


def test_fixed_size_error_says_what_it_got():
    model = timm.create_model("test_vim").eval()
    with pytest.raises(AssertionError, match=r"input size must be \[64, 64\], got \[32, 32\]"):
        model(torch.randn(1, 3, 32, 32))
