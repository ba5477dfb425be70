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
