"""The Bernoulli-decoder VAE of Cremer, Li & Duvenaud (ICML 2018), "Inference Suboptimality in
Variational Autoencoders": z in R^50 with a standard normal prior, decoder 50-200-200-784 with
ELU activations (their reference code's ``act_func=F.elu``), Bernoulli likelihood.

For CIFAR-10 (3x32x32 binarised colour images) the paper's convolutional networks (their
``cvae.py``, ``architecture="conv"``): encoder convolutions 3-64-128-256 (kernel 4, stride 2, no
padding: 32 -> 15 -> 6 -> 2), whose 256x2x2 features the guide's linear head maps to the mean and
log-variance; decoder z -> linear 256x2x2 -> transposed convolutions 256-128 (kernel 4, stride 2),
128-64 (kernel 4, stride 2, output padding 1), 64-3 (kernel 4, stride 2): 2 -> 6 -> 15 -> 32,
3x32x32 Bernoulli logits. ELU between layers (their activation is a hyper-parameter).

A stated difference from the authors' code: they put BatchNorm after each convolution (and after
the first two transposed ones). Here there is none: in training mode BatchNorm normalises with
the statistics of the batch, so log p(x | z) of one point would depend on the other points in
the batch, and the per-point estimators (IWAE, AIS, local optimisation of q*) would not measure
one data point's log p(x)."""
import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_models.core import (
    AT_LEAST_ONE,
    DATA_PLATE,
    LatentSite,
    NamedModule,
    batch_size_of,
    data_plate,
    derived,
    latent_scale,
    setting,
)
from pyro_models.likelihoods import BernoulliLogits
from pyro_models.networks import ELU, KeywordInput, mlp

ARCHITECTURES = ("mlp", "conv")
MLP_HIDDEN = (200, 200)  # the paper's hidden layers, encoder and decoder
CONV_IMAGE_SIDE = 32  # the convolutional networks' image size (CIFAR-10's): their shapes fit it only
CONV_CHANNELS = (64, 128, 256)  # encoder feature maps (the decoder's in reverse), the authors' init_channel=64
CONV_KERNEL, CONV_STRIDE = 4, 2
CONV_FEATURE_SIDE = 2  # the last encoder map and the first decoder map are 2x2


@dataclass
class VAEConfig:
    data_dim: int = derived(784)
    latent_dim: int = setting(50, "dimension of z", valid=AT_LEAST_ONE)
    decoder_hidden: tuple[int, ...] = setting(MLP_HIDDEN, "decoder hidden layer sizes (mlp)")
    encoder_hidden: tuple[int, ...] = setting(MLP_HIDDEN, "encoder hidden layer sizes (mlp; amortised guides)")
    architecture: str | None = setting(
        None, "networks: mlp (fully connected, the hidden sizes above) or conv (the paper's convolutional "
        "encoder and decoder for 32x32 images, CIFAR-10) (default: conv for 3x32x32 colour images, mlp otherwise)",
        choices=ARCHITECTURES)
    image_shape: tuple[int, ...] | None = derived(None)  # (C, 32, 32) for conv, set from the data; None: flat vectors

    @property
    def resolved_architecture(self) -> str:
        """``architecture``, or, where it is None, conv for (3, 32, 32) images and mlp otherwise."""
        if self.architecture is not None:
            return self.architecture
        return "conv" if self.image_shape is not None and tuple(self.image_shape) == (3, 32, 32) else "mlp"

    def check_networks(self) -> None:
        """The convolutional networks need (C, 32, 32) images of ``data_dim`` pixels (ValueError)."""
        if self.resolved_architecture != "conv":
            return
        shape = None if self.image_shape is None else tuple(self.image_shape)
        if shape is None or len(shape) != 3 or shape[1:] != (CONV_IMAGE_SIDE, CONV_IMAGE_SIDE):
            raise ValueError(f"--architecture conv needs images of shape (C, {CONV_IMAGE_SIDE}, {CONV_IMAGE_SIDE}) "
                             f"(CIFAR-10's), got image_shape {shape}; use --architecture mlp for other data")
        if math.prod(shape) != self.data_dim:
            raise ValueError(f"image_shape {shape} has {math.prod(shape)} pixels but data_dim is {self.data_dim}")
        if tuple(self.decoder_hidden) != MLP_HIDDEN or tuple(self.encoder_hidden) != MLP_HIDDEN:
            raise ValueError("--decoder-hidden and --encoder-hidden size the mlp networks; the conv networks have the "
                             "paper's fixed channels: leave them out, or use --architecture mlp")


class VAE(NamedModule):
    """p(z) = N(0, I), p(x | z) = prod_d Bernoulli(x_d | sigmoid(decoder(z))_d)."""

    max_plate_nesting = 1

    def __init__(self, config: VAEConfig | None = None, name: str | None = None, plate_name: str = DATA_PLATE):
        super().__init__()
        self.config = config = config or VAEConfig()
        self._claim_name(name, "vae")
        self.plate_name = plate_name
        config.check_networks()
        if config.resolved_architecture == "conv":
            self.decoder = ConvDecoder(config.latent_dim, tuple(config.image_shape))
        else:  # (the MLP's state_dict keys, decoder.0.weight ..., are those of every run saved before conv existed)
            self.decoder = mlp([config.latent_dim, *config.decoder_hidden, config.data_dim])

    @property
    def latent_sites(self) -> tuple[LatentSite, ...]:
        return (LatentSite("z", self.config.latent_dim),)

    def make_encoder(self) -> tuple[nn.Module, int]:
        """The paper's inference network body, data_dim-200-200 (conv: the three convolutions, 256x2x2
        features); guides add their own head (a linear layer to the mean and log-variance for ffg)."""
        if self.config.resolved_architecture == "conv":
            encoder = ConvEncoder(tuple(self.config.image_shape))
            return KeywordInput(encoder), encoder.feature_dim
        sizes = [self.config.data_dim, *self.config.encoder_hidden]
        return KeywordInput(mlp(sizes, activate_last=True)), sizes[-1]

    def model(self, x: torch.Tensor | None = None, idx: torch.Tensor | None = None, latent_scales=None,
              batch_size: int | None = None, num_data: int | None = None) -> torch.Tensor:
        """z ~ N(0, I) and x | z ~ Bernoulli(sigmoid(decoder(z))) for each point, inside the plate
        ``plate_name``; sites ``z`` (batch, latent_dim) and ``x`` (batch, data_dim).

        ``x``: binary images (batch, data_dim), observed; ``None`` samples them (give
        ``batch_size``). ``idx``/``num_data``: subsampling (see ``pyro_models.core.data_plate``).
        ``latent_scales``: {"z": weight}, KL annealing. Returns the decoder's logits."""
        self.register_with_pyro()
        batch = batch_size_of(x, idx, batch_size)
        zero = next(self.decoder.parameters()).new_zeros(())
        prior = dist.Normal(zero, 1.0).expand([batch, self.config.latent_dim])
        with data_plate(self.plate_name, batch, idx, num_data):
            with latent_scale("z", latent_scales):
                z = pyro.sample("z", prior.to_event(1))
            logits = self.decoder(z)
            pyro.sample("x", BernoulliLogits(logits).to_event(1), obs=x)
        return logits


class ConvEncoder(nn.Module):
    """Flattened channel-first images ``(..., C*32*32)`` -> features ``(..., 256*2*2)``: three
    convolutions (kernel 4, stride 2, no padding), each followed by ELU (no BatchNorm: see the
    module's docstring). Any number of leading dimensions (particles in front)."""

    def __init__(self, image_shape: tuple[int, int, int], activation=ELU):
        super().__init__()
        self.image_shape = tuple(image_shape)
        layers, channels = [], self.image_shape[0]
        for width in CONV_CHANNELS:
            layers += [nn.Conv2d(channels, width, CONV_KERNEL, CONV_STRIDE), activation()]
            channels = width
        self.net = nn.Sequential(*layers)
        self.feature_dim = CONV_CHANNELS[-1] * CONV_FEATURE_SIDE ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        features = self.net(x.reshape(-1, *self.image_shape))
        return features.reshape(*lead, self.feature_dim)


class ConvDecoder(nn.Module):
    """z ``(..., latent_dim)`` -> Bernoulli logits ``(..., C*32*32)``, flattened channel-first:
    linear to 256x2x2, then transposed convolutions 256-128 (kernel 4, stride 2), 128-64 (kernel 4,
    stride 2, output padding 1) and 64-C (kernel 4, stride 2), ELU after all but the last."""

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], activation=ELU):
        super().__init__()
        self.image_shape = tuple(image_shape)
        top = CONV_CHANNELS[-1]
        self.map_shape = (top, CONV_FEATURE_SIDE, CONV_FEATURE_SIDE)
        self.fc = nn.Sequential(nn.Linear(latent_dim, math.prod(self.map_shape)), activation())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(top, CONV_CHANNELS[1], CONV_KERNEL, CONV_STRIDE), activation(),
            nn.ConvTranspose2d(CONV_CHANNELS[1], CONV_CHANNELS[0], CONV_KERNEL, CONV_STRIDE, output_padding=1),
            activation(),
            nn.ConvTranspose2d(CONV_CHANNELS[0], self.image_shape[0], CONV_KERNEL, CONV_STRIDE),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        h = self.fc(z.reshape(-1, z.shape[-1])).view(-1, *self.map_shape)
        return self.deconv(h).reshape(*lead, math.prod(self.image_shape))
