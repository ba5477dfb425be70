"""The inference network of CompILE (Kipf et al. 2019): q(b_1, z_1, ..., b_{n-1}, z_{n-1}, z_n | x).

Tokens are embedded and read by an LSTM. For segment i the LSTM is re-run over the whole sequence
with its state multiplied, after every step, by the soft mask of the positions not yet claimed by
segments 1..i-1 (so it restarts from zero where segment i starts). A head on each position's state
gives the logits of b_i, restricted to the positions that may follow b_{i-1} (position 0, the
positions up to b_{i-1} and those past EOS are masked; see ``pyro_models.compile``); z_i is read
out from the state at the position just before b_i (the last element of segment i), by a head
giving the Gaussian's mean and log-variance or the concrete code's logits. The last boundary is EOS.

``guide`` is the Pyro program (same keyword arguments as ``CompILE.model``); ``greedy`` is the
evaluation mode of the reference code: argmax boundaries, and the Gaussian's mean or the argmax
one-hot code.
"""
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_models.compile.model import (
    MASK_LOGIT,
    CompILEConfig,
    allowed_positions,
    check_lengths,
    eos_boundary,
    next_remainder,
    one_hot_site,
    transition_support,
)
from pyro_models.core import DATA_PLATE, NamedModule, data_plate, latent_scale

MIN_ALLOWED = 1e-6  # a position less likely than this to follow the previous boundary is masked


class CompILEGuide(NamedModule):
    amortised = True  # one network gives every sequence's distribution (what the gap report asks)

    def __init__(self, config: CompILEConfig | None = None, name: str | None = None, plate_name: str = DATA_PLATE):
        super().__init__()
        self.config = config = config or CompILEConfig()
        self._claim_name(name, "compile_guide")
        self.plate_name = plate_name
        hidden, latent = config.hidden_dim, config.latent_dim
        self.embed = nn.Embedding(config.vocab_size, hidden)
        self.cell = nn.LSTMCell(hidden, hidden)
        self.boundary_head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        code_params = 2 * latent if config.latent_dist == "gaussian" else latent
        self.code_head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, code_params))

    def input_gates(self, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The LSTM's input projection of every position, (B, 4H) per position: the input is the same
        for every segment, so it is computed once per sequence."""
        embedded = self.embed(tokens)
        gates = torch.addmm(self.cell.bias_ih + self.cell.bias_hh, embedded.flatten(0, -2), self.cell.weight_ih.t())
        return gates.view(*tokens.shape, -1).unbind(-2)

    def encode(self, input_gates: tuple[torch.Tensor, ...], mask: torch.Tensor) -> torch.Tensor:
        """LSTM states (B, T, H), state (h, c) multiplied by ``mask`` (B, T) after every step.

        The step is ``nn.LSTMCell``'s (same parameters, gate order i, f, g, o), written out so
        that the input projection is shared by the segments; on 2 CPU cores this is about 30%
        faster than calling the cell."""
        weight_hh = self.cell.weight_hh.t()
        keep = mask.unsqueeze(-1).unbind(-2)
        states, h, c = [], None, None
        for t, gates in enumerate(input_gates):
            if h is not None:
                gates = torch.addmm(gates, h, weight_hh)
            i, f, g, o = gates.chunk(4, -1)
            c_new = torch.sigmoid(i) * torch.tanh(g)
            if c is not None:
                c_new = c_new + torch.sigmoid(f) * c
            h = torch.sigmoid(o) * torch.tanh(c_new) * keep[t]
            c = c_new * keep[t]
            states.append(h)
        return torch.stack(states, -2)

    def boundary_logits(self, states: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """The head's logits plus the log-probability that each position is a valid boundary
        after the (relaxed) previous one; positions below ``MIN_ALLOWED`` get ``MASK_LOGIT``."""
        logits = self.boundary_head(states).squeeze(-1) + allowed.clamp(min=MIN_ALLOWED).log()
        return torch.where(allowed > MIN_ALLOWED, logits, torch.full_like(logits, MASK_LOGIT))

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
        support = transition_support(lengths, width)
        previous = nn.functional.one_hot(torch.zeros_like(lengths), width).to(self.cell.weight_hh.dtype)  # b_0 = 0
        gates = self.input_gates(tokens)
        remainder = gates[0].new_ones(tokens.shape)
        boundaries, codes = [], []
        for i in range(1, self.config.num_segments + 1):
            states = self.encode(gates, remainder)
            if i < self.config.num_segments:
                allowed = allowed_positions(previous, support)
                boundary = choose_boundary(i, self.boundary_logits(states, allowed))
            else:
                boundary = eos_boundary(lengths, width, remainder.dtype)
            codes.append(choose_code(i, self.code_params(states, boundary)))
            boundaries.append(boundary)
            remainder = next_remainder(remainder, boundary)
            previous = boundary
        return boundaries, codes

    def guide(self, tokens=None, lengths=None, idx=None, latent_scales=None, relaxed=True, num_data=None):
        """q(b_1 | x) q(z_1 | b_1, x) q(b_2 | b_1, x) ...: the sites of ``CompILE.model`` (same arguments)."""
        self.register_with_pyro()
        check_lengths(lengths)
        cfg = self.config

        def sample_boundary(i, logits):
            with latent_scale(f"b_{i}", latent_scales):
                return pyro.sample(f"b_{i}", one_hot_site(logits, cfg.temp_b, relaxed))

        def sample_code(i, params):
            with latent_scale(f"z_{i}", latent_scales):
                return pyro.sample(f"z_{i}", self.code_posterior(params, relaxed))

        with data_plate(self.plate_name, lengths.shape[0], idx, num_data):
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
