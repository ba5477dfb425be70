"""CompILE's gap estimates (pyro_models/compile/gap.py) against independent paths: brute-force
enumeration through the Pyro model's traces, Monte Carlo ELBOs from traces of model and guide, and
quadrature over a 2-dimensional code."""
import itertools
import math

import pyro
import pytest
import torch
from pyro import poutine
from torch import nn

from inference import GapSettings, LocalOptSettings
from inference.gap.estimates import summarise
from pyro_models.compile.data import SequenceSpec, generate, heldout_batch, seeded_generator, training_batches
from pyro_models.compile.experiment import CompILEExperiment
from pyro_models.compile.gap import (
    compile_gap_estimates,
    configuration_log_prior,
    configuration_segments,
    delta_method,
    enumerate_configurations,
    log_sum_configurations,
)
from pyro_models.compile.guide import CompILEGuide
from pyro_models.compile.model import CompILE, CompILEConfig, transition_support

SPEC = SequenceSpec()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def tiny(latent_dist: str, latent_dim: int = 3, **overrides):
    config = CompILEConfig(hidden_dim=8, latent_dim=latent_dim, latent_dist=latent_dist, **overrides)
    torch.manual_seed(1)
    model, guide = CompILE(config), CompILEGuide(config)
    with torch.no_grad():  # sharper decoder and guide heads than the default init: posteriors that matter
        model.decoder[-1].weight.mul_(3.0)
        guide.boundary_head[-1].weight.mul_(3.0)
    return model, guide


def sequences(count: int, seed: int = 5):
    batch = generate(SPEC, count, seeded_generator(seed, 0))
    return batch.tokens, batch.lengths


def brute_force_configurations(length: int, num_segments: int, width: int) -> set:
    support = transition_support(torch.tensor([length]), width)[0]
    found = set()
    for c in itertools.product(range(width), repeat=num_segments - 1):
        path = (0,) + c
        if all(support[p, t] for p, t in itertools.pairwise(path)):
            found.add(c)
    return found


@pytest.mark.parametrize("num_segments", [2, 3, 4])
def test_configurations_are_the_valid_ones_and_the_prior_sums_to_one(num_segments):
    width = 11
    lengths = torch.tensor([2, 3, 6, 11, 8])
    configs = enumerate_configurations(lengths, num_segments, width)
    for row, length in enumerate(lengths.tolist()):
        listed = [tuple(c) for c in configs.positions[row][configs.valid[row]].tolist()]
        assert len(listed) == len(set(listed))
        assert set(listed) == brute_force_configurations(length, num_segments, width)
    if num_segments == 3:  # (L-1)(L-2)/2 + 1 configurations
        assert configs.counts.tolist() == [(n - 1) * (n - 2) // 2 + 1 for n in lengths.tolist()]
    model = CompILE(CompILEConfig(num_segments=num_segments, hidden_dim=8, latent_dim=3))
    prior = configuration_log_prior(model, lengths, configs, width).exp().masked_fill(~configs.valid, 0).sum(-1)
    outside = 1 - prior
    assert (outside >= 0).all() and (outside < 1e-10).all()  # only the masked positions' < 1e-13 masses


def brute_force_log_px(model, tokens, lengths) -> torch.Tensor:
    """log sum over every (b_1, b_2) in range(T)^2 (valid or not) and every one-hot code tuple of
    the joint density of the Pyro model (relaxed=False) conditioned on them, from its trace."""
    cfg = model.config
    width, d, n = tokens.shape[-1], cfg.latent_dim, cfg.num_segments
    combos = list(itertools.product(range(width), repeat=n - 1))
    codes = list(itertools.product(range(d), repeat=n))
    b = torch.tensor([c for c in combos for _ in codes])  # (R, n-1)
    z = torch.tensor([k for _ in combos for k in codes])  # (R, n)
    rows = len(b)
    out = []
    for seq in range(tokens.shape[0]):
        data = {f"b_{i}": nn.functional.one_hot(b[:, i - 1], width).float() for i in range(1, n)}
        data.update({f"z_{i}": nn.functional.one_hot(z[:, i - 1], d).float() for i in range(1, n + 1)})
        conditioned = poutine.condition(model.model, data=data)
        trace = poutine.trace(conditioned).get_trace(tokens=tokens[seq].expand(rows, -1),
                                                     lengths=lengths[seq].expand(rows), relaxed=False)
        joint = sum(site["fn"].log_prob(site["value"]).double() for site in trace.nodes.values()
                    if site["type"] == "sample")
        out.append(joint.logsumexp(0))
    return torch.stack(out)


def trace_elbo(model, guide, tokens, lengths, particles: int):
    """Per sequence: the mean and standard error of log p(x, b, z) - log q(b, z | x) over
    ``particles`` draws of the discrete guide, from Pyro traces (the sequences repeated as rows)."""
    batch = tokens.shape[0]
    rows = {"tokens": tokens.repeat_interleave(particles, 0), "lengths": lengths.repeat_interleave(particles, 0),
            "relaxed": False}
    with torch.no_grad(), pyro.validation_enabled(False):
        guide_trace = poutine.trace(guide.guide).get_trace(**rows)
        model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(**rows)

    def total(trace, latent_only):
        return sum(site["fn"].log_prob(site["value"]).double() for site in trace.nodes.values()
                   if site["type"] == "sample" and not (latent_only and site["is_observed"]))

    log_w = (total(model_trace, False) - total(guide_trace, True)).view(batch, particles)
    return log_w.mean(-1), log_w.std(-1) / math.sqrt(particles)


def test_concrete_codes_are_exact():
    model, guide = tiny("concrete")
    tokens, lengths = sequences(3)
    pyro.set_rng_seed(0)
    est = compile_gap_estimates(model, guide, tokens, lengths, GapSettings())
    assert torch.allclose(est.log_px.value, brute_force_log_px(model, tokens, lengths), atol=2e-4, rtol=0)
    assert est.log_px.mc_var.eq(0).all() and est.elbo_amortised.mc_var.eq(0).all()
    assert torch.equal(est.elbo_local.value, est.log_px.value) and est.elbo_local.mc_var.eq(0).all()
    assert "exactly 0" in est.elbo_local.method
    mc, se = trace_elbo(model, guide, tokens, lengths, particles=20000)
    assert (est.elbo_amortised.value - mc).abs().le(4 * se + 1e-4).all(), (est.elbo_amortised.value, mc, se)
    assert (est.elbo_amortised.value < est.log_px.value - 0.05).all()  # a real gap: the test can fail


def quadrature_log_px(model, tokens, lengths, half_width: float = 7.0, points: int = 281):
    """Gaussian codes in 2 dimensions: log p(x_seg) of every segment on a grid, then the exact sum
    over configurations."""
    width = tokens.shape[-1]
    configs = enumerate_configurations(lengths, model.config.num_segments, width)
    log_prior = configuration_log_prior(model, lengths, configs, width)
    segments = configuration_segments(tokens, lengths, configs, model.config.vocab_size)
    axis = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    cell = (axis[1] - axis[0]) ** 2
    with torch.no_grad():
        log_lik = (model.decoder(grid.float()).log_softmax(-1).double() @ segments.counts.double().T)  # (G, S)
    log_prior_z = torch.distributions.Normal(0.0, 1.0).log_prob(grid).sum(-1)
    seg = torch.logsumexp(log_lik + log_prior_z[:, None], 0) + cell.log()
    value, _, _ = delta_method(log_sum_configurations(log_prior, configs.valid, segments), seg,
                            torch.zeros_like(seg), segments, tokens.shape[0])
    return value


def test_gaussian_codes_bounds_in_order_and_agree_with_independent_paths():
    model, guide = tiny("gaussian", latent_dim=2)
    tokens, lengths = sequences(4)
    pyro.set_rng_seed(0)
    options = GapSettings(elbo_samples=2000, is_k=20000, local=LocalOptSettings(max_steps=400, lr=2e-2, num_particles=10))
    est = compile_gap_estimates(model, guide, tokens, lengths, options)
    p, star, q = est.log_px, est.elbo_local, est.elbo_amortised
    for var in (p.mc_var, star.mc_var, q.mc_var):
        assert (var > 0).all() and torch.isfinite(var).all()
    assert (p.value - star.value >= -3 * (p.mc_var + star.mc_var).sqrt()).all()
    assert (star.value - q.value > 0.01).all()  # q* improves on the amortised guide by more than noise
    assert (star.value - q.value >= -3 * (star.mc_var + q.mc_var).sqrt()).all()
    exact = quadrature_log_px(model, tokens, lengths)
    assert (p.value - exact).abs().le(4 * p.mc_var.sqrt() + 1e-3).all(), (p.value, exact, p.mc_var.sqrt())
    mc, se = trace_elbo(model, guide, tokens, lengths, particles=20000)
    assert (q.value - mc).abs().le(4 * (se ** 2 + q.mc_var).sqrt()).all(), (q.value, mc, se)
    summary = summarise(est)
    assert summary["approximation_gap"] >= 0 and summary["amortisation_gap"] > 0


def test_evaluation_points_and_the_experiment_hook():
    experiment = CompILEExperiment()
    config = CompILEConfig(hidden_dim=8, latent_dim=3, latent_dist="concrete")
    ctx = experiment.context(config=config, settings=experiment.settings_cls(eval_batch_size=40))
    data = experiment.load_data(ctx)
    built = experiment.build(ctx, data)
    test = experiment.evaluation_points(ctx, data, 6, "test")
    assert torch.equal(test["tokens"], heldout_batch(SPEC, 40).tokens[:6])
    assert torch.equal(test["lengths"], heldout_batch(SPEC, 40).lengths[:6])
    train = experiment.evaluation_points(ctx, data, 6, "train")  # the default run: seed 0, batch size 512
    assert torch.equal(train["tokens"], training_batches(SPEC, 512, 0)(0)["tokens"][:6])
    ctx = ctx.replace(batch_size=4, seed=3)  # the sequences another run trained on
    train = experiment.evaluation_points(ctx, data, 6, "train")
    first = training_batches(SPEC, 4, 3)
    assert torch.equal(train["tokens"], torch.cat([first(0)["tokens"], first(1)["tokens"][:2]]))
    assert torch.equal(train["lengths"], torch.cat([first(0)["lengths"], first(1)["lengths"][:2]]))
    assert torch.equal(experiment.evaluation_points(ctx, data, 6, "train")["tokens"], train["tokens"])
    with pytest.raises(ValueError):
        experiment.evaluation_points(ctx, data, 6, "validation")
    est = experiment.gap_estimates(ctx, built, train, GapSettings())
    assert est.log_px.value.shape == (6,) and est.elbo_local is not None and est.iwae is None
    assert est.details["configurations_per_sequence_max"] <= 67
    assert (est.elbo_amortised.value <= est.log_px.value).all()
