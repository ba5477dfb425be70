"""The VAE's convolutional networks for CIFAR-10 (Cremer et al. 2018, their cvae.py, without
BatchNorm): shapes, the Bernoulli log-likelihood over 3072 pixels, the choice of architecture by
the data, the MLP VAE's parameters unchanged, and a 3-step run/svi.py run on a tiny CIFAR-10."""
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from cifar10_fixtures import write_tiny_cifar10
from pyro import poutine

from guides import MeanFieldNormal, build_guide
from lvm_app import cli
from pyro_models.datasets import cifar10 as c10
from pyro_models.datasets.files import md5_of
from pyro_models.datasets.vector_data import VectorData
from pyro_models.vae import VAE, VAEConfig
from pyro_models.vae.experiment import VAEExperiment

CIFAR = dict(data_dim=3072, image_shape=(3, 32, 32))
# The MLP VAE's parameter names, listed before the convolutional networks were added: checkpoints
# of every earlier run hold exactly these.
MLP_MODEL_KEYS = ["decoder.0.weight", "decoder.0.bias", "decoder.2.weight", "decoder.2.bias", "decoder.4.weight",
                  "decoder.4.bias"]
MLP_ENCODER_KEYS = ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]
MLP_CONFIG_FIELDS = {"data_dim": 784, "latent_dim": 50, "decoder_hidden": [200, 200], "encoder_hidden": [200, 200]}


def test_mlp_parameters_are_unchanged():
    model = VAE(VAEConfig())
    assert list(model.state_dict()) == MLP_MODEL_KEYS
    encoder, width = model.make_encoder()
    assert list(encoder.state_dict()) == MLP_ENCODER_KEYS and width == 200
    assert VAEConfig().resolved_architecture == "mlp" and VAEConfig(data_dim=784, image_shape=(28, 28)) \
        .resolved_architecture == "mlp"
    # a config.json written before: its fields only, the new ones at their defaults
    saved = VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in MLP_CONFIG_FIELDS.items()})
    assert saved.architecture is None and saved.image_shape is None
    assert list(VAE(saved).state_dict()) == MLP_MODEL_KEYS


def test_conv_shapes_match_the_authors_networks():
    torch.manual_seed(0)
    model = VAE(VAEConfig(**CIFAR))
    assert model.config.resolved_architecture == "conv"
    assert [m.weight.shape for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)] == [
        (256, 128, 4, 4), (128, 64, 4, 4), (64, 3, 4, 4)]
    logits = model.decoder(torch.randn(4, 50))
    assert logits.shape == (4, 3072) and logits.reshape(4, 3, 32, 32).shape == (4, 3, 32, 32)
    assert model.decoder(torch.randn(2, 5, 50)).shape == (2, 5, 3072)  # particles in front
    encoder, width = model.make_encoder()
    assert width == 256 * 2 * 2
    assert [m.weight.shape for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)] == [
        (64, 3, 4, 4), (128, 64, 4, 4), (256, 128, 4, 4)]
    assert encoder(x=torch.rand(2, 5, 3072)).shape == (2, 5, 1024)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in [*model.modules(), *encoder.modules()])


def test_conv_log_likelihood_sums_over_the_3072_pixels():
    torch.manual_seed(0)
    model = VAE(VAEConfig(**CIFAR))
    x = torch.bernoulli(torch.full((3, 3072), 0.3))
    trace = poutine.trace(model.model).get_trace(x=x)
    trace.compute_log_prob()
    site = trace.nodes["x"]
    assert site["fn"].event_shape == (3072,) and site["log_prob"].shape == (3,)
    logits = model.decoder(trace.nodes["z"]["value"])
    per_pixel = dist.Bernoulli(logits=logits).log_prob(x)
    assert per_pixel.shape == (3, 3072)
    assert torch.allclose(site["log_prob"], per_pixel.sum(-1), rtol=1e-5)
    # one point's log-likelihood does not depend on the other points of the batch (no BatchNorm)
    alone = poutine.trace(poutine.condition(model.model, {"z": trace.nodes["z"]["value"][:1]})).get_trace(x=x[:1])
    assert torch.allclose(alone.log_prob_sum(lambda name, _: name == "x"), site["log_prob"][0], rtol=1e-5)


def test_a_guide_with_the_conv_encoder_trains_one_step():
    torch.manual_seed(0)
    model = VAE(VAEConfig(**CIFAR))
    encoder, width = model.make_encoder()
    guide = build_guide(MeanFieldNormal, model.latent_sites, encoder=encoder, encoder_dim=width)
    x = torch.bernoulli(torch.full((4, 3072), 0.3))
    elbo = pyro.infer.Trace_ELBO()
    loss = elbo.differentiable_loss(model.model, guide, x=x)
    loss.backward()
    assert math.isfinite(loss.item()) and model.decoder.fc[0].weight.grad is not None
    assert all(p.grad is not None for p in encoder.parameters())


def data_with_shape(image_shape) -> VectorData:
    dim = math.prod(image_shape)
    return VectorData("d", torch.zeros(4, dim), None, torch.zeros(2, dim), image_shape)


@pytest.mark.parametrize("given, image_shape, architecture, recorded_shape", [
    (None, (3, 32, 32), "conv", (3, 32, 32)),  # colour 32x32: conv by default
    (None, (28, 28), None, None),  # grey: the MLP, recorded as every earlier run (resumable)
    (None, (8, 8), None, None),
    ("mlp", (3, 32, 32), "mlp", None),
    ("conv", (1, 32, 32), "conv", (1, 32, 32)),
])
def test_the_experiment_chooses_the_networks_from_the_data(given, image_shape, architecture, recorded_shape):
    experiment = VAEExperiment()
    ctx = experiment.context(config=VAEConfig(architecture=given))
    config = experiment.model_config(ctx, data_with_shape(image_shape))
    assert config.architecture == architecture and config.image_shape == recorded_shape
    assert config.data_dim == math.prod(image_shape)
    expected = architecture or "mlp"
    assert VAE(config).config.resolved_architecture == expected


def test_conv_on_grey_28x28_images_is_refused_naming_the_flag():
    experiment = VAEExperiment()
    ctx = experiment.context(config=VAEConfig(architecture="conv"))
    with pytest.raises(ValueError, match=r"--architecture conv needs images of shape \(C, 32, 32\)"):
        experiment.model_config(ctx, data_with_shape((28, 28)))


def test_conv_refuses_mlp_hidden_sizes_rather_than_ignoring_them():
    experiment = VAEExperiment()
    ctx = experiment.context(config=VAEConfig(decoder_hidden=(500,)))
    with pytest.raises(ValueError, match="--decoder-hidden and --encoder-hidden size the mlp networks"):
        experiment.model_config(ctx, data_with_shape((3, 32, 32)))


def test_three_steps_on_a_tiny_cifar10(tmp_path, monkeypatch, one_thread):
    write_tiny_cifar10(tmp_path / "data")
    monkeypatch.setattr(c10, "MD5", md5_of(tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz"))
    out = tmp_path / "run"
    assert cli.main(["--model", "vae", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--steps", "3",
                     "--batch-size", "6", "--log-every", "1", "--iwae-k", "2", "--eval-points", "3",
                     "--train-eval-points", "4", "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert math.isfinite(summary["test_elbo"]) and math.isfinite(summary["train_elbo"])
    assert summary["test_elbo"] < 0 and summary["num_test_points"] == 3
    config = json.loads((out / "config.json").read_text())["model_config"]
    assert config["architecture"] == "conv" and config["image_shape"] == [3, 32, 32] and config["data_dim"] == 3072
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == 3
    for name in ("reconstructions.png", "samples.png", "training_curve.png"):
        assert (out / name).stat().st_size > 0
    assert cli.main(["--model", "vae", "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--steps", "4",
                     "--batch-size", "6", "--log-every", "1", "--iwae-k", "2", "--eval-points", "3",
                     "--train-eval-points", "4", "--no-progress", "--out", str(out), "--resume"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 4


def test_an_mlp_run_saved_before_conv_existed_resumes(tmp_path, one_thread):
    """A run whose config.json has no architecture/image_shape (as every earlier run) continues."""
    out = tmp_path / "run"
    flags = ["--model", "vae", "--batch-size", "20", "--log-every", "1", "--iwae-k", "2", "--eval-points", "3",
             "--train-eval-points", "4", "--no-progress", "--out", str(out)]
    assert cli.main([*flags, "--steps", "2"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_config"]["architecture"] is None and config["model_config"]["image_shape"] is None
    for key in ("architecture", "image_shape"):
        del config["model_config"][key]
    (out / "config.json").write_text(json.dumps(config))
    assert list(torch.load(out / "checkpoint.pt", weights_only=False)["modules"]["model"]) == MLP_MODEL_KEYS
    assert cli.main([*flags, "--steps", "4", "--resume"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 4
