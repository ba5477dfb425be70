"""image_grid draws grey (H, W) and channel-first colour (C, H, W) rows."""
import matplotlib.pyplot as plt
import torch

from pyro_models.experiment_kit.plots import image_grid


def _pure(png, channel: int) -> int:
    """Number of pixels of the saved figure in the pure colour ``channel`` (0 red, 2 blue)."""
    rgb = torch.from_numpy(plt.imread(png)[..., :3])
    others = [c for c in range(3) if c != channel]
    return int(((rgb[..., channel] > 0.9) & (rgb[..., others] < 0.1).all(-1)).sum())


def test_colour_rows_are_drawn_channel_first(tmp_path):
    red = torch.zeros(2, 3, 16, 16)
    red[:, 0] = 1.0
    blue = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    blue[:, 2] = 255  # uint8 pixels are scaled to [0, 1]
    path = image_grid([red.reshape(2, -1), blue.reshape(2, -1)], (3, 16, 16), tmp_path / "colour.png")
    # reading CHW data as HWC would give white/black stripes with hardly a pure red pixel
    assert _pure(path, 0) > 500 and _pure(path, 2) > 500


def test_grey_rows_still_work(tmp_path):
    rows = [torch.rand(3, 64)]
    assert image_grid(rows, (8, 8), tmp_path / "grey.png").exists()
    assert image_grid(rows, (1, 8, 8), tmp_path / "grey1.png").exists()
    assert _pure(tmp_path / "grey.png", 0) == 0  # grey, no colour
