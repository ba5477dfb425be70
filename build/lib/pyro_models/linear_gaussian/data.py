"""Data simulated from a fixed linear-Gaussian model, whose log p(x) is known exactly."""
import torch

from pyro_models.datasets.vector_data import VectorData
from pyro_models.linear_gaussian.model import LinearGaussian, LinearGaussianConfig

NUM_TRAIN, NUM_TEST, SEED = 1000, 200, 0


def ground_truth(config: LinearGaussianConfig = LinearGaussianConfig()) -> LinearGaussian:
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        return LinearGaussian(config)


def load_simulated(data_dir=None) -> VectorData:
    truth = ground_truth()
    generator = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        marginal = truth.marginal()
        noise = torch.randn(NUM_TRAIN + NUM_TEST, marginal.loc.shape[0], generator=generator)
        points = marginal.loc + noise @ marginal.scale_tril.T
    return VectorData(
        "simulated", train=points[:NUM_TRAIN], valid=None, test=points[NUM_TRAIN:], image_shape=None,
        notes={"true_test_log_px": truth.log_marginal(points[NUM_TRAIN:]).mean().item()},
    )
