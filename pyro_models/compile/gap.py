"""CompILE's inference gaps, for the *discrete* model (``relaxed=False``), exact in the boundaries.

Training relaxes the boundaries (Gumbel-softmax), whose density is not the model's; the gaps are
those of the discrete model the relaxation stands for: one-hot b_1..b_{n-1} and, per segment, a
code z_i ~ N(0, I) (``gaussian``) or uniform one-hot over D (``concrete``); the amortised guide is
``CompILEGuide`` at ``relaxed=False``. Write c = (b_1..b_{n-1}) for a boundary configuration.

- The valid configurations of a sequence (``transition_support``: b_i > b_{i-1} up to EOS, or every
  later boundary on EOS) are few (n = 3: (L-1)(L-2)/2 + 1 <= 67 at the toy width 13), so every sum
  over c below is exact. Configurations with a boundary at a masked position (``MASK_LOGIT``:
  prior probability < 1e-13 each) are left out of every sum.
- Given c the likelihood factorises over the segments [b_{i-1}, b_i) (b_0 = 0, b_n = EOS) and the
  z_i are independent, so p(x | c) = prod_i p(x_seg_i), p(x_seg) = E_p(z) prod_{t in seg} p(x_t | z)
  (only the segment's symbol counts matter; an empty segment contributes 1). Hence

      log p(x) = logsumexp_c [log p(c) + sum_i log p(x_seg_i(c))].

- The guide is a chain q(b_1|x) q(z_1|b_1,x) q(b_2|b_1,x) ...; its code for segment i depends on
  that segment's (start, end) only (checked at run time), so with the per-segment bound
  ELBO_i = E_q(z_i) log p(x_seg_i | z_i) - KL(q(z_i) || p(z_i)) (for an empty segment, -KL):

      L[q] = sum_c q(c|x) [log p(c) - log q(c|x) + sum_i ELBO_i(c)].

- q*: the same structure with free parameters per sequence: a free distribution over c (the chain
  of conditionals can hold any) and a free code distribution per segment. Its optimum, given each
  segment's best bound ELBO*_i, is L[q*] = logsumexp_c [log p(c) + sum_i ELBO*_i(c)]. With concrete
  codes the free categorical holds the exact segment posterior, ELBO*_i = log p(x_seg_i), so
  L[q*] = log p(x): the approximation gap is exactly 0.

Concrete codes: every term is an exact sum. Gaussian codes: log p(x_seg) by importance sampling
from 0.5 q*_seg + 0.5 p(z) (the prior component bounds every weight by 2, so its variance is
finite; on a trained run the segment posteriors are the prior cut down to the region where the
decoder emits the segment's symbol, which a Gaussian fits only roughly, and this mixture gave a
third less variance than 0.9/0.1 and half that of the prior alone), ELBO_i's reconstruction by
sampling its Gaussian (the KL is analytic), q*_seg a diagonal Gaussian fitted by Adam with
reparameterised gradients from the amortised parameters. One estimate per distinct (sequence,
start, end); each sequence's Monte Carlo variance is the delta method through the sums above: sum
over its segments of (d estimate / d segment estimate)^2 x that segment's variance (autograd
gives the derivatives). Different sequences share no draws. The full K importance draws go only
to the segments the posterior p(c|x) uses (see ``segment_log_marginals``).
"""
import math
import os
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from inference import Estimate, GapEstimates, GapSettings
from pyro_models.compile.guide import CompILEGuide
from pyro_models.compile.model import CompILE, boundary_prior_logits, transition_support
from pyro_models.core import device_of

PRIOR_MIXTURE = 0.5  # weight of p(z) in the importance proposal of a Gaussian segment
MAX_ROWS = 1 << 14  # (samples x segments) per decoder pass: larger tensors are slower here (allocation)
SEGMENT_BLOCK = 256  # segments per importance-sampling block
IS_PILOT = 1000  # importance draws for every segment; the full K for those the posterior uses:
USAGE_MIN = 1e-3  # d log p(x) / d log p(x_seg) (the segment's expected count under p(c|x)) at least this
CHECK_EVERY = 100  # q*: steps per window of the stopping rule
LOCAL_TOL = 0.01  # q*: stop when the windowed bound, summed over a sequence's segments, rose less (nats/seq.)
CODE_ATOL = 1e-4  # the guide's code of a segment must not depend on anything but (start, end)


# Memory of the enumeration, measured: about 2.5 kB per configuration and position of the padded
# width for the 64-unit guide (the guide's LSTM states over every configuration dominate), in
# proportion to its width; 48 bytes per hidden unit is that with a margin.
BYTES_PER_CELL_AND_UNIT = 48


def max_configurations(spec) -> int:
    """The most valid boundary configurations of one sequence of the task (the longest one):
    k boundaries at increasing positions before EOS and the rest on EOS, k = 0..n-1."""
    return sum(math.comb(spec.width - 2, k) for k in range(spec.num_segments))


def enumeration_bytes_per_point(spec, hidden_dim: int) -> int:
    return max_configurations(spec) * spec.width * hidden_dim * BYTES_PER_CELL_AND_UNIT


def memory_budget() -> int:
    """Half this machine's memory: what a gap report's enumeration may take."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


@dataclass
class Configurations:
    """The valid boundary configurations of B sequences, padded to C per sequence."""

    positions: torch.Tensor  # (B, C, n-1) b_1..b_{n-1}; padding rows repeat the sequence's first one
    valid: torch.Tensor  # (B, C) bool

    @property
    def counts(self) -> torch.Tensor:
        return self.valid.sum(-1)


@dataclass
class Segments:
    """The distinct segments (sequence, start, end) of all configurations."""

    sequence: torch.Tensor  # (S,)
    start: torch.Tensor  # (S,)
    end: torch.Tensor  # (S,) exclusive; start == end: an empty segment (on EOS)
    counts: torch.Tensor  # (S, V) float: how often each symbol occurs in the segment
    index: torch.Tensor  # (B, C, n): the segment of each configuration's i-th segment

    @property
    def empty(self) -> torch.Tensor:
        return self.end <= self.start


def enumerate_configurations(lengths: torch.Tensor, num_segments: int, width: int) -> Configurations:
    """Every (b_1..b_{n-1}) whose transitions are all in ``transition_support``, per sequence."""
    support = transition_support(lengths, width)
    batch, device = lengths.shape[0], lengths.device
    sequence = torch.arange(batch, device=device)
    paths = torch.zeros(batch, 0, dtype=torch.long, device=device)
    previous = torch.zeros(batch, dtype=torch.long, device=device)
    for _ in range(num_segments - 1):
        row, t = support[sequence, previous].nonzero(as_tuple=True)  # row-major: rows stay grouped
        sequence, paths, previous = sequence[row], torch.cat([paths[row], t[:, None]], 1), t
    counts = torch.bincount(sequence, minlength=batch)
    first = counts.cumsum(0) - counts
    slot = torch.arange(len(sequence), device=device) - first[sequence]
    width_c = int(counts.max())
    positions = paths[first].unsqueeze(1).repeat(1, width_c, 1)  # padding: the first configuration
    positions[sequence, slot] = paths
    valid = torch.zeros(batch, width_c, dtype=torch.bool, device=device)
    valid[sequence, slot] = True
    return Configurations(positions, valid)


def _rows(x: torch.Tensor, configs: int) -> torch.Tensor:
    """(B, ...) -> (B * C, ...): each sequence repeated once per configuration."""
    return x.repeat_interleave(configs, 0)


def _one_hot(positions: torch.Tensor, width: int, dtype) -> torch.Tensor:
    return nn.functional.one_hot(positions, width).to(dtype)


@torch.no_grad()
def configuration_log_prior(model: CompILE, lengths: torch.Tensor, configs: Configurations, width: int) -> torch.Tensor:
    """(B, C): log p(c), the model's boundary sites' log-densities (OneHotCategorical at the prior logits)."""
    batch, c, m = configs.positions.shape
    positions = configs.positions.reshape(batch * c, m)
    rows = _rows(lengths, c)
    support, table = transition_support(rows, width), model.table(width)
    previous = _one_hot(torch.zeros_like(rows), width, table.dtype)
    total = torch.zeros(batch * c, dtype=torch.float64, device=rows.device)
    for i in range(m):
        boundary = _one_hot(positions[:, i], width, table.dtype)
        log_p = boundary_prior_logits(previous, support, table).double().log_softmax(-1)
        total += (log_p * boundary).sum(-1)
        previous = boundary
    return total.view(batch, c)


@torch.no_grad()
def guide_on_configurations(guide: CompILEGuide, tokens, lengths, configs: Configurations):
    """The guide run with its boundaries set to each configuration: log q(c|x) (B, C) and the code
    parameters of each configuration's segments (B, C, n, P)."""
    batch, c, m = configs.positions.shape
    width = tokens.shape[-1]
    positions = configs.positions.reshape(batch * c, m)
    log_q = torch.zeros(batch * c, dtype=torch.float64, device=tokens.device)

    def given_boundary(i, logits):
        nonlocal log_q
        boundary = _one_hot(positions[:, i - 1], width, logits.dtype)
        log_q = log_q + (logits.double().log_softmax(-1) * boundary).sum(-1)
        return boundary

    _, params = guide._segments(_rows(tokens, c), _rows(lengths, c), given_boundary, lambda i, p: p)
    return log_q.view(batch, c), torch.stack(params, 1).view(batch, c, len(params), -1)


def configuration_segments(tokens, lengths, configs: Configurations, vocab_size: int) -> Segments:
    batch, c, _ = configs.positions.shape
    width = tokens.shape[-1]
    last = (lengths - 1)[:, None, None].expand(batch, c, 1)
    starts = torch.cat([torch.zeros_like(last), configs.positions], -1)  # (B, C, n)
    ends = torch.cat([configs.positions, last], -1)
    seq = torch.arange(batch, device=tokens.device)[:, None, None].expand_as(starts)
    keys, index = torch.unique((seq * width + starts) * width + ends, return_inverse=True)
    sequence, start, end = keys // (width * width), keys // width % width, keys % width
    cumulative = nn.functional.pad(nn.functional.one_hot(tokens, vocab_size).cumsum(1), (0, 0, 1, 0))
    counts = (cumulative[sequence, end] - cumulative[sequence, start]).to(torch.float32)
    return Segments(sequence, start, end, counts, index)


def per_segment(values: torch.Tensor, segments: Segments) -> torch.Tensor:
    """Values (B, C, n, ...) of each configuration's segments, as (S, ...) per distinct segment;
    raises if two configurations disagree about the same segment."""
    flat = values.flatten(0, 2)
    index = segments.index.flatten()
    out = flat.new_zeros((len(segments.sequence),) + flat.shape[1:])
    out[index] = flat
    disagreement = (out[index] - flat).abs().max().item() if flat.numel() else 0.0
    if disagreement > CODE_ATOL:
        raise RuntimeError(f"the guide's code of a segment depends on more than its (start, end) "
                           f"(differs by {disagreement:.2g}); the per-segment estimates do not apply")
    return out


def log_likelihood(model: CompILE, z: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """log p(x_seg | z) = sum_v counts[v] log softmax(decoder(z))[v]; z (..., S, D), counts (S, V)."""
    return (model.decoder(z).log_softmax(-1) * counts).sum(-1)


def delta_method(function, values: torch.Tensor, variances: torch.Tensor, segments: Segments, batch: int):
    """``function`` (S,) segment estimates -> (B,) per-sequence estimates, and the delta-method
    variance of each sequence's estimate (its segments' estimates are independent); also the
    derivatives (S,) of each sequence's estimate with respect to its segments' estimates."""
    x = values.detach().double().requires_grad_()
    out = function(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    var = torch.zeros(batch, dtype=torch.float64, device=x.device).index_add_(0, segments.sequence,
                                                                               grad ** 2 * variances.double())
    return out.detach(), var, grad


def sum_over_segments(values: torch.Tensor, segments: Segments) -> torch.Tensor:
    """(B, C): the sum of each configuration's segment values."""
    return values[segments.index].sum(-1)


def log_sum_configurations(log_prior: torch.Tensor, valid: torch.Tensor, segments: Segments):
    """segment values -> logsumexp_c [log p(c) + sum_i value(seg_i(c))] over the valid c."""

    def function(values):
        return (log_prior + sum_over_segments(values, segments)).masked_fill(~valid, -math.inf).logsumexp(-1)

    return function


def expectation_over_configurations(log_prior, log_q, valid, segments: Segments):
    """segment values -> sum_c q(c|x) [log p(c) - log q(c|x) + sum_i value(seg_i(c))] over the valid c."""
    q = log_q.exp().masked_fill(~valid, 0.0)

    def function(values):
        return (q * (log_prior - log_q + sum_over_segments(values, segments))).sum(-1)

    return function


# Per-segment quantities ---------------------------------------------------------------------------


@torch.no_grad()
def concrete_segments(model: CompILE, params: torch.Tensor, segments: Segments):
    """One-hot codes, exactly: (log p(x_seg), ELBO of the amortised q(z|seg)), each (S,) float64."""
    d = model.config.latent_dim
    log_lik = log_likelihood(model, torch.eye(d, device=params.device).unsqueeze(1), segments.counts).double()  # (D, S)
    log_px = torch.logsumexp(log_lik, 0) - math.log(d)
    log_q = params.double().log_softmax(-1)  # (S, D)
    q = log_q.exp()
    elbo = (q * log_lik.T).sum(-1) - (q * (log_q + math.log(d))).sum(-1)
    return log_px, elbo


def gaussian_kl(loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """KL(N(loc, scale^2) || N(0, I)), summed over the last dimension."""
    return 0.5 * (loc ** 2 + (2 * log_scale).exp() - 1 - 2 * log_scale).sum(-1)


@torch.no_grad()
def gaussian_elbo(model: CompILE, loc, log_scale, counts, samples: int):
    """Per segment (S,): the ELBO of N(loc, scale^2) (MC reconstruction + analytic KL) and the MC
    variance of the estimate. Segments without symbols are exact (-KL, variance 0)."""
    chunk = max(1, MAX_ROWS // max(1, loc.shape[0]))
    sums = torch.zeros(loc.shape[0], dtype=torch.float64, device=loc.device)
    squares = torch.zeros_like(sums)
    for begin in range(0, samples, chunk):
        k = min(chunk, samples - begin)
        z = loc + log_scale.exp() * torch.randn(k, *loc.shape, device=loc.device)
        ll = log_likelihood(model, z, counts).double()
        sums += ll.sum(0)
        squares += (ll ** 2).sum(0)
    mean = sums / samples
    var = ((squares - samples * mean ** 2) / max(samples - 1, 1)).clamp(min=0) / samples if samples > 1 \
        else torch.full_like(mean, math.nan)
    empty = counts.sum(-1) == 0
    mean, var = mean.masked_fill(empty, 0.0), var.masked_fill(empty, 0.0)
    return mean - gaussian_kl(loc, log_scale).double(), var


def fit_local_gaussians(model: CompILE, loc, log_scale, counts, sequence, settings: GapSettings,
                        progress: bool = False):
    """q*_seg: Adam on each segment's ELBO (reparameterised, ``settings.local.num_particles`` draws
    per step), from (loc, log_scale). Stops after ``settings.local.max_steps`` or when the bound, averaged over a window of
    ``CHECK_EVERY`` steps and summed over each sequence's segments, rose by less than LOCAL_TOL nats
    per sequence since the previous window. Returns (loc, log_scale, steps)."""
    loc, log_scale = loc.clone().requires_grad_(), log_scale.clone().requires_grad_()
    local = settings.local
    optimizer = torch.optim.Adam([loc, log_scale], lr=local.lr)
    sequences = max(1, int(sequence.unique().numel()))
    window, previous, step = [], None, 0
    bar = tqdm(total=local.max_steps, desc="CompILE q*", disable=not progress, leave=False)
    while step < local.max_steps:
        z = loc + log_scale.exp() * torch.randn(local.num_particles, *loc.shape, device=loc.device)
        elbo = log_likelihood(model, z, counts).mean(0) - gaussian_kl(loc, log_scale)
        grads = torch.autograd.grad(-elbo.sum(), [loc, log_scale])  # the decoder's .grad untouched
        loc.grad, log_scale.grad = grads
        optimizer.step()
        window.append(elbo.detach().sum().item())
        step += 1
        bar.update(1)
        if step % CHECK_EVERY == 0:
            current = sum(window) / len(window) / sequences
            window = []
            if previous is not None and current - previous < LOCAL_TOL:
                break
            previous = current
    bar.close()
    return loc.detach(), log_scale.detach(), step


class LogMeanExp:
    """Streamed log of the mean of importance weights per segment, with the variance of
    ``Estimate.log_mean_exp`` (var(w / mean w) / K), from running sums relative to a running peak."""

    def __init__(self, size: int, device=None):
        self.count = torch.zeros(size, dtype=torch.float64, device=device)
        self.peak = torch.full((size,), -math.inf, dtype=torch.float64, device=device)
        self.sum_w = torch.zeros(size, dtype=torch.float64, device=device)  # sum exp(lw - peak)
        self.sum_w2 = torch.zeros(size, dtype=torch.float64, device=device)  # sum exp(2 (lw - peak))

    def add(self, rows: torch.Tensor, log_weights: torch.Tensor) -> None:
        """``log_weights`` (k, len(rows)): k more draws for the segments ``rows``."""
        lw = log_weights.double()
        peak = self.peak[rows]
        new_peak = torch.maximum(peak, lw.max(0).values)
        shift = (peak - new_peak).nan_to_num(nan=0.0)  # -inf - x = -inf: exp gives 0
        self.sum_w[rows] = self.sum_w[rows] * shift.exp() + (lw - new_peak).exp().sum(0)
        self.sum_w2[rows] = self.sum_w2[rows] * (2 * shift).exp() + (2 * (lw - new_peak)).exp().sum(0)
        self.peak[rows] = new_peak
        self.count[rows] += lw.shape[0]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.count
        log_mean = self.peak + self.sum_w.log() - k.log()
        ratio_sq = k ** 2 * self.sum_w2 / self.sum_w ** 2  # sum of (w / mean w)^2
        var = ((ratio_sq - k) / (k - 1) / k).clamp(min=0)
        return log_mean, torch.where(k > 1, var, torch.full_like(var, math.nan))


@torch.no_grad()
def importance_sample(model: CompILE, loc, log_scale, counts, rows: torch.Tensor, samples: int,
                      into: LogMeanExp, progress: bool = False) -> None:
    """``samples`` draws for each segment in ``rows`` of log p(x_seg | z) + log p(z) - log r(z),
    r = (1 - PRIOR_MIXTURE) N(loc, scale^2) + PRIOR_MIXTURE p(z), added to ``into``."""
    d = loc.shape[-1]
    constant = 0.5 * d * math.log(2 * math.pi)
    log_mix = (math.log1p(-PRIOR_MIXTURE), math.log(PRIOR_MIXTURE))
    blocks = rows.split(SEGMENT_BLOCK)
    chunk = max(1, MAX_ROWS // SEGMENT_BLOCK)
    with tqdm(total=len(blocks) * samples, desc="CompILE IS", disable=not progress, leave=False) as bar:
        for block in blocks:
            mu, log_sigma, c = loc[block], log_scale[block], counts[block]
            sigma, log_det = log_sigma.exp(), log_sigma.sum(-1)
            for begin in range(0, samples, chunk):
                k = min(chunk, samples - begin)
                eps = torch.randn(k, len(block), d, device=loc.device)
                from_prior = torch.rand(k, len(block), 1, device=loc.device) < PRIOR_MIXTURE
                z = torch.where(from_prior, eps, mu + sigma * eps)
                u = torch.where(from_prior, (eps - mu) / sigma, eps)  # z standardised under N(loc, scale^2)
                log_p = -0.5 * (z * z).sum(-1) - constant
                log_q = -0.5 * (u * u).sum(-1) - log_det - constant
                log_r = torch.logaddexp(log_mix[0] + log_q, log_mix[1] + log_p)
                into.add(block, log_likelihood(model, z, c) + log_p - log_r)
                bar.update(k)


def segment_log_marginals(model: CompILE, loc, log_scale, segments: Segments, log_sum, batch: int,
                          is_k: int, progress: bool = False):
    """log p(x_seg) and its variance for every segment (S,), by importance sampling around q*_seg:
    IS_PILOT draws for every segment, then up to ``is_k`` for those whose expected count
    under the (pilot) posterior p(c|x), d log p(x) / d log p(x_seg), is at least USAGE_MIN (the
    others' share of a sequence's variance is scaled by less than USAGE_MIN^2). Empty segments: 0
    exactly. Also returns the number of segments given the full K."""
    nonempty = ~segments.empty
    rows = nonempty.nonzero().squeeze(-1)
    sums = LogMeanExp(len(nonempty), nonempty.device)
    pilot = min(is_k, IS_PILOT)
    importance_sample(model, loc, log_scale, segments.counts, rows, pilot, sums, progress)

    def estimates():
        value, var = sums.result()
        return value.masked_fill(~nonempty, 0.0), var.masked_fill(~nonempty, 0.0)

    refined = rows[:0]
    if is_k > pilot:
        value, var = estimates()
        _, _, usage = delta_method(log_sum, value, var, segments, batch)
        refined = (nonempty & (usage >= USAGE_MIN)).nonzero().squeeze(-1)
        importance_sample(model, loc, log_scale, segments.counts, refined, is_k - pilot, sums, progress)
    value, var = estimates()
    return value, var, len(refined)


# The three estimates ------------------------------------------------------------------------------


@dataclass
class Enumerated:
    """What both kinds of codes share: the valid boundary configurations of every sequence, their
    prior and guide probabilities, the distinct segments with the guide's code parameters, and the
    exact sums over configurations as functions of per-segment values."""

    configs: Configurations
    log_prior: torch.Tensor  # (B, C)
    log_q: torch.Tensor  # (B, C): the guide's q(c | x)
    segments: Segments
    params: torch.Tensor  # (S, P): the guide's code parameters per distinct segment
    log_sum: object  # per-segment values -> (B,): logsumexp_c [log p(c) + sum_i value_i(c)]
    expectation: object  # per-segment values -> (B,): sum_c q(c|x) [log p(c) - log q(c|x) + sum_i value_i(c)]
    batch: int


@dataclass
class CodeEstimates:
    """One kind of codes' three estimates, the per-segment values the details are computed from,
    and how q* stopped."""

    log_px: Estimate
    elbo_amortised: Estimate
    elbo_local: Estimate
    segment_log_px: torch.Tensor  # (S,) log p(x_seg)
    segment_elbo: torch.Tensor  # (S,) the guide's per-segment bound
    local_at_limit: int  # sequences whose q* stopped on the step limit
    details: dict


def enumerate_model(model: CompILE, guide: CompILEGuide, tokens: torch.Tensor, lengths: torch.Tensor) -> Enumerated:
    cfg = model.config
    batch, width = tokens.shape
    configs = enumerate_configurations(lengths, cfg.num_segments, width)
    log_prior = configuration_log_prior(model, lengths, configs, width)
    log_q, params = guide_on_configurations(guide, tokens, lengths, configs)
    segments = configuration_segments(tokens, lengths, configs, cfg.vocab_size)
    return Enumerated(configs, log_prior, log_q, segments, per_segment(params, segments),
                      log_sum_configurations(log_prior, configs.valid, segments),
                      expectation_over_configurations(log_prior, log_q, configs.valid, segments), batch)


EXACT_CONFIGURATIONS = "exact sum over the valid boundary configurations (masked positions, prior < 1e-13, excluded)"


def concrete_estimates(model: CompILE, problem: Enumerated) -> CodeEstimates:
    """Concrete codes: every term an exact sum, and q* the exact posterior (approximation gap 0)."""
    segments = problem.segments
    seg_log_px, seg_elbo = concrete_segments(model, problem.params, segments)
    zero = torch.zeros(len(segments.sequence), dtype=torch.float64, device=seg_log_px.device)
    log_px, _, _ = delta_method(problem.log_sum, seg_log_px, zero, segments, problem.batch)
    elbo_q, _, _ = delta_method(problem.expectation, seg_elbo, zero, segments, problem.batch)
    most = int(problem.configs.counts.max())
    return CodeEstimates(
        log_px=Estimate.exact(log_px, f"exact: sum over the valid boundary configurations (<= {most} per sequence; "
                                      f"masked positions, prior < 1e-13, excluded) and the {model.config.latent_dim} "
                                      "one-hot codes of each segment"),
        elbo_amortised=Estimate.exact(elbo_q, "exact: the guide's q(c|x) over the valid configurations, exact "
                                              "expectations and KLs of the one-hot codes"),
        elbo_local=Estimate.exact(log_px, "= log p(x) exactly: q* (a free distribution over configurations and a free "
                                          "categorical per segment) holds the exact posterior, so the approximation "
                                          "gap is exactly 0"),
        segment_log_px=seg_log_px, segment_elbo=seg_elbo, local_at_limit=0, details={})


def gaussian_estimates(model: CompILE, problem: Enumerated, settings: GapSettings, progress: bool,
                       timings: dict) -> CodeEstimates:
    """Gaussian codes: L[q] and L[q*] by sampling each segment's Gaussian (analytic KLs), q*_seg
    fitted by Adam, log p(x_seg) by importance sampling around q*_seg."""
    segments, batch, local = problem.segments, problem.batch, settings.local
    latent = model.config.latent_dim
    loc, log_scale = problem.params[:, :latent], 0.5 * problem.params[:, latent:]
    nonempty = ~segments.empty

    t = time.perf_counter()
    seg_elbo, seg_elbo_var = gaussian_elbo(model, loc, log_scale, segments.counts, settings.elbo_samples)
    elbo_q, elbo_q_var, _ = delta_method(problem.expectation, seg_elbo, seg_elbo_var, segments, batch)
    timings["amortised_s"] = time.perf_counter() - t

    t = time.perf_counter()
    star_loc, star_log_scale = torch.zeros_like(loc), torch.zeros_like(log_scale)  # empty: q* = p(z)
    fit_loc, fit_log_scale, steps = fit_local_gaussians(
        model, loc[nonempty], log_scale[nonempty], segments.counts[nonempty], segments.sequence[nonempty], settings,
        progress)
    star_loc[nonempty], star_log_scale[nonempty] = fit_loc, fit_log_scale
    seg_star, seg_star_var = gaussian_elbo(model, star_loc, star_log_scale, segments.counts, settings.elbo_samples)
    elbo_local, elbo_local_var, _ = delta_method(problem.log_sum, seg_star, seg_star_var, segments, batch)
    timings["local_s"] = time.perf_counter() - t

    t = time.perf_counter()
    seg_log_px, seg_log_px_var, refined = segment_log_marginals(
        model, star_loc, star_log_scale, segments, problem.log_sum, batch, settings.is_k, progress)
    log_px, log_px_var, _ = delta_method(problem.log_sum, seg_log_px, seg_log_px_var, segments, batch)
    timings["log_px_s"] = time.perf_counter() - t

    pilot = min(settings.is_k, IS_PILOT)
    return CodeEstimates(
        log_px=Estimate(log_px, log_px_var,
                        f"{EXACT_CONFIGURATIONS}; log p(x_seg) of each distinct segment by importance sampling from "
                        f"{1 - PRIOR_MIXTURE:g} q*_seg + {PRIOR_MIXTURE:g} p(z), K={settings.is_k} for the {refined} "
                        f"segments the posterior uses (expected count >= {USAGE_MIN:g}), K={pilot} for the other "
                        f"{int(nonempty.sum()) - refined}; variance by the delta method"),
        elbo_amortised=Estimate(elbo_q, elbo_q_var,
                                f"{EXACT_CONFIGURATIONS}, weighted by the guide's q(c|x); per segment analytic Gaussian "
                                f"KL and reconstruction from {settings.elbo_samples} samples"),
        elbo_local=Estimate(elbo_local, elbo_local_var,
                            f"q*: a free distribution over configurations (optimal: {EXACT_CONFIGURATIONS}) and a free "
                            f"diagonal Gaussian per distinct segment (Adam from the amortised parameters, lr {local.lr}, "
                            f"{local.num_particles} draws per step, {steps} steps); segment bounds from "
                            f"{settings.elbo_samples} samples"),
        segment_log_px=seg_log_px, segment_elbo=seg_elbo,
        local_at_limit=batch if steps >= local.max_steps else 0,  # one stopping rule for all sequences
        details={"is_k_per_segment": settings.is_k, "is_pilot_per_segment": pilot, "is_refined_segments": refined,
                 "elbo_samples": settings.elbo_samples, "local_steps": steps, "local_max_steps": local.max_steps,
                 "local_lr": local.lr, "local_particles": local.num_particles, "prior_mixture": PRIOR_MIXTURE})


@torch.no_grad()
def posterior_details(problem: Enumerated, codes: CodeEstimates, elbo_q: torch.Tensor) -> dict:
    """How the exact posterior over configurations and the guide's q(c|x) compare."""
    valid, log_prior = problem.configs.valid, problem.log_prior
    joint = (log_prior + sum_over_segments(codes.segment_log_px.double(), problem.segments)).masked_fill(~valid,
                                                                                                         -math.inf)
    posterior = joint.softmax(-1)  # p(c | x)
    best = posterior.argmax(-1, keepdim=True)
    q_valid = problem.log_q.exp().masked_fill(~valid, 0.0)
    # the bound of the guide's codes with the best distribution over c, minus L[q]: the part of the
    # amortisation gap that is q(c|x)'s (the rest is the codes')
    boundary_part = problem.log_sum(codes.segment_elbo.double()) - elbo_q
    counts = problem.configs.counts.double()
    return {
        "configurations_per_sequence_mean": counts.mean().item(),
        "configurations_per_sequence_max": int(counts.max()),
        "configurations_total": int(counts.sum()),
        "distinct_segments": len(problem.segments.sequence),
        "nonempty_segments": int((~problem.segments.empty).sum()),
        "posterior_best_configuration_mass_mean": posterior.gather(-1, best).mean().item(),
        "posterior_best_configuration_mass_min": posterior.gather(-1, best).min().item(),
        "guide_mass_on_posterior_best_mean": q_valid.gather(-1, best).mean().item(),
        "guide_mass_outside_valid_max": (1 - q_valid.sum(-1)).clamp(min=0).max().item(),
        "prior_mass_outside_valid_max": (1 - log_prior.exp().masked_fill(~valid, 0).sum(-1)).clamp(min=0).max().item(),
        "amortisation_gap_boundaries_mean": boundary_part.mean().item(),
    }


def compile_gap_estimates(model: CompILE, guide: CompILEGuide, tokens: torch.Tensor, lengths: torch.Tensor,
                          settings: GapSettings | None = None, progress: bool = False) -> GapEstimates:
    """log p(x), L[q] and L[q*] of the discrete model for each sequence (see the module docstring).
    Computed on the model's device: every tensor below follows ``tokens``. Reads ``elbo_samples``,
    ``is_k`` and ``local`` (q*'s steps, rate and draws) of ``settings``."""
    settings = settings or GapSettings()
    started = time.perf_counter()
    tokens, lengths = tokens.to(device_of(model)), lengths.to(device_of(model))
    problem = enumerate_model(model, guide, tokens, lengths)
    timings = {"enumeration_s": time.perf_counter() - started}
    if model.config.latent_dist == "concrete":
        t = time.perf_counter()
        codes = concrete_estimates(model, problem)
        timings["segments_s"] = time.perf_counter() - t
    else:
        codes = gaussian_estimates(model, problem, settings, progress, timings)
    details = {"estimator": "pyro_models/compile/gap.py: exact sums over boundary configurations",
               "latent_dist": model.config.latent_dist,
               **posterior_details(problem, codes, codes.elbo_amortised.value.to(tokens.device)),
               **codes.details,
               "timings_s": {k: round(v, 2) for k, v in timings.items()},
               "wall_s": round(time.perf_counter() - started, 2)}
    return GapEstimates(log_px=codes.log_px, elbo_amortised=codes.elbo_amortised, elbo_local=codes.elbo_local,
                        iwae=None, details=details, local_at_limit=codes.local_at_limit,
                        local_max_steps=settings.local.max_steps)
