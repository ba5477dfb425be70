"""``python run/svi.py``: train a model with a guide, evaluate it, write the run directory.

Exit status: 0 success; 2 bad usage (the message lists the valid choices); 1 a failure at run
time (one line says what happened and what to do); 130 interrupted (resume with --resume).
"""
import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import pyro

from guides import GUIDE_FAMILIES
from inference import TrainingDiverged, TrainingInterrupted, TrainSettings, train
from inference.training.checkpoint import load_checkpoint
from inference.training.parallel import from_environment, shutdown
from inference.training.precision import PRECISIONS, with_precision
from lvm_app.config_flags import add_dataclass_flags, dataclass_from_args, given_fields
from lvm_app.device import DEVICE_HELP, UsageError, resolve_device
from lvm_app.eval_mode import PROTOCOLS, announcement, choose_protocol, settings_for
from lvm_app.command import CommandParser, program_name
from lvm_app.registry import EXPERIMENTS
from lvm_app.run_lock import RunInUse, RunLock
from pyro_models.core import check_settings, evaluation_settings
from pyro_models.datasets import DataDir, DataError

PROG = program_name("run/svi.py")  # the prefix of every message

# Settings that may differ between a run and its resumption: the length, where the data are, the
# evaluation (``setting(..., evaluation=True)`` fields too), and, after a divergence, a lower
# learning rate or a gradient clip (Adam's moments stay valid under either). Anything else would
# make the resumed run a different experiment. (The number of data-loading workers changes
# where batches are read, never what they hold; the device and the number of processes change
# where the run computes, not what: the shards fix its random streams.)
RESUMABLE_CHANGES = {"steps", "progress", "data_dir", "epochs", "eval", "lr", "clip_norm", "data_workers", "device",
                     "processes"}
# Train settings added since runs were first written, at the value those runs trained with
# (shards None: the unsharded loop, whose random stream runs on from step to step).
ADDED_TRAIN_SETTINGS = {"precision": "fp32", "shards": None}


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
    parser.add_argument("--clip-norm", type=float, help="clip the global gradient norm to this value")
    parser.add_argument("--log-every", type=int, help="steps between rows of metrics.csv")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    parser.add_argument("--eval", choices=PROTOCOLS, default="auto",
                        help="evaluation after training: 'paper', the paper's protocol; 'quick', in proportion to a "
                             "short run; 'auto' (default), the paper's for a run of at least the model's default "
                             "length, else quick. Evaluation flags given explicitly win; the cost is printed first")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="fp32 (default), or bf16: in training, the network layers (linear, convolution, GRU) run "
                             "in bfloat16 and return float32; log-densities, losses and the evaluation stay float32. "
                             "Models: " + (", ".join(e.name for e in EXPERIMENTS.values() if e.supports_bf16) or "none")
                             + ". --resume keeps the run's precision")
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
    if args.precision == "bf16" and not experiment.supports_bf16:
        parser.error(f"--precision bf16 does not apply to model {args.model}: {experiment.bf16_note}; use --precision "
                     "fp32 (bf16 models: " + ", ".join(e.name for e in EXPERIMENTS.values() if e.supports_bf16) + ")")
    for name in ("steps", "epochs", "batch_size", "lr", "log_every", "checkpoint_every", "clip_norm", "shards"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            parser.error(f"--{name.replace('_', '-')} must be positive and finite, got {value}")
    try:  # every setting, before any data are read or any file is written
        args.model_config = dataclass_from_args(experiment.config_cls, args)
        args.settings = dataclass_from_args(experiment.settings_cls, args)
        args.given_settings = given_fields(experiment.settings_cls, args)
        check_settings(args.model_config)
        check_settings(args.settings)
        experiment.validate(args.model_config, args.settings, args.dataset, args.guide, args.local)
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


def resolve(experiment, args, data) -> dict:
    defaults = experiment.train_defaults(args.dataset)
    batch_size = args.batch_size or defaults.batch_size
    if args.epochs is not None:
        steps = max(1, round(args.epochs * experiment.steps_per_epoch(data, batch_size)))
    else:
        steps = args.steps or defaults.steps
    return {
        "steps": steps,
        "batch_size": batch_size,
        "lr": args.lr or defaults.lr,
        "clip_norm": args.clip_norm,
        "log_every": args.log_every or defaults.log_every,  # as asked: a later --resume may change --steps
        "checkpoint_every": args.checkpoint_every or defaults.checkpoint_every,
        "precision": args.precision or (saved_train_setting(args.out, "precision") if args.resume else "fp32"),
    }


def changed_settings(saved: dict, config: dict) -> dict:
    """{(section, key): (saved value, new value)} for every setting that differs."""
    return {(section, key): (saved.get(section, {}).get(key), value)
            for section in ("run", "train", "model_config", "settings")
            for key, value in config[section].items() if saved.get(section, {}).get(key) != value}


def with_new_defaults(saved: dict, defaults: dict) -> dict:
    """``saved`` with the settings a run written by an older version lacks, at their defaults
    (what that version trained with): such a run stays resumable."""
    return {**saved, **{section: {**values, **saved.get(section, {})} for section, values in defaults.items()}}


def check_resumable(out: Path, config: dict, evaluation_only: set[str], defaults: dict) -> dict:
    """The saved config.json, if the run in ``out`` may be resumed with ``config``; ``defaults``:
    the sections' default values (settings added since the run was written)."""
    if not (out / "checkpoint.pt").exists():
        raise RuntimeError(f"--resume: no checkpoint.pt in {out}; start the run without --resume")
    saved = with_new_defaults(json.loads((out / "config.json").read_text()), defaults)
    train = saved.get("train", {})  # (train settings added since: appended, so config.json keeps its order)
    saved["train"] = {**train, **{key: value for key, value in ADDED_TRAIN_SETTINGS.items() if key not in train}}
    allowed = RESUMABLE_CHANGES | evaluation_only
    refused = [f"{key}: {old!r} -> {new!r}" for (_, key), (old, new) in changed_settings(saved, config).items()
               if key not in allowed]
    if refused:
        raise RuntimeError("--resume with different settings than the saved run: " + "; ".join(refused)
                           + f" (a resume may change only: {', '.join(sorted(RESUMABLE_CHANGES))} and the "
                             "evaluation settings)")
    return saved


def saved_steps(out: Path) -> int:
    try:
        return json.loads((out / "config.json").read_text())["train"]["steps"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RuntimeError(f"--resume: {out / 'config.json'} is missing or not a run configuration ({error})") from None


def saved_train_setting(out: Path, key: str):
    """A train setting of the run in ``out`` (``--resume`` keeps it unless given): its value, or the
    one of ADDED_TRAIN_SETTINGS for a run written before it existed or whose config.json cannot be
    read (``check_resumable`` then says what is wrong)."""
    try:
        return json.loads((out / "config.json").read_text())["train"].get(key, ADDED_TRAIN_SETTINGS[key])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ADDED_TRAIN_SETTINGS[key]


def config_after_resume(saved: dict, config: dict, checkpoint_step: int) -> dict:
    """config.json of a resumed run: the saved one when nothing more is trained (a re-evaluation
    leaves the run's record as it was), else the new one with each change logged in ``resumed``."""
    if config["train"]["steps"] <= checkpoint_step:
        return saved
    changes = {key: [old, new] for (section, key), (old, new) in changed_settings(saved, config).items()
               if section == "train" and key != "steps"}
    history = saved.get("resumed", []) + ([{"at_step": checkpoint_step, "changed": changes}] if changes else [])
    return {**config, "resumed": history} if history else config


RUN_FILES = ("config.json", "checkpoint.pt", "metrics.csv", "summary.json")


def check_destination(out: Path, resume: bool, overwrite: bool) -> None:
    """Never touch a run without being asked: a directory that holds one needs --resume (continue
    it) or --overwrite (replace it); --resume needs a run to continue."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory")
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not (resume or overwrite):
        raise UsageError(f"{out} holds a run ({', '.join(found)}): continue it with --resume, replace it with "
                         "--overwrite, or choose another --out")


def run(experiment, args) -> dict:
    out, device = args.out, resolve_device(args.device)
    # a resumed run keeps its shards (its random streams): given again, or taken from config.json
    shards = args.shards or (saved_train_setting(out, "shards") if args.resume else None)
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
            return _run_locked(experiment, args, out, parallel, device)
    if parallel.any(False):
        raise UsageError("the main process refused the run directory (its message says why)")
    return _run_locked(experiment, args, out, parallel, device)


def check_batch_divides(experiment, args, parallel) -> None:
    """Each shard takes an equal part of the batch: checked before data are read or a file is touched."""
    if parallel is None:
        return
    batch_size = args.batch_size or experiment.train_defaults(args.dataset).batch_size  # as resolve() takes it
    if batch_size % parallel.shards:
        given = "" if args.shards else " (--shards defaults to the number of processes)"
        raise UsageError(f"--batch-size {batch_size} cannot be cut into {parallel.shards} equal shards{given}: choose "
                         "a batch size that --shards divides")


def _run_locked(experiment, args, out: Path, parallel, device) -> dict:
    main_process = parallel is None or parallel.is_main
    data_dir = DataDir(args.data_dir)
    data = experiment.load_data(args.dataset, data_dir)
    train_config = resolve(experiment, args, data)
    train_config["shards"] = parallel.shards if parallel is not None else None
    model_config = args.model_config
    protocol, why = choose_protocol(args.eval, experiment, train_config["steps"],
                                    experiment.train_defaults(args.dataset).steps)
    settings = settings_for(experiment, args.settings, args.given_settings, protocol)
    try:  # a resumed run keeps the schedule of the length it was started with
        settings = experiment.fit_to_length(model_config, settings, args.dataset,
                                            saved_steps(out) if args.resume else train_config["steps"],
                                            args.given_settings)
    except ValueError as error:
        raise UsageError(str(error)) from None
    run_info = {"model": args.model, "dataset": args.dataset, "guide": args.guide, "local": args.local,
                "seed": args.seed, "data_dir": str(data_dir.path), "eval": protocol, "device": str(device),
                "processes": parallel.world_size if parallel is not None else 1}
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    built = experiment.build(model_config, settings, data, args.guide, args.local)
    for module in built.modules.values():
        module.to(device)
    built.objective = with_precision(built.objective, train_config["precision"], device)
    config = {"run": run_info, "train": train_config,
              "model_config": json.loads(json.dumps(dataclasses.asdict(model_config))),
              "settings": dataclasses.asdict(settings)}
    if args.resume:
        defaults = {"model_config": json.loads(json.dumps(dataclasses.asdict(experiment.config_cls()))),
                    "settings": dataclasses.asdict(experiment.settings_cls())}
        saved = check_resumable(out, config, evaluation_settings(experiment.settings_cls), defaults)
        config = config_after_resume(saved, config, load_checkpoint(out / "checkpoint.pt")["step"])
    if parallel is not None:  # every process has read the saved config.json before it is rewritten
        parallel.barrier()
    if main_process:
        if args.overwrite:  # asked for, and everything is checked: the earlier run's files go first
            for name in (*RUN_FILES, "best.pt"):
                (out / name).unlink(missing_ok=True)
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    batches = experiment.batches(data, train_config["batch_size"], args.seed)
    last = train(
        built.objective, built.modules, batches,
        TrainSettings(steps=train_config["steps"], lr=train_config["lr"], clip_norm=train_config["clip_norm"],
                      log_every=min(train_config["log_every"], train_config["steps"]),
                      checkpoint_every=train_config["checkpoint_every"],
                      progress=args.progress),
        out, resume=args.resume, schedule=experiment.schedule(settings, built),
        on_log=experiment.on_log(built, data, settings), parallel=parallel, device=device,
    )
    if hasattr(batches, "close"):  # data-loading workers have nothing to do during evaluation
        batches.close()
    for module in built.modules.values():
        module.eval()
    if parallel is not None:  # every process enters evaluation with the same random state
        parallel.seed_evaluation(-1)
        if experiment.shards_evaluation:  # the processes share the evaluation's points
            built.info["parallel"] = parallel
            parallel.broadcast_state(built.modules)
    if not main_process:  # the main process writes the results
        if "parallel" in built.info:
            experiment.evaluate(built, data, settings, out, False)
        parallel.barrier()
        return {}
    seconds_per_step = last["elapsed_s"] / last["step"] if last["step"] else None
    line = announcement(experiment, built, settings, args.given_settings, data, train_config["batch_size"], protocol,
                        why, seconds_per_step)
    if line:
        print(f"{PROG}: {line}", file=sys.stderr)
    started = time.perf_counter()
    summary = experiment.evaluate(built, data, settings, out, args.progress)
    summary.update({"eval": protocol, "train_steps": last["step"], "train_loss_last": last.get("loss"),
                    "train_wall_s": round(last["elapsed_s"], 1), "eval_wall_s": round(time.perf_counter() - started, 1)})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    experiment.plot(built, data, out)
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}/summary.json, metrics.csv, config.json, checkpoint.pt and plots")
    if parallel is not None:
        parallel.barrier()
    return summary


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
    except (DataError, TrainingDiverged, RuntimeError, ValueError, OSError) as error:
        if args.traceback:
            raise
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
