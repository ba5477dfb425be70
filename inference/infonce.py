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
"""
from dataclasses import dataclass

import torch

MODES = ("same", "other", "both")


@dataclass
class InfoNCEResult:
    loss: torch.Tensor  # scalar: mean over k of the mean over anchors
    loss_per_k: torch.Tensor  # (K,)
    accuracy_per_k: torch.Tensor  # (K,), no gradient
    negative_index: list | None = None  # per k: (B, T - k, N) indices into the (B * T) flattened z


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


def eligible_mask(B: int, T: int, k: int, mode: str, device=None) -> torch.Tensor:
    """(B, T - k, B * T) bool: which z_j are negatives of anchor (b, t) for step k."""
    anchors = T - k
    j = torch.arange(B * T, device=device).view(1, 1, B * T)
    b = torch.arange(B, device=device).view(B, 1, 1)
    positive = b * T + (torch.arange(anchors, device=device) + k).view(1, anchors, 1)
    not_positive = j != positive
    same_sequence = (j // T) == b
    if mode == "same":
        return not_positive & same_sequence
    if mode == "other":
        return (~same_sequence).expand(B, anchors, B * T)
    if mode == "both":
        return not_positive
    raise ValueError(f"unknown negatives mode {mode!r}; choose from: {', '.join(MODES)}")


def info_nce(predictions: torch.Tensor, z: torch.Tensor, mode: str = "both", num_negatives: int = 0,
             generator: torch.Generator | None = None, return_indices: bool = False) -> InfoNCEResult:
    """``predictions`` (B, T, K, D): W_k c_t for k = 1..K; ``z`` (B, T, D) the encodings."""
    if mode not in MODES:
        raise ValueError(f"unknown negatives mode {mode!r}; choose from: {', '.join(MODES)}")
    B, T, K, D = predictions.shape
    if z.shape != (B, T, D):
        raise ValueError(f"z has shape {tuple(z.shape)}, predictions {tuple(predictions.shape)}: expected z (B, T, D)")
    if T <= K:
        raise ValueError(f"windows of {T} steps leave no anchor for k = {K}: use windows longer than K steps")
    if mode == "other" and B < 2:
        raise ValueError("negatives from other sequences need a batch of at least 2 windows")
    flat = z.reshape(B * T, D)
    losses, accuracies, indices = [], [], []
    for k in range(1, K + 1):
        p = predictions[:, : T - k, k - 1]  # (B, T - k, D)
        positive = (p * z[:, k:]).sum(-1)  # (B, T - k)
        if num_negatives > 0:
            index = sample_negatives(B, T, k, mode, num_negatives, generator, z.device)
            negative = torch.einsum("btd,btnd->btn", p, flat[index])
            if return_indices:
                indices.append(index)
        else:
            scores = p @ flat.T  # (B, T - k, B * T)
            negative = scores.masked_fill(~eligible_mask(B, T, k, mode, z.device), float("-inf"))
        logits = torch.cat([positive.unsqueeze(-1), negative], dim=-1)
        losses.append((torch.logsumexp(logits, dim=-1) - positive).mean())
        with torch.no_grad():
            accuracies.append((positive > negative.max(-1).values).float().mean())
    loss_per_k = torch.stack(losses)
    return InfoNCEResult(loss_per_k.mean(), loss_per_k, torch.stack(accuracies),
                         indices if return_indices else None)
