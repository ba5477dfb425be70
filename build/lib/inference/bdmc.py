"""Bidirectional Monte Carlo (Grosse, Ghahramani & Adams 2015): AIS forward from the prior and
in reverse from an exact posterior sample, on data simulated from the model, so that the two
stochastic bounds bracket log p(x) and the bracket's width measures how far AIS is from converged."""
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from .ais import AISSettings, ais
from .importance import mc_se, monte_carlo_variances
from .log_weights import DATA_PLATE


@torch.no_grad()
def simulate(model, batch: dict, max_plate_nesting: int = 1):
    """One joint sample (z, x) ~ p(z) p(x | z) per data point in ``batch`` (whose shapes it
    borrows): returns (latent values, observed values), each with a leading dim of size 1, the
    input of ``ais(..., observed=..., start=...)``."""
    with pyro.plate("particles", 1, dim=-(max_plate_nesting + 1)):
        trace = poutine.trace(poutine.uncondition(model)).get_trace(**batch)
    latents, observed = {}, {}
    conditioned = poutine.trace(model).get_trace(**batch)  # which sites carry data
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        target = observed if conditioned.nodes[name]["is_observed"] else latents
        target[name] = site["value"]
    return latents, observed


def bdmc(model, batch: dict, settings: AISSettings = AISSettings(), max_plate_nesting: int = 1,
         progress: bool = False, data_plate: str = DATA_PLATE) -> dict:
    """Bidirectional Monte Carlo (Grosse et al. 2015) on data simulated from the model, one
    simulated point per point of ``batch``: forward AIS from the prior (a stochastic lower bound)
    and reverse AIS from the exact posterior sample that generated each point (a stochastic upper
    bound), both with the step sizes the forward pilot tuned. The bracket's width bounds AIS's
    error on *simulated* data; it is not a bound on log p(x) of the real points."""
    latents, observed = simulate(model, batch, max_plate_nesting)
    lower = ais(model, batch, settings, max_plate_nesting, observed=observed, progress=progress, desc="BDMC forward",
                data_plate=data_plate)
    upper = ais(model, batch, settings, max_plate_nesting, observed=observed, start=latents,
                step_sizes=lower.step_sizes, progress=progress, desc="BDMC reverse", data_plate=data_plate)
    _, lower_var = monte_carlo_variances(lower.log_weights)
    _, upper_var = monte_carlo_variances(upper.log_weights)  # of log(1 / p(x)): the same variance
    width = upper.log_px.double() - lower.log_px.double()
    return {"points": width.numel(), "simulated_log_px_lower": lower.log_px.double().mean().item(),
            "simulated_log_px_upper": upper.log_px.double().mean().item(), "width": width.mean().item(),
            "width_mc_se": mc_se(lower_var + upper_var),
            "wall_s": round(lower.wall_s + upper.wall_s, 1),
            "note": "on data simulated from the model (an exact posterior sample is known there), "
                    "not on the real points"}

