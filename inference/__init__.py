"""Estimators and objectives for Pyro models and guides, one concern per file, with two
subpackages: ``inference.training`` (the one training loop and what surrounds it: checkpoints,
data parallelism, mixed precision, reading ahead) and ``inference.gap`` (the inference-gap report
of Cremer, Li & Duvenaud 2018, its estimates and its checks of itself).

Estimators: ``log_weights`` (per-point log p(x, z) - log q(z | x)), ``evaluate_importance`` (ELBO,
IWAE-K, ESS), ``ais`` and ``bdmc``, ``optimise_local`` (q*), ``enumeration`` (exact sums over
binary codes), ``RefinedGuide`` (semi-amortised inference). Objectives the training loop steps:
``ElboObjective`` (any Pyro ELBO), ``IwaeObjective`` (IWAE-K, DReG), ``LossObjective`` and
``GlobalBatchLoss`` (plain losses, e.g. InfoNCE: ``inference.infonce``); ``IwaeLoss`` is IWAE-K
as a Pyro loss for a user's own ``SVI``.

``inference`` imports ``guides`` through its public names and ``pyro_models.core``; it never
imports the paper folders' experiments or the application (tests/test_layout.py).
"""
from .ais import AISResult, AISSettings, ais
from .bdmc import bdmc, simulate
from .gap import Estimate, GapCheckWarning, GapEstimates, GapSettings, gap_report
from .importance import ImportanceResult, evaluate_importance, reduce_log_weights
from .iwae_objective import IwaeLoss, IwaeObjective
from .local_opt import LocalOptResult, LocalOptSettings, optimise_local
from .log_weights import SiteMismatch, check_sites_match, log_weights
from .objectives import ElboObjective, GlobalBatchLoss, LossObjective
from .refine import RefinedGuide, Refinement
from .training import TrainingDiverged, TrainingInterrupted, TrainSettings, train

__all__ = [
    "AISResult", "AISSettings", "ElboObjective", "Estimate", "GapCheckWarning", "GapEstimates", "GapSettings",
    "GlobalBatchLoss", "ImportanceResult", "IwaeLoss", "IwaeObjective", "LocalOptResult", "LocalOptSettings",
    "LossObjective", "RefinedGuide", "Refinement", "SiteMismatch", "TrainSettings", "TrainingDiverged", "TrainingInterrupted", "ais",
    "bdmc", "check_sites_match", "evaluate_importance", "gap_report", "log_weights", "optimise_local",
    "reduce_log_weights", "simulate", "train",
]
