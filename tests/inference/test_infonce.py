"""InfoNCE against a slow loop over anchors that spells out the formula; its minimum."""
import math

import pytest
import torch

from inference.infonce import eligible_mask, info_nce, sample_negatives


def slow_info_nce(predictions, z, negatives_of):
    """Per k: mean over anchors (b, t), t + k < T, of -log softmax of the positive among
    [positive] + negatives; ``negatives_of(b, t, k)`` lists (b', t') pairs. Accuracy: positive
    strictly above every negative."""
    B, T, K, _ = predictions.shape
    losses, accuracies = [], []
    for k in range(1, K + 1):
        total, correct, count = 0.0, 0, 0
        for b in range(B):
            for t in range(T - k):
                p = predictions[b, t, k - 1].double()
                positive = float(p @ z[b, t + k].double())
                scores = [float(p @ z[bb, tt].double()) for bb, tt in negatives_of(b, t, k)]
                log_denominator = math.log(math.exp(positive) + sum(math.exp(s) for s in scores))
                total += log_denominator - positive
                correct += positive > max(scores)
                count += 1
        losses.append(total / count)
        accuracies.append(correct / count)
    return torch.tensor(losses, dtype=torch.float64), torch.tensor(accuracies, dtype=torch.float64)


def all_negatives(B, T, mode):
    def negatives_of(b, t, k):
        out = []
        for bb in range(B):
            for tt in range(T):
                same = bb == b
                positive = same and tt == t + k
                if (mode == "same" and same and not positive) or (mode == "other" and not same) or \
                        (mode == "both" and not positive):
                    out.append((bb, tt))
        return out

    return negatives_of


@pytest.mark.parametrize("mode", ["same", "other", "both"])
def test_all_negatives_equal_the_loop(mode):
    torch.manual_seed(0)
    B, T, K, D = 3, 7, 4, 5
    predictions, z = torch.randn(B, T, K, D), torch.randn(B, T, D)
    result = info_nce(predictions, z, mode, num_negatives=0)
    losses, accuracies = slow_info_nce(predictions, z, all_negatives(B, T, mode))
    assert torch.allclose(result.loss_per_k.double(), losses, atol=1e-5)
    assert torch.allclose(result.loss.double(), losses.mean(), atol=1e-5)
    assert torch.allclose(result.accuracy_per_k.double(), accuracies)


@pytest.mark.parametrize("mode", ["same", "other", "both"])
def test_sampled_negatives_equal_the_loop_and_respect_the_mode(mode):
    torch.manual_seed(1)
    B, T, K, D, N = 4, 9, 3, 6, 5
    predictions, z = torch.randn(B, T, K, D), torch.randn(B, T, D)
    result = info_nce(predictions, z, mode, num_negatives=N, generator=torch.Generator().manual_seed(3),
                      return_indices=True)

    def negatives_of(b, t, k):
        return [(int(j) // T, int(j) % T) for j in result.negative_index[k - 1][b, t]]

    losses, accuracies = slow_info_nce(predictions, z, negatives_of)
    assert torch.allclose(result.loss_per_k.double(), losses, atol=1e-5)
    assert torch.allclose(result.accuracy_per_k.double(), accuracies)
    for k, index in enumerate(result.negative_index, 1):
        assert index.shape == (B, T - k, N)
        allowed = eligible_mask(B, T, k, mode)
        assert torch.gather(allowed, 2, index).all(), "a negative outside the mode (or the positive itself)"


def test_sampling_covers_every_eligible_candidate():
    B, T, k = 3, 5, 2
    index = sample_negatives(B, T, k, "both", 4000, torch.Generator().manual_seed(0))
    counts = torch.zeros(B, T - k, B * T).scatter_add_(2, index, torch.ones_like(index, dtype=torch.float))
    assert torch.equal(counts > 0, eligible_mask(B, T, k, "both"))


def matched_predictions(z, K):
    B, T, D = z.shape
    matched = torch.zeros(B, T, K, D)
    for k in range(1, K + 1):
        matched[:, : T - k, k - 1] = z[:, k:]
    return matched


def test_minimum_when_predictions_match_targets(one_thread):
    """With orthonormal z, p = s * z_{t+k} scores the positive s and each negative 0: the loss
    log(1 + N e^-s) falls to its infimum 0 as s grows, with accuracy 1; predictions matching
    any other targets score worse; and minimising over free predictions drives the loss to 0 with every target found."""
    B, T, K = 2, 6, 3
    z = torch.linalg.qr(torch.randn(B * T, B * T))[0].T.reshape(B, T, B * T)
    matched = matched_predictions(z, K)
    previous = math.inf
    for scale in (1.0, 5.0, 20.0):
        result = info_nce(scale * matched, z)
        expected = math.log(1 + (B * T - 1) * math.exp(-scale))
        assert result.loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
        assert result.loss.item() < previous
        previous = result.loss.item()
    assert torch.all(info_nce(5 * matched, z).accuracy_per_k == 1)
    best = info_nce(5 * matched, z).loss
    for seed in range(10):
        order = torch.randperm(B * T, generator=torch.Generator().manual_seed(seed))
        wrong = matched_predictions(z.reshape(B * T, -1)[order].reshape(z.shape), K)
        if not torch.equal(wrong, matched):
            assert info_nce(5 * wrong, z).loss > best

    torch.manual_seed(0)
    free = torch.randn_like(matched, requires_grad=True)
    optimizer = torch.optim.Adam([free], lr=0.1)
    for _ in range(200):
        optimizer.zero_grad()
        info_nce(free, z).loss.backward()
        optimizer.step()
    final = info_nce(free, z)
    assert final.loss < 0.05 and torch.all(final.accuracy_per_k == 1)


def test_gradient_flows_to_predictions_and_encodings():
    predictions = torch.randn(2, 6, 2, 3, requires_grad=True)
    z = torch.randn(2, 6, 3, requires_grad=True)
    info_nce(predictions, z, "both", 4).loss.backward()
    assert predictions.grad.abs().sum() > 0 and z.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "nope"}, "same, other, both"),
    ({"mode": "other", "batch": 1}, "at least 2 windows"),
    ({"steps": 3}, "longer than K"),
])
def test_bad_arguments_say_what_is_wrong(kwargs, message):
    batch, steps = kwargs.pop("batch", 2), kwargs.pop("steps", 6)
    predictions, z = torch.randn(batch, steps, 3, 4), torch.randn(batch, steps, 4)
    with pytest.raises(ValueError, match=message):
        info_nce(predictions, z, num_negatives=2, **kwargs)


@pytest.mark.parametrize("mode", ["same", "other", "both"])
@pytest.mark.parametrize("num_negatives", [0, 3])
def test_rows_scored_against_the_whole_batch_equal_the_whole_batch(mode, num_negatives):
    """What each process of a data-parallel run computes: its rows' anchors against every row's
    encodings. Equal parts average to the whole batch's loss, draw the same negatives (drawn for
    the whole batch, then sliced) and give the same gradients."""
    torch.manual_seed(0)
    B, T, K, D = 4, 6, 2, 3
    predictions = torch.randn(B, T, K, D, requires_grad=True)
    z = torch.randn(B, T, D, requires_grad=True)
    whole = info_nce(predictions, z, mode, num_negatives, torch.Generator().manual_seed(5), return_indices=True)
    whole.loss.backward()
    grads = predictions.grad.clone(), z.grad.clone()
    predictions.grad, z.grad = None, None
    parts = [info_nce(predictions[rows], z[rows], mode, num_negatives, torch.Generator().manual_seed(5),
                      return_indices=True, candidates=z, first_row=rows.start)
             for rows in (range(0, 2), range(2, 4))]
    torch.stack([part.loss for part in parts]).mean().backward()
    assert torch.allclose(torch.stack([p.loss_per_k for p in parts]).mean(0), whole.loss_per_k, atol=1e-6)
    assert torch.allclose(predictions.grad, grads[0], atol=1e-6) and torch.allclose(z.grad, grads[1], atol=1e-6)
    if num_negatives:
        for k in range(K):
            assert torch.equal(torch.cat([p.negative_index[k] for p in parts]), whole.negative_index[k])


def test_rows_outside_the_candidates_are_refused():
    z = torch.randn(4, 6, 3)
    with pytest.raises(ValueError, match="do not hold z"):
        info_nce(torch.randn(2, 6, 2, 3), z[:2], candidates=z, first_row=3)
