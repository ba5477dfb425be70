"""Schedules owned by the runner; they reach model and guide as keyword arguments."""


def linear_warmup(step: int, warmup_steps: int) -> float:
    """0 -> 1 linearly over ``warmup_steps`` (1 throughout when warmup_steps is 0)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps)


def kl_warmup(site_names, warmup_steps: int):
    """KL annealing: every latent site's log-densities (model prior and guide) scaled alike."""

    def schedule(step: int) -> dict:
        weight = linear_warmup(step, warmup_steps)
        return {"latent_scales": {name: weight for name in site_names}}

    return schedule
