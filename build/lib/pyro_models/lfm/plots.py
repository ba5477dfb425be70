"""The LFM's curves (PNG): train and dev ELBO, KL and perplexity against the step."""
from pathlib import Path

from inference.training.metrics_log import read_metrics
from pyro_models.experiment_kit.plots import plt, save


def curves(metrics_csv: Path, path: Path) -> Path:
    rows = read_metrics(metrics_csv)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    for ax, key, label in zip(axes, ("elbo", "kl", "perplexity"), ("ELBO (nats/word)", "KL (nats/word)", "perplexity (per char)")):
        for split in ("train", "dev"):
            points = [(r["step"], r[f"{split}_{key}"]) for r in rows if r.get(f"{split}_{key}") is not None]
            if points:
                ax.plot(*zip(*points), label=split, marker=".")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    return save(fig, path)
