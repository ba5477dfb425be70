"""The inference-gap report of Cremer, Li & Duvenaud (2018): ``estimates.py`` (per-point
estimates with their Monte Carlo errors, and the summary), ``report.py`` (log p(x) by AIS, L[q],
L[q*] for any model with real latents; ``gap_report``), ``checks.py`` (the report's checks of itself)."""
from .checks import check_lines
from .estimates import Estimate, GapEstimates, summarise
from .report import GapCheckWarning, GapSettings, assemble, continuous_estimates, gap_report

__all__ = ["Estimate", "GapCheckWarning", "GapEstimates", "GapSettings", "assemble", "check_lines",
           "continuous_estimates", "gap_report", "summarise"]
