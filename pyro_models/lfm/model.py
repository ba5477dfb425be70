"""The latent factor language model of the VI tutorial notebook ("LatentFactorModel"):
a word x (a character sequence ending in EOS) generated from a K-bit latent vector z,

    Z_k ~ Bernoulli(0.5) independently,  X_i | z, x_<i ~ Cat(f(z, x_<i)),

f an LSTM over character embeddings whose initial state (h_0, c_0) = tanh(W z + b).
Defaults (``LFMConfig``): embedding 256, LSTM 256, K = 16 bits, as in the notebook.

Keyword arguments of ``model`` are a batch: ``tokens`` (B, T) character ids + EOS, PAD-padded,
``lengths`` (B,) scored symbols per word (characters + EOS), ``idx`` (ids, read by local guides
only), ``latent_scales`` (per-site annealing weights) and ``word_dropout`` (probability of
replacing a decoder input character by UNK; a training-time corruption, 0 when evaluating).
The characters are scored as one event: a masked sum over positions, not a plate.
"""
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from pyro_models.core import (
    AT_LEAST_ONE,
    DATA_PLATE,
    FRACTION,
    PROBABILITY,
    LatentSite,
    NamedModule,
    batch_size_of,
    data_plate,
    derived,
    latent_scale,
    refuse_enumeration,
    setting,
)

PAD, UNK, BOS, EOS = 0, 1, 2, 3  # the vocabulary convention of pyro_models/lfm/data.py


@dataclass
class LFMConfig:
    vocab_size: int = derived(40)
    embedding_dim: int = setting(256, "character embedding size (decoder and encoder)", valid=AT_LEAST_ONE)
    hidden_dim: int = setting(256, "decoder LSTM size; also each direction of the encoder's BiLSTM",
                              valid=AT_LEAST_ONE)
    latent_bits: int = setting(16, "K, the number of Bernoulli latent bits", valid=AT_LEAST_ONE)
    prior_prob: float = setting(0.5, "p(Z_k = 1) of the prior (a probability, not a logit)",
                                valid=PROBABILITY)
    dropout: float = setting(0.3, "dropout on embeddings and LSTM outputs (training only)", valid=FRACTION)


def sequence_mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
    return torch.arange(length, device=lengths.device) < lengths.unsqueeze(-1)


class BiLSTMEncoder(nn.Module):
    """x -> [forward final state, backward final state] (2 * hidden); PAD never enters the LSTM."""

    def __init__(self, config: LFMConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=PAD)
        self.lstm = nn.LSTM(config.embedding_dim, config.hidden_dim, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(config.dropout)
        self.output_dim = 2 * config.hidden_dim

    def forward(self, tokens, lengths, **unused):
        x = self.dropout(self.embedding(tokens[:, :int(lengths.max())]))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)  # h: (2, B, H), states at each direction's last real symbol
        return self.dropout(torch.cat([h[0], h[1]], dim=-1))


class WordDistribution(dist.TorchDistribution):
    """Words x | z drawn from the decoder one symbol at a time (ancestral sampling), each up to
    its first EOS and PAD after it: batch shape z.shape[:-1], event shape (max_length,).
    ``log_prob`` scores any such padded word by teacher forcing, as the observed site does."""

    arg_constraints = {}
    support = constraints.independent(constraints.nonnegative_integer, 1)

    def __init__(self, decoder: "LatentFactorModel", z: torch.Tensor, max_length: int, validate_args=None):
        self.decoder, self.z, self.max_length = decoder, z, max_length
        super().__init__(z.shape[:-1], torch.Size([max_length]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return WordDistribution(self.decoder, self.z.expand(batch_shape + self.z.shape[-1:]), self.max_length)

    def sample(self, sample_shape=torch.Size()):
        z = self.z.expand(torch.Size(sample_shape) + self.z.shape)
        flat = z.reshape(-1, z.shape[-1])
        with torch.no_grad():
            words = self.decoder.sample_words(flat, self.max_length)
        return words.reshape(z.shape[:-1] + (self.max_length,))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        is_eos = value == EOS
        lengths = torch.where(is_eos.any(-1), is_eos.int().argmax(-1) + 1, self.max_length)
        z = self.z.expand(value.shape[:-1] + self.z.shape[-1:]).reshape(-1, self.z.shape[-1])
        words = value.reshape(-1, self.max_length)
        return self.decoder.log_likelihood(z, words, lengths.reshape(-1)).reshape(value.shape[:-1])


class LatentFactorModel(NamedModule):
    max_plate_nesting = 1

    def __init__(self, config: LFMConfig | None = None, name: str | None = None, plate_name: str = DATA_PLATE):
        super().__init__()
        if config is None:  # a fresh default per model, not one instance shared by all
            config = LFMConfig()
        self.config = config
        self._claim_name(name, "lfm")
        self.plate_name = plate_name
        h = config.hidden_dim
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=PAD)
        self.init_state = nn.Linear(config.latent_bits, 2 * h)
        self.lstm = nn.LSTM(config.embedding_dim, h, batch_first=True)
        self.output = nn.Linear(h, config.vocab_size)
        self.dropout = nn.Dropout(config.dropout)

    @property
    def latent_sites(self) -> tuple[LatentSite, ...]:
        return (LatentSite("z", self.config.latent_bits, support="binary"),)

    def make_encoder(self) -> tuple[nn.Module, int]:
        """The inference network body of the notebook: a bidirectional LSTM over the word."""
        encoder = BiLSTMEncoder(self.config)
        return encoder, encoder.output_dim

    def initial_state(self, z: torch.Tensor):
        h0, c0 = torch.tanh(self.init_state(z)).chunk(2, dim=-1)
        return h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous()

    def decoder_inputs(self, tokens, word_dropout: float = 0.0):
        """BOS followed by the characters (the EOS input never matters: nothing follows it)."""
        inputs = torch.cat([torch.full_like(tokens[:, :1], BOS), tokens[:, :-1]], dim=1)
        if word_dropout > 0:
            drop = torch.rand(inputs.shape, device=inputs.device) < word_dropout
            drop[:, 0] = False
            inputs = torch.where(drop & (inputs != PAD), torch.full_like(inputs, UNK), inputs)
        return inputs

    def logits(self, z, tokens, lengths, word_dropout: float = 0.0):
        """Next-symbol logits, shape z.shape[:-1] + (T, V) with T = lengths.max()."""
        batch, length = tokens.shape[0], int(lengths.max())
        tokens = tokens[:, :length]
        batch_shape = z.shape[:-1]
        z = z.reshape(-1, batch, z.shape[-1])  # (particles, B, K)
        n = z.shape[0]
        x = self.dropout(self.embedding(self.decoder_inputs(tokens, word_dropout)))  # embedded once per word
        x = x.expand(n, *x.shape).reshape(n * batch, length, -1)
        packed = pack_padded_sequence(x, lengths.repeat(n).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed, self.initial_state(z.reshape(n * batch, -1).to(x.dtype)))
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=length)
        return self.output(self.dropout(out)).reshape(batch_shape + (length, -1))

    def prior(self, batch: int, like: torch.Tensor):
        probs = like.new_full((batch, self.config.latent_bits), self.config.prior_prob, dtype=torch.get_default_dtype())
        return dist.Bernoulli(probs=probs).to_event(1)

    def model(self, tokens: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
              idx: torch.Tensor | None = None, latent_scales=None, word_dropout: float = 0.0,
              batch_size: int | None = None, num_data: int | None = None, max_length: int = 32) -> torch.Tensor:
        """z ~ prod_k Bernoulli(prior_prob) and the word x | z symbol by symbol from the LSTM,
        inside the plate ``plate_name``; sites ``z`` (batch, K) and ``x``.

        ``tokens`` (batch, T) symbol ids ending in EOS, PAD-padded, with ``lengths`` (batch,)
        scored symbols: observed. ``tokens=None`` generates words from the prior, sampled one
        symbol at a time up to EOS or ``max_length`` symbols (give ``batch_size``); ``x`` is then
        (batch, max_length), PAD after each word's EOS. ``idx``/``num_data``: subsampling
        (``pyro_models.core.data_plate``); ``latent_scales``: {"z": weight}; ``word_dropout``:
        the probability of replacing a decoder input symbol by UNK (training only). Returns the
        next-symbol logits (observed) or the generated words."""
        self.register_with_pyro()
        refuse_enumeration("the LFM's K bits are one site (Bernoulli(...).to_event(1)), which Pyro cannot enumerate "
                           "(config_enumerate skips it, and TraceEnum_ELBO would be a Monte Carlo ELBO); its exact "
                           "log p(x) sums the 2^K codes itself (pyro_models.lfm.gap.lfm_gap_estimates)")
        if tokens is None:
            batch = batch_size_of(None, idx, batch_size)
            with data_plate(self.plate_name, batch, idx, num_data):
                with latent_scale("z", latent_scales):
                    z = pyro.sample("z", self.prior(batch, self.output.weight))
                return pyro.sample("x", WordDistribution(self, z, max_length))
        batch = tokens.shape[0]
        tokens = tokens[:, :int(lengths.max())]
        with data_plate(self.plate_name, batch, idx, num_data):
            with latent_scale("z", latent_scales):
                z = pyro.sample("z", self.prior(batch, tokens))
            logits = self.logits(z, tokens, lengths, word_dropout)
            mask = sequence_mask(lengths, tokens.shape[1])
            pyro.sample("x", dist.Categorical(logits=logits).mask(mask).to_event(1), obs=tokens)
        return logits

    def log_likelihood(self, z, tokens, lengths) -> torch.Tensor:
        """log p(x | z), shape z.shape[:-1]: the observation site's density, for tests and tools."""
        logits = self.logits(z, tokens, lengths)
        mask = sequence_mask(lengths, logits.shape[-2])
        lp = torch.log_softmax(logits, -1).gather(-1, tokens[:, :logits.shape[-2]].expand(logits.shape[:-1]).unsqueeze(-1))
        return (lp.squeeze(-1) * mask).sum(-1)

    @torch.no_grad()
    def greedy(self, z: torch.Tensor, max_length: int = 31) -> torch.Tensor:
        """Greedy decoding from z (B, K) (real values allowed, e.g. posterior means): (B, <= max_length)
        symbol ids, each row ending at its first EOS (PAD after it)."""
        return self._decode(z, max_length, lambda logits: logits.argmax(-1), stop_early=True)

    @torch.no_grad()
    def sample_words(self, z: torch.Tensor, max_length: int) -> torch.Tensor:
        """Words sampled from p(x | z), z (B, K): (B, max_length) symbol ids, PAD after each EOS."""
        return self._decode(z, max_length, lambda logits: dist.Categorical(logits=logits).sample(), stop_early=False)

    def _decode(self, z: torch.Tensor, max_length: int, choose, stop_early: bool) -> torch.Tensor:
        state = self.initial_state(z.to(self.output.weight.dtype))
        symbol = torch.full((z.shape[0], 1), BOS, dtype=torch.long, device=z.device)
        done = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
        out = []
        for _ in range(max_length):
            h, state = self.lstm(self.embedding(symbol), state)
            symbol = choose(self.output(h))
            symbol = torch.where(done.unsqueeze(-1), torch.full_like(symbol, PAD), symbol)
            out.append(symbol)
            done |= symbol.squeeze(-1) == EOS
            if stop_early and done.all():
                break
        return torch.cat(out, dim=1)


def bernoulli_kl(logits: torch.Tensor, prior_prob: float = 0.5) -> torch.Tensor:
    """KL(prod_k Bernoulli(sigmoid(logits_k)) || prod_k Bernoulli(prior_prob)), summed over bits."""
    q1, q0 = torch.nn.functional.logsigmoid(logits), torch.nn.functional.logsigmoid(-logits)
    p1, p0 = torch.log(torch.tensor(prior_prob)), torch.log1p(torch.tensor(-prior_prob))
    return (q1.exp() * (q1 - p1) + q0.exp() * (q0 - p0)).sum(-1)
