"""Flow families: sampled z and log q against an independent change of variables (autograd
Jacobians), scoring through traces, and the auxiliary bound on the linear-Gaussian model."""
import math

import pyro
import pytest
import torch
from conftest import known_answer

from guides import (
    AuxiliaryFlowNormal,
    LatentSite,
    PlanarFlowNormal,
    RealNVPNormal,
    auxiliary_reverse_for,
    build_guide,
    with_auxiliary,
)
from inference import evaluate_importance, log_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def _std_normal(e):
    return -0.5 * (e ** 2 + math.log(2 * math.pi)).sum(-1)


def _run_with_noise(family, params, noises, monkeypatch):
    """The flow with its standard-normal draws replaced by ``noises`` (in order)."""
    queue = list(noises)
    monkeypatch.setattr(torch, "randn_like", lambda t: queue.pop(0))
    return family.flow(params)


def _random_params(family, n, scale=0.5):
    torch.manual_seed(3)
    return family.prior_params() + scale * torch.randn(n, family.param_dim)


def test_planar_one_step_by_hand(monkeypatch):
    d = 3
    family = PlanarFlowNormal(LatentSite("z", d), num_steps=1)
    params = _random_params(family, 4, scale=1.0)
    eps = torch.randn(4, d)
    z, log_q, _ = _run_with_noise(family, params, [eps], monkeypatch)
    loc, raw = params[:, :d], params[:, d:2 * d]
    scale = torch.nn.functional.softplus(raw) + 1e-4
    u, w, b = params[:, 2 * d:3 * d], params[:, 3 * d:4 * d], params[:, 4 * d]
    wu = (w * u).sum(-1, keepdim=True)
    u_hat = u + (-1 + torch.log1p(wu.exp()) - wu) * w / (w * w).sum(-1, keepdim=True)
    z0 = loc + scale * eps
    expected = z0 + u_hat * torch.tanh((w * z0).sum(-1) + b).unsqueeze(-1)
    torch.testing.assert_close(z, expected)
    for i in range(4):  # log q by change of variables with an autograd Jacobian of eps -> z
        def step(e, i=i):
            return (loc[i] + scale[i] * e) + u_hat[i] * torch.tanh((w[i] * (loc[i] + scale[i] * e)).sum() + b[i])

        jac = torch.autograd.functional.jacobian(step, eps[i])
        torch.testing.assert_close(log_q[i], _std_normal(eps[i]) - torch.linalg.slogdet(jac)[1], atol=1e-5, rtol=1e-5)
    assert ((w * u_hat).sum(-1) >= -1).all()  # the invertibility condition


@pytest.mark.parametrize("family_cls", [PlanarFlowNormal, RealNVPNormal])
def test_flow_log_q_is_the_change_of_variables(family_cls, monkeypatch):
    d = 4
    family = family_cls(LatentSite("z", d)).double()
    with torch.no_grad():  # move the shared networks away from their identity initialisation
        for p in family.parameters():
            p.add_(0.3 * torch.randn_like(p))
    params = _random_params(family, 3).double()
    eps = torch.randn(3, d, dtype=torch.float64)
    z, log_q, _ = _run_with_noise(family, params, [eps], monkeypatch)
    for i in range(3):
        def f(e, i=i):
            out, _, _ = _run_with_noise(family, params[i:i + 1], [e.unsqueeze(0)], monkeypatch)
            return out[0]
        jac = torch.autograd.functional.jacobian(f, eps[i])
        torch.testing.assert_close(log_q[i], _std_normal(eps[i]) - torch.linalg.slogdet(jac)[1], atol=1e-8, rtol=1e-8)
        torch.testing.assert_close(f(eps[i]), z[i])


def test_auxiliary_flow_joint_log_q_is_the_change_of_variables(monkeypatch):
    d = 3
    family = AuxiliaryFlowNormal(LatentSite("z", d), context_dim=2).double()
    with torch.no_grad():
        for p in family.parameters():
            p.add_(0.3 * torch.randn_like(p))
    params = _random_params(family, 2).double()
    eps, eta = torch.randn(2, d, dtype=torch.float64), torch.randn(2, d, dtype=torch.float64)
    z, log_q, v = _run_with_noise(family, params, [eps, eta], monkeypatch)
    for i in range(2):
        def f(noise, i=i):
            out, _, aux = _run_with_noise(family, params[i:i + 1], [noise[:d].unsqueeze(0), noise[d:].unsqueeze(0)],
                                          monkeypatch)
            return torch.cat([out[0], aux[0]])
        noise = torch.cat([eps[i], eta[i]])
        jac = torch.autograd.functional.jacobian(f, noise)
        torch.testing.assert_close(log_q[i], _std_normal(noise) - torch.linalg.slogdet(jac)[1], atol=1e-8, rtol=1e-8)
        torch.testing.assert_close(f(noise), torch.cat([z[i], v[i]]))


def test_realnvp_scores_foreign_points_by_inversion_and_planar_refuses():
    family = RealNVPNormal(LatentSite("z", 5)).double()
    with torch.no_grad():
        for p in family.parameters():
            p.add_(0.3 * torch.randn_like(p))
    params = _random_params(family, 6).double()
    q = family.distribution(params)
    z = q.rsample()
    cached = q.log_prob(z)
    torch.testing.assert_close(q.log_prob(z.clone()), cached, atol=1e-8, rtol=1e-8)
    planar = PlanarFlowNormal(LatentSite("z", 5)).distribution(torch.zeros(6, PlanarFlowNormal(LatentSite("z", 5)).param_dim))
    with pytest.raises(ValueError, match="only score the values it sampled"):
        planar.log_prob(torch.zeros(6, 5))


@pytest.fixture
def linear_gaussian():
    return known_answer(64)


@pytest.mark.parametrize("family_cls", [PlanarFlowNormal, RealNVPNormal, AuxiliaryFlowNormal])
def test_flow_guides_score_their_own_samples_in_traces(family_cls, linear_gaussian):
    model, x = linear_gaussian
    encoder, dim = model.make_encoder()
    guide = build_guide(family_cls, model.latent_sites, encoder=encoder, encoder_dim=dim)
    reverse = auxiliary_reverse_for(guide, *model.make_encoder())
    program = model.model if reverse is None else with_auxiliary(model.model, reverse)
    lw = log_weights(program, guide, 7, x=x)  # particles plate: the distribution is expanded
    assert lw.shape == (7, 64) and torch.isfinite(lw).all()
    assert lw.std(0).mean() > 0  # particles are independent draws
    loss = pyro.infer.Trace_ELBO().differentiable_loss(program, guide, x=x)
    loss.backward()
    assert all(p.grad is not None for p in guide.source.parameters())


def test_auxiliary_bound_is_below_the_analytic_log_px(linear_gaussian):
    model, x = linear_gaussian
    encoder, dim = model.make_encoder()
    guide = build_guide(AuxiliaryFlowNormal, model.latent_sites, encoder=encoder, encoder_dim=dim)
    reverse = auxiliary_reverse_for(guide, *model.make_encoder())
    program = with_auxiliary(model.model, reverse)
    optimizer = torch.optim.Adam([*guide.parameters(), *reverse.parameters()], lr=3e-3)
    for _ in range(300):  # a trained guide and r: the bound must approach log p(x) from below
        optimizer.zero_grad()
        pyro.infer.Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1).differentiable_loss(
            program, guide, x=x).backward()
        optimizer.step()
    exact = model.log_marginal(x).detach()
    result = evaluate_importance(program, guide, {"x": x}, 2000)
    gap = exact - result.elbo
    assert gap.mean() > -0.01  # E[log p + log r - log q] <= log p(x), up to Monte Carlo error
    assert (gap > -0.05).all()
    assert gap.mean() < 1.0  # and training moved it close
    assert result.iwae.mean() <= exact.mean() + 0.01  # IWAE is a bound in expectation
    # the reverse model is part of the bound: without it the sum would not be a bound on log p(x)
    trace = pyro.poutine.trace(program).get_trace(x=x)
    assert "aux_z" in trace.nodes and not trace.nodes["aux_z"]["is_observed"]


def _auxiliary_guide_and_program(model):
    encoder, dim = model.make_encoder()
    guide = build_guide(AuxiliaryFlowNormal, model.latent_sites, encoder=encoder, encoder_dim=dim)
    return guide, with_auxiliary(model.model, auxiliary_reverse_for(guide, *model.make_encoder()), model.plate_name)


def test_the_reverse_model_is_scaled_as_the_models_sites_under_subsampling(linear_gaussian):
    """A batch of B of N points: the loss is N/B times the batch's own loss, the reverse model's
    r(v | z, x) included (it was left unscaled: 0.87 of N/B times)."""
    model, x = linear_gaussian
    guide, program = _auxiliary_guide_and_program(model)
    idx, num_data = torch.arange(16), 1000
    elbo = pyro.infer.Trace_ELBO()
    pyro.set_rng_seed(0)
    batch_loss = elbo.loss(program, guide, x=x[idx])
    pyro.set_rng_seed(0)
    subsampled = elbo.loss(program, guide, x=x[idx], idx=idx, num_data=num_data)
    assert subsampled == pytest.approx(batch_loss * num_data / len(idx), rel=1e-5)


def test_the_auxiliary_guide_against_the_bare_model_is_refused_in_a_users_svi(linear_gaussian):
    """Without r(v | z, x) the "-ELBO" of an auxiliary flow fell below 0 on binary images, with
    only Pyro's generic warning: the guide's v now refuses to be scored without the reverse model."""
    model, x = linear_gaussian
    guide, program = _auxiliary_guide_and_program(model)
    bare = pyro.infer.SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
    with pytest.raises(ValueError, match="without the reverse model"):
        bare.step(x)
    wrapped = pyro.infer.SVI(program, guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
    assert math.isfinite(wrapped.step(x))
