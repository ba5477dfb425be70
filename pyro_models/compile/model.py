"""CompILE as a Pyro program: learned segmentation of a sequence, one latent code per segment.

Kipf, Li, Dai, Zambaldi, Sanchez-Gonzalez, Grefenstette, Kohli & Battaglia (ICML 2019),
"CompILE: Compositional Imitation Learning and Execution", in the toy setting of the authors'
code: a sequence is ``[s1]*l1 + [s2]*l2 + ... + [EOS]`` padded with 0 (= EOS) to a fixed width T.
``CompILEConfig`` holds that code's defaults.

The generative model, for one sequence of ``L = lengths`` tokens (content ``0..L-2``, EOS at L-1):

    b_0 = 0
    for i = 1..n-1:  b_i ~ Cat over positions, p(b_i = t | b_{i-1} = p) proportional to
                     Poisson(t - p; rate) on the valid positions p < t <= L-1
                     (once a boundary sits on EOS, p = L-1, every later one does: empty segments)
    b_n = L - 1      (the last boundary sits on EOS: fixed, not a latent)
    for i = 1..n:    z_i ~ N(0, I)  (latent_dist="gaussian")  or  uniform one-hot Cat(D)  ("concrete")
    x_t ~ Cat(softmax(decoder(z_i)))  for every content position t of segment i: b_{i-1} <= t < b_i

Position 0 is never a boundary and segments are non-empty until one reaches EOS; positions that
cannot be b_i get the logit ``MASK_LOGIT`` (a probability below 1e-13; exact masking would give
the relaxed densities infinite log-densities), in the prior and in the guide alike. Padding is out
of the likelihood (weight exactly 0) and EOS is not scored (it is implied by ``lengths``).

Training relaxes b_i and concrete z_i with Gumbel-softmax (``RelaxedOneHotCategorical`` at
temperatures ``temp_b``/``temp_z``), so the reconstruction term is reparameterised: a relaxed
b_i is a soft one-hot vector, and position t belongs to segment i with the soft weight
``w_i[t] = P(b_i > t) * prod_{j<i} P(b_j <= t)`` (cumulative sums of the relaxed vectors); the
observation site ``tokens`` scores ``sum_i sum_t w_i[t] log p(x_t | z_i)``, which is the exact
categorical log-likelihood when the b_i are one-hot. With ``relaxed=False`` (evaluation) the same
program uses ``OneHotCategorical`` sites: the discrete model.

**The KL terms of relaxed sites** (the choice, and why). Under ``Trace_ELBO`` a relaxed site
contributes a one-sample estimate of ``log q(b~) - log p(b~)`` between the *relaxed* densities:
a valid ELBO of the relaxed model (Maddison et al. 2017), but a noisy one, and the concrete
density near the simplex's corners is very peaked. The reference code instead charges the
analytic KL between the *categorical* distributions being relaxed, KL(Cat(q) || Cat(p)) (as
Jang et al. 2017 do), and the analytic Gaussian KL for Gaussian z. We follow the reference:
the relaxed sites are ``RelaxedCategoricalWithDiscreteKL``, for which ``kl_divergence`` returns
that categorical KL, and training uses ``TraceMeanField_ELBO`` (Pyro's analytic-KL ELBO; the
guide is not mean-field, so the KL of b_2 is that of the conditionals given the sampled b_1, a
one-sample estimate of the chain-rule KL). The training loss is then a surrogate: a relaxed
reconstruction term plus the discrete model's KL; it is not a bound on either model. The
discrete model's honest negative ELBO is what the experiment reports (``test_nll``). Passing
the program to ``Trace_ELBO`` instead trains on the relaxed model's own ELBO; nothing else
changes. Differences from the reference code: the boundary prior is a Poisson over the segment
length ``t - b_{i-1}`` normalised over each sequence's valid positions, and training charges
b_1's KL once by default (the reference charges n times the KL of b_1 against a Poisson over the
position + 1, normalised over the padded width; see below); the guide's b_i is restricted to positions
after b_{i-1} (the reference lets b_i fall inside earlier segments, making them empty); the
uniform-prior KL keeps its log D constant; padded positions are masked.

**Which boundary KLs are charged in training** (``boundary_kl``). The chain rule charges every
b_i; the reference charges only b_1's KL (n times) and none for b_2..b_{n-1}. Charging every b_i
(``"all"``), concrete codes find the segmentation (held-out rec_acc_eval >= 0.99 after ~30
updates) and then lose part of it on 5 of 10 seeds, ending at 0.87-0.98 (Gaussian codes keep it
on 10 of 10). The losses follow isolated gradient spikes after convergence (global norm 20-80
where a step's is ~0.3, nearly all in the encoder LSTM, from single sequences whose relaxed b_1 is
split between two positions: the later codes and b_2 depend on b_1 through the masked encoder with
large Jacobians); Adam at lr 1e-2 then moves the guide off the optimum, and a boundary that comes
to skip a short segment is saturated (its gradients vanish), so the run does not come back. The
KL of b_2 is taken given a *relaxed* b_1 (the prior and the guide's support of b_2 are mixtures
over it); stopping the gradient through that mixture does not cure it, dropping the term does
(seeds 0-9: 10 of 10 kept, found no later; seeds 10-19: 8 of 10, so late
spikes are rarer, not gone). So the default (``"first"``)
charges b_1's KL with weight beta_b and leaves b_2..b_{n-1} out of the training loss, as the
reference does; ``"reference"`` also matches the reference's weight on it (n * beta_b: the
authors' loop over segments adds b_1's KL at every iteration), not its prior over b_1; they are still sampled with the same prior, and ``test_nll`` (the discrete
model's ELBO) charges every KL with weight 1. Figures: docs/results/compile.md.

With relaxed b's the prior of b_i is the mixture over the relaxed b_{i-1}'s weights of the hard
conditionals above, and the guide adds log P(b_{i-1} < t) to its logits (positions with
probability < 1e-6 masked): both are exact when the previous boundary is one-hot.
"""
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn
from torch.distributions import register_kl

from pyro_models.core import (
    AT_LEAST_ONE,
    DATA_PLATE,
    NON_NEGATIVE,
    POSITIVE,
    LatentSite,
    NamedModule,
    data_plate,
    latent_scale,
    refuse_enumeration,
    setting,
)

MASK_LOGIT = -30.0  # logit of positions that cannot be a boundary: probability < 1e-13
LATENT_DISTS = ("gaussian", "concrete")
BOUNDARY_KLS = ("first", "all", "reference")


@dataclass
class CompILEConfig:
    """Defaults of the authors' toy code (Kipf et al. 2019)."""

    num_symbols: int = setting(5, "distinct symbols (token 0 is EOS and padding)", valid=AT_LEAST_ONE)
    num_segments: int = setting(3, "segments per sequence (data and model)", valid=AT_LEAST_ONE)
    max_segment_length: int = setting(4, "segment lengths are uniform on 1..this", valid=AT_LEAST_ONE)
    hidden_dim: int = setting(64, "embedding, LSTM and MLP width", valid=AT_LEAST_ONE)
    latent_dim: int = setting(32, "size of each segment code z_i", valid=AT_LEAST_ONE)
    latent_dist: str = setting("gaussian", "segment codes: Gaussian with N(0, I) prior, or concrete with uniform prior",
                               choices=list(LATENT_DISTS))
    temp_b: float = setting(1.0, "Gumbel-softmax temperature of the boundaries b", valid=POSITIVE)
    temp_z: float = setting(1.0, "Gumbel-softmax temperature of concrete codes z", valid=POSITIVE)
    beta_b: float = setting(0.1, "KL weight of the boundaries (training)", valid=NON_NEGATIVE)
    boundary_kl: str = setting("first", "boundary KLs charged in training: first = b_1's once, at beta_b (no later "
                               "boundary, as the authors' code); reference = b_1's num_segments times (the authors' "
                               "effective weight: 0.3 at beta_b 0.1 and 3 segments); all = every b_i's (the chain rule; "
                               "with concrete codes, 5 of 10 seeds then lost a found segmentation)",
                               choices=list(BOUNDARY_KLS))
    beta_z: float = setting(0.1, "KL weight of the codes (training)", valid=NON_NEGATIVE)
    prior_rate: float = setting(3.0, "Poisson rate of the segment-length prior", valid=POSITIVE)

    @property
    def vocab_size(self) -> int:
        return self.num_symbols + 1

    @property
    def max_length(self) -> int:
        """Padded width T: the longest content plus EOS."""
        return self.num_segments * self.max_segment_length + 1

    def boundary_sites(self) -> list[str]:
        return [f"b_{i}" for i in range(1, self.num_segments)]

    def code_sites(self) -> list[str]:
        return [f"z_{i}" for i in range(1, self.num_segments + 1)]

    def kl_weights(self) -> dict[str, float]:
        """``latent_scales`` that turn the ELBO into the training loss rec + beta_b KL_b + beta_z KL_z.

        KL_b is b_1's alone with ``boundary_kl="first"`` (b_2..b_{n-1} weight 0: out of the training
        loss, still sampled), b_1's at ``num_segments * beta_b`` with ``"reference"`` (the authors'
        code adds b_1's KL once per segment) and every boundary's with ``"all"``; see the module
        docstring."""
        first = self.boundary_sites()[:1]
        first_weight = self.beta_b * (self.num_segments if self.boundary_kl == "reference" else 1)
        boundaries = {s: first_weight if s in first else self.beta_b if self.boundary_kl == "all" else 0.0
                      for s in self.boundary_sites()}
        return {**boundaries, **{s: self.beta_z for s in self.code_sites()}}


class RelaxedCategoricalWithDiscreteKL(dist.RelaxedOneHotCategorical):
    """A Gumbel-softmax site whose ``kl_divergence`` is the categorical KL it relaxes (see above).

    Samples and ``log_prob`` are those of ``RelaxedOneHotCategorical``; only analytic-KL
    estimators (``TraceMeanField_ELBO``) see the difference.
    """

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return RelaxedCategoricalWithDiscreteKL(self.temperature, logits=self.logits.expand(batch_shape + self.event_shape))


@register_kl(RelaxedCategoricalWithDiscreteKL, RelaxedCategoricalWithDiscreteKL)
def _kl_discrete(q, p):
    q_log = q.logits.log_softmax(-1)
    return (q_log.exp() * (q_log - p.logits.log_softmax(-1))).sum(-1)


def one_hot_site(logits: torch.Tensor, temperature: float, relaxed: bool):
    """The distribution of a b or concrete z site: relaxed for training, discrete for evaluation."""
    if relaxed:
        return RelaxedCategoricalWithDiscreteKL(torch.tensor(temperature, dtype=logits.dtype), logits=logits)
    return dist.OneHotCategorical(logits=logits)


class SegmentedCategorical(dist.TorchDistribution):
    """Tokens x_0..x_{T-1} scored by per-segment categoricals with (soft) segment weights.

    ``logits``: (..., n, V), one categorical per segment; ``weights``: (..., n, T), the weight of
    position t in segment i (one-hot over i at content positions when boundaries are hard; zero at
    EOS and padding). ``log_prob(x) = sum_{i,t} weights[i, t] * log softmax(logits[i])[x_t]``.
    Sampling draws each position from its heaviest segment and writes 0 where no segment has weight.
    """

    arg_constraints = {}
    support = constraints.independent(constraints.nonnegative_integer, 1)

    def __init__(self, logits: torch.Tensor, weights: torch.Tensor, validate_args=None):
        self.logits, self.weights = logits, weights
        batch_shape = torch.broadcast_shapes(logits.shape[:-2], weights.shape[:-2])
        super().__init__(batch_shape, weights.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return SegmentedCategorical(self.logits.expand(batch_shape + self.logits.shape[-2:]),
                                    self.weights.expand(batch_shape + self.weights.shape[-2:]))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        log_p = self.logits.log_softmax(-1)  # (..., n, V)
        observed = nn.functional.one_hot(value, log_p.shape[-1]).to(log_p.dtype)  # (..., T, V)
        per_position = log_p @ observed.transpose(-1, -2)  # (..., n, T): log p_i(x_t)
        return (self.weights * per_position).sum((-2, -1))

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            segment = nn.functional.one_hot(self.weights.argmax(-2), self.weights.shape[-2]).to(self.logits.dtype)
            position_logits = segment @ self.logits  # (..., T, V)
            draws = dist.Categorical(logits=position_logits).sample(sample_shape)
            scored = self.weights.sum(-2) > 0.5
            return torch.where(scored, draws, torch.zeros_like(draws))


def check_lengths(lengths) -> None:
    """CompILE is conditioned on each sequence's length (content plus EOS): the model and its guide
    need ``lengths``, also to sample from the prior (where ``tokens`` is None)."""
    if not torch.is_tensor(lengths):
        raise ValueError("CompILE's model and guide are conditioned on each sequence's length: give lengths= (a "
                         "tensor of the sequences' lengths, EOS included), also to sample (tokens=None)")


def position_masks(lengths: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(boundary, content) masks of shape (B, T): boundaries may sit on 1..L-1, content is 0..L-2."""
    t = torch.arange(width, device=lengths.device)
    last = (lengths - 1).unsqueeze(-1)
    return (t >= 1) & (t <= last), t < last


def eos_boundary(lengths: torch.Tensor, width: int, dtype=torch.float32) -> torch.Tensor:
    return nn.functional.one_hot(lengths - 1, width).to(dtype)


def segment_weight(remainder: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
    """Soft membership of each position in the segment ending at ``boundary`` (exclusive)."""
    return remainder * (1 - boundary.cumsum(-1)).clamp(min=0)


def next_remainder(remainder: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
    """Soft membership of each position in the segments after the one ending at ``boundary``."""
    return remainder * boundary.cumsum(-1).clamp(max=1)


def transition_support(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, T, T) bool: may b_i sit at t (columns) when b_{i-1} sits at p (rows)? Segments are
    non-empty (p < t <= L-1) until one ends on EOS; after that every boundary is EOS (t = L-1)."""
    t = torch.arange(width, device=lengths.device)
    last = (lengths - 1)[:, None, None]
    p, t = t[None, :, None], t[None, None, :]
    return ((t > p) & (t <= last)) | ((p >= last) & (t == last))


def allowed_positions(previous: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """(B, T): the probability that t is a valid next boundary, for a (relaxed) previous one (B, T)."""
    return (previous.unsqueeze(-2) @ support.to(previous.dtype)).squeeze(-2)


def masked_log(probs: torch.Tensor) -> torch.Tensor:
    """log, with exact zeros (invalid positions) mapped to ``MASK_LOGIT`` and no value below it."""
    return torch.where(probs > 0, probs.clamp(min=1e-13).log(), torch.full_like(probs, MASK_LOGIT))


def poisson_length_table(width: int, rate: float) -> torch.Tensor:
    """(T, T): log Poisson(t - p; rate) for previous boundary p (rows), boundary t (columns)."""
    t = torch.arange(width, dtype=torch.float32)
    k = (t[None, :] - t[:, None]).clamp(min=0)
    return k * torch.log(torch.tensor(rate)) - rate - torch.lgamma(k + 1)


def boundary_prior_logits(previous: torch.Tensor, support: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Logits of p(b_i | b_{i-1}): the Poisson length prior normalised over each sequence's valid
    positions, mixed over the (possibly relaxed) previous boundary ``previous`` (B, T)."""
    conditional = table.masked_fill(~support, float("-inf")).softmax(-1)  # (B, p, t); no row is empty
    return masked_log((previous.unsqueeze(-2) @ conditional).squeeze(-2))


class CompILE(NamedModule):
    """The generative model: priors over boundaries and codes, and the segment decoder
    (an MLP from z_i to the logits of one categorical over symbols, shared by the whole segment)."""

    max_plate_nesting = 1

    def __init__(self, config: CompILEConfig | None = None, name: str | None = None, plate_name: str = DATA_PLATE):
        super().__init__()
        config = config or CompILEConfig()
        self._claim_name(name, "compile")
        self.plate_name = plate_name
        if config.latent_dist not in LATENT_DISTS:
            raise ValueError(f"latent_dist must be one of {LATENT_DISTS}, got {config.latent_dist!r}")
        if config.boundary_kl not in BOUNDARY_KLS:
            raise ValueError(f"boundary_kl must be one of {BOUNDARY_KLS}, got {config.boundary_kl!r}")
        self.config = config
        self.decoder = nn.Sequential(nn.Linear(config.latent_dim, config.hidden_dim), nn.ReLU(),
                                     nn.Linear(config.hidden_dim, config.vocab_size))
        self.register_buffer("length_table", poisson_length_table(config.max_length, config.prior_rate), persistent=False)

    @property
    def latent_sites(self) -> tuple[LatentSite, ...]:
        """The boundaries b_1..b_{n-1} (one-hot over the padded width T = ``config.max_length``) and
        the codes z_1..z_n (real, or one-hot with concrete codes). No guide family of ``guides``
        serves one-hot sites: their positions depend on each other and on the codes, so CompILE
        brings its own structured guide (``CompILEGuide``)."""
        cfg = self.config
        code_support = "real" if cfg.latent_dist == "gaussian" else "one_hot"
        return (*(LatentSite(name, cfg.max_length, "one_hot") for name in cfg.boundary_sites()),
                *(LatentSite(name, cfg.latent_dim, code_support) for name in cfg.code_sites()))

    def code_prior(self, batch: int, relaxed: bool, like: torch.Tensor):
        shape = (batch, self.config.latent_dim)
        if self.config.latent_dist == "gaussian":
            return dist.Normal(like.new_zeros(shape), 1.0).to_event(1)
        return one_hot_site(like.new_zeros(shape), self.config.temp_z, relaxed)

    def table(self, width: int) -> torch.Tensor:
        if width == self.length_table.shape[0]:
            return self.length_table
        return poisson_length_table(width, self.config.prior_rate).to(self.length_table.device)

    def model(self, tokens=None, lengths=None, idx=None, latent_scales=None, relaxed=True, num_data=None):
        """Boundaries b_1..b_{n-1} and codes z_1..z_n, then the symbols of each segment (see the
        module docstring), inside the plate ``plate_name``; sites ``b_i`` (B, T) one-hot,
        ``z_i`` (B, latent_dim) and ``tokens`` (B, T).

        ``tokens`` (B, T) int64, observed, or None (then sampled); ``lengths`` (B,) including EOS
        (always given: the model is conditioned on each sequence's length). ``relaxed``:
        Gumbel-softmax sites (training) or the discrete model (evaluation). ``idx``/``num_data``:
        subsampling (``pyro_models.core.data_plate``); ``latent_scales``: {site: KL weight}."""
        self.register_with_pyro()
        refuse_enumeration("CompILE's boundary b_i depends on the boundaries before it and each code on the segment "
                           "they cut, which Pyro's enumeration cannot broadcast; its exact estimator sums the "
                           "boundaries itself (pyro_models.compile.gap.compile_gap_estimates)")
        check_lengths(lengths)
        cfg = self.config
        width = tokens.shape[-1] if tokens is not None else cfg.max_length
        batch = lengths.shape[0]
        _, content = position_masks(lengths, width)
        support = transition_support(lengths, width)
        like = self.length_table
        previous = nn.functional.one_hot(torch.zeros_like(lengths), width).to(like.dtype)  # b_0 = 0
        remainder = content.to(like.dtype)
        table = self.table(width)
        codes, weights = [], []
        with data_plate(self.plate_name, batch, idx, num_data):
            for i in range(1, cfg.num_segments + 1):
                if i < cfg.num_segments:
                    logits = boundary_prior_logits(previous, support, table)
                    with latent_scale(f"b_{i}", latent_scales):
                        boundary = pyro.sample(f"b_{i}", one_hot_site(logits, cfg.temp_b, relaxed))
                else:
                    boundary = eos_boundary(lengths, width, like.dtype)
                with latent_scale(f"z_{i}", latent_scales):
                    codes.append(pyro.sample(f"z_{i}", self.code_prior(batch, relaxed, like)))
                weights.append(segment_weight(remainder, boundary))
                remainder = next_remainder(remainder, boundary)
                previous = boundary
            logits = self.decoder(torch.stack(codes, -2))  # (B, n, V)
            return pyro.sample("tokens", SegmentedCategorical(logits, torch.stack(weights, -2)), obs=tokens)

    def symbol_logits(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(codes)
