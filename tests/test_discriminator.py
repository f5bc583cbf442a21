import pytest
import torch

from tumoraug.models.discriminator import (
    PatchDiscriminator3D,
    adaptive_weight,
    generator_loss,
    hinge_d_loss,
)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("size", "layers", "side"), [(16, 2, 2), (32, 2, 6), (32, 3, 2)])
def test_patch_logits_shape(size, layers, side):
    disc = PatchDiscriminator3D(2, channels=4, layers=layers)
    assert disc(torch.randn(3, 2, size, size, size)).shape == (3, 1, side, side, side)


def test_logits_of_a_sample_do_not_depend_on_its_batch():
    disc = PatchDiscriminator3D(1, channels=4, layers=2)
    x = torch.randn(3, 1, 16, 16, 16)
    assert torch.allclose(disc(x)[:1], disc(x[:1]), atol=1e-6)


def test_hinge_and_generator_losses():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])
    # relu(1 - real) = [0, 1], relu(1 + fake) = [0, 1.5]
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.5 + 0.75))
    assert generator_loss(fake).item() == pytest.approx(0.75)


def test_adaptive_weight_balances_gradient_norms():
    layer = torch.nn.Parameter(torch.ones(3))
    rec = (2.0 * layer).sum()  # gradient norm 2 * sqrt(3)
    g = (0.5 * layer).sum()  # gradient norm 0.5 * sqrt(3)
    weight = adaptive_weight(rec, g, layer, scale=0.5)
    assert not weight.requires_grad
    assert weight.item() == pytest.approx(0.5 * 2.0 / (0.5 + 1e-4 / 3**0.5), rel=1e-4)
