"""The LFM experiment's training options: resume is bit-exact with the decaying-average baseline
(its running average lives in Pyro's param store, outside every module), a KL weight of exactly 0
keeps the score-function gradient of the reconstruction term, and evaluation reports the true
ELBO, KL and log p(x) whatever free nats, word dropout and KL warm-up did to training."""
import itertools
import math
import signal

import pyro
import pytest
import torch
from pyro.infer import TraceGraph_ELBO

from guides import MeanFieldBernoulli, build_guide
from inference import TrainingInterrupted, TrainSettings, train
from inference.training.checkpoint import load_checkpoint
from inference.training.metrics_log import read_metrics
from pyro_models.lfm.data import SigmorphonData, Vocabulary, encode_words
from pyro_models.lfm.experiment import LFMExperiment, LFMSettings
from pyro_models.lfm.model import LatentFactorModel, LFMConfig, bernoulli_kl

WORDS = ["abacoramos", "ábaco", "niño", "x", "pingüinos", "desabejada", "sí", "comer", "cantaríais", "ala",
         "zz", "queso", "perro", "gatos", "hablábamos", "ríe"]
BASELINE_AVG = "__baseline_avg_downstream_cost_z"

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_data():
    vocab = Vocabulary(c for w in WORDS for c in w)
    words = encode_words(WORDS, vocab, max_length=30)
    return SigmorphonData(vocab, words, encode_words(WORDS[:6], vocab, 30), encode_words(WORDS[6:12], vocab, 30), 30)


class TinyRun:
    """A tiny LFM run built the way the CLI builds it (the CLI clears the param store first):
    batches of 4 words, seed 0."""

    def __init__(self, settings: LFMSettings, guide="bernoulli", bits=4, init_seed=0):
        self.experiment, self.data = LFMExperiment(), tiny_data()
        config = LFMConfig(embedding_dim=8, hidden_dim=8, latent_bits=bits, dropout=0.1)
        self.ctx = self.experiment.context(self.data, config=config, settings=settings, guide=guide, batch_size=4)
        pyro.clear_param_store()
        pyro.set_rng_seed(init_seed)
        self.built = self.experiment.build(self.ctx, self.data)

    def batches(self):
        return self.experiment.batches(self.ctx, self.data)


def run_settings(steps):
    return TrainSettings(steps=steps, lr=1e-2, log_every=1, checkpoint_every=100, progress=False)


def states_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(states_equal(a[k], b[k]) if isinstance(a[k], dict) else torch.equal(a[k], b[k]) for k in a)


def test_resume_is_bit_exact_with_the_decaying_baseline(tmp_path):
    settings = LFMSettings(baseline="decaying", baseline_beta=0.5, threads=0)
    run = TinyRun(settings)
    built = run.built
    assert "param_store" in built.modules
    train(built.objective, built.modules, run.batches(), run_settings(8), tmp_path / "straight")
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    average = straight["modules"]["param_store"]["_extra_state"][BASELINE_AVG]
    assert average.shape == (4,) and (average != 0).all()  # the running average is in the checkpoint

    def interrupt_at_step_3(step):
        if step == 3:
            signal.raise_signal(signal.SIGINT)
        return {}

    run = TinyRun(settings)
    built = run.built
    with pytest.raises(TrainingInterrupted, match="after step 3"):
        train(built.objective, built.modules, run.batches(), run_settings(8), tmp_path / "resumed",
              on_log=interrupt_at_step_3)
    run = TinyRun(settings, init_seed=123)
    built = run.built  # fresh param store, other initial values and RNG
    train(built.objective, built.modules, run.batches(), run_settings(8), tmp_path / "resumed",
          resume=True)
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    for name in straight["modules"]:
        assert states_equal(straight["modules"][name], resumed["modules"][name]), name
    losses = [r["loss"] for r in read_metrics(tmp_path / "straight" / "metrics.csv")]
    assert [r["loss"] for r in read_metrics(tmp_path / "resumed" / "metrics.csv")] == losses

    # the test has power: without the param-store entries in the checkpoint the resumed run differs
    run = TinyRun(settings)
    built = run.built
    with pytest.raises(TrainingInterrupted):
        train(built.objective, built.modules, run.batches(), run_settings(8), tmp_path / "lost",
              on_log=interrupt_at_step_3)
    run = TinyRun(settings, init_seed=123)
    built = run.built
    state = load_checkpoint(tmp_path / "lost" / "checkpoint.pt")
    state["modules"]["param_store"]["_extra_state"] = {}
    torch.save(state, tmp_path / "lost" / "checkpoint.pt")
    train(built.objective, built.modules, run.batches(), run_settings(8), tmp_path / "lost", resume=True)
    assert [r["loss"] for r in read_metrics(tmp_path / "lost" / "metrics.csv")][3:] != losses[3:]


def all_bits(k):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=k)))


def exact_terms(model, guide, words):
    """Per word, by enumerating the 2^K latent values: log p(x), the ELBO, E_q[log p(x | z)] and KL."""
    data = {"tokens": words.tokens, "lengths": words.lengths}
    logits = guide.params(**data)
    z = all_bits(model.config.latent_bits).unsqueeze(1)  # (2^K, 1, K)
    log_q = torch.distributions.Bernoulli(logits=logits).log_prob(z).sum(-1)  # (2^K, B)
    log_prior = model.prior(1, words.tokens).log_prob(z)  # (2^K, 1)
    log_lik = model.log_likelihood(z.expand(-1, len(words), -1), words.tokens, words.lengths)  # (2^K, B)
    q = log_q.exp()
    return {"log_px": torch.logsumexp(log_prior + log_lik, 0), "elbo": (q * (log_prior + log_lik - log_q)).sum(0),
            "reconstruction": (q * log_lik).sum(0), "kl": bernoulli_kl(logits, 0.5)}


@pytest.mark.parametrize("kl_weight", [1.0, 0.0])
def test_tracegraph_gradient_with_kl_weight_0_keeps_the_reconstruction_score_function(kl_weight):
    """Free nats below the threshold and the start of KL warm-up give the z site a weight of exactly
    0 (masked): the encoder's gradient must then be the one of E_q[log p(x | z)], not nothing."""
    torch.manual_seed(2)
    vocab = Vocabulary(c for w in WORDS for c in w)
    model = LatentFactorModel(LFMConfig(vocab_size=len(vocab), embedding_dim=8, hidden_dim=8, latent_bits=3,
                                        dropout=0.0)).eval()
    words = encode_words(WORDS[:3], vocab, max_length=12)
    guide = build_guide(MeanFieldBernoulli, model.latent_sites, num_points=3)
    with torch.no_grad():
        guide.source.table.copy_(torch.randn(3, 3))
        model.init_state.weight.normal_(0, 3.0)
        model.output.weight.normal_(0, 3.0)
    for p in model.parameters():
        p.requires_grad_(False)
    idx = torch.arange(3)
    logits = guide.source.table
    z = all_bits(3).unsqueeze(1)
    log_q = torch.distributions.Bernoulli(logits=logits).log_prob(z).sum(-1)
    log_prior = model.prior(1, words.tokens).log_prob(z)
    log_lik = model.log_likelihood(z.expand(-1, 3, -1), words.tokens, words.lengths)
    objective = (log_q.exp() * (log_lik + kl_weight * (log_prior - log_q))).sum()
    exact = torch.autograd.grad(objective, logits)[0]
    estimates = []
    for _ in range(10):
        guide.zero_grad()
        elbo = TraceGraph_ELBO(num_particles=3000, vectorize_particles=True, max_plate_nesting=1)
        elbo.loss_and_grads(model.model, guide, tokens=words.tokens, lengths=words.lengths, idx=idx,
                            latent_scales={"z": kl_weight})
        estimates.append(-guide.source.table.grad.clone())
    estimates = torch.stack(estimates)
    mean, se = estimates.mean(0), estimates.std(0) / math.sqrt(len(estimates))
    assert ((mean - exact).abs() <= 4 * se + 0.02).all(), (mean, exact, se)
    assert (mean.abs() / se).max() > 6  # not nothing: the reconstruction's score function survives the mask


@torch.no_grad()
def test_evaluation_reports_the_true_elbo_and_log_px_whatever_the_training_options(tmp_path):
    """A run trained with free nats, word dropout and KL warm-up is evaluated as the plain model:
    no word dropout, KL weight 1, no free nats, dropout off."""
    settings = LFMSettings(free_nats=100.0, word_dropout=0.7, kl_warmup_steps=50, importance_samples=3000,
                           early_stopping=0, threads=0)
    run = TinyRun(settings, bits=4)
    built = run.built
    with torch.enable_grad():
        train(built.objective, built.modules, run.batches(), run_settings(3), tmp_path,
              schedule=run.experiment.schedule(run.ctx, built))
    with torch.no_grad():
        torch.nn.init.normal_(built.guide.source.head.weight, std=2.5)  # a KL far from 0
    for module in built.modules.values():
        module.eval()
    summary = run.experiment.evaluate(run.ctx, built, run.data, tmp_path, progress=False)
    test = run.data.test
    exact = exact_terms(built.model, built.guide, test)
    assert exact["kl"].mean() > 0.3
    assert summary["test_kl"] == pytest.approx(exact["kl"].mean().item(), abs=1e-5)
    assert summary["test_elbo"] == pytest.approx(exact["elbo"].mean().item(), abs=0.05)
    assert summary["test_nll"] == pytest.approx(-exact["log_px"].mean().item(), abs=0.02)
    chars = test.lengths.sum().item()
    assert summary["test_perplexity"] == pytest.approx(math.exp(-exact["log_px"].sum().item() / chars), rel=0.01)
    # what the training options would have given instead: the ELBO without its KL term
    assert abs(summary["test_elbo"] - exact["reconstruction"].mean().item()) > 0.25
