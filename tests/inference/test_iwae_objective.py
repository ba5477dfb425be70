"""inference.IwaeObjective: the IWAE-K training loss, its DReG gradient, and the runner around it."""
import math
import signal

import pyro
import pytest
import torch
from conftest import known_answer, linear_ffg_guide
from helpers import module_states_equal
from pyro import poutine
from pyro.infer import Trace_ELBO

from guides import MeanFieldNormal, auxiliary_reverse_for, build_guide, guide_family, with_auxiliary
from inference import (
    ElboObjective,
    IwaeLoss,
    IwaeObjective,
    SiteMismatch,
    TrainingInterrupted,
    TrainSettings,
    evaluate_importance,
    train,
)
from inference.iwae_objective import fixed_parameter_log_prob
from inference.training.checkpoint import load_checkpoint
from inference.training.metrics_log import read_metrics
from lvm_app.registry import EXPERIMENTS
from pyro_models.linear_gaussian.data import load_simulated

pytestmark = pytest.mark.usefixtures("one_thread")


def setup(points: int = 30):
    """A linear-Gaussian model, points from it, and an FFG guide with a linear encoder (random
    head: a poor q, so that the K weights are uneven)."""
    model, x = known_answer(points, noise_scale=0.5, seed=0)
    return model, linear_ffg_guide(model), x


def gradients(objective, params, batch, seed, **schedule):
    for p in params:
        p.grad = None
    pyro.set_rng_seed(seed)
    loss = objective(batch, **schedule)
    return loss, [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


@pytest.mark.parametrize("gradient", ["standard", "dreg"])
def test_the_loss_is_minus_evaluate_importances_iwae_on_the_same_draws(gradient):
    model, guide, x = setup()
    objective = IwaeObjective(model.model, guide, 10, gradient=gradient)
    pyro.set_rng_seed(1)
    loss = objective({"x": x})
    pyro.set_rng_seed(1)
    result = evaluate_importance(model.model, guide, {"x": x}, 10)
    assert abs(loss + result.iwae.mean().item()) < 1e-5
    pyro.set_rng_seed(1)
    per_point = torch.logsumexp(objective.log_weights({"x": x}), 0) - math.log(10)
    torch.testing.assert_close(per_point, result.iwae)  # one log-mean-exp per point


@pytest.mark.parametrize("weight", [0.3, 0.0])
def test_one_particle_with_a_latent_scale_is_the_annealed_elbo_draw_for_draw(weight):
    """How a latent scale acts in IWAE: on each site's log p and log q inside every weight, so that
    K = 1 is exactly the annealed ELBO that ElboObjective(Trace_ELBO()) trains (0 masks the site)."""
    model, guide, x = setup()
    params = [*model.parameters(), *guide.parameters()]
    schedule = {"latent_scales": {"z": weight}}
    iwae_loss, iwae_grads = gradients(IwaeObjective(model.model, guide, 1), params, {"x": x}, 2, **schedule)
    elbo_loss, elbo_grads = gradients(ElboObjective(Trace_ELBO(), model.model, guide), params, {"x": x}, 2, **schedule)
    assert abs(iwae_loss - elbo_loss) < 1e-4 * abs(elbo_loss)
    for got, want in zip(iwae_grads, elbo_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    unscaled, _ = gradients(IwaeObjective(model.model, guide, 1), params, {"x": x}, 2)
    assert abs(unscaled - iwae_loss) > 0.1  # the scale did something


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_dreg_has_the_iwae_gradients_expectation_a_lower_variance_and_the_same_model_gradient(weight):
    """300 paired draws (same particles for both estimators) at K = 10, 4 points: the guide's DReG
    gradient minus the standard one has mean 0 within 4 standard errors in every coordinate (a
    DReG with w~ instead of w~^2 is off by ~100 s.e. here), its total variance is lower, and the
    model's gradients are identical draw for draw. ``weight``: a latent scale (annealing)."""
    model, guide, x = setup(points=4)
    schedule = {} if weight == 1.0 else {"latent_scales": {"z": weight}}
    guide_params, model_params = list(guide.parameters()), list(model.parameters())
    standard = IwaeObjective(model.model, guide, 10)
    dreg = IwaeObjective(model.model, guide, 10, gradient="dreg")
    draws = 300
    standard_grads, dreg_grads = [], []
    for seed in range(draws):
        loss_s, grads_s = gradients(standard, guide_params + model_params, {"x": x}, seed, **schedule)
        loss_d, grads_d = gradients(dreg, guide_params + model_params, {"x": x}, seed, **schedule)
        assert loss_s == loss_d
        for got, want in zip(grads_d[len(guide_params):], grads_s[len(guide_params):]):
            assert torch.equal(got, want)
        standard_grads.append(torch.cat([g.reshape(-1) for g in grads_s[:len(guide_params)]]))
        dreg_grads.append(torch.cat([g.reshape(-1) for g in grads_d[:len(guide_params)]]))
    standard_grads, dreg_grads = torch.stack(standard_grads).double(), torch.stack(dreg_grads).double()
    difference = dreg_grads - standard_grads
    z = difference.mean(0) / (difference.std(0) / math.sqrt(draws))
    assert z.abs().max() < 4, z
    signal_z = standard_grads.mean(0) / (standard_grads.std(0) / math.sqrt(draws))
    assert signal_z.abs().median() > 3  # the expectation compared is not ~0 (the test has power)
    assert dreg_grads.var(0).sum() < 0.75 * standard_grads.var(0).sum()


@pytest.mark.parametrize("family", ["realnvp", "auxflow"])
def test_flows_that_invert_are_scored_with_their_parameters_held_fixed(family):
    """DReG's log q: equal to the density the flow computed while sampling, and with no gradient
    path but the sampled values (for auxflow the pair (z_T, v_T))."""
    model, _, x = setup(points=5)
    encoder, width = model.make_encoder()
    guide = build_guide(guide_family(family), model.latent_sites, encoder=encoder, encoder_dim=width)
    with torch.no_grad():  # non-identity couplings
        for p in guide.families[0].parameters():
            p.add_(0.1 * torch.randn_like(p))
    with pyro.plate("particles", 7, dim=-2):
        trace = poutine.trace(guide).get_trace(x=x)
    site = trace.nodes["z"]
    live = site["fn"].log_prob(site["value"])
    fixed = fixed_parameter_log_prob(site, trace)
    assert live.shape == fixed.shape == (7, 5)
    torch.testing.assert_close(fixed, live, rtol=1e-4, atol=1e-4)
    for node in trace.nodes.values():
        if node["type"] == "sample":
            node["value"] = node["value"].detach()
    assert not fixed_parameter_log_prob(trace.nodes["z"], trace).requires_grad
    program = model.model
    reverse = auxiliary_reverse_for(guide, *model.make_encoder())
    if reverse is not None:
        program = with_auxiliary(model.model, reverse)
    loss = IwaeObjective(program, guide, 5, gradient="dreg")({"x": x})
    assert math.isfinite(loss) and all(p.grad is not None for p in guide.source.parameters())


def test_what_dreg_cannot_serve_is_refused_in_one_line():
    model, _, x = setup()
    encoder, width = model.make_encoder()
    planar = build_guide(guide_family("planar"), model.latent_sites, encoder=encoder, encoder_dim=width)
    with pytest.raises(ValueError, match="PlanarFlowNormal .* no closed-form inverse.*gradient='standard'.*ffg") as refused:
        IwaeObjective(model.model, planar, 10, gradient="dreg")
    assert "\n" not in str(refused.value)
    IwaeObjective(model.model, planar, 10)({"x": x})  # the standard gradient serves it

    def plain_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(torch.zeros(x.shape[0], 3), 1.0).to_event(1))

    with pytest.raises(TypeError, match="needs the guide as an nn.Module"):
        IwaeObjective(model.model, plain_guide, 10, gradient="dreg")
    with pytest.raises(ValueError, match="unknown IWAE gradient 'reinforce'; choose from: standard, dreg"):
        IwaeObjective(model.model, planar, 10, gradient="reinforce")
    with pytest.raises(ValueError, match="num_particles must be an integer of at least 1"):
        IwaeObjective(model.model, planar, 0)
    ffg = build_guide(MeanFieldNormal, model.latent_sites, encoder=encoder, encoder_dim=width)

    def model_sharing_the_encoder(x, **kwargs):
        pyro.module("shared", encoder)
        model.model(x, **kwargs)

    with pytest.raises(ValueError, match="is also used by the model .* cannot take both"):
        IwaeObjective(model_sharing_the_encoder, ffg, 10, gradient="dreg")({"x": x})
    auxflow = build_guide(guide_family("auxflow"), model.latent_sites, encoder=encoder, encoder_dim=width)
    with pytest.raises(SiteMismatch, match="aux_z"):  # scored against the bare model: refused, not mis-scored
        IwaeObjective(model.model, auxflow, 10)({"x": x})


def test_subsampling_factors_stay_out_of_the_weights():
    model, guide, x = setup()
    objective = IwaeObjective(model.model, guide, 10)
    pyro.set_rng_seed(3)
    plain = objective({"x": x})
    pyro.set_rng_seed(3)
    subsampled = objective({"x": x, "idx": torch.arange(30), "num_data": 3000})
    assert abs(plain - subsampled) < 1e-5


def runner_setup(init_seed=0, gradient="dreg"):
    experiment = EXPERIMENTS["linear_gaussian"]
    data = load_simulated()
    ctx = experiment.context(data, guide="ffg", batch_size=32)
    pyro.set_rng_seed(init_seed)
    built = experiment.build(ctx, data)
    objective = IwaeObjective(built.model.model, built.guide, 5, gradient=gradient)
    return built, objective, experiment.batches(ctx, data)


def test_the_runner_trains_with_it_and_resumes_exactly(tmp_path):
    built, objective, batches = runner_setup()
    settings = TrainSettings(steps=200, lr=1e-2, log_every=50, checkpoint_every=1000, progress=False)
    train(objective, built.modules, batches, settings, tmp_path / "long")
    losses = [row["loss"] for row in read_metrics(tmp_path / "long" / "metrics.csv")]
    assert losses[-1] < losses[0] - 0.5, losses

    short = TrainSettings(steps=10, lr=1e-2, log_every=2, checkpoint_every=100, progress=False)
    built, objective, batches = runner_setup()
    train(objective, built.modules, batches, short, tmp_path / "straight")

    def interrupt_at_step_4(step):
        if step == 4:
            signal.raise_signal(signal.SIGINT)
        return {}

    built, objective, batches = runner_setup()
    with pytest.raises(TrainingInterrupted, match="after step 4"):
        train(objective, built.modules, batches, short, tmp_path / "resumed", on_log=interrupt_at_step_4)
    built, objective, batches = runner_setup(init_seed=123)  # everything must come from the checkpoint
    train(objective, built.modules, batches, short, tmp_path / "resumed", resume=True)
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    for name in straight["modules"]:
        assert module_states_equal(straight["modules"][name], resumed["modules"][name]), name
    rows = read_metrics(tmp_path / "resumed" / "metrics.csv")
    assert [r["loss"] for r in rows] == [r["loss"] for r in read_metrics(tmp_path / "straight" / "metrics.csv")]


@pytest.mark.parametrize("gradient", ["standard", "dreg"])
def test_iwae_loss_is_a_pyro_loss_for_svi(gradient):
    """SVI(..., loss=IwaeObjective) was a TypeError. IwaeLoss: positional data as SVI passes them,
    summed over the batch (N/B under subsampling) as Trace_ELBO sums, one log-mean-exp per point,
    and K = 1 is Trace_ELBO draw for draw; SVI steps with it train."""
    model, guide, x = setup()
    loss = IwaeLoss(num_particles=10, gradient=gradient)
    pyro.set_rng_seed(1)
    total = loss.loss(model.model, guide, x)
    pyro.set_rng_seed(1)
    assert total == pytest.approx(-evaluate_importance(model.model, guide, {"x": x}, 10).iwae.sum().item(), rel=1e-5)
    pyro.set_rng_seed(1)
    subsampled = loss.loss(model.model, guide, x, idx=torch.arange(30), num_data=300)
    assert subsampled == pytest.approx(10 * total, rel=1e-5)
    pyro.set_rng_seed(2)
    one = IwaeLoss(num_particles=1).loss(model.model, guide, x)
    pyro.set_rng_seed(2)
    assert one == pytest.approx(Trace_ELBO().loss(model.model, guide, x), rel=1e-5)

    svi = pyro.infer.SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-2}), loss=loss)
    before = torch.cat([p.detach().flatten() for p in guide.parameters()])
    losses = [svi.step(x) for _ in range(60)]
    assert sum(losses[-10:]) < sum(losses[:10])
    assert (torch.cat([p.detach().flatten() for p in guide.parameters()]) - before).abs().max() > 1e-3
    with pytest.raises(ValueError, match="num_particles must be an integer"):
        IwaeLoss(num_particles=0)
