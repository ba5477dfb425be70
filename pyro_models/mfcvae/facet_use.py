"""Whether each facet of an MFCVAE is used by its decoder.

A facet the decoder ignores still gets clusters: its mixture prior was initialised by a GMM on
the encoder's outputs, so its assignments (and their accuracy, NMI and ``clusters_used``) score
k-means on encoder features, not anything the model learnt. A 7,000-step run on an unseen data
set showed exactly that: ``facet0_clusters_used`` 17 while swapping facet 0's z between points
moved pixel probabilities by 0.016 (facet 1's by 0.256). So every evaluation reports, per facet:

- ``facet{j}_decoder_effect``: mean |E[x | z] - E[x | z with z_j taken from another point]| over
  points and pixels, at the guide's posterior means (every point gets another's z_j: a fixed
  random derangement); what the decoder does with the facet.
- ``facet{j}_kl``: KL(q(z_j | x) || p(z_j)) in nats per point (Monte Carlo, the mixture prior
  has no closed form); ``None`` for the auxiliary flow, whose marginal q(z_j | x) has no density.
- ``facet{j}_used``: False when the decoder effect is under ``UNUSED_EFFECT_RATIO`` of the
  largest facet's; ``unused_facets`` lists them (empty with a single facet: nothing to compare).
"""
import torch

from pyro_models.core import device_of

UNUSED_EFFECT_RATIO = 0.1  # the reported collapse: 0.016 / 0.256 = 0.06
FACET_USE_POINTS = 2000  # enough for the mean over points; the decoder runs once per facet on them
KL_SAMPLES = 16
SWAP_SEED = 0


@torch.no_grad()
def facet_use(experiment, built, x: torch.Tensor, idx: torch.Tensor | None = None) -> dict:
    """The keys above for the first ``FACET_USE_POINTS`` of ``x`` (``idx``: a local guide's rows)."""
    x = x[:FACET_USE_POINTS]
    idx = None if idx is None else idx[:FACET_USE_POINTS]
    model, guide = built.model, built.guide
    device = device_of(guide)
    means = [z.to(device) for z in experiment.posterior_means(built, x, idx)]
    effects = decoder_effects(model, means)
    kls = facet_kls(built, x.to(device), None if idx is None else idx.to(device))
    summary = {}
    for j, (effect, kl) in enumerate(zip(effects, kls)):
        summary[f"facet{j}_decoder_effect"] = float(f"{effect:.4g}")
        summary[f"facet{j}_kl"] = None if kl is None else round(kl, 3)
    unused = unused_facets(effects)
    for j in range(len(effects)):
        summary[f"facet{j}_used"] = j not in unused
    summary["unused_facets"] = unused
    return summary


def unused_facets(effects: list[float]) -> list[int]:
    if len(effects) < 2:
        return []
    largest = max(effects)
    return [j for j, effect in enumerate(effects) if effect < UNUSED_EFFECT_RATIO * largest]


def decoder_effects(model, means: list[torch.Tensor]) -> list[float]:
    """Per facet, the mean absolute change of E[x | z] when each point's z_j is another point's."""
    n = means[0].shape[0]
    if n < 2:
        raise ValueError("the facets' decoder effects need at least 2 points (each takes another's z)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SWAP_SEED))
    partner = torch.empty_like(order)
    partner[order] = order.roll(1)  # a derangement: no point keeps its own z
    partner = partner.to(means[0].device)
    base = model.decode_mean(means)
    effects = []
    for j in range(len(means)):
        swapped = [z[partner] if k == j else z for k, z in enumerate(means)]
        effects.append((model.decode_mean(swapped) - base).abs().mean().item())
    return effects


def facet_kls(built, x: torch.Tensor, idx: torch.Tensor | None) -> list[float | None]:
    """Monte Carlo KL(q(z_j | x) || p(z_j)) per facet, averaged over points."""
    model, guide = built.model, built.guide
    params = guide.params(idx=idx, x=x)
    kls = []
    for j, (family, chunk) in enumerate(zip(guide.families, params.split(guide.splits, dim=-1))):
        if hasattr(family, "aux_name"):  # q(z_T, v_T | x) is a joint density: no KL of z_j alone
            kls.append(None)
            continue
        q = family.distribution(chunk)
        z = q.rsample((KL_SAMPLES,))
        kls.append((q.log_prob(z) - model.facet_prior(j).log_prob(z)).mean().item())
    return kls
