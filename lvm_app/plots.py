"""PNG plots shared by experiments (matplotlib with the file-only Agg backend)."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from inference.metrics_log import read_metrics  # noqa: E402


def save(fig, path: Path, dpi: int = 100) -> Path:
    """Lay out, write the PNG and free the figure (matplotlib keeps every open figure alive)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def image_grid(rows: list[torch.Tensor], image_shape, path: Path, row_titles=None, title: str = "") -> Path:
    """Each entry of ``rows`` is a (n, D) tensor of pixel values in [0, 1] (or uint8), drawn as one row.

    ``image_shape`` (H, W) is grey; (C, H, W) is channel-first, C = 3 colour, C = 1 grey.
    """
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * 0.9, n_rows * 0.95 + 0.4), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(row):
                _show(ax, row[j], image_shape)
        if row_titles:
            axes[i][0].set_title(row_titles[i], fontsize=7, loc="left")
    fig.suptitle(title, fontsize=9)
    return save(fig, path, dpi=80)


def _show(ax, pixels: torch.Tensor, image_shape) -> None:
    pixels = pixels.detach().cpu()
    if pixels.dtype == torch.uint8:
        pixels = pixels.float() / 255.0
    image = pixels.reshape(image_shape)
    if len(image_shape) == 3:  # channel-first -> matplotlib's (H, W, C); one channel stays grey
        image = image.permute(1, 2, 0)
        if image.shape[-1] == 1:
            image = image[..., 0]
    if image.ndim == 3:
        ax.imshow(image.clamp(0, 1).numpy())  # RGB floats must lie in [0, 1]
    else:
        ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)


def training_curve(metrics_csv: Path, path: Path, column: str = "loss", ylabel: str = "loss") -> Path:
    rows = read_metrics(metrics_csv)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["step"] for r in rows], [r[column] for r in rows])
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return save(fig, path)
