"""The inference network of CompILE (Kipf et al. 2019): q(b_1, z_1, ..., b_{n-1}, z_{n-1}, z_n | x).

Tokens are embedded and read by an LSTM. For segment i the LSTM is re-run over the whole sequence
with its state multiplied, after every step, by the soft mask of the positions not yet claimed by
segments 1..i-1 (so it restarts from zero where segment i starts). A head on each position's state
gives the logits of b_i (position 0 and positions past EOS masked); z_i is read out from the state
at the position just before b_i (the last element of segment i), by a head giving the Gaussian's
mean and log-variance or the concrete code's logits. The last boundary is EOS.

``guide`` is the Pyro program (same keyword arguments as ``CompILE.model``); ``greedy`` is the
evaluation mode of the reference code: argmax boundaries, and the Gaussian's mean or the argmax
one-hot code.
"""
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from guides.scaling import latent_scale

from .compile import (MASK_LOGIT, CompILEConfig, eos_boundary, next_remainder, one_hot_site,
                      position_masks)


class CompILEGuide(nn.Module):
    def __init__(self, config: CompILEConfig = CompILEConfig()):
        super().__init__()
        self.config = config
        hidden, latent = config.hidden_dim, config.latent_dim
        self.embed = nn.Embedding(config.vocab_size, hidden)
        self.cell = nn.LSTMCell(hidden, hidden)
        self.boundary_head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        code_params = 2 * latent if config.latent_dist == "gaussian" else latent
        self.code_head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, code_params))

    def encode(self, embedded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """LSTM states (B, T, H), the state reset by ``mask`` (B, T) after every step."""
        batch, width, hidden = embedded.shape
        h = c = embedded.new_zeros(batch, hidden)
        states = []
        for t in range(width):
            h, c = self.cell(embedded[:, t], (h, c))
            keep = mask[:, t, None]
            h, c = h * keep, c * keep
            states.append(h)
        return torch.stack(states, 1)

    def boundary_logits(self, states: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        logits = self.boundary_head(states).squeeze(-1)
        return torch.where(valid, logits, torch.full_like(logits, MASK_LOGIT))

    def code_params(self, states: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
        """Head on the state at the position before the boundary (soft: weighted by the relaxed b)."""
        readout = (states[:, :-1] * boundary[:, 1:, None]).sum(1)
        return self.code_head(readout)

    def code_posterior(self, params: torch.Tensor, relaxed: bool):
        if self.config.latent_dist == "gaussian":
            loc, log_var = params.chunk(2, dim=-1)
            return dist.Normal(loc, (0.5 * log_var).exp()).to_event(1)
        return one_hot_site(params, self.config.temp_z, relaxed)

    def _segments(self, tokens, lengths, choose_boundary, choose_code):
        """Runs the encoder segment by segment; ``choose_*`` turn logits/params into values."""
        width = tokens.shape[-1]
        valid, _ = position_masks(lengths, width)
        embedded = self.embed(tokens)
        remainder = embedded.new_ones(tokens.shape)
        boundaries, codes = [], []
        for i in range(1, self.config.num_segments + 1):
            states = self.encode(embedded, remainder)
            if i < self.config.num_segments:
                boundary = choose_boundary(i, self.boundary_logits(states, valid))
            else:
                boundary = eos_boundary(lengths, width, embedded.dtype)
            codes.append(choose_code(i, self.code_params(states, boundary)))
            boundaries.append(boundary)
            remainder = next_remainder(remainder, boundary)
        return boundaries, codes

    def guide(self, tokens=None, lengths=None, idx=None, latent_scales=None, relaxed=True):
        pyro.module("compile_guide", self)
        cfg = self.config

        def sample_boundary(i, logits):
            with latent_scale(f"b_{i}", latent_scales):
                return pyro.sample(f"b_{i}", one_hot_site(logits, cfg.temp_b, relaxed))

        def sample_code(i, params):
            with latent_scale(f"z_{i}", latent_scales):
                return pyro.sample(f"z_{i}", self.code_posterior(params, relaxed))

        with pyro.plate("data", lengths.shape[0], dim=-1):
            self._segments(tokens, lengths, sample_boundary, sample_code)

    def greedy(self, tokens: torch.Tensor, lengths: torch.Tensor):
        """Evaluation mode: (boundary positions (B, n), codes (B, n, D)); the last boundary is EOS."""
        latent = self.config.latent_dim

        def argmax_boundary(i, logits):
            return nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)

        def mode_code(i, params):
            if self.config.latent_dist == "gaussian":
                return params[..., :latent]
            return nn.functional.one_hot(params.argmax(-1), latent).to(params.dtype)

        boundaries, codes = self._segments(tokens, lengths, argmax_boundary, mode_code)
        positions = torch.stack([b.argmax(-1) for b in boundaries], -1)
        return positions, torch.stack(codes, -2)
