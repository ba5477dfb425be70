"""The runner, the objectives and the estimators."""
from .importance import ImportanceResult, evaluate_importance, reduce_log_weights
from .log_weights import log_weights
from .objectives import ElboObjective, LossObjective
from .runner import TrainingDiverged, TrainingInterrupted, TrainSettings, train

__all__ = [
    "ImportanceResult", "evaluate_importance", "reduce_log_weights", "log_weights", "ElboObjective",
    "LossObjective", "TrainingDiverged", "TrainingInterrupted", "TrainSettings", "train",
]
