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


def progressive_facets(num_facets: int, phase_steps: int, fade_in_steps: int):
    """Progressive training (Li et al. 2020, as MFCVAE uses it): the deepest facet trains alone
    for ``phase_steps``; then each next lower facet is faded in over ``fade_in_steps``: its
    decoder input weight and its KL weight rise together, 0 -> 1, and stay at 1. Facets not yet
    introduced have weight 0 (their KL terms are masked out; the decoder ignores them).

    Returns step -> ``{"latent_scales": {"z{j}": w_j}, "facet_fade": [w_0, ..., w_{J-1}]}``.
    """

    def weights(step: int) -> list[float]:
        result = [0.0] * num_facets
        result[-1] = 1.0
        for rank in range(1, num_facets):  # rank-th facet to come in, counted from the top
            start = rank * phase_steps
            if step >= start:
                result[num_facets - 1 - rank] = linear_warmup(step - start, fade_in_steps)
        return result

    def schedule(step: int) -> dict:
        fade = weights(step)
        return {"latent_scales": {f"z{j}": w for j, w in enumerate(fade)}, "facet_fade": fade}

    return schedule
