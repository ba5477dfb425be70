"""MFCVAE (Falck et al. 2021): multi-facet clustering with a mixture-of-Gaussians prior per facet,
progressive training, GMM-initialised clusters, and per-facet clustering scores."""
import dataclasses
import sys
from dataclasses import dataclass

import numpy as np
import torch

from guides.mean_field import MeanFieldNormal
from inference import evaluate_importance
from inference.training.schedules import progressive_facets
from pyro_models.core import AT_LEAST_ONE, device_of, setting
from pyro_models.datasets import IMAGE_DATASETS
from pyro_models.datasets.vector_data import as_float, binarise_fixed, evenly_spaced
from pyro_models.experiment_kit import plots
from pyro_models.experiment_kit.protocol import EvaluationPlan, RunContext, TrainDefaults, set_threads
from pyro_models.experiment_kit.real_latents import TRAIN_EVAL_BINARISATION_SEED, RealLatentExperiment
from pyro_models.mfcvae import plots as mfcvae_plots
from pyro_models.mfcvae.clustering import cluster_accuracy, clusters_used, nmi
from pyro_models.mfcvae.facet_use import facet_use
from pyro_models.mfcvae.model import MFCVAE, MFCVAEConfig

GMM_SEED = 0
DATASETS = ("digits", "mnist", "fashion_mnist", "svhn", "3dshapes")


@dataclass(frozen=True)
class Budget:
    """A data set's training budget: the runner's defaults and the progressive schedule's."""

    steps: int
    batch_size: int
    lr: float
    phase_steps: int  # steps the deepest facet trains alone (and between later facets)
    fade_in_steps: int  # steps over which a new facet fades in


# MNIST and Fashion-MNIST (same size and shape): the paper's batch and rate; its schedule (201 +
# 201 epochs, fade-in over 15000 steps) compressed to fit an hour on 2 CPU cores. The embedded
# digits: a few minutes. SVHN and 3DShapes (colour, convolutional): the paper's schedule lengths
# scaled to 40000 steps; neither data set is on these machines, so these are not measured here.
BUDGETS = {
    "digits": Budget(steps=3000, batch_size=128, lr=1e-3, phase_steps=1000, fade_in_steps=1000),
    "mnist": Budget(steps=10000, batch_size=512, lr=5e-4, phase_steps=4000, fade_in_steps=3000),
    "fashion_mnist": Budget(steps=10000, batch_size=512, lr=5e-4, phase_steps=4000, fade_in_steps=3000),
    "svhn": Budget(steps=40000, batch_size=512, lr=5e-4, phase_steps=15000, fade_in_steps=10000),
    "3dshapes": Budget(steps=40000, batch_size=512, lr=5e-4, phase_steps=15000, fade_in_steps=10000),
}
# A data set of the user's own (a VectorData passed to the library): the paper's schedule lengths.
DEFAULT_BUDGET = Budget(steps=40000, batch_size=512, lr=5e-4, phase_steps=15000, fade_in_steps=10000)


def budget_of(dataset: str) -> Budget:
    return BUDGETS.get(dataset, DEFAULT_BUDGET)


# A run shorter than its budget keeps the facets' schedule in proportion; the last facet is in
# by this fraction of the run at the latest, leaving the rest to train with every facet.
LAST_FADE_IN_BY = 0.7


@dataclass
class MFCVAESettings:
    phase_steps: int | None = setting(None, "steps the deepest facet trains alone before the next facet fades in, and "
                                      "between later facets (default: the data set's, fitted to the run's length; the "
                                      "paper's MNIST run used 23500)", valid=AT_LEAST_ONE)
    fade_in_steps: int | None = setting(None, "steps over which a new facet's decoder input and KL weight rise 0 -> 1 "
                                        "(default: the data set's, fitted to the run's length; the paper used 15000)",
                                        valid=AT_LEAST_ONE)
    progressive: bool = setting(True, "progressive training (off: all facets from step 0)")
    gmm_init_points: int = setting(10000, "training points whose encoder outputs initialise the cluster means", valid=AT_LEAST_ONE)
    iwae_k: int = setting(100, "importance samples per test point for test_iwae", valid=AT_LEAST_ONE, evaluation=True)
    eval_points: int = setting(0, "test points for ELBO/IWAE and the clustering scores (0: all)", evaluation=True)
    log_eval_points: int = setting(1000, "test points for the clustering accuracy logged during training")
    eval_max_rows: int = setting(32768, "particles x points per forward pass (bounds evaluation memory)", valid=AT_LEAST_ONE, evaluation=True)
    threads: int = setting(1, "torch intra-op threads (0: torch's default); on a shared 2-core machine one thread per "
                           "run was 4x faster than two")

    def __post_init__(self):
        # runs written before these settings took None wrote 0 for "the data set's default"
        for name in ("phase_steps", "fade_in_steps"):
            if getattr(self, name) == 0:
                setattr(self, name, None)


def fit_cluster_means(z_per_facet, clusters, seed: int) -> list[torch.Tensor]:
    """Per facet, the means of a diagonal GMM with that facet's number of clusters fitted to
    encoder outputs (the paper's initialisation of the mixture priors)."""
    from sklearn.mixture import GaussianMixture

    means = []
    for z, k in zip(z_per_facet, clusters):
        gmm = GaussianMixture(k, covariance_type="diag", random_state=seed)
        gmm.fit(np.asarray(z, dtype=np.float64))
        means.append(torch.as_tensor(gmm.means_))
    return means


class MFCVAEExperiment(RealLatentExperiment):
    name = "mfcvae"
    model_cls = MFCVAE
    description = "multi-facet clustering VAE of Falck et al. (2021): a mixture-of-Gaussians prior per facet, ladder networks"
    config_cls = MFCVAEConfig
    settings_cls = MFCVAESettings
    datasets = DATASETS
    default_dataset = "digits"
    bf16_refusal = None  # 300 steps on digits: loss within 0.004 nats of fp32's; 1.5x (digits), 1.7x (mnist) faster
    # guides, default_guide, supports_local_guide: the density experiments' (all real-site families)
    quick_evaluation = {"iwae_k": 10}  # the clustering scores keep every test point
    trains_with_objectives = False  # the ELBO only (no --objective/--refine settings)

    def train_defaults(self, dataset):
        budget = budget_of(dataset)
        return TrainDefaults(steps=budget.steps, batch_size=budget.batch_size, lr=budget.lr,
                             log_every=100 if budget.steps < 10000 else 250, checkpoint_every=1000)

    def load_data(self, ctx: RunContext):
        if ctx.dataset in IMAGE_DATASETS:
            return IMAGE_DATASETS[ctx.dataset](ctx.data_dir)
        from pyro_models.datasets import COLOUR_IMAGE_DATASETS

        return COLOUR_IMAGE_DATASETS[ctx.dataset](ctx.data_dir)

    # --- model and guide ---------------------------------------------------------------------
    def model_config(self, ctx: RunContext, data):
        return dataclasses.replace(super().model_config(ctx, data), image_shape=tuple(data.image_shape))

    def build(self, ctx: RunContext, data):
        """The real-latent experiments' model + guide (+ r(v|z,x) for auxflow)."""
        set_threads(ctx.settings.threads)
        built = super().build(ctx, data)
        built.info.update(label_names=data.notes.get("label_names"))
        return built

    def initialise(self, ctx: RunContext, built, data):
        """The paper's initialisation of the clusters: a GMM on the encoder's outputs (a fresh run's
        only: a restored run's clusters come from its checkpoint)."""
        if built.guide.amortised:  # a local guide starts at the prior: nothing to fit a mixture to
            x = as_float(data.train[:ctx.settings.gmm_init_points])
            built.model.set_clusters(fit_cluster_means(self.posterior_means(built, x), built.model.config.clusters,
                                                       GMM_SEED))

    @torch.no_grad()
    def posterior_means(self, built, x, idx=None, samples: int = 32) -> list[torch.Tensor]:
        """E_q[z_j | x] per facet: the Gaussian's mean, or an average of samples for flows."""
        guide = built.guide
        device = device_of(guide)  # the points may be on the CPU, the modules on a GPU
        params = guide.params(idx=None if idx is None else idx.to(device), x=x.to(device))
        means = []
        for family, chunk in zip(guide.families, params.split(guide.splits, dim=-1)):
            if isinstance(family, MeanFieldNormal):
                means.append(chunk[..., :family.site.dim])
            else:
                means.append(family.distribution(chunk).rsample((samples,)).mean(0))
        return means

    # --- training (batches and steps per epoch: the density experiments') ---------------------
    def schedule_steps(self, ctx: RunContext) -> tuple[int, int]:
        budget, settings = budget_of(ctx.dataset), ctx.settings
        return (budget.phase_steps if settings.phase_steps is None else settings.phase_steps,
                budget.fade_in_steps if settings.fade_in_steps is None else settings.fade_in_steps)

    def fit_to_length(self, ctx: RunContext, steps: int, given: set[str]):
        """The progressive schedule as explicit step counts for a run of ``steps``: the data set's
        phase and fade-in lengths scaled down with a run shorter than its budget (so that every
        facet fades in), never up. Lengths given on the command line are kept, and refused when
        the last facet would not be in by the end of the run."""
        facets, settings = len(ctx.config.latent_dims), ctx.settings
        if not settings.progressive or facets == 1:
            return settings
        phase, fade = self.schedule_steps(ctx)
        if given & {"phase_steps", "fade_in_steps"}:
            if (facets - 1) * phase + fade > steps:
                raise ValueError(f"--phase-steps {phase} and --fade-in-steps {fade}: the last of {facets} facets is in "
                                 f"only after {(facets - 1) * phase + fade} steps, more than the run's {steps}; shorten "
                                 "them, give more --steps, or leave them out to have them fitted to the run")
            return dataclasses.replace(settings, phase_steps=phase, fade_in_steps=fade)
        scale = min(1.0, steps / budget_of(ctx.dataset).steps, LAST_FADE_IN_BY * steps / ((facets - 1) * phase + fade))
        return dataclasses.replace(settings, phase_steps=max(1, round(phase * scale)),
                                   fade_in_steps=max(1, round(fade * scale)))

    def schedule(self, ctx: RunContext, built):
        if not ctx.settings.progressive or built.model.num_facets == 1:
            return None
        return progressive_facets(built.model.num_facets, *self.schedule_steps(ctx))

    def on_log(self, ctx: RunContext, built, data):
        """Clustering accuracy per facet on a few test points, so the curves show when the
        facets organise (the model is switched to eval mode and back)."""
        points = ctx.settings.log_eval_points
        if not built.guide.amortised or data.test_labels is None or points <= 0:
            return None
        x = as_float(data.test[:points])
        labels = primary_labels(data.test_labels[:points])

        def metrics(step):
            assignments = self.assignments(built, x)
            return {f"facet{j}_acc": round(cluster_accuracy(labels, a), 4) for j, a in enumerate(assignments)}

        return metrics

    @torch.no_grad()
    def assignments(self, built, x, idx=None) -> list:
        """argmax_c p(c_j | z_j) at the posterior mean, per facet (numpy arrays)."""
        means = self.posterior_means(built, x, idx)
        return [built.model.cluster_log_posterior(j, z).argmax(-1).cpu().numpy() for j, z in enumerate(means)]

    # --- evaluation --------------------------------------------------------------------------
    def evaluation_split(self, built, data, settings):
        """Test points for an amortised guide; training points (those the table holds) for a local one."""
        if built.guide.amortised:
            rows = evenly_spaced(settings.eval_points, data.test.shape[0])
            labels = None if data.test_labels is None else data.test_labels[rows]
            return "test", as_float(data.test[rows]), labels, None
        x = data.train
        n = min(settings.eval_points or x.shape[0], x.shape[0])  # the plots ask for 2000, more than digits has
        x = as_float(x[:n])
        if data.dynamic_binarisation:
            x = binarise_fixed(x, TRAIN_EVAL_BINARISATION_SEED)
        return "train", x, data.train_labels, torch.arange(n)

    def evaluate(self, ctx: RunContext, built, data, out_dir, progress, parallel=None):
        settings = ctx.settings
        label, x, labels, idx = self.evaluation_split(built, data, settings)
        points = {"x": x} if idx is None else {"x": x, "idx": idx}
        result = evaluate_importance(self.model_program(built), built.guide, points, settings.iwae_k,
                                     max_plate_nesting=1, max_rows=settings.eval_max_rows, progress=progress,
                                     desc=f"IWAE-{settings.iwae_k}", parallel=parallel)
        summary = result.summary(label)
        summary.update({"iwae_k": settings.iwae_k, f"num_{label}_points": x.shape[0]})
        use = facet_use(self, built, x, idx)
        summary.update(self.clustering_summary(built, x, labels, idx, unused=use["unused_facets"]))
        summary.update(use)
        warn_unused_facets(summary, built.model.num_facets)
        progressive = settings.progressive and built.model.num_facets > 1
        phase, fade = self.schedule_steps(ctx) if progressive else (None, None)
        summary.update({"phase_steps": phase, "fade_in_steps": fade})
        return summary

    def evaluation_plan(self, ctx: RunContext, built, data):
        settings = ctx.settings
        x = data.test if built.guide.amortised else data.train
        n = min(settings.eval_points or x.shape[0], x.shape[0])
        return EvaluationPlan(f"IWAE-{settings.iwae_k} and the clustering scores on {n} points",
                              (settings.iwae_k + 1) * n)

    def clustering_summary(self, built, x, labels, idx, unused=()) -> dict:
        """Per facet its accuracy, NMI and clusters used; ``best_acc`` over the facets the decoder
        uses (``unused``: facet_use's, whose clusters follow the encoder's features, not the model)."""
        if labels is None:
            return {}
        labels = labels[:x.shape[0]]
        summary = {}
        for j, assignment in enumerate(self.assignments(built, x, idx)):
            scores = {}  # factor name (None for class labels) -> accuracy
            for name, target in label_columns(labels, built):
                suffix = "" if name is None else f"_{name}"
                scores[name] = summary[f"facet{j}_acc{suffix}"] = cluster_accuracy(target, assignment)
                summary[f"facet{j}_nmi{suffix}"] = nmi(target, assignment)
            if None not in scores:  # several factors: the facet is scored on the one it matches best
                best = max(scores, key=scores.get)
                summary.update({f"facet{j}_acc": scores[best], f"facet{j}_nmi": summary[f"facet{j}_nmi_{best}"],
                                f"facet{j}_factor": best})
            summary[f"facet{j}_clusters_used"] = clusters_used(assignment)
        used = [j for j in range(built.model.num_facets) if j not in unused] or range(built.model.num_facets)
        summary["best_acc"] = max(summary[f"facet{j}_acc"] for j in used)
        return summary

    def plot(self, ctx: RunContext, built, data, out_dir, summary):
        files = [plots.training_curve(out_dir / "metrics.csv", out_dir / "training_curve.png", ylabel="training loss per data point")]
        files.append(mfcvae_plots.accuracy_curves(out_dir / "metrics.csv", out_dir / "facet_accuracy.png"))
        _, x, labels, idx = self.evaluation_split(built, data, MFCVAESettings(eval_points=2000))
        files += mfcvae_plots.all_plots(self, built, x, None if labels is None else primary_labels(labels[:x.shape[0]]),
                                        idx, tuple(data.image_shape), out_dir)
        return [f for f in files if f is not None]


def warn_unused_facets(summary: dict, num_facets: int) -> None:
    """One line on stderr per unused facet: its clustering scores describe the encoder's features."""
    effects = ", ".join(f"facet {j}: {summary[f'facet{j}_decoder_effect']}" for j in range(num_facets))
    for j in summary["unused_facets"]:
        print(f"mfcvae: warning: facet {j} is unused by the decoder (giving each point another's z_{j} moves pixel "
              f"probabilities by {summary[f'facet{j}_decoder_effect']} on average; {effects}); its clusters "
              "follow the encoder's features, not the model: do not read its clustering scores as the model's",
              file=sys.stderr)


def primary_labels(labels: torch.Tensor) -> torch.Tensor:
    """The class labels accuracy curves use: the labels, or the first factor of several."""
    return labels if labels.dim() == 1 else labels[:, 0]


def label_columns(labels: torch.Tensor, built):
    """(name, labels) pairs: one unnamed column for class labels; one per factor otherwise."""
    if labels.dim() == 1:
        return [(None, labels.numpy())]
    names = built.info.get("label_names") or [f"factor{i}" for i in range(labels.shape[1])]
    return [(name, labels[:, i].numpy()) for i, name in enumerate(names)]
