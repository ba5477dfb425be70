"""``python run/svi.py``: train a model with a guide, evaluate it, write the run directory.

Exit status: 0 success; 2 bad usage (the message lists the valid choices); 1 a failure at run
time (one line says what happened and what to do); 130 interrupted (resume with --resume).
"""
import argparse
import math
import sys
from pathlib import Path

from guides import GUIDE_FAMILIES
from inference import TrainingDiverged, TrainingInterrupted
from inference.training.parallel import from_environment, shutdown
from inference.training.precision import PRECISIONS
from inference.training.schedules import iwae_schedule_epochs
from lvm_app.command import CommandParser, program_name, seed
from lvm_app.compile_choice import COMPILE_CHOICES, COMPILE_HELP
from lvm_app.config_flags import add_dataclass_flags, dataclass_from_args, given_fields
from lvm_app.device import DEVICE_HELP, UsageError, resolve_device
from lvm_app.eval_mode import PROTOCOLS
from lvm_app.registry import EXPERIMENTS
from lvm_app.resume import ResumeRefused
from lvm_app.run_dir import check_destination
from lvm_app.run_lock import RunInUse, RunLock
from lvm_app.saved_run import SavedRun
from lvm_app.training_run import LR_SCHEDULES, evaluate_prepared, prepare, train_prepared
from pyro_models.core import check_settings
from pyro_models.datasets import DataError
from pyro_models.experiment_kit.protocol import RunContext

PROG = program_name("run/svi.py")  # the prefix of every message
MOST_STEPS, MOST_EPOCHS = 10**9, 10**6  # a longer run is a typing slip: refused before anything is written


def bf16_models() -> list[str]:
    return [e.name for e in EXPERIMENTS.values() if e.bf16_refusal is None]


def build_parser(experiment=None) -> argparse.ArgumentParser:
    parser = CommandParser(
        prog=PROG,
        description="Train a Pyro latent-variable model with a guide, then evaluate it. "
        "Writes summary.json, metrics.csv, config.json, checkpoint.pt and PNG plots to --out.",
        epilog="Models: " + "; ".join(f"{e.name}: {e.description} (guides: {', '.join(e.guides) or 'none'})"
                                      for e in EXPERIMENTS.values())
        + ". Use --model M --help for the model's own settings and why its guides are the ones that apply.",
    )
    parser.add_argument("--model", required=True, choices=list(EXPERIMENTS), help="which model to train")
    if experiment is None:
        guides = sorted(set(GUIDE_FAMILIES) | {g for e in EXPERIMENTS.values() for g in e.guides})
        datasets = sorted({d for e in EXPERIMENTS.values() for d in e.datasets})
        defaults = "the model's"
    else:
        guides, datasets = experiment.guides, experiment.datasets
        defaults = f"{experiment.default_guide} / {experiment.default_dataset}"
    note = f" {experiment.name}: {experiment.guide_note}." if experiment is not None else ""
    guide_help = (f"guide family ({', '.join(guides) or 'none'}; default: {defaults.split(' / ')[0]}).{note}"
                  if experiment is None or experiment.guides else f"none:{note}")
    parser.add_argument("--guide", help=guide_help)
    parser.add_argument("--local", action="store_true",
                        help="free per-datapoint guide parameters instead of an encoder (non-amortised)")
    parser.add_argument("--dataset", help=f"data set ({', '.join(datasets)}; default: {defaults.split(' / ')[-1]})")
    parser.add_argument("--data-dir", help="data directory (default: $PYRO_MODELS_DATA, else ~/.cache/pyro_models)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimisation steps (default: the model's)")
    length.add_argument("--epochs", type=float, help="passes over the training set (instead of --steps)")
    parser.add_argument("--batch-size", type=int, help="data points per step (default: the model's)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default: the model's)")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                        help="constant: --lr throughout (default); iwae: the schedule of Burda et al. that Cremer et al. "
                             f"train with, 3^i epochs at --lr x 10^(-i/7) for i = 0..7 ({iwae_schedule_epochs():,} epochs "
                             "in all: --epochs 3280), the rate then staying at its last value (an epoch: --epochs' own). "
                             "--resume keeps the run's schedule")
    parser.add_argument("--clip-norm", type=float, help="clip the global gradient norm to this value")
    parser.add_argument("--log-every", type=int, help="steps between rows of metrics.csv")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    parser.add_argument("--eval", choices=PROTOCOLS, default="auto",
                        help="evaluation after training: 'paper', the paper's protocol; 'quick', in proportion to a "
                             "short run; 'auto' (default), the paper's for a run of at least the model's default "
                             "length, else quick. Evaluation flags given explicitly win; the cost is printed first")
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default: 0)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="fp32 (default), or bf16: in training, the network layers (linear, convolution, GRU) run "
                             "in bfloat16 and return float32; log-densities, losses and the evaluation stay float32. "
                             "Models: " + (", ".join(bf16_models()) or "none")
                             + ". --resume keeps the run's precision")
    parser.add_argument("--compile", choices=COMPILE_CHOICES, default="auto", help=COMPILE_HELP)
    parser.add_argument("--shards", type=int,
                        help="cut each step's batch into this many shards, each with its own random stream, so that "
                             "1, 2, 4 processes (torchrun --nproc_per_node N) give the same run (default: the number "
                             "of processes under torchrun; unsharded in one process)")
    parser.add_argument("--out", help="output directory (default: runs/MODEL-DATASET-GUIDE-seedS)")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    resume.add_argument("--overwrite", action="store_true",
                        help="replace the run in --out (without it a run there is never touched)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of a failure")
    if experiment is not None:
        add_dataclass_flags(parser, experiment.config_cls, f"{experiment.name} model settings")
        add_dataclass_flags(parser, experiment.settings_cls, f"{experiment.name} training and evaluation settings")
    return parser


def parse(argv):
    """Two passes: the model named decides which settings flags exist."""
    pre = CommandParser(prog=PROG, add_help=False)
    pre.add_argument("--model")
    known, _ = pre.parse_known_args(argv)
    experiment = EXPERIMENTS.get(known.model)
    parser = build_parser(experiment)
    args = parser.parse_args(argv)
    experiment = EXPERIMENTS[args.model]
    args.dataset = args.dataset or experiment.default_dataset
    if args.dataset not in experiment.datasets:
        parser.error(f"unknown dataset {args.dataset!r} for model {args.model}; choose from: {', '.join(experiment.datasets)}")
    if args.guide is not None and args.guide not in experiment.guides:
        parser.error(guide_refusal(experiment, args.guide))
    args.guide = args.guide or experiment.default_guide
    if args.local and not experiment.supports_local_guide:
        parser.error(f"model {args.model} has no local (per-datapoint) guide")
    if args.precision == "bf16" and experiment.bf16_refusal is not None:
        parser.error(f"--precision bf16 does not apply to model {args.model}: {experiment.bf16_refusal}; use --precision "
                     f"fp32 (bf16 models: {', '.join(bf16_models())})")
    for name in ("steps", "epochs", "batch_size", "lr", "log_every", "checkpoint_every", "clip_norm", "shards"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            parser.error(f"--{name.replace('_', '-')} must be positive and finite, got {value}")
    for name, most in (("steps", MOST_STEPS), ("epochs", MOST_EPOCHS)):
        if (getattr(args, name) or 0) > most:
            parser.error(f"--{name} must be at most {most:g}, got {getattr(args, name):g}")
    try:  # every setting, before any data are read or any file is written
        args.model_config = dataclass_from_args(experiment.config_cls, args)
        args.settings = dataclass_from_args(experiment.settings_cls, args)
        args.given_settings = given_fields(experiment.settings_cls, args)
        check_settings(args.model_config)
        check_settings(args.settings)
        experiment.validate(RunContext(dataset=args.dataset, config=args.model_config, settings=args.settings,
                                       guide=args.guide, local=args.local, seed=args.seed))
    except (ValueError, TypeError) as error:
        parser.error(str(error))
    args.out = Path(args.out or f"runs/{args.model}-{args.dataset}-{args.guide}{'-local' if args.local else ''}"
                                f"-seed{args.seed}")
    return parser, experiment, args


def guide_refusal(experiment, guide: str) -> str:
    """One line: why ``guide`` does not apply to this model, and what does."""
    if not experiment.guides:
        return f"model {experiment.name} takes no --guide: {experiment.guide_note}"
    what = "does not apply to" if guide in GUIDE_FAMILIES else "is not a guide of"
    return (f"guide {guide!r} {what} model {experiment.name}: {experiment.guide_note}; "
            f"choose from: {', '.join(experiment.guides)}")


def read_saved(args) -> SavedRun | None:
    """The run --resume continues, read once (None without --resume)."""
    if not args.resume:
        return None
    if not (args.out / "config.json").exists():
        raise ResumeRefused(f"--resume: {args.out} holds no run to continue (no config.json); start the run without "
                            "--resume")
    saved = SavedRun.read(args.out, EXPERIMENTS)
    if saved.run.get("model") != args.model:
        raise ResumeRefused(f"--resume: {args.out} holds a {saved.run.get('model')} run, not {args.model}")
    return saved


def run(experiment, args) -> dict:
    out, device = args.out, resolve_device(args.device)
    saved = read_saved(args)
    # a resumed run keeps its shards (its random streams): given again, or taken from config.json
    shards = args.shards or (saved.train["shards"] if saved is not None else None)
    try:
        parallel = from_environment(shards, args.seed, device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    check_batch_divides(experiment, args, parallel)
    if parallel is None or parallel.is_main:
        failure = None
        try:
            check_destination(out, args.resume, args.overwrite)
        except UsageError as error:
            failure = error
        if parallel is not None and parallel.any(failure is not None):  # the other processes stop too
            raise failure
        if failure is not None:
            raise failure
        with RunLock(out):
            return _run_locked(experiment, args, saved, parallel, device)
    if parallel.any(False):
        raise UsageError("the main process refused the run directory (its message says why)")
    return _run_locked(experiment, args, saved, parallel, device)


def check_batch_divides(experiment, args, parallel) -> None:
    """Each shard takes an equal part of the batch: checked before data are read or a file is touched."""
    if parallel is None:
        return
    batch_size = args.batch_size or experiment.train_defaults(args.dataset).batch_size  # as the run takes it
    if batch_size % parallel.shards:
        given = "" if args.shards else " (--shards defaults to the number of processes)"
        raise UsageError(f"--batch-size {batch_size} cannot be cut into {parallel.shards} equal shards{given}: choose "
                         "a batch size that --shards divides")


def _run_locked(experiment, args, saved, parallel, device) -> dict:
    prepared = prepare(experiment, args, saved, parallel, device)
    last = train_prepared(prepared, args.overwrite, args.progress)
    return evaluate_prepared(prepared, last, args.progress)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, experiment, args = parse(argv)
    try:
        return _main(experiment, args)
    finally:
        shutdown()


def _main(experiment, args) -> int:
    try:
        run(experiment, args)
    except (UsageError, RunInUse) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        print(f"{PROG}: {stop}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before training (reading data) or after it (evaluating)
        print(f"{PROG}: interrupted outside training; what was written is in {args.out} (a finished training "
              "run is re-evaluated by running the same command with --resume)", file=sys.stderr)
        return 130
    except (DataError, TrainingDiverged, RuntimeError, ValueError, OSError) as error:  # ResumeRefused, DamagedRun too
        if args.traceback:
            raise
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
