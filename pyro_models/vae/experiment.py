"""The VAE of Cremer, Li & Duvenaud (2018) for the command line: data sets and training budgets
(the glue itself is every real-latent model's: pyro_models/experiment_kit/real_latents.py)."""
import dataclasses

from pyro_models.datasets import IMAGE_DATASETS
from pyro_models.experiment_kit.protocol import TrainDefaults
from pyro_models.experiment_kit.real_latents import RealLatentExperiment

from .model import VAE, VAEConfig


class VAEExperiment(RealLatentExperiment):
    name = "vae"
    description = ("Bernoulli VAE of Cremer, Li & Duvenaud (2018): z in R^50, decoder 50-200-200-784 (cifar10: "
                   "their convolutional encoder and decoder)")
    config_cls = VAEConfig
    model_cls = VAE
    datasets = tuple(IMAGE_DATASETS)
    default_dataset = "digits"
    bf16_refusal = None  # 300 steps on binarized_mnist: training loss within 0.02 nats of fp32's, 1.1x faster

    def load_data(self, ctx):
        return IMAGE_DATASETS[ctx.dataset](ctx.data_dir)

    def model_config(self, ctx, data):
        """data_dim, and for the convolutional networks (``--architecture conv``, the default for
        3x32x32 colour images) the data's image shape. An MLP run on grey images keeps
        ``architecture`` None and no image shape, as every run saved before conv existed, so those
        runs resume unchanged."""
        config = super().model_config(ctx, data)
        shape = tuple(data.image_shape) if data.image_shape is not None else None
        if config.architecture == "conv" or (config.architecture is None and shape == (3, 32, 32)):
            config = dataclasses.replace(config, architecture="conv", image_shape=shape)
            config.check_networks()  # e.g. --architecture conv on 28x28 images: one line naming the flag
        return config

    def train_defaults(self, dataset):
        if dataset == "digits":  # the embedded default: a couple of minutes on 2 cores
            return TrainDefaults(steps=3000, batch_size=100, lr=1e-3, log_every=100, checkpoint_every=1000)
        # binarised MNIST and CIFAR-10: the paper's batch 100 and Adam 1e-3 (cifar10: 450 steps per epoch)
        return TrainDefaults(steps=100_000, batch_size=100, lr=1e-3, log_every=500, checkpoint_every=5000)
