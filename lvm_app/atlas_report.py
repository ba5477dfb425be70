"""The gap atlas's outputs from its gap reports: atlas.json (one row per entry and split),
atlas.md (the table) and atlas.png (stacked approximation + amortisation gap per entry)."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from inference.training.run_files import save_figure, write_json, write_text
from lvm_app.gap_markdown import GAP_TOPS, format_or_dash, with_se

COLUMNS = ("log_px", "elbo_local", "elbo_amortised", "approximation_gap", "amortisation_gap")
# A semi-amortised guide's report also has the encoder's own q, before refinement (lvm_app/gap.py).
REFINED_COLUMNS = ("elbo_amortised_unrefined", "amortisation_gap_unrefined", "refinement_gain")


def collect(out: Path, entries) -> list[dict]:
    rows = []
    for entry in entries:
        timings_path = out / entry.name / "timings.json"
        timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
        for split in ("train", "test"):
            path = out / entry.name / f"gap-{split}" / "gap.json"
            if not path.exists():
                continue
            report = json.loads(path.read_text())
            row = {"entry": entry.name, "label": entry.label, "bar_label": entry.bar_label, "model": entry.model, "guide": entry.guide,
                   "dataset": entry.dataset, "split": split, "num_points": report["num_points"],
                   "train_steps": report["train_steps"], "log_px_method": report["log_px_method"],
                   "train_s": timings.get("train"), "gap_s": timings.get(f"gap-{split}")}
            for key in (*COLUMNS, "iwae", "inference_gap", *REFINED_COLUMNS):
                for suffix in ("", "_mc_se", "_point_se"):
                    row[key + suffix] = report.get(key + suffix)
            row["gaps_from"] = report.get("gaps_from", "log_px")
            row["converged"] = report.get("converged")
            row["checks_not_passed"] = sorted(name for name, check in report.get("checks", {}).items()
                                              if check["status"] in ("fail", "inconclusive", "not run"))
            rows.append(row)
    return rows


def _method(text: str) -> str:
    """A short name for the table; the gap reports hold the whole description."""
    for short, label in (("AIS", "AIS"), ("enumeration", "enumeration"), ("importance sampling", "sum over b, IS over z"),
                         ("exact", "exact sum")):
        if short.lower() in text.lower():
            return label
    return text.split(":")[0]


def checks_cell(row: dict) -> str:
    """The report's own verdict (inference/gap/checks.py) and what did not pass."""
    verdict = {True: "ok", False: "NOT CONVERGED", None: "unchecked"}[row.get("converged")]
    verdict += f": {', '.join(row['checks_not_passed'])}" if row.get("checks_not_passed") else ""
    if row.get("gaps_from", "log_px") != "log_px":  # log p(x) sat below a lower bound: the gaps start there
        verdict += f" (gaps from {GAP_TOPS[row['gaps_from']]})"
    return verdict


def table(rows: list[dict]) -> str:
    lines = [("| model / guide | data | split | N | train steps | log p(x) by | log p(x) | L[q*] | L[q] | "
              "approximation gap | amortisation gap | checks | compute (train + gap, s) |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        compute = "-" if r["gap_s"] is None else f"{r['train_s'] or 0:.0f} + {r['gap_s']:.0f}"
        lines.append(f"| {r['label']} | {r['dataset']} | {r['split']} | {r['num_points']} | {r['train_steps']} | "
                     f"{_method(r['log_px_method'])} | {format_or_dash(r.get('log_px'))} | {format_or_dash(r.get('elbo_local'))} | "
                     f"{format_or_dash(r.get('elbo_amortised'))} | {with_se(r, 'approximation_gap', spread=True)} | "
                     f"{with_se(r, 'amortisation_gap', spread=True)} | {checks_cell(r)} | {compute} |")
    return "\n".join(lines)


def refined_table(rows: list[dict]) -> str:
    """L[q] and the amortisation gap before and after refinement, for the semi-amortised entries
    (their rows in the main table are after refinement); empty when there are none."""
    refined = [r for r in rows if r.get("elbo_amortised_unrefined") is not None]
    if not refined:
        return ""
    lines = ["| model / guide | split | N | L[q] before refinement | L[q] after | gain | amortisation gap before | "
             "amortisation gap after |", "|---|---|---|---|---|---|---|---|"]
    for r in refined:
        lines.append(f"| {r['label']} | {r['split']} | {r['num_points']} | {format_or_dash(r.get('elbo_amortised_unrefined'))} | "
                     f"{format_or_dash(r.get('elbo_amortised'))} | {with_se(r, 'refinement_gain', spread=True)} | "
                     f"{with_se(r, 'amortisation_gap_unrefined', spread=True)} | "
                     f"{with_se(r, 'amortisation_gap', spread=True)} |")
    return "\n".join(lines)


def figure(rows: list[dict], path: Path) -> Path:
    """One panel per model (their scales differ); per guide a train bar and a test bar, each the
    approximation gap with the amortisation gap stacked on top; error bars: spread over points."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(3.2 * max(len(models), 1), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model and r["approximation_gap"] is not None]
        entries = list(dict.fromkeys((r["entry"], r["bar_label"]) for r in mine))
        for i, (entry, _) in enumerate(entries):
            for j, split in enumerate(("train", "test")):
                match = [r for r in mine if r["entry"] == entry and r["split"] == split]
                if not match:
                    continue
                r, x = match[0], i + (j - 0.5) * 0.38
                hatch = None if split == "train" else "//"
                ax.bar(x, r["approximation_gap"], 0.36, color="tab:blue", hatch=hatch, edgecolor="white")
                ax.bar(x, r["amortisation_gap"], 0.36, bottom=r["approximation_gap"], color="tab:orange",
                       hatch=hatch, edgecolor="white", yerr=r["inference_gap_point_se"], capsize=2)
        ax.set_xticks(range(len(entries)), [label for _, label in entries], rotation=30, fontsize=8)
        ax.set_title(f"{model} ({mine[0]['dataset']})" if mine else model, fontsize=9)
        ax.axhline(0, color="black", linewidth=0.5)
    axes[0][0].set_ylabel("nats per data point")
    handles = [plt.Rectangle((0, 0), 1, 1, color="tab:blue"), plt.Rectangle((0, 0), 1, 1, color="tab:orange"),
               plt.Rectangle((0, 0), 1, 1, facecolor="grey", edgecolor="white"),
               plt.Rectangle((0, 0), 1, 1, facecolor="grey", hatch="//", edgecolor="white")]
    fig.legend(handles, ["approximation gap", "amortisation gap", "training subset (left)", "test subset (right)"],
               loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    try:
        save_figure(fig, path, dpi=90)
    finally:
        plt.close(fig)
    return path


def previous_invocations(path: Path) -> list:
    """The history of atlas runs kept in atlas.json (a new one where the file is missing or damaged)."""
    if not path.exists():
        return []
    try:
        return list(json.loads(path.read_text()).get("invocations", []))
    except (OSError, ValueError, AttributeError, TypeError) as error:
        print(f"[atlas] {path} is not an atlas report ({error}): its history of invocations starts again", flush=True)
        return []


def write_report(out: Path, entries, invocation: dict | None, tiny: bool = False) -> list[Path]:
    """``invocation``: this run's wall time and settings, appended to the history in atlas.json
    (None for --report-only)."""
    rows = collect(out, entries)
    total = sum((r["gap_s"] or 0) for r in rows) + sum(
        {r["entry"]: r["train_s"] or 0 for r in rows}.values())
    path = out / "atlas.json"
    invocations = previous_invocations(path)
    if invocation is not None:
        invocations.append(invocation)
    write_json(path, {"rows": rows, "stage_seconds_total": round(total, 1), "invocations": invocations, "tiny": tiny})
    note = ("Means over the subset's points; ± the Monte Carlo standard error given the points; in brackets the "
            "standard error from the spread over points. Compute: wall seconds of the training run and of this "
            f"split's gap report (one thread each). Sum of all stages: {total:.0f} s.")
    refined = refined_table(rows)
    if refined:
        note += ("\n\nSemi-amortised guides (their rows above are after refinement): L[q] and the amortisation gap "
                 "before and after refinement.\n\n" + refined)
    write_text(out / "atlas.md", ("TINY SETTINGS (plumbing check, not results)\n\n" if tiny else "")
               + table(rows) + "\n\n" + note + "\n")
    return [out / "atlas.json", out / "atlas.md", figure(rows, out / "atlas.png")]
