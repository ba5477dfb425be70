"""gap.md, and the figures of a gap report as the tables show them (run/gap.py, the atlas)."""
from inference.gap.checks import FAIL, NOT_APPLICABLE

GAP_TOPS = {"iwae": "IWAE-K", "elbo_local": "L[q*]"}  # the bounds a report's gaps may start from (gaps_from)


def format_or_dash(value, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, or "-" when it was not computed."""
    return "-" if value is None else f"{value:.{digits}f}"


def with_se(report: dict, key: str, spread: bool = False) -> str:
    """"value ± Monte Carlo s.e." (and "(spread s.e.)" with ``spread``), or "-" when not computed."""
    if report.get(key) is None:
        return "-"
    text = f"{report[key]:.2f} ± {report[f'{key}_mc_se']:.2f}"
    return f"{text} ({report[f'{key}_point_se']:.2f})" if spread else text


def guide_label(report: dict) -> str:
    """The guide, and how it trained when not with the plain ELBO."""
    r, notes = report, []
    if r.get("train_objective") == "iwae":
        notes.append(f"IWAE-{r.get('train_particles')}" + (" DReG" if r.get("train_gradient") == "dreg" else ""))
    if r.get("train_refine"):
        notes.append(f"refined {r['train_refine']} steps, mode {r.get('train_refine_mode')}")
    if r.get("evaluation_refine"):
        notes.append(f"evaluated refined by {r['evaluation_refine']['steps']} steps of {r['evaluation_refine']['lr']}")
    return r["guide"] + (f" ({'; '.join(notes)})" if notes else "")


def markdown(report: dict) -> str:
    r = report
    cols = ["log_px", "iwae", "elbo_local", "elbo_amortised", "approximation_gap", "amortisation_gap"]
    lines = [
        (f"Gap report: model `{r['model']}`, data `{r['dataset']}`, guide `{r['guide']}` "
         f"(q* family `{r['local_guide']}`), {r['num_points']} {r['split']} points, {r['train_steps']} training steps."),
        "",
        "| guide | log p(x) | IWAE-K | L[q*] | L[q] | approximation gap | amortisation gap |",
        "|---|---|---|---|---|---|---|",
        f"| {guide_label(r)} | " + " | ".join(with_se(r, key) for key in cols) + " |",
        *([f"| {r['guide']}, before refinement | " + " | ".join(with_se(r, key) for key in (
            "log_px", "iwae_unrefined", "elbo_local", "elbo_amortised_unrefined", "approximation_gap",
            "amortisation_gap_unrefined")) + " |"] if r.get("elbo_amortised_unrefined") is not None else []),
        "",
        ("Means over the points ± Monte Carlo standard error given the points. Spread over points "
         f"(standard error of the subset mean): approximation gap {format_or_dash(r.get('approximation_gap_point_se'))}, "
         f"amortisation gap {format_or_dash(r.get('amortisation_gap_point_se'))}."),
        "",
    ]
    if r.get("elbo_amortised_unrefined") is not None:
        lines.append(f"- Refinement raised L[q] by {with_se(r, 'refinement_gain')} nats (spread "
                     f"{format_or_dash(r.get('refinement_gain_point_se'))}): amortisation gap {format_or_dash(r['amortisation_gap_unrefined'])} "
                     f"before, {format_or_dash(r['amortisation_gap'])} after.")
    for key, label in (("log_px", "log p(x)"), ("iwae", "IWAE-K"), ("elbo_local", "L[q*]"), ("elbo_amortised", "L[q]"),
                       ("elbo_amortised_unrefined", "L[q] before refinement")):
        if r.get(f"{key}_method"):
            lines.append(f"- {label}: {r[f'{key}_method']}." + (
                f" Exact: {r['log_px_exact']:.2f}." if key == "log_px" and "log_px_exact" in r else ""))
    if r.get("gaps_from") not in (None, "log_px"):
        bound = GAP_TOPS[r["gaps_from"]]
        lines.append(f"- log p(x)'s estimate sat below {bound}, a lower bound on log p(x): the gaps are computed from "
                     f"{bound} instead, so the approximation gap is a lower bound on the true one.")
    if "bdmc_simulated" in r:
        b = r["bdmc_simulated"]
        lines.append(f"- BDMC on {b['points']} points simulated from the model (not the points above): "
                     f"{b['simulated_log_px_lower']:.2f} .. {b['simulated_log_px_upper']:.2f}, a bracket of "
                     f"{b['width']:.3f} ± {b['width_mc_se']:.3f} nats.")
    if "ais_convergence" in r:
        c = r["ais_convergence"]
        lines.append(f"- AIS with {c['steps_x2']} instead of {c['steps']} steps on {c['points']} points moves the "
                     f"estimate by {c['change']:+.3f} ± {c['change_mc_se']:.3f} nats.")
    if "decoder_gflops_per_s" in r.get("ais", {}):
        a = r["ais"]
        lines.append(f"- AIS throughput: {a['leapfrog_chain_points_per_s']:.0f} leapfrog steps x chains x points / s, "
                     f"{a['decoder_gflops_per_s']:.1f} GFLOP/s of decoder work ({100 * a['fraction_of_peak']:.0f}% of "
                     f"the {a['matmul_peak_gflops']:.0f} GFLOP/s matmul peak); acceptance {a['accept_rate']:.2f}.")
    timings = r.get("timings_s", {})
    lines.append(f"- wall time {r['wall_s']:.0f} s" + (
        f" ({', '.join(f'{k} {v}' for k, v in timings.items())})." if timings else "."))
    lines += ["", checks_markdown(r)]
    return "\n".join(lines) + "\n"


def checks_markdown(report: dict) -> str:
    statuses = {check["status"] for check in report["checks"].values()}
    verdict = {True: "**converged**: every check passed",
               False: "**NOT CONVERGED**: a check failed" if FAIL in statuses else
               "**NOT CONFIRMED**: a check was inconclusive (too noisy to tell) and none failed",
               None: "**convergence unknown**: log p(x)'s convergence was not checked"}[report["converged"]]
    lines = [f"Checks: {verdict}.", ""]
    for name, check in report["checks"].items():
        if check["status"] != NOT_APPLICABLE:
            lines.append(f"- `{name}`: {check['status']}" + (f": {check['message']}" if check["message"] else ""))
    return "\n".join(lines)
