"""Contrastive Predictive Coding, audio (van den Oord, Li & Vinyals 2018, section 3.1).

A strided convolutional encoder g_enc maps raw 16 kHz waveform to z_t, one vector per 160
samples (10 ms); a GRU g_ar summarises z_<=t into c_t; linear maps W_k (k = 1..K) predict z_{t+k}
from c_t, scored by the log-bilinear f_k = z_{t+k}^T W_k c_t. The loss (InfoNCE) lives in
``inference/infonce.py``.

CPC is not a generative model: there is no ``pyro.sample`` here. ``CPC.model`` registers the
networks with Pyro (``pyro.module``) and returns the predictions, so the module can be imported
into a Pyro program; training goes through the runner's ``LossObjective``.

Defaults (``CPCConfig``) are the paper's: five convolutions with strides 5, 4, 2, 2, 2, kernels
10, 8, 4, 4, 4 and 512 channels (down-sampling 160), GRU of 256, K = 12. The paddings 3, 2, 1, 1, 1
make a window of n * 160 samples give exactly n outputs, output t centred on samples
[160 t, 160 t + 160), the t-th 10 ms frame (``receptive_field``; tested).

The encoder is a list of layers in the reference format ``[in, out, kernel, stride, padding,
dilation]``, written on the command line as ``in-out-kernel-stride-padding-dilation`` joined by
commas; ``width`` sets the channels of the paper's layers when no list is given.
"""
from dataclasses import dataclass

import torch
from torch import nn

from pyro_models.core import AT_LEAST_ONE, NamedModule, setting

PAPER_LAYERS = ((10, 5, 3), (8, 4, 2), (4, 2, 1), (4, 2, 1), (4, 2, 1))  # kernel, stride, padding
SAMPLE_RATE = 16000
FRAME = 160  # samples per 10 ms at 16 kHz


@dataclass
class CPCConfig:
    width: int = setting(512, "channels of the paper's 5 encoder layers (ignored when --encoder-layers is given)")
    encoder_layers: str = setting("", "encoder layers in the reference format in-out-kernel-stride-padding-dilation, "
                                  "comma-separated, e.g. 1-256-10-5-3-1,256-256-8-4-2-1,... (default: the paper's "
                                  "5 layers at --width)")
    norm: str = setting("channel", "normalisation after each convolution: per-frame layer norm over channels "
                        "(no statistics shared across the batch), batch norm, or none",
                        choices=["channel", "batch", "none"])
    context_dim: int = setting(256, "GRU (g_ar) hidden size: the dimension of c_t", valid=AT_LEAST_ONE)
    prediction_steps: int = setting(12, "K: W_k predicts z_{t+k} for k = 1..K", valid=AT_LEAST_ONE)


def paper_layers(width: int) -> list[tuple[int, ...]]:
    layers, channels = [], 1
    for kernel, stride, padding in PAPER_LAYERS:
        layers.append((channels, width, kernel, stride, padding, 1))
        channels = width
    return layers


def parse_layers(text: str) -> list[tuple[int, ...]]:
    """``in-out-kernel-stride-padding-dilation`` entries, comma-separated; a ValueError names the fault."""
    layers = []
    for i, entry in enumerate(part.strip() for part in text.split(",") if part.strip()):
        fields = entry.strip("[]() ").replace(" ", "").split("-")
        if len(fields) != 6 or not all(f.isdigit() for f in fields):
            raise ValueError(f"encoder layer {i + 1} {entry!r}: expected six non-negative integers "
                             "in-out-kernel-stride-padding-dilation")
        layers.append(tuple(int(f) for f in fields))
    check_layers(layers)
    return layers


def check_layers(layers) -> None:
    if not layers:
        raise ValueError("the encoder needs at least one layer")
    if layers[0][0] != 1:
        raise ValueError(f"the first encoder layer must take 1 input channel (raw waveform), not {layers[0][0]}")
    for i, (c_in, c_out, kernel, stride, _padding, dilation) in enumerate(layers):
        if min(c_in, c_out, kernel, stride, dilation) < 1:
            raise ValueError(f"encoder layer {i + 1}: channels, kernel, stride and dilation must be positive")
        if i and c_in != layers[i - 1][1]:
            raise ValueError(f"encoder layer {i + 1} takes {c_in} channels but layer {i} gives {layers[i - 1][1]}")


def receptive_field(layers) -> tuple[int, int, int]:
    """(size, hop, start): output t of the stack depends on input samples
    [start + hop * t, start + hop * t + size) (negative start: reaches into the zero padding)."""
    size, hop, start = 1, 1, 0
    for _, _, kernel, stride, padding, dilation in layers:
        size += (dilation * (kernel - 1)) * hop
        start -= padding * hop
        hop *= stride
    return size, hop, start


class ChannelNorm(nn.Module):
    """Layer norm over the channels of each time step of a (B, C, T) tensor."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


NORMS = {"channel": ChannelNorm, "batch": nn.BatchNorm1d, "none": lambda channels: nn.Identity()}


class ConvEncoder(nn.Module):
    """g_enc: (B, samples) waveform -> (B, T, channels) z, convolution + norm + ReLU per layer."""

    def __init__(self, layers, norm: str = "channel"):
        super().__init__()
        check_layers(layers)
        self.layers = [tuple(layer) for layer in layers]
        blocks = []
        for c_in, c_out, kernel, stride, padding, dilation in self.layers:
            blocks += [nn.Conv1d(c_in, c_out, kernel, stride, padding, dilation, bias=norm == "none"),
                       NORMS[norm](c_out), nn.ReLU()]
        self.net = nn.Sequential(*blocks)
        self.output_dim = self.layers[-1][1]
        self.hop = receptive_field(self.layers)[1]

    def output_length(self, samples: int) -> int:
        for _, _, kernel, stride, padding, dilation in self.layers:
            samples = (samples + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
        return samples

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.net(wave.unsqueeze(1)).transpose(1, 2)


class CPC(NamedModule):
    def __init__(self, config: CPCConfig | None = None, name: str | None = None):
        super().__init__()
        self.config = config = config or CPCConfig()
        self._claim_name(name, "cpc")
        layers = parse_layers(config.encoder_layers) if config.encoder_layers else paper_layers(config.width)
        self.encoder = ConvEncoder(layers, config.norm)
        self.gru = nn.GRU(self.encoder.output_dim, config.context_dim, batch_first=True)
        # W_k for k = 1..K as one matrix: output block k-1 is W_k c_t.
        self.predictors = nn.Linear(config.context_dim, config.prediction_steps * self.encoder.output_dim, bias=False)

    @property
    def feature_dim(self) -> int:
        return self.config.context_dim

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> z (B, T, D)."""
        return self.encoder(wave)

    def context(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, T, D) -> c (B, T, H); c_t sees z_<=t only."""
        return self.gru(z)[0]

    def predict(self, c: torch.Tensor) -> torch.Tensor:
        """c (B, T, H) -> W_k c_t as (B, T, K, D)."""
        B, T, _ = c.shape
        return self.predictors(c).view(B, T, self.config.prediction_steps, self.encoder.output_dim)

    def forward(self, wave: torch.Tensor):
        """(z, c, predictions) for a batch of windows."""
        z = self.encode(wave)
        c = self.context(z)
        return z, c, self.predict(c)

    def model(self, wave: torch.Tensor):
        """For Pyro programs: registers the networks (``pyro.module``) and returns (z, c, predictions)."""
        self.register_with_pyro()
        return self(wave)
