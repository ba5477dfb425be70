import pyro.distributions as dist
import torch

from pyro_models.likelihoods import BernoulliLogits


def test_fast_bernoulli_log_prob_equals_the_reference_in_float64():
    logits = torch.cat([torch.randn(5000) * 6, torch.tensor([-100.0, -30, -17, -1e-3, 0, 1e-3, 17, 30, 100])])
    x = torch.bernoulli(torch.full_like(logits, 0.5))
    reference = dist.Bernoulli(logits=logits.double()).log_prob(x.double())
    torch.testing.assert_close(BernoulliLogits(logits).log_prob(x).double(), reference, atol=1e-6, rtol=1e-6)
    with_grad = logits.clone().requires_grad_()
    torch.testing.assert_close(BernoulliLogits(with_grad).log_prob(x).double(), reference, atol=1e-6, rtol=1e-6)
    broadcast = BernoulliLogits(logits.expand(3, -1)).log_prob(x)  # particles in front of the data
    torch.testing.assert_close(broadcast.double(), reference.expand(3, -1), atol=1e-6, rtol=1e-6)


def test_fast_bernoulli_behaves_as_a_distribution():
    d = BernoulliLogits(torch.zeros(3, 4)).to_event(1)
    assert d.batch_shape == (3,) and d.event_shape == (4,)
    assert BernoulliLogits(torch.zeros(4)).expand([2, 4]).logits.shape == (2, 4)
    assert d.sample().shape == (3, 4)


def test_compiled_bernoulli_sums_its_event_in_the_same_kernel_and_gives_the_reference():
    from pyro_models.compilation import set_compiled_likelihoods
    from pyro_models.likelihoods import IndependentBernoulliLogits

    logits = torch.randn(3, 5, 64) * 4  # (particles, points, pixels)
    x = torch.bernoulli(torch.full((5, 64), 0.3))
    d = BernoulliLogits(logits).to_event(1)
    assert isinstance(d, IndependentBernoulliLogits) and type(d.expand([2, 3, 5])) is IndependentBernoulliLogits
    assert d.batch_shape == (3, 5) and d.event_shape == (64,)
    reference = dist.Bernoulli(logits=logits.double()).to_event(1).log_prob(x.double())
    try:
        set_compiled_likelihoods(True, backend="aot_eager")
        compiled = d.log_prob(x)
        grad_logits = logits.clone().requires_grad_()
        (grad,) = torch.autograd.grad(BernoulliLogits(grad_logits).to_event(1).log_prob(x).sum(), grad_logits)
    finally:
        set_compiled_likelihoods(False)
    torch.testing.assert_close(compiled.double(), reference, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(d.log_prob(x).double(), reference, atol=1e-4, rtol=1e-6)  # eager again
    torch.testing.assert_close(grad, x - torch.sigmoid(logits), atol=1e-6, rtol=1e-5)
