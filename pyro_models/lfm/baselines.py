"""What the LFM's score-function (REINFORCE) training needs beyond the ELBO: TraceGraph_ELBO
baselines for the latent site (none, a decaying average, or a network of the word) and free nats."""
import torch
from torch import nn

from inference.objectives import Objective
from pyro_models.lfm.model import bernoulli_kl, sequence_mask
from pyro_models.networks import ELU

BASELINES = ("none", "decaying", "neural")


class NeuralBaseline(nn.Module):
    """b(x) for the score-function gradient: a small network of the word's bag of characters, its
    length and the guide's logits (detached: the baseline is fitted by its own squared loss)."""

    def __init__(self, vocab_size: int, bits: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(vocab_size + 1 + bits, hidden), ELU(), nn.Linear(hidden, 1))

    def features(self, tokens, lengths, params):
        tokens = tokens[:, :int(lengths.max())]
        mask = sequence_mask(lengths, tokens.shape[1]).to(params.dtype)
        bag = params.new_zeros(tokens.shape[0], self.net[0].in_features - 1 - params.shape[-1])
        bag.scatter_add_(1, tokens, mask)
        length = lengths.to(params.dtype).unsqueeze(-1)
        return torch.cat([bag / length, length / 10, params.detach()], dim=-1)

    def forward(self, features):
        return self.net(features).squeeze(-1)


class Baselines(nn.Module):
    """The guide's ``site_infer``: TraceGraph_ELBO baseline options for the latent site."""

    def __init__(self, kind: str, vocab_size: int, bits: int, beta: float = 0.9):
        super().__init__()
        self.kind, self.beta = kind, beta
        self.net = NeuralBaseline(vocab_size, bits) if kind == "neural" else None

    def forward(self, name, data, params):
        if self.kind == "decaying":
            return {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": self.beta}}
        if self.kind == "neural":
            features = self.net.features(data["tokens"], data["lengths"], params)
            return {"baseline": {"nn_baseline": self.net, "nn_baseline_input": features}}
        return {}


class FreeNatsObjective(Objective):
    """Free nats: the KL term gets weight 0 (no gradient) while the batch's mean analytic KL is
    below ``free_nats``, i.e. the gradient of E[log p(x | z)] - max(KL, free_nats). The returned
    loss is then not the ELBO; the logged train/dev ELBO are."""

    def __init__(self, inner, guide, prior_prob: float, free_nats: float):
        self.inner, self.guide, self.prior_prob, self.free_nats = inner, guide, prior_prob, free_nats

    def __call__(self, batch, **schedule):
        with torch.no_grad():
            data = {k: v for k, v in batch.items() if k != "idx"}
            kl = bernoulli_kl(self.guide.params(idx=batch.get("idx"), **data), self.prior_prob).mean().item()
        if kl < self.free_nats:
            schedule = {**schedule, "latent_scales": {"z": 0.0}}  # exact: latent_scale masks the site
        return self.inner(batch, **schedule)
