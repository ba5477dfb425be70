"""Unsupervised clustering scores, as in the MFCVAE paper: each cluster is mapped to the
majority true class among the points assigned to it (so several clusters may share a class,
and a cluster no point falls in is ignored), then accuracy is the fraction of points whose
cluster's class is their own class. NMI is scikit-learn's (arithmetic normalisation)."""
import numpy as np
from sklearn.metrics import normalized_mutual_info_score


def majority_mapping(labels, assignments) -> dict[int, int]:
    """cluster id -> the most frequent true label among its points (ties: the smaller label)."""
    labels, assignments = np.asarray(labels), np.asarray(assignments)
    mapping = {}
    for cluster in np.unique(assignments):
        counts = np.bincount(labels[assignments == cluster])
        mapping[int(cluster)] = int(np.argmax(counts))
    return mapping


def cluster_accuracy(labels, assignments) -> float:
    labels, assignments = np.asarray(labels), np.asarray(assignments)
    if labels.shape != assignments.shape or labels.size == 0:
        raise ValueError(f"need one assignment per label, got {assignments.shape} and {labels.shape}")
    mapping = majority_mapping(labels, assignments)
    predicted = np.array([mapping[int(c)] for c in assignments])
    return float(np.mean(predicted == labels))


def nmi(labels, assignments) -> float:
    return float(normalized_mutual_info_score(np.asarray(labels), np.asarray(assignments)))


def clusters_used(assignments) -> int:
    return int(np.unique(np.asarray(assignments)).size)
