"""MFCVAE's figures (PNG): inputs per cluster, generations per cluster, facet swaps, the confusion
matrix, the mixture weights, and the per-facet accuracy during training."""
from pathlib import Path

import numpy as np
import torch

from inference.training.metrics_log import read_metrics
from pyro_models.experiment_kit.plots import image_grid, plt, save
from pyro_models.mfcvae.clustering import majority_mapping

CLUSTERS_SHOWN = 25  # most heavily weighted clusters per facet
PER_CLUSTER = 10


def all_plots(experiment, built, x, labels, idx, image_shape, out_dir: Path) -> list[Path]:
    model = built.model
    with torch.no_grad():
        means = experiment.posterior_means(built, x, idx)  # on the model's device, like the decoder
        log_post = [model.cluster_log_posterior(j, z).cpu() for j, z in enumerate(means)]  # indexes x, on the CPU
    files = []
    for j in range(model.num_facets):
        order = cluster_order(model, j)
        files.append(examples_per_cluster(x, log_post[j], order, image_shape, j, out_dir))
        files.append(generations_per_cluster(model, means, order, image_shape, j, out_dir))
    files.append(compositionality(model, x, means, image_shape, out_dir))
    files.append(mixture_weights(model, out_dir))
    if labels is not None:
        files.append(confusion_matrices([lp.argmax(-1).numpy() for lp in log_post], labels.numpy(), out_dir))
    return files


def cluster_order(model, j: int) -> list[int]:
    weights = model.mixture_weights(j).detach()
    return weights.argsort(descending=True)[:CLUSTERS_SHOWN].tolist()


def examples_per_cluster(x, log_post, order, image_shape, j, out_dir) -> Path:
    """Row c: the inputs most confidently assigned to cluster c (argmax p(c_j | z_j) = c)."""
    assigned = log_post.argmax(-1)
    rows, titles = [], []
    for c in order:
        members = (assigned == c).nonzero().flatten()
        confidence = log_post[members, c]
        rows.append(x[members[confidence.argsort(descending=True)[:PER_CLUSTER]]])
        titles.append(f"cluster {c} ({len(members)} points)")
    return image_grid(rows, image_shape, out_dir / f"facet{j}_examples_per_cluster.png", titles,
                      title=f"facet {j}: test inputs assigned to each cluster (most confident first)")


def generations_per_cluster(model, means, order, image_shape, j, out_dir) -> Path:
    """Row c: decoder means with z_j = mu_{j,c} and the other facets' z fixed per column
    (taken from encoded test inputs), so a row varies what facet j does not hold."""
    zs = [m[:PER_CLUSTER].clone() for m in means]
    rows = []
    with torch.no_grad():
        for c in order:
            zs[j] = model.means[j][c].expand(PER_CLUSTER, -1)
            rows.append(model.decode_mean(zs))
    return image_grid(rows, image_shape, out_dir / f"facet{j}_generations_per_cluster.png",
                      [f"cluster {c}" for c in order],
                      title=f"facet {j}: z_{j} at each cluster mean; other facets fixed per column")


def compositionality(model, x, means, image_shape, out_dir, pairs: int = 10) -> Path:
    """Inputs a and b, their reconstructions, and a's code with facet j's z taken from b."""
    a = [m[:pairs] for m in means]
    b = [m[pairs:2 * pairs] for m in means]
    rows = [x[:pairs], x[pairs:2 * pairs]]
    titles = ["input a", "input b"]
    with torch.no_grad():
        rows += [model.decode_mean(a), model.decode_mean(b)]
        titles += ["reconstruction of a", "reconstruction of b"]
        for j in range(model.num_facets):
            swapped = [b[i] if i == j else a[i] for i in range(model.num_facets)]
            rows.append(model.decode_mean(swapped))
            titles.append(f"a with facet {j} from b")
    return image_grid(rows, image_shape, out_dir / "compositionality.png", titles,
                      title="swapping one facet's z between two test inputs")


def mixture_weights(model, out_dir) -> Path:
    fig, axes = plt.subplots(1, model.num_facets, figsize=(4 * model.num_facets, 2.8), squeeze=False)
    for j, ax in enumerate(axes[0]):
        weights = model.mixture_weights(j).detach().cpu().numpy()
        ax.bar(np.arange(len(weights)), weights)
        ax.set_title(f"facet {j}: pi_{j}")
        ax.set_xlabel("cluster")
    return save(fig, out_dir / "mixture_weights.png")


def confusion_matrices(assignments, labels, out_dir) -> Path:
    """Per facet: rows are the clusters in use, ordered by their majority class; columns classes."""
    classes = int(labels.max()) + 1
    fig, axes = plt.subplots(1, len(assignments), figsize=(4.2 * len(assignments), 4.5), squeeze=False)
    for j, (assignment, ax) in enumerate(zip(assignments, axes[0])):
        mapping = majority_mapping(labels, assignment)
        clusters = sorted(mapping, key=lambda c: (mapping[c], c))
        counts = np.array([[np.sum((assignment == c) & (labels == k)) for k in range(classes)] for c in clusters])
        ax.imshow(counts, aspect="auto", cmap="Blues")
        ax.set_yticks(range(len(clusters)), [f"{c}->{mapping[c]}" for c in clusters], fontsize=6)
        ax.set_xticks(range(classes))
        ax.set_xlabel("true class")
        ax.set_title(f"facet {j}: cluster -> majority class", fontsize=9)
    return save(fig, out_dir / "confusion_matrix.png")


def accuracy_curves(metrics_csv: Path, path: Path) -> Path | None:
    rows = read_metrics(metrics_csv)
    columns = sorted(k for k in (rows[0] if rows else {}) if k.startswith("facet") and k.endswith("_acc"))
    if not columns:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for column in columns:
        ax.plot([r["step"] for r in rows], [r[column] for r in rows], label=column.replace("_", " "))
    ax.set_xlabel("step")
    ax.set_ylabel("cluster accuracy (test subset)")
    ax.legend()
    ax.grid(alpha=0.3)
    return save(fig, path)
