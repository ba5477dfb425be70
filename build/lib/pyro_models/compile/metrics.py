"""The metrics of a hard segmentation (CompILE's evaluation mode): reconstruction accuracy of the
content positions and the F1 score of the boundaries, as the reference code computes them."""
import torch

from pyro_models.compile.model import position_masks


def segment_index(boundaries: torch.Tensor, width: int) -> torch.Tensor:
    """(B, T): the segment holding each position, for boundary positions (B, n). Boundaries out of
    order are clamped to the previous one (an empty segment), as the reference metric does."""
    ordered = boundaries.cummax(-1).values
    t = torch.arange(width, device=boundaries.device)
    return (t[None, :, None] >= ordered[:, None, :]).sum(-1).clamp(max=boundaries.shape[-1] - 1)


def reconstruct(boundaries: torch.Tensor, segment_symbols: torch.Tensor, width: int) -> torch.Tensor:
    """Tokens (B, T) from boundary positions (B, n) and each segment's symbol (B, n)."""
    return segment_symbols.gather(-1, segment_index(boundaries, width))


def reconstruction_accuracy(predicted: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per sequence (B,): the fraction of content positions (EOS and padding excluded) reconstructed."""
    _, content = position_masks(lengths, tokens.shape[-1])
    hits = ((predicted == tokens) & content).sum(-1)
    return hits.to(torch.float32) / content.sum(-1).clamp(min=1)


def boundary_counts(predicted: torch.Tensor, true: torch.Tensor, lengths: torch.Tensor) -> tuple[int, int, int]:
    """(true positives, predicted, true) counts of segment boundaries with tolerance 0.

    Both arguments hold boundary positions (B, n) whose last entry is the fixed EOS boundary; only
    the boundaries between segments count: distinct positions in 1..L-2 (a boundary on EOS or a
    repeated one marks an empty segment, not a boundary)."""
    width = int(max(predicted.max(), true.max(), lengths.max())) + 1

    def as_sets(positions):
        marks = torch.zeros(positions.shape[0], width, dtype=torch.bool, device=positions.device)
        marks.scatter_(1, positions[:, :-1], True)
        t = torch.arange(width, device=positions.device)
        return marks & (t >= 1) & (t < (lengths - 1)[:, None])

    p, q = as_sets(predicted), as_sets(true)
    return int((p & q).sum()), int(p.sum()), int(q.sum())


def f1_score(true_positives: int, n_predicted: int, n_true: int) -> float:
    if n_predicted + n_true == 0:
        return 1.0
    return 2 * true_positives / (n_predicted + n_true)
