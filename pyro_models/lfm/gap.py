"""The LFM's inference gaps by exact enumeration of its 2^K latent codes (no Monte Carlo).

Per word: table[c] = log p(z_c) + log p(x | z_c) for every code (the decoder run on all codes in
chunks), then log p(x) = logsumexp_c table[c], L[q] the exact mean-field Bernoulli ELBO at the
encoder's logits, L[q*] the same function maximised over that word's logits by L-BFGS from the
encoder's logits (inference/enumeration.py). Both guides (bernoulli, concrete) have the density
prod_k Bernoulli(sigmoid(logit_k)), so one formula serves both. One word at a time: a table of
2^16 float64 per word is small, one per evaluated word would not be.
"""
import math
import time
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from guides import ConcreteBernoulli, MeanFieldBernoulli
from inference import Estimate, GapEstimates, GapSettings
from inference.enumeration import (
    all_codes,
    bernoulli_entropy,
    mean_field_elbo,
    optimise_mean_field,
)
from pyro_models.core import device_of

MAX_BITS = 16  # 2^16 decoder passes per word (~5-8 s at one thread for the 256-unit LSTM)
CODE_CHUNK = 512  # codes per decoder pass: measured faster than 4096 (1.7x at one thread), the activations stay in cache
TOL = 1e-6  # nats: q*'s optimiser stops when an iteration gains less


@contextmanager
def eval_mode(*modules):
    """Modules in eval mode (no dropout) for the block; their previous modes restored after."""
    saved = [(m, m.training) for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.train(training)


@torch.no_grad()
def log_joint_table(model, tokens, lengths, codes: torch.Tensor, chunk: int = CODE_CHUNK) -> torch.Tensor:
    """(2^K,) float64: log p(z_c) + log p(x | z_c) of one word (tokens (1, T), lengths (1,)).
    The plain model: no word dropout, every density at weight 1."""
    z = codes.to(torch.get_default_dtype())
    log_prior = model.prior(1, tokens).log_prob(z).double()  # (2^K,)
    log_lik = torch.cat([model.log_likelihood(z[i:i + chunk].unsqueeze(1), tokens, lengths).squeeze(1)
                         for i in range(0, len(z), chunk)])
    return log_prior + log_lik.double()


def check_guide(guide):
    if not guide.amortised:
        raise ValueError("the LFM gap report needs an amortised guide (q is the encoder's; q* is fitted here)")
    families = list(guide.families)
    if len(families) != 1 or not isinstance(families[0], (MeanFieldBernoulli, ConcreteBernoulli)):
        raise ValueError("LFM enumeration needs one mean-field Bernoulli site (guide bernoulli or concrete), "
                         f"not {[type(f).__name__ for f in families]}")


def lfm_gap_estimates(model, guide, points: dict, settings: GapSettings, progress: bool = False) -> GapEstimates:
    """log p(x), L[q] and L[q*] of every word in ``points`` (tokens, lengths), exactly; q* stops after
    ``settings.local.max_steps`` L-BFGS iterations at most (the other settings do not apply)."""
    max_steps = settings.local.max_steps
    bits = model.config.latent_bits
    if bits > MAX_BITS:
        raise ValueError(f"exact enumeration needs <= {MAX_BITS} latent bits (--latent-bits); this run has {bits}")
    check_guide(guide)
    tokens, lengths = points["tokens"], points["lengths"]
    n = tokens.shape[0]
    codes = all_codes(bits).to(device_of(model))  # where the decoder runs (tokens: moved by run/gap.py)
    out = {key: torch.empty(n, dtype=torch.float64) for key in
           ("log_px", "elbo", "elbo_local", "entropy_q", "entropy_local", "best_code_mass", "entropy_posterior")}
    steps, enum_s, opt_s = [], 0.0, 0.0
    with eval_mode(model, guide):
        with torch.no_grad():
            logits = guide.params(tokens=tokens, lengths=lengths).double()  # (N, K), the amortised q
        for i in tqdm(range(n), desc=f"enumerating 2^{bits} codes", disable=not progress, leave=False):
            started = time.perf_counter()
            length = lengths[i:i + 1]
            table = log_joint_table(model, tokens[i:i + 1, :int(length)], length, codes)
            enum_s += time.perf_counter() - started
            started = time.perf_counter()
            log_px = torch.logsumexp(table, 0)
            posterior = (table - log_px).exp()
            local, elbo_local, used = optimise_mean_field(table, logits[i], codes, max_steps, TOL)
            opt_s += time.perf_counter() - started
            out["log_px"][i] = log_px
            out["elbo"][i] = mean_field_elbo(table, logits[i], codes)
            out["elbo_local"][i] = elbo_local
            out["entropy_q"][i] = bernoulli_entropy(logits[i])
            out["entropy_local"][i] = bernoulli_entropy(local)
            out["best_code_mass"][i] = posterior.max()
            out["entropy_posterior"][i] = -(posterior * (table - log_px)).sum()
            steps.append(used)
    where = f"exact: enumeration of all 2^{bits} codes"
    details = {"enumeration": {
        "num_codes": len(codes), "wall_s": round(enum_s, 2), "seconds_per_point": round(enum_s / max(n, 1), 3),
        "local_optimiser": f"L-BFGS (strong Wolfe) on the exact ELBO per point from the amortised logits, "
                           f"at most {max_steps} iterations, stop on a gain < {TOL:g} nats "
                           f"(the other gap settings do not apply)",
        "local_wall_s": round(opt_s, 2), "local_steps_mean": sum(steps) / max(n, 1), "local_steps_max": max(steps, default=0),
        "local_not_converged": sum(s >= max_steps for s in steps),
        "entropy_q_mean": out["entropy_q"].mean().item(), "entropy_q_local_mean": out["entropy_local"].mean().item(),
        "entropy_posterior_mean": out["entropy_posterior"].mean().item(),
        "best_code_posterior_mass_mean": out["best_code_mass"].mean().item(),
        "best_code_posterior_mass_min": out["best_code_mass"].min().item() if n else math.nan,
    }}
    return GapEstimates(
        log_px=Estimate.exact(out["log_px"], f"{where}, logsumexp of log p(z) + log p(x | z)"),
        elbo_amortised=Estimate.exact(out["elbo"], f"{where}, E_q[log p(x, z) - log q(z | x)] at the encoder's logits"),
        elbo_local=Estimate.exact(out["elbo_local"], f"{where}; q*: a local optimum of the exact ELBO over "
                                                     f"per-point logits (L-BFGS from the encoder's)"),
        iwae=None, details=details, local_at_limit=details["enumeration"]["local_not_converged"],
        local_max_steps=max_steps)
