"""``python run/probe.py --run DIR``: the CPC evaluation (test InfoNCE accuracy per k, linear
speaker and phone probes on frozen features, the random / MFCC / supervised baselines) of a run
directory written by ``run/svi.py --model cpc``, e.g. one stopped with Ctrl-C before its last step.
Rewrites DIR/summary.json and the plots. Exit status: 0 success, 2 bad usage, 1 a run-time failure.
"""
import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

from inference.training.metrics_log import read_metrics
from inference.training.run_files import write_json
from lvm_app.command import CommandParser, program_name
from lvm_app.device import DEVICE_HELP, UsageError, machine_fingerprint, resolve_device
from lvm_app.run_dir import load_run
from lvm_app.run_lock import RunInUse, RunLock
from pyro_models.cpc.experiment import BASELINES, parse_baselines
from pyro_models.datasets import DataError

PROG = program_name("run/probe.py")  # the prefix of every message

OVERRIDABLE = ("baselines", "supervised_steps", "probe_utterances", "probe_iterations", "probe_weight_decay",
               "speaker_pool", "eval_batches", "threads")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog=PROG, description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--run", required=True, help="run directory of run/svi.py --model cpc (config.json, checkpoint.pt)")
    parser.add_argument("--data-dir", help="data directory (default: the one the run was trained with)")
    parser.add_argument("--baselines", help=f"comma-separated subset of {','.join(BASELINES)} (empty: none; "
                        "default: the run's setting)")
    parser.add_argument("--supervised-steps", type=int, help="training steps of each supervised baseline")
    parser.add_argument("--probe-utterances", type=int, help="N evenly spaced train and test utterances (0: all)")
    parser.add_argument("--probe-iterations", type=int, help="L-BFGS iterations of each linear probe")
    parser.add_argument("--probe-weight-decay", type=float, help="L2 penalty of the linear probes")
    parser.add_argument("--speaker-pool", choices=["mean", "last"], help="utterance feature for the speaker probe")
    parser.add_argument("--eval-batches", type=int, help="batches of test windows for the InfoNCE accuracy")
    parser.add_argument("--keep", action="store_true",
                        help="keep, from the existing summary.json, the figures of baselines not computed this time")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of a failure")
    return parser


class NotACPCRun(ValueError):
    """Bad usage: the directory holds no run, or another model's."""


def run(args) -> dict:
    device = resolve_device(args.device)  # before the run is touched: a refusal changes nothing
    if not (Path(args.run) / "config.json").exists():
        raise NotACPCRun(f"{args.run} is not a run directory: no config.json (train one with run/svi.py --model cpc "
                         f"--out {args.run})")
    with RunLock(args.run):
        return _run_locked(args, device)


def _run_locked(args, device) -> dict:
    loaded = load_run(args.run, args.data_dir, device)
    if loaded.config["run"]["model"] != "cpc":
        raise NotACPCRun(f"{args.run} is a {loaded.config['run']['model']} run; run/probe.py evaluates cpc runs")
    changes = {name: getattr(args, name) for name in OVERRIDABLE if getattr(args, name) is not None}
    settings = dataclasses.replace(loaded.ctx.settings, **changes)
    ctx = loaded.ctx.replace(settings=settings)
    if settings.threads > 0:
        import torch

        torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    previous_path = loaded.path / "summary.json"
    previous = json.loads(previous_path.read_text()) if args.keep and previous_path.exists() else {}
    summary = loaded.experiment.evaluate(ctx, loaded.built, loaded.data, loaded.path, args.progress)
    computed = parse_baselines(settings.baselines)
    for key, value in previous.items():
        name = key.split("_")[1] if key.startswith("baseline_") else key.split("_")[0]
        if name in BASELINES and name not in computed and key.startswith(("baseline_", name + "_")):
            summary[key] = value
    extra = loaded.saved.checkpoint()["extra"]  # read once, by load_run
    metrics = loaded.path / "metrics.csv"
    rows = read_metrics(metrics) if metrics.exists() else []
    # the keys run/svi.py writes too: the protocol the run chose (probe_settings_changed says what differs)
    summary.update({"eval": loaded.config["run"].get("eval"), "train_loss_last": rows[-1].get("loss") if rows else None})
    summary.update({"train_steps": loaded.step, "train_wall_s": round(extra.get("elapsed_s", 0.0), 1),
                    "eval_wall_s": round(time.perf_counter() - started, 1), "evaluated_by": "run/probe.py",
                    "probe_settings_changed": changes, "compiled": "no",  # the probes run eagerly
                    "machine": machine_fingerprint(device)})
    write_json(loaded.path / "summary.json", summary)
    loaded.experiment.plot(ctx, loaded.built, loaded.data, loaded.path, summary)
    print(json.dumps(summary, indent=2))
    print(f"wrote {loaded.path}/summary.json and plots")
    return summary


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    for name in ("supervised_steps", "probe_iterations", "eval_batches"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.probe_utterances is not None and args.probe_utterances < 0:
        parser.error("--probe-utterances must be 0 (all) or positive")
    if args.probe_weight_decay is not None and not (math.isfinite(args.probe_weight_decay) and args.probe_weight_decay >= 0):
        parser.error(f"--probe-weight-decay must be finite and not negative, got {args.probe_weight_decay}")
    if args.threads is not None and args.threads < 0:
        parser.error(f"--threads must not be negative, got {args.threads}")
    if args.baselines is not None:
        try:
            parse_baselines(args.baselines)
        except ValueError as error:
            parser.error(str(error))
    try:
        run(args)
    except (NotACPCRun, RunInUse, UsageError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; {args.run}'s checkpoint is untouched (run the same command again)",
              file=sys.stderr)
        return 130
    except (DataError, RuntimeError, ValueError, OSError) as error:
        if args.traceback:
            raise
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
