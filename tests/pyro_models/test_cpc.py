"""The CPC networks: layer lists, output length and alignment to the 10 ms phone frames."""
import pytest
import torch

from pyro_models.cpc.model import CPC, ConvEncoder, CPCConfig, paper_layers, parse_layers, receptive_field


def test_paper_encoder_downsamples_by_160():
    layers = paper_layers(512)
    assert [layer[2:5] for layer in layers] == [(10, 5, 3), (8, 4, 2), (4, 2, 1), (4, 2, 1), (4, 2, 1)]
    size, hop, start = receptive_field(layers)
    assert (size, hop, start) == (465, 160, -153)


@pytest.mark.parametrize("samples", [160, 3200, 4000, 4159, 4161, 20480])
def test_one_output_per_160_samples(samples, one_thread):
    """n * 160 samples give n outputs (the loaders crop utterances to whole frames)."""
    encoder = ConvEncoder(paper_layers(8))
    z = encoder(torch.randn(2, samples))
    assert z.shape == (2, encoder.output_length(samples), 8)
    if samples % 160 == 0:
        assert z.shape[1] == samples // 160


def test_output_t_is_centred_on_phone_frame_t(one_thread):
    """Output t depends exactly on samples [160 t - 153, 160 t + 312): centred on frame t =
    [160 t, 160 t + 160) (to half a sample), so z_t and c_t line up with label t."""
    encoder = ConvEncoder(paper_layers(4), norm="none")
    wave = torch.randn(1, 20 * 160, requires_grad=True)
    z = encoder(wave)
    for t in (3, 10, 16):
        grad, = torch.autograd.grad(z[0, t].sum(), wave, retain_graph=True)
        used = grad[0].ne(0).nonzero().flatten()
        first, last = used.min().item(), used.max().item()
        assert (first, last) == (160 * t - 153, 160 * t + 311)
        assert abs((first + last) / 2 - (160 * t + 79.5)) <= 0.5


def test_context_is_causal(one_thread):
    model = CPC(CPCConfig(width=8, context_dim=6, prediction_steps=3))
    wave = torch.randn(1, 30 * 160)
    changed = wave.clone()
    changed[0, 20 * 160:] = torch.randn(10 * 160)
    c, c_changed = model.context(model.encode(wave)), model.context(model.encode(changed))
    # z_t reads up to sample 160 t + 311, so c_t for t <= 18 cannot see the change at 3200
    assert torch.allclose(c[0, :18], c_changed[0, :18]) and not torch.allclose(c[0, 19:], c_changed[0, 19:])
    z, _, predictions = model(wave)
    assert predictions.shape == (1, 30, 3, 8) and z.shape == (1, 30, 8)


def test_layer_list_in_the_reference_format():
    text = "1-64-10-5-3-1,64-64-8-4-2-1,64-32-4-2-1-2"
    assert parse_layers(text) == [(1, 64, 10, 5, 3, 1), (64, 64, 8, 4, 2, 1), (64, 32, 4, 2, 1, 2)]
    model = CPC(CPCConfig(encoder_layers=text, context_dim=16))
    assert model.encoder.output_dim == 32 and model.encoder.hop == 40


@pytest.mark.parametrize("text, message", [
    ("1-64-10-5-3", "six non-negative integers"),
    ("2-64-10-5-3-1", "1 input channel"),
    ("1-64-10-5-3-1,32-64-4-2-1-1", "takes 32 channels but layer 1 gives 64"),
    ("1-64-10-0-3-1", "must be positive"),
])
def test_bad_layer_lists_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_layers(text)
