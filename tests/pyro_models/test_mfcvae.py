"""MFCVAE: the mixture prior against the paper's 5-term ELBO, clustering scores, the progressive
schedule, the ladder's per-facet heads, and the command line's plot files."""
import json

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import run_cli

from guides import build_guide
from guides.mean_field import MeanFieldNormal
from inference.training.schedules import progressive_facets
from pyro_models.datasets import load_digits_binarised
from pyro_models.mfcvae.clustering import cluster_accuracy, clusters_used, nmi
from pyro_models.mfcvae.experiment import MFCVAEExperiment, MFCVAESettings, fit_cluster_means
from pyro_models.mfcvae.model import MFCVAE, MFCVAEConfig


def small_model(covariance="diag") -> MFCVAE:
    config = MFCVAEConfig(data_dim=12, image_shape=(3, 4), latent_dims=(2, 3), clusters=(4, 5), covariance=covariance,
                          encoder_backbone=(16, 8), decoder_rungs=(8, 16), decoder_backbone=(10, 8))
    torch.manual_seed(0)
    model = MFCVAE(config)
    with torch.no_grad():  # move away from the initial values so every term matters
        for parameters in (model.pi_logits, model.means):
            for p in parameters:
                p.normal_()
        if covariance == "full":
            for raw in model.raw_scale_trils:
                raw.add_(0.3 * torch.randn_like(raw))
        else:
            for raw in model.raw_variances:
                raw.uniform_(-0.2, 0.3)
    return model


def five_term_elbo(model, x, zs, q_dists) -> torch.Tensor:
    """Falck et al.'s ELBO for one sample z ~ q(z|x), with q(c_j|x) = p(c_j|z_j), written out:
    log p(x|z) + sum_j E_q(c_j)[log p(z_j|c_j) + log p(c_j) - log q(c_j|x)] - log q(z_j|x)."""
    total = model.likelihood(model.decoder(zs)).log_prob(x)
    for j, z in enumerate(zs):
        component = model.component(j)
        log_p_z_given_c = component.log_prob(z.unsqueeze(-2))  # (B, K)
        log_p_c = torch.log(torch.softmax(model.pi_logits[j], -1))
        log_q_c = torch.log_softmax(log_p_z_given_c + log_p_c, -1)
        q_c = log_q_c.exp()
        total = total + (q_c * log_p_z_given_c).sum(-1) + (q_c * log_p_c).sum(-1) - (q_c * log_q_c).sum(-1)
        total = total - q_dists[j].log_prob(z)
    return total


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_mixture_prior_equals_the_five_term_elbo(covariance, fresh_pyro):
    model = small_model(covariance)
    x = torch.bernoulli(torch.full((6, 12), 0.4))
    q_dists = [dist.Normal(torch.randn(6, d), torch.rand(6, d) + 0.5).to_event(1) for d in (2, 3)]

    def guide(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            for j, q in enumerate(q_dists):
                pyro.sample(f"z{j}", q)

    guide_trace = pyro.poutine.trace(guide).get_trace(x)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(model.model, trace=guide_trace)).get_trace(x)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    program = sum(model_trace.nodes[n]["log_prob"] for n in ("x", "z0", "z1"))
    program = program - sum(guide_trace.nodes[n]["log_prob"] for n in ("z0", "z1"))
    zs = [guide_trace.nodes[n]["value"] for n in ("z0", "z1")]
    assert torch.allclose(program, five_term_elbo(model, x, zs, q_dists), atol=1e-4)


def test_cluster_posterior_is_bayes_rule():
    model = small_model()
    z = torch.randn(7, 3)
    joint = model.component(1).log_prob(z.unsqueeze(-2)) + model.mixture_weights(1).log()
    expected = joint - model.facet_prior(1).log_prob(z).unsqueeze(-1)
    assert torch.allclose(model.cluster_log_posterior(1, z), expected, atol=1e-5)


def test_cluster_accuracy_maps_each_cluster_to_its_majority_class():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    # cluster 7 holds 0,0,1 -> 0; cluster 3 holds 0,1,1 -> 1; cluster 9 holds 2,2; clusters 0-2 unused
    assignments = np.array([7, 7, 3, 7, 3, 3, 9, 9])
    assert cluster_accuracy(labels, assignments) == pytest.approx(6 / 8)
    assert clusters_used(assignments) == 3
    # two clusters may share a class (over-clustering is not penalised by accuracy)
    assert cluster_accuracy(np.array([1, 1, 1, 1]), np.array([0, 0, 5, 5])) == 1.0
    assert cluster_accuracy(labels, np.zeros(8, dtype=int)) == pytest.approx(3 / 8)


def test_nmi_on_known_pairs():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert nmi(labels, np.array([5, 5, 3, 3, 9, 9])) == pytest.approx(1.0)  # a relabelling
    assert nmi(labels, np.zeros(6, dtype=int)) == pytest.approx(0.0)  # one cluster tells nothing
    assert 0.0 < nmi(labels, np.array([0, 0, 0, 1, 1, 1])) < 1.0


def test_progressive_schedule_weights():
    schedule = progressive_facets(num_facets=3, phase_steps=100, fade_in_steps=40)
    fade = [schedule(step)["facet_fade"] for step in (0, 99, 110, 140, 200, 220, 500)]
    assert fade == [[0, 0, 1], [0, 0, 1], [0, 0.25, 1], [0, 1, 1], [0, 1, 1], [0.5, 1, 1], [1, 1, 1]]
    scales = schedule(110)["latent_scales"]
    assert scales == {"z0": 0.0, "z1": 0.25, "z2": 1.0}  # KL weight and decoder fade-in move together


def test_faded_out_facet_does_not_reach_the_decoder():
    model = small_model()
    z1 = torch.randn(4, 3)
    out_a = model.decoder([torch.randn(4, 2), z1], fade=[0.0, 1.0])
    out_b = model.decoder([torch.randn(4, 2), z1], fade=[0.0, 1.0])
    assert torch.equal(out_a, out_b)
    assert not torch.equal(out_a, model.decoder([torch.randn(4, 2), z1], fade=[1.0, 1.0]))


def test_each_facet_has_its_own_guide_head():
    """Facet 0's guide parameters read only the first rung of the ladder encoder."""
    model = small_model()
    encoder, encoder_dim = model.make_encoder()
    guide = build_guide(MeanFieldNormal, model.latent_sites, encoder=encoder, encoder_dim=encoder_dim)
    features = torch.randn(3, encoder_dim, requires_grad=True)
    params = guide.source.head(features)
    params[:, :guide.splits[0]].sum().backward()
    assert features.grad[:, :16].abs().sum() > 0
    assert features.grad[:, 16:].abs().sum() == 0


def test_gmm_initialisation_finds_separated_clusters():
    model = small_model()
    centres = torch.tensor([[-5.0, 0.0], [5.0, 0.0], [0.0, 5.0], [0.0, -5.0]])
    z0 = (centres.repeat(50, 1) + 0.1 * torch.randn(200, 2)).numpy()
    model.set_clusters(fit_cluster_means([z0, np.random.default_rng(0).normal(size=(200, 3))], model.config.clusters, 0))
    found = sorted(model.means[0].detach().round().tolist())
    assert found == sorted(centres.tolist())
    assert torch.allclose(model.mixture_weights(0), torch.full((4,), 0.25))


PLOTS = ["training_curve.png", "facet_accuracy.png", "facet0_examples_per_cluster.png", "facet1_examples_per_cluster.png",
         "facet0_generations_per_cluster.png", "facet1_generations_per_cluster.png", "compositionality.png",
         "confusion_matrix.png", "mixture_weights.png"]


def test_two_steps_write_every_plot(tmp_path):
    result = run_cli("--model", "mfcvae", "--steps", "2", "--log-every", "1", "--out", tmp_path, "--no-progress",
                     "--iwae-k", "3", "--eval-points", "60", "--gmm-init-points", "200", "--batch-size", "32")
    assert result.returncode == 0, result.stderr
    for name in PLOTS:
        assert (tmp_path / name).stat().st_size > 0, name
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("facet0_acc", "facet1_acc", "facet0_nmi", "facet1_clusters_used", "best_acc", "test_elbo", "test_iwae",
                "facet0_decoder_effect", "facet1_kl", "facet1_used", "unused_facets"):
        assert key in summary, key
    assert summary["best_acc"] == max(summary["facet0_acc"], summary["facet1_acc"])


def fresh_run(data, config, settings, guide="ffg", batch_size=16):
    """An MFCVAE run as the command line starts it: built, then initialised (the GMM over the clusters)."""
    experiment = MFCVAEExperiment()
    ctx = experiment.context(data, config=config, settings=settings, guide=guide, batch_size=batch_size)
    built = experiment.build(ctx, data)
    experiment.initialise(ctx, built, data)
    return experiment, ctx, built


@pytest.mark.parametrize("guide", ["planar", "realnvp", "auxflow"])
def test_other_guide_families_train_on_the_facets(guide, tmp_path, fresh_pyro):
    data = load_digits_binarised()
    config = MFCVAEConfig(encoder_backbone=(32, 16), decoder_rungs=(16, 16), decoder_backbone=(16, 16))
    experiment, ctx, built = fresh_run(data, config, MFCVAESettings(gmm_init_points=100), guide)
    batch = experiment.batches(ctx, data)(0)
    loss = built.objective(batch, **experiment.schedule(ctx, built)(0))
    assert np.isfinite(float(loss))
    assert [a.shape for a in experiment.assignments(built, data.test[:5])] == [(5,), (5,)]


def test_convolutional_ladder_on_colour_images(fresh_pyro):
    """--architecture conv with the Gaussian likelihood: one training step and the cluster scores."""
    from pyro_models.datasets import VectorData

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(24, 3 * 32 * 32, generator=generator)
    labels = torch.arange(24) % 4
    data = VectorData("tiny", train=images[:16], valid=None, test=images[16:], image_shape=(3, 32, 32),
                      train_labels=labels[:16], test_labels=labels[16:])
    config = MFCVAEConfig(architecture="conv", likelihood="gaussian", clusters=(3, 3))
    experiment, ctx, built = fresh_run(data, config, MFCVAESettings(gmm_init_points=16), batch_size=8)
    loss = built.objective(experiment.batches(ctx, data)(0), **experiment.schedule(ctx, built)(5000))
    assert np.isfinite(float(loss))
    summary = experiment.clustering_summary(built, data.test, data.test_labels, None)
    assert 0 < summary["best_acc"] <= 1 and summary["facet0_clusters_used"] >= 1


def test_factor_labels_score_each_facet_on_its_best_factor(fresh_pyro):
    """3DShapes-style labels (one column per factor): per-factor scores, and facet{j}_acc names the best."""
    data = load_digits_binarised()
    config = MFCVAEConfig(encoder_backbone=(32, 16), decoder_rungs=(16, 16), decoder_backbone=(16, 16))
    _, _, built = fresh_run(data, config, MFCVAESettings(gmm_init_points=200))
    built.info["label_names"] = ["digit", "constant"]
    labels = torch.stack([data.test_labels, torch.zeros_like(data.test_labels)], dim=1)
    summary = MFCVAEExperiment().clustering_summary(built, data.test, labels, None)
    for j in (0, 1):
        assert summary[f"facet{j}_acc_constant"] == 1.0  # one class: every mapping is right
        assert summary[f"facet{j}_factor"] == "constant" and summary[f"facet{j}_acc"] == 1.0
        assert summary[f"facet{j}_acc_digit"] < 1.0
