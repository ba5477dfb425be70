"""MFCVAE's facet-use report: a facet the decoder ignores is flagged, whatever its clusters say."""
import math

import pytest
import torch

from guides import build_guide
from guides.mean_field import MeanFieldNormal
from pyro_models.datasets import load_digits_binarised
from pyro_models.mfcvae.experiment import MFCVAEExperiment, MFCVAESettings, warn_unused_facets
from pyro_models.mfcvae.facet_use import decoder_effects, facet_kls, facet_use, unused_facets
from pyro_models.mfcvae.model import MFCVAE, MFCVAEConfig


def fresh_run(config):
    experiment, data = MFCVAEExperiment(), load_digits_binarised()
    ctx = experiment.context(data, config=config, settings=MFCVAESettings(gmm_init_points=200), guide="ffg",
                             batch_size=16)
    built = experiment.build(ctx, data)
    experiment.initialise(ctx, built, data)
    return experiment, built, data


SMALL = MFCVAEConfig(encoder_backbone=(32, 16), decoder_rungs=(16, 16), decoder_backbone=(16, 16))


def test_a_facet_cut_from_the_decoder_is_flagged_unused(fresh_pyro):
    experiment, built, data = fresh_run(SMALL)
    with torch.no_grad():  # facet 0 reaches the decoder only through its rung: zero it
        for p in built.model.decoder.rungs[0].parameters():
            p.zero_()
    summary = facet_use(experiment, built, data.test[:300])
    assert summary["facet0_decoder_effect"] == 0.0 and summary["facet1_decoder_effect"] > 0
    assert summary["unused_facets"] == [0] and summary["facet0_used"] is False and summary["facet1_used"] is True
    assert summary["facet0_kl"] > 0 and summary["facet1_kl"] > 0  # the guide still moves away from the prior


def test_both_facets_of_an_intact_decoder_are_used(fresh_pyro):
    experiment, built, data = fresh_run(SMALL)
    summary = facet_use(experiment, built, data.test[:300])
    assert summary["unused_facets"] == [] and summary["facet0_used"] and summary["facet1_used"]
    assert min(summary["facet0_decoder_effect"], summary["facet1_decoder_effect"]) > 0


def test_unused_means_under_a_tenth_of_the_largest_effect():
    assert unused_facets([0.016, 0.256]) == [0]  # the reported collapse
    assert unused_facets([0.3, 0.256, 0.02]) == [2]
    assert unused_facets([0.03, 0.256]) == []
    assert unused_facets([1e-6]) == []  # one facet: nothing to compare it with


def test_every_point_takes_another_points_z():
    """With a decoder that returns z_0 itself, the effect is the mean |z_0 - z_0[partner]|, and no
    point is its own partner (else a used facet would look less used)."""

    class Identity:
        def decode_mean(self, zs):
            return zs[0]

    z = torch.arange(50.0).unsqueeze(-1)
    effect = decoder_effects(Identity(), [z, torch.zeros(50, 1)])
    assert effect[1] == 0.0 and effect[0] >= 1.0  # every point moved by at least 1
    with pytest.raises(ValueError, match="at least 2 points"):
        decoder_effects(Identity(), [z[:1]])


def test_facet_kl_matches_the_closed_form_of_a_one_component_prior(fresh_pyro):
    """K_j = 1: p(z_j) is one Gaussian, and KL(q || p) between diagonal Gaussians is exact."""
    config = MFCVAEConfig(data_dim=12, image_shape=(3, 4), latent_dims=(2, 3), clusters=(1, 1),
                          encoder_backbone=(16, 8), decoder_rungs=(8, 16), decoder_backbone=(10, 8))
    torch.manual_seed(0)
    model = MFCVAE(config)
    guide = build_guide(MeanFieldNormal, model.latent_sites, num_points=4000)
    with torch.no_grad():
        for p in guide.parameters():
            p.normal_(0.0, 0.5)

    class Built:
        pass

    built = Built()
    built.model, built.guide = model, guide
    idx = torch.arange(4000)
    kls = facet_kls(built, torch.zeros(4000, 12), idx)
    params = guide.params(idx=idx, x=None).split(guide.splits, dim=-1)
    for j, (family, chunk) in enumerate(zip(guide.families, params)):
        q = family.distribution(chunk)
        p = model.component(j)
        prior = torch.distributions.Independent(torch.distributions.Normal(p.base_dist.loc[0], p.base_dist.scale[0]), 1)
        exact = torch.distributions.kl_divergence(q, prior).mean().item()
        assert kls[j] == pytest.approx(exact, rel=0.02), j
        assert math.isfinite(kls[j])


def test_the_warning_names_the_facet_and_the_effects(capsys):
    summary = {"facet0_decoder_effect": 0.016, "facet1_decoder_effect": 0.256, "unused_facets": [0]}
    warn_unused_facets(summary, 2)
    line = capsys.readouterr().err.strip()
    assert line.count("\n") == 0 and "facet 0 is unused" in line and "0.256" in line


def test_best_acc_leaves_out_an_unused_facet(fresh_pyro):
    experiment, built, data = fresh_run(SMALL)
    x, labels = data.test[:300], data.test_labels[:300]
    both = experiment.clustering_summary(built, x, labels, None)
    worse = min((0, 1), key=lambda j: both[f"facet{j}_acc"])
    other = 1 - worse
    without_the_better = experiment.clustering_summary(built, x, labels, None, unused=[other])
    assert without_the_better["best_acc"] == both[f"facet{worse}_acc"] < both["best_acc"]
