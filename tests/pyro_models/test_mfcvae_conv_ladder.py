"""The convolutional ladder networks: shapes, the decoder fade, gradient flow, shape errors."""
import pytest
import torch

from pyro_models.mfcvae.conv_ladder import ConvLadderDecoder, ConvLadderEncoder


@pytest.mark.parametrize("side", [32, 64])
@pytest.mark.parametrize("num_facets", [2, 3])
def test_shapes_with_leading_particle_dims(one_thread, side, num_facets):
    shape, dims = (3, side, side), [4, 3, 2][:num_facets]
    encoder, decoder = ConvLadderEncoder(shape, num_facets), ConvLadderDecoder(shape, dims)
    assert len(encoder.feature_dims) == num_facets
    x = torch.rand(2, 5, 3 * side * side)  # (particles, batch, C*H*W)
    assert encoder(x).shape == (2, 5, sum(encoder.feature_dims))
    zs = [torch.randn(2, 5, d) for d in dims]
    assert decoder(zs).shape == (2, 5, 3 * side * side)
    # leading dims broadcast across facets, as the MLP decoder's addition does
    zs[0] = zs[0][:1]
    assert decoder(zs).shape == (2, 5, 3 * side * side)


def test_grey_images_are_supported(one_thread):
    encoder, decoder = ConvLadderEncoder((1, 32, 32), 2), ConvLadderDecoder((1, 32, 32), [3, 3])
    assert encoder(torch.rand(4, 1024)).shape == (4, sum(encoder.feature_dims))
    assert decoder([torch.randn(4, 3)] * 2).shape == (4, 1024)


def test_faded_out_facet_has_no_effect(one_thread):
    decoder = ConvLadderDecoder((3, 32, 32), [3, 3, 3])
    zs = [torch.randn(4, 3) for _ in range(3)]
    other = [torch.randn(4, 3), zs[1], zs[2]]
    torch.testing.assert_close(decoder(zs, fade=[0.0, 1.0, 1.0]), decoder(other, fade=[0.0, 1.0, 1.0]))
    assert not torch.allclose(decoder(zs, fade=[0.5, 1.0, 1.0]), decoder(other, fade=[0.5, 1.0, 1.0]))
    torch.testing.assert_close(decoder(zs), decoder(zs, fade=[1.0, 1.0, 1.0]))


@pytest.mark.parametrize("side", [32, 64])
def test_gradients_reach_every_parameter(one_thread, side):
    shape = (3, side, side)
    encoder, decoder = ConvLadderEncoder(shape, 3), ConvLadderDecoder(shape, [2, 2, 2])
    features = encoder(torch.rand(3, 3 * side * side))
    zs = [chunk[..., :2] for chunk in features.split(encoder.feature_dims, dim=-1)]
    decoder(zs, fade=[1.0, 1.0, 1.0]).square().sum().backward()
    for name, p in [*encoder.named_parameters(prefix="encoder"), *decoder.named_parameters(prefix="decoder")]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("shape, facets, message", [
    ((3, 28, 28), 2, "square images of size"),
    ((3, 32, 64), 2, "square images of size"),
    ((784,), 2, r"needs image_shape \(C, H, W\)"),
    ((3, 32, 32), 5, "1 to 4 facets"),
])
def test_unsupported_shapes_are_refused(shape, facets, message):
    with pytest.raises(ValueError, match=message):
        ConvLadderEncoder(shape, facets)
    with pytest.raises(ValueError, match=message):
        ConvLadderDecoder(shape, [2] * facets)


def test_wrong_input_size_is_named():
    with pytest.raises(ValueError, match="flattened images of size 3072"):
        ConvLadderEncoder((3, 32, 32), 2)(torch.rand(2, 784))
