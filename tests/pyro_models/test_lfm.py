"""The latent factor language model: data round trips, padding, importance sampling against the
exact marginal (2^K latent values), and TraceGraph_ELBO's score-function gradient against the
gradient of the exactly enumerated ELBO."""
import itertools
import math

import pyro
import pytest
import torch
from pyro.infer import TraceGraph_ELBO

from guides import ConcreteBernoulli, MeanFieldBernoulli, build_guide
from guides.relaxed import StraightThroughBernoulli
from inference import evaluate_importance
from pyro_models.datasets.files import DataDir
from pyro_models.lfm.data import (
    EOS,
    PAD,
    BucketedBatches,
    Vocabulary,
    encode_words,
    load_sigmorphon,
)
from pyro_models.lfm.experiment import Baselines, score_words
from pyro_models.lfm.model import LatentFactorModel, LFMConfig, bernoulli_kl

WORDS = ["abacoramos", "ábaco", "niño", "x", "pingüinos", "desabejada", "sí", "comer", "cantaríais", "ala",
         "zz", "queso"]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(bits=4, **kw):
    vocab = Vocabulary(c for w in WORDS for c in w)
    config = LFMConfig(vocab_size=len(vocab), embedding_dim=8, hidden_dim=8, latent_bits=bits, dropout=0.0, **kw)
    return vocab, LatentFactorModel(config).eval()


def all_bits(k):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=k)))


def test_vocabulary_and_batches_round_trip_words_exactly():
    vocab = Vocabulary(c for w in WORDS for c in w)
    words = encode_words(WORDS, vocab, max_length=12)
    assert [vocab.decode(row) for row in words.tokens] == WORDS
    assert words.lengths.tolist() == [len(w) + 1 for w in WORDS]
    sampler = BucketedBatches(words, batch_size=5, seed=3, pool=2)
    seen = []
    for step in range(sampler.per_epoch):
        batch = sampler(step)
        assert batch["tokens"].shape == (5, int(batch["lengths"].max()))
        for row, length, i in zip(batch["tokens"], batch["lengths"], batch["idx"]):
            assert row[length - 1] == EOS and (row[length:] == PAD).all()
            assert vocab.decode(row) == WORDS[i]
        seen += batch["idx"].tolist()
    assert len(set(seen)) == len(seen) == 10  # one epoch: no repeats, ragged tail dropped
    assert torch.equal(sampler(1)["idx"], BucketedBatches(words, 5, 3, pool=2)(1)["idx"])  # pure in the step


def test_sigmorphon_files(data_dir):
    data = load_sigmorphon(DataDir(data_dir))
    assert 12000 < len(data.train) <= 12575 and 1500 < len(data.dev) <= 1596 and 22000 < len(data.test) <= 23229
    assert max(len(w) for w in data.train.words) <= 30
    assert all(data.vocab.decode(row) == w for row, w in zip(data.dev.tokens, data.dev.words))


def test_padding_never_changes_a_words_log_probability():
    vocab, model = tiny()
    words = encode_words(WORDS, vocab, max_length=12)
    z = torch.bernoulli(torch.full((len(WORDS), 4), 0.5))
    batched = model.log_likelihood(z, words.tokens, words.lengths)  # padded to the longest word (and beyond)
    for i in range(len(WORDS)):
        alone = model.log_likelihood(z[i:i + 1], words.tokens[i:i + 1, :words.lengths[i]], words.lengths[i:i + 1])
        assert torch.allclose(batched[i], alone[0], atol=1e-5)
    trace = pyro.poutine.trace(pyro.poutine.condition(model.model, {"z": z})).get_trace(
        tokens=words.tokens, lengths=words.lengths)
    assert torch.allclose(trace.nodes["x"]["fn"].log_prob(trace.nodes["x"]["value"]), batched, atol=1e-5)


def exact_log_marginal(model, tokens, lengths):
    z = all_bits(model.config.latent_bits)  # (2^K, K)
    log_prior = model.prior(1, tokens).log_prob(z.unsqueeze(1)).squeeze(-1)  # (2^K,)
    log_lik = model.log_likelihood(z.unsqueeze(1).expand(-1, tokens.shape[0], -1), tokens, lengths)
    return torch.logsumexp(log_prior.unsqueeze(-1) + log_lik, 0), log_prior, log_lik


@torch.no_grad()
def test_importance_sampled_log_px_converges_to_the_exact_sum_over_2_to_the_k():
    torch.manual_seed(0)
    vocab, model = tiny(bits=4)
    words = encode_words(WORDS[:6], vocab, max_length=12)
    encoder, dim = model.make_encoder()
    guide = build_guide(MeanFieldBernoulli, model.latent_sites, encoder=encoder, encoder_dim=dim).eval()
    torch.nn.init.normal_(guide.source.head.weight, std=0.5)  # a guide far from the posterior
    exact, _, _ = exact_log_marginal(model, words.tokens, words.lengths)
    errors = []
    for s in (1, 10, 3000):
        result = evaluate_importance(model.model, guide, {"tokens": words.tokens, "lengths": words.lengths}, s)
        errors.append((result.iwae - exact).abs().max().item())
    assert errors[-1] < 0.02 and errors[-1] < errors[0]
    scores = score_words(model, guide, words, 3000)
    assert scores["nll"] == pytest.approx(-exact.mean().item(), abs=0.02)
    assert scores["perplexity"] == pytest.approx(math.exp(-exact.sum().item() / words.lengths.sum().item()), rel=0.01)


def test_tracegraph_gradient_matches_the_exact_enumerated_elbo_gradient():
    torch.manual_seed(1)
    vocab, model = tiny(bits=3)
    words = encode_words(WORDS[:3], vocab, max_length=12)
    guide = build_guide(MeanFieldBernoulli, model.latent_sites, num_points=3)
    with torch.no_grad():
        guide.source.table.copy_(torch.randn(3, 3))
    idx = torch.arange(3)
    with torch.no_grad():
        model.init_state.weight.normal_(0, 3.0)  # make log p(x | z) depend strongly on z
        model.output.weight.normal_(0, 3.0)
    for p in model.parameters():
        p.requires_grad_(False)
    # exact: ELBO = sum_z q(z) [log p(z) + log p(x | z) - log q(z)]
    logits = guide.source.table
    z = all_bits(3).unsqueeze(1)  # (8, 1, 3)
    log_q = torch.distributions.Bernoulli(logits=logits).log_prob(z).sum(-1)  # (8, 3)
    _, log_prior, log_lik = exact_log_marginal(model, words.tokens, words.lengths)
    elbo = (log_q.exp() * (log_prior.unsqueeze(-1) + log_lik - log_q)).sum()
    exact = torch.autograd.grad(elbo, logits)[0]
    kl_only = -torch.autograd.grad(bernoulli_kl(logits, 0.5).sum(), logits)[0]  # what a lost log p(x | z) gives
    # Monte Carlo: TraceGraph_ELBO (score function; downstream costs must include log p(x | z))
    estimates = []
    for _ in range(10):
        guide.zero_grad()
        loss = TraceGraph_ELBO(num_particles=3000, vectorize_particles=True, max_plate_nesting=1)
        loss.loss_and_grads(model.model, guide, tokens=words.tokens, lengths=words.lengths, idx=idx)
        estimates.append(-guide.source.table.grad.clone())
    estimates = torch.stack(estimates)
    mean, se = estimates.mean(0), estimates.std(0) / math.sqrt(len(estimates))
    assert ((mean - exact).abs() <= 4 * se + 0.02).all(), (mean, exact, se)
    assert ((mean - kl_only).abs() / se).max() > 6  # the test has power: it sees the likelihood's part


def test_baselines_reach_the_guide_site():
    vocab, model = tiny(bits=4)
    words = encode_words(WORDS[:4], vocab, max_length=12)
    encoder, dim = model.make_encoder()
    for kind, key in (("decaying", "use_decaying_avg_baseline"), ("neural", "nn_baseline")):
        guide = build_guide(MeanFieldBernoulli, model.latent_sites, encoder=encoder, encoder_dim=dim,
                            site_infer=Baselines(kind, len(vocab), 4))
        trace = pyro.poutine.trace(guide).get_trace(tokens=words.tokens, lengths=words.lengths)
        assert key in trace.nodes["z"]["infer"]["baseline"]
        TraceGraph_ELBO().loss_and_grads(model.model, guide, tokens=words.tokens, lengths=words.lengths)
    assert guide.site_infer.net.net[0].weight.grad is not None  # the neural baseline is trained


def test_straight_through_bits_are_bernoulli_distributed_and_carry_gradients():
    logits = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    q = StraightThroughBernoulli(logits, temperature=0.5)
    z = q.rsample((20000,))
    assert set(z.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(z.mean(0), torch.sigmoid(logits.detach()), atol=0.02)
    z.sum().backward()
    assert (logits.grad > 0).all()


def test_lfm_is_a_plain_pyro_program():
    vocab, model = tiny(bits=4)
    words = encode_words(WORDS[:5], vocab, max_length=12)
    encoder, dim = model.make_encoder()
    guide = build_guide(ConcreteBernoulli, model.latent_sites, encoder=encoder, encoder_dim=dim)
    samples = pyro.infer.Predictive(model.model, guide=guide, num_samples=3, return_sites=["z"])(
        tokens=words.tokens, lengths=words.lengths)
    assert samples["z"].shape == (3, 5, 4)
    loss = pyro.infer.Trace_ELBO().loss_and_grads(model.model, guide, tokens=words.tokens, lengths=words.lengths)
    assert math.isfinite(loss) and guide.source.head.weight.grad is not None  # straight-through gradient
    greedy = model.greedy(torch.zeros(2, 4), max_length=13)
    assert greedy.shape[0] == 2 and greedy.shape[1] <= 13
