"""InfoNCE (van den Oord et al. 2018, eq. 4) for sequence models such as CPC.

For every anchor (sequence b, time t) and step k = 1..K with t + k < T, the prediction
p = W_k c_t scores the true z_{t+k} of the same sequence against negatives z_j by f = z_j^T p:

    L_k(b, t) = -log exp f(z_{b,t+k}) / (exp f(z_{b,t+k}) + sum_{j in negatives} exp f(z_j)).

Every anchor of every sequence is used (not one per batch); the loss is the mean over the anchors
of each k, then over k. The InfoNCE accuracy for k is the fraction of anchors whose positive
scores strictly above all their negatives.

Negatives (``mode``) are other time steps of the batch:

- ``same``: other time steps of the anchor's own sequence;
- ``other``: any time step of the other sequences of the batch;
- ``both``: any (sequence, time) of the batch except the positive itself.

``num_negatives`` > 0 draws that many per anchor, uniformly with replacement from the eligible
set (fresh for every anchor and k); 0 uses every eligible candidate (one matrix product per k).

Data-parallel training: a process holding rows [first_row, first_row + B) of the step's batch
passes every process's encodings as ``candidates`` (gathered with gradients,
``inference.training.parallel.gather_rows``), so its anchors see the same negatives as in one process.
Sampled negatives are drawn for the whole batch and sliced, so the draws do not depend on how
the rows are divided either.
"""
from dataclasses import dataclass

import torch

MODES = ("same", "other", "both")


@dataclass
class InfoNCEResult:
    loss: torch.Tensor  # scalar: mean over k of the mean over anchors
    loss_per_k: torch.Tensor  # (K,)
    accuracy_per_k: torch.Tensor  # (K,), no gradient
    negative_index: list | None = None  # per k: (B, T - k, N) indices into the flattened candidates


def sample_negatives(B: int, T: int, k: int, mode: str, num: int, generator=None, device=None) -> torch.Tensor:
    """(B, T - k, num) indices into z.view(B * T, D), never the positive b * T + t + k."""
    anchors = T - k
    shape = (B, anchors, num)
    b = torch.arange(B, device=device).view(B, 1, 1)
    target_t = (torch.arange(anchors, device=device) + k).view(1, anchors, 1)
    if mode == "same":
        if T < 2:
            raise ValueError("same-sequence negatives need windows of at least 2 steps")
        t = torch.randint(0, T - 1, shape, generator=generator, device=device)
        return b * T + t + (t >= target_t).long()
    if mode == "other":
        if B < 2:
            raise ValueError("negatives from other sequences need a batch of at least 2 windows")
        other = torch.randint(0, B - 1, shape, generator=generator, device=device)
        other = other + (other >= b).long()
        return other * T + torch.randint(0, T, shape, generator=generator, device=device)
    if mode == "both":
        if B * T < 2:
            raise ValueError("need at least 2 time steps in the batch for negatives")
        j = torch.randint(0, B * T - 1, shape, generator=generator, device=device)
        positive = b * T + target_t
        return j + (j >= positive).long()
    raise ValueError(f"unknown negatives mode {mode!r}; choose from: {', '.join(MODES)}")


def eligible_mask(B: int, T: int, k: int, mode: str, device=None, rows: range | None = None) -> torch.Tensor:
    """(len(rows), T - k, B * T) bool: which z_j are negatives of anchor (b, t) for step k, for the
    anchors of sequences ``rows`` (default: all B)."""
    anchors = T - k
    rows = range(B) if rows is None else rows
    j = torch.arange(B * T, device=device).view(1, 1, B * T)
    b = torch.arange(rows.start, rows.stop, device=device).view(len(rows), 1, 1)
    positive = b * T + (torch.arange(anchors, device=device) + k).view(1, anchors, 1)
    not_positive = j != positive
    same_sequence = (j // T) == b
    if mode == "same":
        return not_positive & same_sequence
    if mode == "other":
        return (~same_sequence).expand(len(rows), anchors, B * T)
    if mode == "both":
        return not_positive
    raise ValueError(f"unknown negatives mode {mode!r}; choose from: {', '.join(MODES)}")


def info_nce(predictions: torch.Tensor, z: torch.Tensor, mode: str = "both", num_negatives: int = 0,
             generator: torch.Generator | None = None, return_indices: bool = False,
             candidates: torch.Tensor | None = None, first_row: int = 0) -> InfoNCEResult:
    """``predictions`` (B, T, K, D): W_k c_t for k = 1..K; ``z`` (B, T, D) the encodings.
    ``candidates`` (B_all, T, D): the whole batch's encodings, of which ``z`` are rows
    [first_row, first_row + B) (default: ``z`` itself)."""
    if mode not in MODES:
        raise ValueError(f"unknown negatives mode {mode!r}; choose from: {', '.join(MODES)}")
    B, T, K, D = predictions.shape
    if z.shape != (B, T, D):
        raise ValueError(f"z has shape {tuple(z.shape)}, predictions {tuple(predictions.shape)}: expected z (B, T, D)")
    candidates = z if candidates is None else candidates
    B_all = candidates.shape[0]
    if candidates.shape[1:] != (T, D) or not 0 <= first_row <= B_all - B:
        raise ValueError(f"candidates of shape {tuple(candidates.shape)} do not hold z {tuple(z.shape)} "
                         f"at row {first_row}")
    if T <= K:
        raise ValueError(f"windows of {T} steps leave no anchor for k = {K}: use windows longer than K steps")
    if mode == "other" and B_all < 2:
        raise ValueError("negatives from other sequences need a batch of at least 2 windows")
    flat = candidates.reshape(B_all * T, D)
    rows = range(first_row, first_row + B)
    losses, accuracies, indices = [], [], []
    for k in range(1, K + 1):
        p = predictions[:, : T - k, k - 1]  # (B, T - k, D)
        positive = (p * z[:, k:]).sum(-1)  # (B, T - k)
        if num_negatives > 0:
            index = sample_negatives(B_all, T, k, mode, num_negatives, generator, z.device)[first_row:first_row + B]
            negative = torch.einsum("btd,btnd->btn", p, flat[index])
            if return_indices:
                indices.append(index)
        else:
            scores = p @ flat.T  # (B, T - k, B_all * T)
            negative = scores.masked_fill(~eligible_mask(B_all, T, k, mode, z.device, rows), float("-inf"))
        logits = torch.cat([positive.unsqueeze(-1), negative], dim=-1)
        losses.append((torch.logsumexp(logits, dim=-1) - positive).mean())
        with torch.no_grad():
            accuracies.append((positive > negative.max(-1).values).float().mean())
    loss_per_k = torch.stack(losses)
    return InfoNCEResult(loss_per_k.mean(), loss_per_k, torch.stack(accuracies),
                         indices if return_indices else None)
