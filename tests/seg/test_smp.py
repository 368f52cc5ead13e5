"""segmentation_models_pytorch's ``tu-`` encoders on the hierarchical zoo models: smp.Unet / FPN / UPerNet build from
the registered names (VMamba-T, LocalVMamba-T, SiMBA-S and the tiny test variants), treat them as transformer-style
encoders (strides 4..32 from ``feature_info``), and train a step forward and backward with 1- and 3-channel inputs."""
import pytest
import timm
import torch

import vssm  # noqa: F401  (registers the zoo)

smp = pytest.importorskip("segmentation_models_pytorch", reason="segmentation_models_pytorch is in the 'seg' extra")

ARCHITECTURES = {"Unet": smp.Unet, "FPN": smp.FPN, "UPerNet": smp.UPerNet}
TINY_HIERARCHICAL = ["test_vmamba", "test_local_vmamba", "test_simba", "test_s4nd_convnext"]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared CPU they cost a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train_step(net: torch.nn.Module, in_channels: int, size: int = 64, batch: int = 2) -> torch.Tensor:
    """Train mode, backward of the mean (smp's UPerNet needs batches of 2: it pools to 1x1 under BatchNorm)."""
    net.train()
    out = net(torch.randn(batch, in_channels, size, size))
    out.mean().backward()
    return out


def _encoder_grads_missing(net: torch.nn.Module) -> list:
    return [n for n, p in net.encoder.named_parameters() if p.grad is None or not p.grad.isfinite().all()]


def test_registered_names():
    """The names the acceptance list uses exist (smp's encoder name is 'tu-' + the timm name)."""
    assert "vmamba_tiny" in timm.list_models("vmamba*")
    assert "local_vmamba_tiny" in timm.list_models("local_vmamba*")
    assert "simba_s" in timm.list_models("simba*")


@pytest.mark.parametrize("name", TINY_HIERARCHICAL)
def test_features_only_as_smp_asks(name):
    """smp asks for features_only with out_indices (0, 1, 2, 3) and reads feature_info's channels and reductions;
    the maps come back NCHW with those channels at those strides."""
    model = timm.create_model(name, features_only=True, out_indices=(0, 1, 2, 3), in_chans=1)
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    maps = model(torch.randn(1, 1, 64, 96))
    for m, channels, reduction in zip(maps, model.feature_info.channels(), model.feature_info.reduction()):
        assert m.shape == (1, channels, 64 // reduction, 96 // reduction)


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
@pytest.mark.parametrize("name", ["test_vmamba", "test_local_vmamba", "test_simba"])
def test_smp_tiny_variants(name, architecture):
    torch.manual_seed(0)
    net = ARCHITECTURES[architecture](encoder_name=f"tu-{name}", encoder_weights=None, in_channels=1, classes=3)
    encoder_model = timm.create_model(name)
    assert net.encoder.out_channels == [1, 0] + [f["num_chs"] for f in encoder_model.feature_info]
    out = _train_step(net, 1)
    assert out.shape == (2, 3, 64, 64)
    assert not _encoder_grads_missing(net)


def test_smp_encoder_depth_4():
    """A shallower smp encoder asks for out_indices (0, 1, 2)."""
    net = smp.Unet(encoder_name="tu-test_vmamba", encoder_weights=None, encoder_depth=4,
                   decoder_channels=(32, 16, 8, 8), in_channels=3, classes=2)
    assert net.encoder.out_channels == [3, 0, 16, 32, 64]
    assert _train_step(net, 3).shape == (2, 2, 64, 64)


@pytest.mark.parametrize("name, architecture, in_channels", [
    ("vmamba_tiny", "Unet", 1), ("local_vmamba_tiny", "FPN", 3), ("simba_s", "UPerNet", 1)])
def test_smp_full_size(name, architecture, in_channels):
    """The acceptance list's full-size encoders, one architecture each (the tiny variants cover all three)."""
    torch.manual_seed(0)
    net = ARCHITECTURES[architecture](encoder_name=f"tu-{name}", encoder_weights=None, in_channels=in_channels,
                                      classes=2)
    with torch.device("meta"):
        channels = timm.create_model(name, features_only=True).feature_info.channels()
    assert net.encoder.out_channels == [in_channels, 0, *channels]
    batch = 2 if architecture == "UPerNet" else 1
    out = _train_step(net, in_channels, size=32, batch=batch)
    assert out.shape == (batch, 2, 32, 32) and out.isfinite().all()
    assert not _encoder_grads_missing(net)
