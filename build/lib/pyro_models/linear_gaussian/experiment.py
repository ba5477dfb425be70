"""The linear-Gaussian known-answer model for the command line: simulated data, and its exact
log p(x) next to every estimate (the glue itself: pyro_models/experiment_kit/real_latents.py)."""
import torch

from pyro_models.core import device_of
from pyro_models.experiment_kit.protocol import TrainDefaults
from pyro_models.experiment_kit.real_latents import RealLatentExperiment

from .data import load_simulated
from .model import LinearGaussian, LinearGaussianConfig


class LinearGaussianExperiment(RealLatentExperiment):
    name = "linear_gaussian"
    description = "linear-Gaussian model (probabilistic PCA) on simulated data: log p(x) known exactly"
    config_cls = LinearGaussianConfig
    model_cls = LinearGaussian
    datasets = ("simulated",)
    default_dataset = "simulated"
    bf16_refusal = None  # 300 steps: loss within 0.001 nats of fp32's (but 0.8x: its networks are too small to gain)

    def load_data(self, ctx):
        return load_simulated(ctx.data_dir)

    def train_defaults(self, dataset):
        return TrainDefaults(steps=2000, batch_size=100, lr=1e-2, log_every=100, checkpoint_every=1000)

    def exact_metrics(self, model, x, label):
        with torch.no_grad():
            return {f"{label}_log_px_exact": model.log_marginal(x.to(device_of(model))).double().mean().item()}

    def exact_log_px(self, built, points):
        with torch.no_grad():
            return built.model.log_marginal(points["x"].to(device_of(built.model)))
