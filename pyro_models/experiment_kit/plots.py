"""PNG plots shared by experiments (matplotlib with the file-only Agg backend)."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from inference.training.metrics_log import read_metrics  # noqa: E402
from inference.training.run_files import save_figure  # noqa: E402


def save(fig, path: Path, dpi: int = 100) -> Path:
    """Lay out, write the PNG and free the figure (matplotlib keeps every open figure alive)."""
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def image_grid(rows: list[torch.Tensor], image_shape, path: Path, row_titles=None, title: str = "") -> Path:
    """Each entry of ``rows`` is a (n, D) tensor of pixel values in [0, 1] (or uint8), drawn as one row.

    ``image_shape`` (H, W) is grey; (C, H, W) is channel-first, C = 3 colour, C = 1 grey. The
    images are tiled into one canvas drawn by one ``imshow`` (an axes per image made MFCVAE's
    25 x 10 grids take longer than a short training run).
    """
    n_rows, n_cols = len(rows), max(1, max(len(r) for r in rows))  # a row may be empty (a cluster with no points)
    first = _as_image(torch.zeros(image_shape).flatten(), image_shape)
    height, width, pad = first.shape[0], first.shape[1], 2
    row_height = height + pad + (8 if row_titles else 0)  # room above each row for its title
    canvas = torch.ones(n_rows * row_height, n_cols * (width + pad), *first.shape[2:])
    for i, row in enumerate(rows):
        top = i * row_height + row_height - height
        for j in range(len(row)):
            canvas[top:top + height, j * (width + pad):j * (width + pad) + width] = _as_image(row[j], image_shape)
    scale = 0.9 / max(height, width)  # inches per pixel: about 0.9 inch per image
    fig, ax = plt.subplots(figsize=(max(2.0, canvas.shape[1] * scale), canvas.shape[0] * scale + 0.4))
    if canvas.dim() == 3:
        ax.imshow(canvas.numpy(), interpolation="nearest")
    else:
        ax.imshow(canvas.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for i, label in enumerate(row_titles or []):
        ax.text(0, i * row_height + row_height - height - 1, label, fontsize=7, va="bottom", ha="left")
    ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return save(fig, path, dpi=80)


def _as_image(pixels: torch.Tensor, image_shape) -> torch.Tensor:
    """(H, W) grey or (H, W, 3) colour floats in [0, 1]."""
    pixels = pixels.detach().cpu()
    if pixels.dtype == torch.uint8:
        pixels = pixels.float() / 255.0
    image = pixels.float().reshape(image_shape)
    if len(image_shape) == 3:  # channel-first -> (H, W, C); one channel stays grey
        image = image.permute(1, 2, 0)
        if image.shape[-1] == 1:
            image = image[..., 0]
    return image.clamp(0, 1)


def training_curve(metrics_csv: Path, path: Path, column: str = "loss", ylabel: str = "loss") -> Path:
    rows = read_metrics(metrics_csv)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["step"] for r in rows], [r[column] for r in rows])
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return save(fig, path)
