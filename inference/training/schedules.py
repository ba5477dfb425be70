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


IWAE_STAGES = 8  # Burda et al.'s schedule: stages i = 0..7, 3^i epochs each (3,280 epochs in all)


def iwae_learning_rates(steps_per_epoch: int):
    """Burda et al.'s schedule, which Cremer et al. train with: stage i lasts 3^i epochs at the base
    rate x 10^(-i/7), i = 0..7 (epochs 0-1, 1-4, 4-13, ..., 1093-3280); after the last stage the
    rate stays at its last value. Returns step -> the factor on the base rate.

    A function of the step alone, so a run stopped and resumed follows the one long run's rates."""
    if steps_per_epoch < 1:
        raise ValueError(f"the IWAE schedule needs at least one step per epoch, got {steps_per_epoch}")

    def factor(step: int) -> float:
        stage = 0  # stage i ends after (3^(i+1) - 1) / 2 epochs
        while stage < IWAE_STAGES - 1 and step >= (3 ** (stage + 1) - 1) // 2 * steps_per_epoch:
            stage += 1
        return 10.0 ** (-stage / 7)

    return factor


def iwae_schedule_epochs() -> int:
    """The schedule's full length in epochs: 1 + 3 + ... + 3^7 = 3,280."""
    return (3 ** IWAE_STAGES - 1) // 2
