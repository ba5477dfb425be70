"""A guide whose latent sites differ from the model's is refused wherever a bound is computed.

The outside check: the auxiliary-flow guide scored against the bare model (without
``with_auxiliary``) trained to a positive "ELBO" on binary data and an "IWAE" of +292.7 nats.
"""
import pyro
import pyro.distributions as dist
import pytest
import torch

from guides import auxiliary_reverse_for, build_guide, guide_family, with_auxiliary
from inference import ElboObjective, evaluate_importance, log_weights
from inference.ais import AISSettings
from inference.gap.report import GapSettings, gap_report
from inference.log_weights import SiteMismatch
from pyro_models import VAE, VAEConfig

AUX_FIX = "guide samples site 'aux_z', which the model does not have: .*guides.with_auxiliary\\(model, reverse\\)"


@pytest.fixture
def vae_with_auxiliary_guide():
    torch.manual_seed(0)
    model = VAE(VAEConfig(data_dim=64, latent_dim=4, decoder_hidden=(16,), encoder_hidden=(16,)))
    encoder, dim = model.make_encoder()
    guide = build_guide(guide_family("auxflow"), model.latent_sites, encoder=encoder, encoder_dim=dim)
    reverse = auxiliary_reverse_for(guide, *model.make_encoder())
    x = torch.bernoulli(torch.full((6, 64), 0.3))
    return model, guide, reverse, x


def test_the_unwrapped_auxiliary_guide_is_refused_everywhere(vae_with_auxiliary_guide):
    model, guide, _, x = vae_with_auxiliary_guide
    with pytest.raises(SiteMismatch, match=AUX_FIX):
        log_weights(model.model, guide, 3, x=x)
    with pytest.raises(SiteMismatch, match=AUX_FIX):
        evaluate_importance(model.model, guide, {"x": x}, 3)
    with pytest.raises(SiteMismatch, match=AUX_FIX):
        ElboObjective(pyro.infer.Trace_ELBO(), model.model, guide)({"x": x})
    with pytest.raises(SiteMismatch, match=AUX_FIX):
        gap_report(model.model, guide, {"x": x}, GapSettings(ais=AISSettings(num_steps=2), bdmc_points=0,
                                                            convergence_points=0, iwae_k=2, elbo_samples=2))


def test_the_wrapped_auxiliary_guide_is_scored(vae_with_auxiliary_guide):
    model, guide, reverse, x = vae_with_auxiliary_guide
    program = with_auxiliary(model.model, reverse)
    result = evaluate_importance(program, guide, {"x": x}, 5)
    assert (result.iwae < 0).all()
    loss = ElboObjective(pyro.infer.Trace_ELBO(), program, guide)({"x": x})
    assert loss > 0


def test_a_model_latent_the_guide_does_not_sample_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            a = pyro.sample("a", dist.Normal(0.0, 1.0))
            b = pyro.sample("b", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(a + b, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("a", dist.Normal(0.0, 1.0))

    with pytest.raises(SiteMismatch, match="the model's latent site 'b' is not sampled by the guide"):
        log_weights(model, guide, 2, x=torch.zeros(3))
    with pytest.raises(SiteMismatch, match="'b'"):
        ElboObjective(pyro.infer.Trace_ELBO(), model, guide)({"x": torch.zeros(3)})


def test_a_guide_that_samples_an_observed_site_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(SiteMismatch, match="the guide samples site 'x', which the model observes"):
        log_weights(model, guide, 2, x=torch.zeros(3))


# Data the likelihood does not take ------------------------------------------------------------

def small_vae_and_guide():
    torch.manual_seed(0)
    model = VAE(VAEConfig(data_dim=8, latent_dim=2, decoder_hidden=(8,), encoder_hidden=(8,)))
    encoder, dim = model.make_encoder()
    return model, build_guide(guide_family("ffg"), model.latent_sites, encoder=encoder, encoder_dim=dim)


@pytest.mark.parametrize("bad", [2.0, -1.0, 0.5])
def test_data_outside_the_likelihood_support_are_named_by_every_estimator_and_by_svi(bad):
    """A Bernoulli VAE given a 2, a -1 or a 0.5 gave finite numbers before; now the data are named."""
    model, guide = small_vae_and_guide()
    x = torch.bernoulli(torch.full((5, 8), 0.5))
    x[3, 6] = bad
    named = rf"observed site 'x' lie outside what its likelihood \(BernoulliLogits\) takes.*point 3 holds {bad}"
    with pytest.raises(ValueError, match=named):
        evaluate_importance(model.model, guide, {"x": x}, 4)
    with pytest.raises(ValueError, match=named):
        from inference import ais
        ais(model.model, {"x": x}, AISSettings(num_steps=2, num_chains=2, leapfrog_steps=1))
    svi = pyro.infer.SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    with pytest.raises(ValueError, match="site 'x'"):  # a user's SVI loop, Pyro's validation on (its default)
        svi.step(x)


def test_a_nan_in_the_data_is_named_as_the_data_not_as_a_guide_parameter():
    model, guide = small_vae_and_guide()
    x = torch.bernoulli(torch.full((5, 8), 0.5))
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"the data 'x' hold a NaN or an infinite value \(point 2\)"):
        evaluate_importance(model.model, guide, {"x": x}, 4)
    svi = pyro.infer.SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    with pytest.raises(ValueError, match="the data 'argument 0' given to the guide hold a NaN"):
        svi.step(x)


# Pyro's autoguides -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["AutoNormal", "AutoDiagonalNormal", "AutoMultivariateNormal"])
def test_autoguides_work_in_every_estimator_and_in_the_gap_report(name):
    """AutoNormal samples z_unconstrained (its own auxiliary site) and z as a Delta: the estimators
    took the auxiliary site for a mismatch (a regression); the joint autoguides were refused. Their
    bounds sit below the exact log p(x)."""
    import pyro.infer.autoguide as autoguide
    from conftest import known_answer

    model, x = known_answer(20, noise_scale=0.5, seed=0)
    guide = getattr(autoguide, name)(model.model)
    guide(x=x)
    exact = model.log_marginal(x).detach()
    result = evaluate_importance(model.model, guide, {"x": x}, 500)
    assert (result.iwae <= exact + 0.05).all() and (result.elbo <= result.iwae).all()
    report = gap_report(model.model, guide, {"x": x}, GapSettings(ais=AISSettings(num_steps=20, num_chains=4),
                                                                  bdmc_points=0, convergence_points=0, iwae_k=50,
                                                                  elbo_samples=50), warn=False)
    assert report["elbo_amortised"] <= report["iwae"] and "build_guide" in report["local_skipped"]
    ElboObjective(pyro.infer.Trace_ELBO(), model.model, guide)({"x": x})  # the training objective takes it too


def orthogonal_known_answer(points: int):
    """The linear-Gaussian test bed with orthogonal columns of W: its posterior is diagonal, so a
    diagonal q can equal it."""
    from conftest import known_answer

    model, _ = known_answer(points)
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(model.config.data_dim, model.config.latent_dim))
        model.weight.copy_(q * torch.tensor([2.0, 1.0, 0.5]))
        x = model.marginal().sample((points,))
    return model, x


@pytest.mark.parametrize("name", ["AutoDiagonalNormal", "AutoMultivariateNormal", "AutoLowRankMultivariateNormal"])
def test_a_joint_gaussian_autoguide_at_the_exact_posterior_weights_each_point_by_its_exact_log_px(name):
    """These guides hold every point's latents in one site outside the data plate (they were
    refused); each point is weighted by its marginal of q. Set to the exact posterior, every
    particle's weight is that point's exact log p(x): a wrong split of q by point would not be."""
    import pyro.infer.autoguide as autoguide

    model, x = orthogonal_known_answer(8)
    guide = getattr(autoguide, name)(model.model)
    guide(x=x)
    posterior = model.posterior(x)
    with torch.no_grad():
        guide.loc.copy_(posterior.mean.reshape(-1))  # the site's (points, latent) value, row by row
        sd = posterior.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt().reshape(-1)
        if name == "AutoLowRankMultivariateNormal":
            guide.cov_factor.zero_()
        if name == "AutoMultivariateNormal":
            guide.scale_tril.copy_(torch.eye(len(sd)))
        guide.scale = sd  # (a PyroParam: set through its constraint)
    weights = log_weights(model.model, guide, 50, x=x)
    exact = model.log_marginal(x).detach()
    assert (weights - exact).abs().max() < 1e-3, (weights - exact).abs().max()
    result = evaluate_importance(model.model, guide, {"x": x}, 10)
    assert (result.elbo - exact).abs().max() < 1e-3


def test_an_autoguide_without_per_point_marginals_is_refused_saying_why():
    import pyro.infer.autoguide as autoguide
    from conftest import known_answer

    model, x = known_answer(8)
    guide = autoguide.AutoIAFNormal(model.model)
    guide(x=x)
    with pytest.raises(ValueError, match="holds every point's latents in one vector.*no per-point marginal.*AutoNormal"):
        evaluate_importance(model.model, guide, {"x": x}, 10)


def test_a_point_mass_guide_is_no_proposal():
    """AutoDelta scored as a proposal gave an "IWAE" up to 1 nat above the exact log p(x)."""
    from conftest import known_answer
    from pyro.infer.autoguide import AutoDelta

    model, x = known_answer(8)
    guide = AutoDelta(model.model)
    guide(x=x)
    with pytest.raises(SiteMismatch, match="'z' is a point mass"):
        evaluate_importance(model.model, guide, {"x": x}, 10)
