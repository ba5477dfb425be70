"""Local optimisation of q* on the linear-Gaussian model, against each family's analytic optimum."""
from functools import partial

import pytest
import torch

from guides import MeanFieldNormal, PlanarFlowNormal, RealNVPNormal, build_guide
from inference import evaluate_importance
from inference.local_opt import LocalOptSettings, optimise_local
from pyro_models import LinearGaussian, LinearGaussianConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(diagonal_posterior: bool):
    torch.manual_seed(2)
    model = LinearGaussian(LinearGaussianConfig(data_dim=6, latent_dim=3, noise_scale=0.4))
    if diagonal_posterior:  # orthogonal columns of W: W^T W diagonal, so is the posterior covariance
        with torch.no_grad():
            model.weight.copy_(torch.linalg.qr(torch.randn(6, 3))[0] * torch.tensor([2.0, 1.0, 0.5]))
    else:  # correlated columns: a correlated posterior
        with torch.no_grad():
            model.weight[:, 1] += model.weight[:, 0]
    with torch.no_grad():
        x = model.marginal().sample((50,))
    return model, x


def fast(**kw):
    """Many samples per step (cheap here: the cost is per step) so that a larger step size works."""
    return LocalOptSettings(lr=0.03, num_particles=64, check_every=50, **kw)


def amortised(family_cls, model):
    encoder, dim = model.make_encoder()
    return build_guide(family_cls, model.latent_sites, encoder=encoder, encoder_dim=dim)


def test_ffg_reaches_the_exact_posterior_when_it_is_diagonal():
    model, x = make_model(diagonal_posterior=True)
    result = optimise_local(model.model, amortised(MeanFieldNormal, model), {"x": x},
                            fast(init="prior"), frozen_modules=[model])
    assert result.steps < LocalOptSettings().max_steps  # stopped because it stopped improving
    posterior = model.posterior(x)
    loc, raw = result.guide.params(idx=torch.arange(50)).split(3, dim=-1)
    scale = torch.nn.functional.softplus(raw) + MeanFieldNormal.min_scale
    torch.testing.assert_close(loc, posterior.mean, atol=0.1, rtol=0)  # Adam noise: ~0.1 sd
    torch.testing.assert_close(scale, posterior.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt(), atol=0.05, rtol=0)
    elbo = evaluate_importance(model.model, result.guide, {"x": x, "idx": torch.arange(50)}, 2000).elbo
    assert (elbo - model.log_marginal(x)).abs().mean() < 0.02


def test_ffg_reaches_its_analytic_optimum_for_a_correlated_posterior():
    """Best FFG: N(mu, diag(1 / Lambda_ii)), ELBO = log p(x) - (sum log Lambda_ii - log det Lambda) / 2."""
    model, x = make_model(diagonal_posterior=False)
    precision = torch.linalg.inv(model.posterior(x).covariance_matrix[0]).detach()
    kl = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision))
    assert kl > 0.05  # the posterior is correlated enough to matter
    optimum = model.log_marginal(x).detach() - kl
    for init in ("prior", "amortised"):
        result = optimise_local(model.model, amortised(MeanFieldNormal, model), {"x": x},
                                fast(init=init), frozen_modules=[model])
        elbo = evaluate_importance(model.model, result.guide, {"x": x, "idx": torch.arange(50)}, 2000).elbo
        assert (elbo - optimum).mean().abs() < 0.02, init


@pytest.mark.parametrize("family_cls", [partial(PlanarFlowNormal, num_steps=2), partial(RealNVPNormal, num_layers=2, hidden=16)], ids=["planar", "realnvp"])
def test_flow_families_reach_log_px_when_the_posterior_is_in_the_family(family_cls):
    model, x = make_model(diagonal_posterior=True)
    guide = amortised(family_cls, model)
    shared = [p.clone() for p in guide.families.parameters()]
    result = optimise_local(model.model, guide, {"x": x}, fast(init="prior", max_steps=2000),
                            frozen_modules=[model])
    elbo = evaluate_importance(model.model, result.guide, {"x": x, "idx": torch.arange(50)}, 2000).elbo
    assert (model.log_marginal(x) - elbo).mean() < 0.08
    # the same family: shared networks are the amortised guide's, untouched, and still trainable after
    assert all(torch.equal(a, b) for a, b in zip(shared, guide.families.parameters()))
    assert all(p.requires_grad for p in guide.parameters()) and all(p.requires_grad for p in model.parameters())
    assert result.guide.families[0] is guide.families[0]


def test_bad_init_is_refused():
    model, x = make_model(diagonal_posterior=True)
    with pytest.raises(ValueError, match="amortised, prior"):
        optimise_local(model.model, amortised(MeanFieldNormal, model), {"x": x}, LocalOptSettings(init="nope"))
