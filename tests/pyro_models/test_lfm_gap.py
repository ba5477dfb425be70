"""The LFM's exact gap estimates (pyro_models/lfm/gap.py, inference/enumeration.py): log p(x)
against a loop over the 2^K codes, the exact L[q] against a Monte Carlo ELBO of the guide
program, log p(x) >= L[q*] >= L[q], and L[q*] = log p(x) when the posterior is mean-field."""
import itertools
import math

import pytest
import torch

from guides import ConcreteBernoulli, MeanFieldBernoulli, build_guide
from inference import GapSettings
from inference.enumeration import all_codes, mean_field_elbo, optimise_mean_field
from inference.log_weights import log_weights
from pyro_models.experiment_kit.protocol import Built
from pyro_models.lfm.data import SigmorphonData, Vocabulary, encode_words
from pyro_models.lfm.experiment import LFMExperiment
from pyro_models.lfm.model import LatentFactorModel, LFMConfig

WORDS = ["ábaco", "niño", "x", "comer", "sí", "queso", "ala"]

pytestmark = pytest.mark.usefixtures("one_thread")


def setup(bits=4, family=MeanFieldBernoulli, prior_prob=0.5, z_scale=3.0, seed=0):
    """A tiny LFM whose likelihood depends strongly on z (z_scale), an amortised guide far from
    its posterior, and the experiment holding the words as its data."""
    torch.manual_seed(seed)
    vocab = Vocabulary(c for w in WORDS for c in w)
    words = encode_words(WORDS, vocab, max_length=8)
    config = LFMConfig(vocab_size=len(vocab), embedding_dim=8, hidden_dim=8, latent_bits=bits,
                       prior_prob=prior_prob, dropout=0.0)
    model = LatentFactorModel(config)
    with torch.no_grad():
        model.init_state.weight.normal_(0, z_scale)
        model.output.weight.normal_(0, 3.0)
    encoder, dim = model.make_encoder()
    guide = build_guide(family, model.latent_sites, encoder=encoder, encoder_dim=dim)
    torch.nn.init.normal_(guide.source.head.weight, std=1.0)
    experiment = LFMExperiment()
    data = SigmorphonData(vocab, train=words, dev=words, test=words, max_length=8)
    return experiment, experiment.context(data, config=config), data, Built(model, guide, objective=None, modules={})


def test_evaluation_points_are_the_first_words_padded_to_their_own_longest():
    experiment, ctx, data, _ = setup()
    points = experiment.evaluation_points(ctx, data, 3, "test")
    assert points["lengths"].tolist() == [6, 5, 2]
    assert points["tokens"].shape == (3, 6)
    assert [data.vocab.decode(row) for row in points["tokens"]] == WORDS[:3]
    assert torch.equal(experiment.evaluation_points(ctx, data, 3, "test")["tokens"], points["tokens"])
    assert experiment.evaluation_points(ctx, data, 100, "train")["tokens"].shape[0] == len(WORDS)


@torch.no_grad()
def brute_force_log_px(model, tokens, lengths, prior_prob):
    terms = []
    for code in itertools.product([0, 1], repeat=model.config.latent_bits):
        z = torch.tensor(code, dtype=torch.float32).expand(tokens.shape[0], -1)
        log_prior = sum(math.log(prior_prob) if bit else math.log1p(-prior_prob) for bit in code)
        terms.append(model.log_likelihood(z, tokens, lengths).double() + log_prior)
    return torch.logsumexp(torch.stack(terms), 0)


def test_enumerated_log_px_equals_a_loop_over_all_codes():
    experiment, ctx, data, built = setup(prior_prob=0.3)
    points = experiment.evaluation_points(ctx, data, len(WORDS), "train")
    est = experiment.gap_estimates(ctx, built, points, GapSettings())
    expected = brute_force_log_px(built.model, points["tokens"], points["lengths"], 0.3)
    assert torch.allclose(est.log_px.value, expected, atol=1e-4)
    assert (est.log_px.mc_var == 0).all() and (est.elbo_local.mc_var == 0).all()
    assert est.details["enumeration"]["num_codes"] == 16 and est.iwae is None


@pytest.mark.parametrize("family", [MeanFieldBernoulli, ConcreteBernoulli])
def test_exact_elbo_equals_the_monte_carlo_elbo_of_the_guide_program(family):
    experiment, ctx, data, built = setup(family=family, seed=1)
    points = experiment.evaluation_points(ctx, data, len(WORDS), "train")
    est = experiment.gap_estimates(ctx, built, points, GapSettings())
    with torch.no_grad():
        lw = log_weights(built.model.model, built.guide, 20000, 1, **points).double()
    mean, se = lw.mean(0), lw.std(0) / math.sqrt(lw.shape[0])
    assert ((mean - est.elbo_amortised.value).abs() <= 4 * se + 1e-4).all(), (mean, est.elbo_amortised.value, se)
    assert ((est.log_px.value - mean) / se).max() > 20  # power: an ELBO, distinguishable from log p(x)


def test_bounds_are_ordered_per_word_and_q_star_is_a_stationary_point():
    experiment, ctx, data, built = setup(seed=2)
    points = experiment.evaluation_points(ctx, data, len(WORDS), "train")
    est = experiment.gap_estimates(ctx, built, points, GapSettings())
    log_px, local, amortised = est.log_px.value, est.elbo_local.value, est.elbo_amortised.value
    assert (log_px >= local - 1e-9).all() and (local >= amortised - 1e-9).all()
    assert (local - amortised).max() > 0.1 and (log_px - local).max() > 1e-3  # both gaps present here
    assert 0 < est.details["enumeration"]["local_steps_mean"] <= GapSettings().local.max_steps
    # the optimiser on its own: its end point has a zero gradient of the exact bound
    codes = all_codes(4)
    table = torch.randn(16, dtype=torch.float64) * 3
    logits, value, _ = optimise_mean_field(table, torch.zeros(4), codes)
    logits.requires_grad_(True)
    grad, = torch.autograd.grad(mean_field_elbo(table, logits, codes), logits)
    assert grad.abs().max() < 1e-4 and value >= mean_field_elbo(table, torch.zeros(4, dtype=torch.float64), codes)


@pytest.mark.parametrize("bits, z_scale", [(4, 0.0), (1, 3.0)])
def test_q_star_reaches_log_px_when_the_posterior_is_mean_field(bits, z_scale):
    """z_scale 0: the decoder ignores z, the posterior is the prior; K = 1: any posterior is mean-field."""
    experiment, ctx, data, built = setup(bits=bits, z_scale=z_scale, prior_prob=0.3, seed=3)
    points = experiment.evaluation_points(ctx, data, len(WORDS), "train")
    est = experiment.gap_estimates(ctx, built, points, GapSettings())
    assert torch.allclose(est.elbo_local.value, est.log_px.value, atol=1e-5)
    assert (est.log_px.value - est.elbo_amortised.value).max() > 0.05  # the amortised guide is not there


def test_more_than_16_bits_are_refused():
    experiment, ctx, data, built = setup(bits=17)
    points = experiment.evaluation_points(ctx, data, 2, "train")
    with pytest.raises(ValueError, match=r"<= 16 latent bits \(--latent-bits\)"):
        experiment.gap_estimates(ctx, built, points, GapSettings())
