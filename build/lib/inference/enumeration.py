"""Exact inference over K binary latents by enumerating all 2^K codes (practical for K <= ~16).

Given a table of log-joints ``table[c] = log p(z_c) + log p(x | z_c)`` for one data point:
log p(x) = logsumexp_c table[c], and for a mean-field Bernoulli q with logits lambda (K,)

    L[q] = sum_c q(c) (table[c] - log q(c)) = E_q[table] + H(q),  H(q) = sum_k H(Bernoulli(sigmoid(lambda_k))),

a deterministic function of lambda (no sampling), which L-BFGS maximises for q*. Everything is
in float64: the bounds are differences of numbers of tens of nats, the gaps a fraction of a nat.
"""
import itertools

import torch
from torch.nn.functional import logsigmoid


def all_codes(bits: int, dtype=torch.float64) -> torch.Tensor:
    """(2^K, K) every binary vector, bit 0 the most significant (itertools.product order)."""
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=bits)), dtype=dtype)


def bernoulli_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of prod_k Bernoulli(sigmoid(logits_k)), summed over the last dimension (nats)."""
    p = torch.sigmoid(logits)
    return -(p * logsigmoid(logits) + (1 - p) * logsigmoid(-logits)).sum(-1)


def mean_field_log_q(codes: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log q(c) for every code: (2^K, K) codes, logits (..., K) -> (..., 2^K)."""
    return logsigmoid(logits) @ codes.T + logsigmoid(-logits) @ (1 - codes).T


def mean_field_elbo(table: torch.Tensor, logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The exact ELBO of mean-field Bernoulli q(logits) against a log-joint table: table (..., 2^K),
    logits (..., K) -> (...). Differentiable in the logits."""
    q = mean_field_log_q(codes, logits).exp()
    return (q * table).sum(-1) + bernoulli_entropy(logits)


def optimise_mean_field(table: torch.Tensor, init_logits: torch.Tensor, codes: torch.Tensor,
                        max_steps: int = 3000, tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, int]:
    """q* for one data point: L-BFGS (strong Wolfe line search, so the bound never decreases) on
    the exact ELBO from ``init_logits`` (K,), stopping when an iteration gains less than ``tol``
    nats. Returns (logits, ELBO at them, iterations used). A local optimum: the mean-field ELBO
    is not concave in the logits."""
    table = table.detach().double()
    logits = init_logits.detach().double().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([logits], lr=1.0, max_iter=max_steps, tolerance_change=tol,
                            tolerance_grad=1e-9, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -mean_field_elbo(table, logits, codes)
        loss.backward()
        return loss

    opt.step(closure)
    steps = opt.state[opt._params[0]]["n_iter"]
    with torch.no_grad():
        return logits.detach(), mean_field_elbo(table, logits, codes), steps
