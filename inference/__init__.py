"""The runner, the objectives and the estimators: importance sampling (ELBO, IWAE-K), AIS and
BDMC, local optimisation of q*, and the inference-gap report with its own checks."""
from .ais import AISResult, AISSettings, ais, bdmc, simulate
from .gap_estimates import Estimate, GapEstimates
from .gap_report import GapCheckWarning, GapSettings, gap_report
from .importance import ImportanceResult, evaluate_importance, reduce_log_weights
from .iwae_objective import IwaeObjective
from .local_opt import LocalOptResult, LocalOptSettings, optimise_local
from .log_weights import SiteMismatch, check_sites_match, log_weights
from .objectives import ElboObjective, GlobalBatchLoss, LossObjective
from .runner import TrainingDiverged, TrainingInterrupted, TrainSettings, train

__all__ = [
    "AISResult", "AISSettings", "ElboObjective", "Estimate", "GapCheckWarning", "GapEstimates", "GapSettings",
    "GlobalBatchLoss", "ImportanceResult", "IwaeObjective", "LocalOptResult", "LocalOptSettings", "LossObjective",
    "SiteMismatch", "TrainSettings", "TrainingDiverged", "TrainingInterrupted", "ais", "bdmc",
    "check_sites_match", "evaluate_importance", "gap_report", "log_weights", "optimise_local",
    "reduce_log_weights", "simulate", "train",
]
