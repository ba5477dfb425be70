"""Semi-amortised guides (inference.RefinedGuide) on the linear-Gaussian model, whose best diagonal
Gaussian and ELBO are known in closed form."""
import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from conftest import known_answer, linear_ffg_guide
from pyro.infer import Trace_ELBO

from guides import (
    MeanFieldBernoulli,
    MeanFieldNormal,
    auxiliary_reverse_for,
    build_guide,
    guide_family,
    with_auxiliary,
)
from inference import RefinedGuide, evaluate_importance
from inference.refine import ENCODER_TERM
from pyro_models import LatentSite

pytestmark = pytest.mark.usefixtures("one_thread")
MIN_SCALE = MeanFieldNormal.min_scale


def linear_model(points: int = 20, dtype=torch.float32):
    return known_answer(points, noise_scale=0.5, seed=0, dtype=dtype)


def linear_guide(model, loc_map=None, loc_bias=None, scale=None):
    """An FFG guide whose encoder is linear in x: loc = A x + a, scale constant."""
    guide = linear_ffg_guide(model)
    guide.to(model.bias.dtype)
    head = guide.source.head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        if loc_map is not None:
            head.weight[:3] = loc_map
        if loc_bias is not None:
            head.bias[:3] = loc_bias
        if scale is not None:
            head.bias[3:] = torch.as_tensor(scale - MIN_SCALE).expm1().log()
    return guide


def near_optimal_guide(model):
    """Mean map of the posterior, perturbed; scales 1.3 times the best diagonal ones."""
    precision = model.posterior_precision().detach()
    mean_map = torch.linalg.inv(precision) @ model.weight.detach().T / model.log_noise.detach().exp() ** 2
    torch.manual_seed(1)
    return linear_guide(model, mean_map + 0.1 * torch.randn(3, 6), -mean_map @ model.bias.detach(),
                        1.3 * torch.diagonal(precision).rsqrt())


def analytic_elbo(model, x, params):
    loc, raw = params.split(3, dim=-1)
    return model.diagonal_gaussian_elbo(x, loc, F.softplus(raw) + MIN_SCALE)


def test_refinement_reaches_the_best_diagonal_gaussian_from_a_bad_encoder():
    """400 steps of SGD from loc = 2, scale = 2 (112 nats per point below the optimum) land on the
    family's optimum: the posterior mean and 1 / sqrt(diag of the posterior precision)."""
    model, x = linear_model()
    guide = linear_guide(model, loc_bias=torch.full((3,), 2.0), scale=torch.full((3,), 2.0))
    refined = RefinedGuide(guide, model.model, steps=400, lr=0.03, num_samples=128)
    result = refined.refine(x=x)
    with torch.no_grad():
        best_loc, best_scale = model.best_diagonal_gaussian(x)
        best = model.diagonal_gaussian_elbo(x, best_loc, best_scale)
        loc, raw = result.refined.split(3, dim=-1)
        gap_before = (best - analytic_elbo(model, x, result.initial)).mean().item()
        gap_after = best - analytic_elbo(model, x, result.refined)
    assert gap_before > 50
    assert (loc - best_loc).abs().max() < 0.06
    assert ((F.softplus(raw) + MIN_SCALE) / best_scale - 1).abs().max() < 0.06
    assert gap_after.mean() < 0.01 and gap_after.max() < 0.03, gap_after
    assert result.elbo.shape == (400, 20) and result.elbo[-10:].mean() > result.elbo[0].mean() + 50


def test_evaluation_refinement_does_not_lower_the_elbo_and_training_mode_eval_is_the_plain_guide():
    model, x = linear_model(points=50)
    guide = near_optimal_guide(model)
    refined = RefinedGuide(guide, model.model, steps=10, lr=0.02).eval()
    pyro.set_rng_seed(3)
    result = refined.refine(x=x)
    with torch.no_grad():
        gain = analytic_elbo(model, x, result.refined) - analytic_elbo(model, x, result.initial)  # exact, no MC
    assert gain.mean() > 5 * gain.std() / math.sqrt(len(gain)), gain  # a gain, and a measurable one
    assert (gain > 0).float().mean() > 0.7  # single-sample steps: a few points near their optimum lose a little
    # the guide called inside evaluate_importance's particles plate samples from refined parameters
    pyro.set_rng_seed(4)
    plain = evaluate_importance(model.model, guide, {"x": x}, 2000)
    scored = evaluate_importance(model.model, refined, {"x": x}, 2000, point_chunk=50, max_rows=100_000)
    diff = scored.elbo - plain.elbo
    se = ((scored.elbo_mc_var + plain.elbo_mc_var).sum().sqrt() / len(diff)).item()
    assert diff.mean() > 3 * se, (diff.mean(), se)
    assert abs(diff.mean() - gain.mean()) < 0.5 * gain.mean()
    # mode "eval" in training is the plain guide, draw for draw
    refined.train()
    pyro.set_rng_seed(5)
    plain_z = guide(x=x)["z"]
    pyro.set_rng_seed(5)
    assert torch.equal(refined(x=x)["z"], plain_z)


@pytest.mark.parametrize("family", ["ffg", "planar", "realnvp", "auxflow", "sylvester"])
def test_every_real_family_is_refined_and_scored_by_evaluate_importance(family):
    model, x = linear_model()
    encoder, width = model.make_encoder()
    guide = build_guide(guide_family(family), model.latent_sites, encoder=encoder, encoder_dim=width)
    program = model.model
    reverse = auxiliary_reverse_for(guide, *model.make_encoder())
    if reverse is not None:
        program = with_auxiliary(model.model, reverse)
    refined = RefinedGuide(guide, program, steps=30, lr=0.01).eval()
    result = refined.refine(x=x)
    points = {"x": x, "idx": torch.arange(len(x))}
    before = evaluate_importance(program, refined.local_guide(result.initial), points, 500)
    after = evaluate_importance(program, refined.local_guide(result.refined), points, 500)
    gain = (after.elbo - before.elbo).mean().item()
    se = ((after.elbo_mc_var + before.elbo_mc_var).sum().sqrt() / len(x)).item()
    assert gain > 3 * se and gain > 1.0, (gain, se)
    log_px = model.log_marginal(x).detach()
    assert (after.iwae - log_px).mean() < 3 * (after.iwae_mc_var.sum().sqrt() / len(x)), "not a lower bound"
    direct = evaluate_importance(program, refined, {"x": x}, 50)  # the guide itself, inside the particles plate
    assert direct.elbo.mean() > before.elbo.mean() + gain / 2


def full_setup(mode: str):
    model, x = linear_model(points=5, dtype=torch.float64)
    guide = linear_guide(model, loc_bias=torch.full((3,), 0.5, dtype=torch.float64),
                         scale=torch.full((3,), 0.7, dtype=torch.float64))
    with torch.no_grad():
        guide.source.head.weight.normal_(0, 0.1)
    return model, x, guide, RefinedGuide(guide, model.model, steps=3, lr=0.05, mode=mode, num_samples=2).train()


def seeded_loss(model, refined, x, seed=7):
    pyro.set_rng_seed(seed)
    return Trace_ELBO().differentiable_loss(model.model, refined, x=x)


def test_full_mode_differentiates_through_the_steps_and_detach_mode_does_not():
    """With the noise fixed, the refined loss is a smooth function of the encoder's and the model's
    parameters: mode "full" gives its derivative (central differences agree), "detach" does not."""
    model, x, guide, full = full_setup("full")
    params = {"encoder bias": guide.source.head.bias, "model log_noise": model.log_noise}
    seeded_loss(model, full, x).backward()
    grads = {name: p.grad.clone() for name, p in params.items()}
    numeric = {}
    for name, p in params.items():
        flat, values = p.data.view(-1), []
        for i in range(flat.numel()):
            with torch.no_grad():
                flat[i] += 1e-6
                up = seeded_loss(model, full, x).item()
                flat[i] -= 2e-6
                down = seeded_loss(model, full, x).item()
                flat[i] += 1e-6
            values.append((up - down) / 2e-6)
        numeric[name] = torch.tensor(values, dtype=torch.float64).view_as(p)
        torch.testing.assert_close(grads[name], numeric[name], rtol=1e-4, atol=1e-5)
    for p in [*model.parameters(), *guide.parameters()]:
        p.grad = None
    detach = RefinedGuide(guide, model.model, steps=3, lr=0.05, mode="detach", num_samples=2).train()
    seeded_loss(model, detach, x).backward()
    for name, p in params.items():
        assert (p.grad - numeric[name]).abs().max() > 1e-3, name  # the path through the steps is left out


def test_detach_mode_trains_the_model_on_the_refined_q_and_the_encoder_on_its_own():
    model, x, guide, detach = full_setup("detach")
    loss = seeded_loss(model, detach, x)
    loss.backward()
    model_grads = [p.grad.clone() for p in model.parameters()]
    encoder_grads = [p.grad.clone() for p in guide.parameters()]
    for p in [*model.parameters(), *guide.parameters()]:
        p.grad = None
    # the same draws: refine() consumes the random numbers the forward pass's refinement did
    pyro.set_rng_seed(7)
    result = detach.refine(x=x)
    refined_loss = Trace_ELBO().differentiable_loss(model.model, detach.local_guide(result.refined), x=x,
                                                    idx=torch.arange(len(x)))
    assert abs(loss.item() - refined_loss.item()) < 1e-10  # the loss is the refined q's (the encoder term is 0)
    for got, want in zip(model_grads, torch.autograd.grad(refined_loss, list(model.parameters()))):
        torch.testing.assert_close(got, want)
    # the encoder's gradient: minus grad_lambda ELBO(lambda_0) . d lambda_0 / d phi, nothing else
    initial = guide.params(x=x)
    want = torch.autograd.grad(-(initial * result.initial_grad).sum(), list(guide.parameters()))
    for got, expected in zip(encoder_grads, want):
        torch.testing.assert_close(got, expected)
    assert all(g.abs().max() > 0 for g in encoder_grads)
    pyro.set_rng_seed(7)
    trace = pyro.poutine.trace(detach).get_trace(x=x)
    assert trace.nodes[ENCODER_TERM]["infer"].get("is_auxiliary")  # Pyro's model/guide check accepts it


def test_what_cannot_be_refined_is_refused():
    model, _ = linear_model()
    guide = near_optimal_guide(model)
    with pytest.raises(ValueError, match="unknown refinement mode 'sgd'; choose from: eval, detach, full"):
        RefinedGuide(guide, model.model, steps=3, lr=0.1, mode="sgd")
    with pytest.raises(ValueError, match="steps must be an integer of at least 1"):
        RefinedGuide(guide, model.model, steps=0, lr=0.1)
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        RefinedGuide(guide, model.model, steps=3, lr=float("nan"))
    bits = build_guide(MeanFieldBernoulli, [LatentSite("b", 4, "binary")], num_points=3)
    with pytest.raises(ValueError, match="MeanFieldBernoulli .*binary support.* real-site families") as refused:
        RefinedGuide(bits, model.model, steps=3, lr=0.1)
    assert "\n" not in str(refused.value)
    with pytest.raises(TypeError, match="wraps a guides.Guide"):
        RefinedGuide(lambda x: None, model.model, steps=3, lr=0.1)
