"""The VAE of Cremer, Li & Duvenaud (2018) for the command line: data sets and training budgets
(the glue itself is every real-latent model's: pyro_models/experiment_kit/real_latents.py)."""
from pyro_models.datasets import IMAGE_DATASETS
from pyro_models.experiment_kit.protocol import TrainDefaults
from pyro_models.experiment_kit.real_latents import RealLatentExperiment

from .model import VAE, VAEConfig


class VAEExperiment(RealLatentExperiment):
    name = "vae"
    description = "Bernoulli VAE of Cremer, Li & Duvenaud (2018): z in R^50, decoder 50-200-200-784"
    config_cls = VAEConfig
    model_cls = VAE
    datasets = tuple(IMAGE_DATASETS)
    default_dataset = "digits"
    bf16_refusal = None  # 300 steps on binarized_mnist: training loss within 0.02 nats of fp32's, 1.1x faster

    def load_data(self, ctx):
        return IMAGE_DATASETS[ctx.dataset](ctx.data_dir)

    def train_defaults(self, dataset):
        if dataset == "digits":  # the embedded default: a couple of minutes on 2 cores
            return TrainDefaults(steps=3000, batch_size=100, lr=1e-3, log_every=100, checkpoint_every=1000)
        return TrainDefaults(steps=100_000, batch_size=100, lr=1e-3, log_every=500, checkpoint_every=5000)
