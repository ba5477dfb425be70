"""The Sylvester flow family (``sylvester``): log q against an independent change of variables
(autograd Jacobians), invertibility at extreme parameters, the prior's parameters, and the
family as an amortised and a local guide, with its bounds below the exact log p(x) of
probabilistic PCA."""
import json
import math

import pyro
import pytest
import torch
from conftest import known_answer
from helpers import run_cli
from torch import nn

from guides import GUIDE_FAMILIES, LatentSite, build_guide, guide_family
from guides.sylvester import DIAG_BOUND, SylvesterFlowNormal
from inference import IwaeObjective, evaluate_importance, log_weights
from inference.local_opt import LocalOptSettings, optimise_local
from pyro_models.ppca import ReplicatedPPCA

pytestmark = pytest.mark.usefixtures("one_thread")


def _std_normal(e):
    return -0.5 * (e ** 2 + math.log(2 * math.pi)).sum(-1)


def _run_with_noise(family, params, noise, monkeypatch):
    """The flow with its standard-normal draw replaced by ``noise``."""
    monkeypatch.setattr(torch, "randn_like", lambda t: noise)
    return family.flow(params)


def _random_params(family, n, scale=1.0, seed=3):
    generator = torch.Generator().manual_seed(seed)
    return (family.prior_params() + scale * torch.randn(n, family.param_dim, generator=generator)).double()


def _autograd_log_q(family, params, eps, monkeypatch):
    """log N(eps; 0, I) - log|det d z / d eps| for one point, by autograd through the whole flow."""
    def f(e):
        out, _, _ = _run_with_noise(family, params.unsqueeze(0), e.unsqueeze(0), monkeypatch)
        return out[0]
    jac = torch.autograd.functional.jacobian(f, eps)
    sign, log_abs_det = torch.linalg.slogdet(jac)
    return _std_normal(eps) - log_abs_det, sign, f(eps)


@pytest.mark.parametrize("dim,options", [(3, {}), (5, {"num_columns": 2, "num_reflections": 3}),
                                         (4, {"num_steps": 2, "num_reflections": 1, "num_columns": 4})],
                         ids=["full-d3", "columns2-of-d5", "one-reflection"])
def test_log_q_is_the_change_of_variables(dim, options, monkeypatch):
    family = SylvesterFlowNormal(LatentSite("z", dim), **options).double()
    params = _random_params(family, 5)
    eps = torch.randn(5, dim, dtype=torch.float64)
    z, log_q, _ = _run_with_noise(family, params, eps, monkeypatch)
    loc, scale = params[:, :dim], torch.nn.functional.softplus(params[:, dim:2 * dim]) + 1e-4
    base = _std_normal(eps) - scale.log().sum(-1)  # log q(z_0)
    for i in range(5):
        expected, sign, z_i = _autograd_log_q(family, params[i], eps[i], monkeypatch)
        torch.testing.assert_close(z_i, z[i])
        assert sign > 0  # every step keeps the orientation: det(I + diag(h') R~ R) > 0
        torch.testing.assert_close(log_q[i], expected, atol=1e-8, rtol=1e-8)
        # the flow's own log|det| (beyond the base's) is far from 0 here, so a wrong sign or a
        # missing term of it could not pass the comparison above
        flow_log_det = base[i] - log_q[i]
        assert flow_log_det.abs() > 1e-2, flow_log_det
    assert not torch.allclose(z, loc + scale * eps)  # the flow moved the points


def test_the_diagonal_constraint_holds_for_extreme_raw_parameters(monkeypatch):
    """r_ii r~_ii > -1 whatever the raw parameters, so every step stays invertible: raw diagonals
    of +-1e4 with opposite signs (products at -bound^2, where a bare tanh would give exactly -1 in
    floating point), and the worst case (pre-activation 0, tanh' = 1) on point 0."""
    d, n = 3, 4
    family = SylvesterFlowNormal(LatentSite("z", d), num_steps=2).double()
    strict, _, m, _, _, _ = family._sizes
    params = _random_params(family, n)
    step = params[:, 2 * d:].unflatten(-1, (2, family.step_dim))  # a view: writes go to params
    signs = torch.randint(0, 2, (n, 2, m), generator=torch.Generator().manual_seed(1)).double() * 2 - 1
    step[..., 2 * strict:2 * strict + m] = 1e4 * signs  # R's raw diagonal
    step[..., 2 * strict + m:2 * strict + 2 * m] = -1e4 * signs  # R~'s raw diagonal
    # point 0: z_0 = loc (scale at its minimum), b = 0 and loc = 0, so the pre-activation is ~0
    params[0, :d] = 0.0
    params[0, d:2 * d] = -50.0
    step[0, :, :2 * strict] = 0.0
    step[0, :, 2 * strict + 2 * m:2 * strict + 3 * m] = 0.0
    for dtype in (torch.float32, torch.float64):
        r, r_tilde, _, _ = family.to(dtype).steps(params.to(dtype))
        product = r.diagonal(dim1=-2, dim2=-1) * r_tilde.diagonal(dim1=-2, dim2=-1)
        assert (product > -1).all() and (product <= -DIAG_BOUND ** 2 + 1e-6).all(), product
        _, log_q, _ = _run_with_noise(family, params.to(dtype), torch.randn(n, d, dtype=dtype), monkeypatch)
        assert torch.isfinite(log_q).all()
    family = family.double()
    eps = torch.randn(n, d, dtype=torch.float64)
    _, log_q, _ = _run_with_noise(family, params, eps, monkeypatch)
    for i in range(n):
        expected, sign, _ = _autograd_log_q(family, params[i], eps[i], monkeypatch)
        assert sign > 0  # the Jacobian's determinant is positive: the flow is invertible
        torch.testing.assert_close(log_q[i], expected, atol=1e-8, rtol=1e-8)
    # the worst case: each step's determinant is about (1 - bound^2)^d, small but positive
    scale = torch.nn.functional.softplus(torch.tensor(-50.0, dtype=torch.float64)) + 1e-4
    flow_log_det = _std_normal(eps[0]) - d * scale.log() - log_q[0]
    assert abs(flow_log_det - 2 * d * math.log1p(-DIAG_BOUND ** 2)) < 1e-3, flow_log_det


def test_prior_params_give_exactly_the_standard_normal():
    family = SylvesterFlowNormal(LatentSite("z", 50))
    assert family.param_dim == 2 * 50 + 4 * (16 * 16 + 2 * 16 + 4 * 50)  # the documented default: 2052
    q = family.distribution(family.prior_params().expand(200, -1))
    z = q.rsample()
    torch.testing.assert_close(q.log_prob(z), torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1),
                               atol=1e-5, rtol=1e-6)
    r, _, _, _ = family.steps(family.prior_params())
    assert (r == 0).all()  # every step is the identity
    # ... and not a saddle: the flow's parameters get gradients at the prior (a local guide starts there)
    params = family.prior_params().expand(20, -1).clone().requires_grad_()
    z, log_q, _ = family.flow(params)
    (z.pow(2).sum() + log_q.sum()).backward()
    assert params.grad[:, 100:].abs().sum() > 0


def test_registered_by_name_and_refuses_points_it_did_not_sample():
    assert GUIDE_FAMILIES["sylvester"] is SylvesterFlowNormal and guide_family("sylvester") is SylvesterFlowNormal
    family = SylvesterFlowNormal(LatentSite("z", 4))
    q = family.distribution(family.prior_params().expand(6, -1))
    z = q.rsample()
    assert torch.equal(q.log_prob(z), q.log_prob(z))
    with pytest.raises(ValueError, match="only score the values it sampled"):
        q.log_prob(z.clone())
    with pytest.raises(ValueError, match="num_columns"):
        SylvesterFlowNormal(LatentSite("z", 4), num_columns=5)


@pytest.fixture
def linear_gaussian():
    return known_answer(64)


def test_amortised_guide_scores_its_samples_in_traces_and_dreg_is_refused(linear_gaussian):
    model, x = linear_gaussian
    encoder, dim = model.make_encoder()
    guide = build_guide(SylvesterFlowNormal, model.latent_sites, encoder=encoder, encoder_dim=dim)
    lw = log_weights(model.model, guide, 7, x=x)  # particles plate: the distribution is expanded
    assert lw.shape == (7, 64) and torch.isfinite(lw).all()
    assert lw.std(0).mean() > 0  # particles are independent draws
    pyro.infer.Trace_ELBO().differentiable_loss(model.model, guide, x=x).backward()
    assert all(p.grad is not None for p in guide.source.parameters())
    with pytest.raises(ValueError, match="SylvesterFlowNormal .* no closed-form inverse.*gradient='standard'"):
        IwaeObjective(model.model, guide, 10, gradient="dreg")
    IwaeObjective(model.model, guide, 10)({"x": x})  # the standard gradient serves it


class PPCAEncoder(nn.Module):
    """Reads a point's x and its replicate's W and b (the posterior depends on all three)."""

    def __init__(self, data_dim, latent_dim, width=64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(data_dim * (latent_dim + 2), width), nn.ELU(), nn.Linear(width, width),
                                 nn.ELU())

    def forward(self, x, weight, bias, idx=None):
        return self.net(torch.cat([x, weight.flatten(-2), bias], -1))


def _assert_not_above(estimate, exact, mc_var, what):
    """A lower bound's mean over the points may not sit above the exact mean by 3 Monte Carlo s.e."""
    diff = (estimate - exact).mean().item()
    se = (mc_var.sum().sqrt() / len(exact)).item()
    assert diff < 3 * se + 1e-4, f"{what}: {diff:.4f} above log p(x) (s.e. {se:.4f})"
    return diff


def test_bounds_on_probabilistic_pca_sit_below_the_exact_log_px_amortised_and_local():
    """Trained amortised (encoder) and local (q* per point, from the prior) Sylvester guides on
    probabilistic PCA: their ELBO and IWAE-K sit below the exact log p(x), IWAE above the ELBO,
    and training brought them close."""
    ppca = ReplicatedPPCA(4, 16, data_dim=5, latent_dim=2, noise=0.5, seed=0)
    batch = ppca.batch()
    exact = ppca.log_marginal()
    torch.manual_seed(0)
    guide = build_guide(SylvesterFlowNormal, [LatentSite("z", 2)], encoder=PPCAEncoder(5, 2), encoder_dim=64)
    optimizer = torch.optim.Adam(guide.parameters(), lr=3e-3)
    elbo_loss = pyro.infer.Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    for _ in range(400):
        optimizer.zero_grad()
        elbo_loss.differentiable_loss(ppca.model, guide, **batch).backward()
        optimizer.step()
    amortised = evaluate_importance(ppca.model, guide, batch, 1000)
    elbo_gap = -_assert_not_above(amortised.elbo, exact, amortised.elbo_mc_var, "amortised ELBO")
    iwae_gap = -_assert_not_above(amortised.iwae, exact, amortised.iwae_mc_var, "amortised IWAE-1000")
    assert iwae_gap < elbo_gap < 1.0, (iwae_gap, elbo_gap)

    result = optimise_local(ppca.model, guide, batch,
                            LocalOptSettings(init="prior", lr=0.03, num_particles=32, check_every=50, max_steps=1500))
    assert not result.guide.amortised and result.guide.families[0] is guide.families[0]

    def program(x, weight, bias, idx=None):  # the local guide reads idx; PPCA's model does not take it
        ppca.model(x, weight, bias)

    local = evaluate_importance(program, result.guide, {**batch, "idx": torch.arange(len(exact))}, 1000)
    local_gap = -_assert_not_above(local.elbo, exact, local.elbo_mc_var, "local ELBO (q*)")
    _assert_not_above(local.iwae, exact, local.iwae_mc_var, "local IWAE-1000")
    assert local_gap < 0.1, local_gap  # q* per point: close to the (Gaussian) posterior


@pytest.mark.parametrize("local", [False, True], ids=["amortised", "local"])
def test_the_vae_trains_with_the_sylvester_guide_from_the_command_line(local, tmp_path):
    result = run_cli("--model", "vae", "--guide", "sylvester", *(["--local"] if local else []), "--steps", "3",
                     "--out", tmp_path, "--no-progress", "--iwae-k", "5", "--eval-points", "20",
                     "--train-eval-points", "50")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    config = json.loads((tmp_path / "config.json").read_text())
    assert summary["train_steps"] == 3 and config["run"]["guide"] == "sylvester"
    if not local:
        assert summary["test_elbo"] <= summary["test_iwae"] < 0


def test_the_cli_refuses_dreg_for_sylvester(tmp_path):
    result = run_cli("--model", "linear_gaussian", "--guide", "sylvester", "--objective", "iwae", "--particles", "3",
                     "--gradient", "dreg", "--steps", "1", "--out", tmp_path, "--no-progress")
    assert result.returncode == 2 and "--gradient dreg does not apply to --guide sylvester" in result.stderr
