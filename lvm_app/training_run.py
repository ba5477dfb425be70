"""One run of ``run/svi.py`` after its flags are parsed: ``prepare`` (read the data, settle the
settings, build the modules, check what a resume keeps), then ``train_prepared`` and
``evaluate_prepared``. The saved run of a ``--resume`` (config.json and checkpoint) is read once,
before, and handed in (``lvm_app.saved_run.SavedRun``)."""
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyro

from inference import TrainSettings, train
from inference.training.precision import with_precision
from inference.training.run_files import write_json
from inference.training.run_state import Checkpointer
from inference.training.schedules import iwae_learning_rates
from inference.training.tensorboard_log import TensorBoardLog, remove_curves
from lvm_app.command import program_name
from lvm_app.compile_choice import LONG_EVALUATION_S, compile_for, compiles
from lvm_app.device import UsageError, machine_fingerprint
from lvm_app.eval_mode import announcement, choose_protocol, settings_for
from lvm_app.resume import check_resumable, config_after_resume
from lvm_app.run_dir import RUN_FILES
from lvm_app.saved_run import SavedRun, as_json
from pyro_models.core import evaluation_settings
from pyro_models.datasets import DataDir
from pyro_models.experiment_kit.protocol import Built, RunContext

PROG = program_name("run/svi.py")


@dataclass
class Prepared:
    """Everything a run needs to train and evaluate, decided once."""

    experiment: object
    ctx: RunContext
    data: object
    built: Built
    train: dict  # config.json's "train": steps, batch size, rate, ...
    config: dict  # config.json as this run writes it
    protocol: str  # the evaluation protocol (--eval) and why it was chosen
    why: str
    given_settings: set
    out: Path
    parallel: object
    device: object
    resume_from: dict | None  # the checkpoint a resumed run continues
    compiled: str = "no"  # which stages ran compiled: "no", "evaluation", "training and evaluation"


def train_config(experiment, args, ctx: RunContext, data, saved: SavedRun | None) -> dict:
    """config.json's "train" section: the flags, else the model's defaults (a resume keeps the
    run's precision and shards unless given)."""
    defaults = experiment.train_defaults(args.dataset)
    if args.epochs is not None:
        steps = max(1, round(args.epochs * experiment.steps_per_epoch(ctx, data)))
    else:
        steps = args.steps or defaults.steps
    return {
        "steps": steps,
        "batch_size": ctx.batch_size,
        "lr": ctx.lr,
        "clip_norm": args.clip_norm,
        "log_every": args.log_every or defaults.log_every,  # as asked: a later --resume may change --steps
        "checkpoint_every": args.checkpoint_every or defaults.checkpoint_every,
        "precision": args.precision or (saved.train["precision"] if saved else "fp32"),
        "compile": args.compile,
        "lr_schedule": args.lr_schedule or (saved.train["lr_schedule"] if saved else "constant"),
    }


LR_SCHEDULES = ("constant", "iwae")


def lr_factor(experiment, ctx: RunContext, data, schedule: str):
    """--lr-schedule as step -> factor on the rate (None: constant)."""
    return None if schedule == "constant" else iwae_learning_rates(experiment.steps_per_epoch(ctx, data))


def run_context(experiment, args) -> RunContext:
    """The run's choices from the parsed flags (before the data decide the config's derived fields)."""
    defaults = experiment.train_defaults(args.dataset)
    return RunContext(dataset=args.dataset, config=args.model_config, settings=args.settings, guide=args.guide,
                      local=args.local, seed=args.seed, batch_size=args.batch_size or defaults.batch_size,
                      lr=args.lr or defaults.lr, data_dir=DataDir(args.data_dir))


def prepare(experiment, args, saved: SavedRun | None, parallel, device) -> Prepared:
    ctx = run_context(experiment, args)
    data = experiment.load_data(ctx)
    ctx = ctx.replace(config=experiment.model_config(ctx, data))
    train_settings = train_config(experiment, args, ctx, data, saved)
    train_settings["shards"] = parallel.shards if parallel is not None else None
    protocol, why = choose_protocol(args.eval, experiment, train_settings["steps"],
                                    experiment.train_defaults(args.dataset).steps)
    ctx = ctx.replace(settings=settings_for(experiment, ctx.settings, args.given_settings, protocol))
    resume_from = saved.checkpoint() if saved is not None and saved.has_checkpoint() else None
    try:  # a resumed run keeps the schedule of the length it was started with
        length = saved.train["steps"] if resume_from is not None else train_settings["steps"]
        ctx = ctx.replace(settings=experiment.fit_to_length(ctx, length, args.given_settings))
    except ValueError as error:
        raise UsageError(str(error)) from None
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    built = experiment.build(ctx, data)
    if resume_from is None and experiment.initialise is not None:  # a restored run's state comes from its checkpoint
        experiment.initialise(ctx, built, data)
    for module in built.modules.values():
        module.to(device)
    compiled = "no"
    if compiles(args.compile, "training", device) and compile_for(built.modules.values(), PROG):
        compiled = "training and evaluation"
    built.objective = with_precision(built.objective, train_settings["precision"], device)
    run_info = {"model": args.model, "dataset": args.dataset, "guide": args.guide, "local": args.local,
                "seed": args.seed, "data_dir": str(ctx.data_dir.path), "eval": protocol, "device": str(device),
                "processes": parallel.world_size if parallel is not None else 1}
    config = {"run": run_info, "train": train_settings, "model_config": as_json(ctx.config),
              "settings": as_json(ctx.settings)}
    if resume_from is not None:
        sections = check_resumable(saved, config, evaluation_settings(experiment.settings_cls))
        config = config_after_resume(sections, config, resume_from["step"])
    elif saved is not None:  # a directory whose run stopped before its first checkpoint: start it again
        print(f"{PROG}: {args.out} holds no checkpoint (its run stopped before the first one): starting from step 0",
              file=sys.stderr)
    return Prepared(experiment, ctx, data, built, train_settings, config, protocol, why, args.given_settings,
                    Path(args.out), parallel, device, resume_from, compiled)


def train_prepared(p: Prepared, overwrite: bool, progress: bool) -> dict:
    """Writes config.json (after every check: an --overwrite removes the earlier run's files
    first), trains, and leaves the modules in evaluation mode. Returns the last logged row."""
    main_process = p.parallel is None or p.parallel.is_main
    if p.parallel is not None:  # every process has read the saved config.json before it is rewritten
        p.parallel.barrier()
    if main_process:
        if overwrite:
            for name in (*RUN_FILES, "best.pt", Checkpointer.PREVIOUS, Checkpointer.DIVERGED):
                (p.out / name).unlink(missing_ok=True)
            remove_curves(p.out)
        p.out.mkdir(parents=True, exist_ok=True)
        write_json(p.out / "config.json", p.config)
    batches = p.experiment.batches(p.ctx, p.data)
    t = p.train
    curves = TensorBoardLog.open(p.out, p.resume_from["step"] if p.resume_from else None) if main_process else None
    try:
        return train(
            p.built.objective, p.built.modules, batches,
            TrainSettings(steps=t["steps"], lr=t["lr"], clip_norm=t["clip_norm"], log_every=min(t["log_every"], t["steps"]),
                          checkpoint_every=t["checkpoint_every"], progress=progress,
                          lr_factor=lr_factor(p.experiment, p.ctx, p.data, t["lr_schedule"])),
            p.out, resume=p.resume_from if p.resume_from is not None else False, schedule=p.experiment.schedule(p.ctx, p.built),
            on_log=p.experiment.on_log(p.ctx, p.built, p.data), parallel=p.parallel, device=p.device,
            on_row=curves.scalars if curves is not None else None)
    finally:
        if curves is not None:
            curves.close()
        close = getattr(batches, "close", None)  # data-loading workers have nothing to do during evaluation
        if close is not None:
            close()
        for module in p.built.modules.values():
            module.eval()


def evaluate_prepared(p: Prepared, last: dict, progress: bool) -> dict:
    """summary.json and the plots (the main process writes them; with ``shards_evaluation`` every
    process computes its share of the estimates)."""
    experiment, parallel = p.experiment, p.parallel
    shared = None
    if parallel is not None:  # every process enters evaluation with the same random state
        parallel.seed_evaluation(-1)
        if experiment.shards_evaluation:  # the processes share the evaluation's points
            shared = parallel
            parallel.broadcast_state(p.built.modules)
    if parallel is not None and not parallel.is_main:
        if shared is not None:
            experiment.evaluate(p.ctx, p.built, p.data, p.out, False, shared)
        parallel.barrier()
        return {}
    seconds_per_step = last["elapsed_s"] / last["step"] if last["step"] else None
    line, seconds = announcement(experiment, p.ctx, p.built, p.data, p.given_settings, p.protocol, p.why,
                                 seconds_per_step)
    if line:
        print(f"{PROG}: {line}", file=sys.stderr)
    started = time.perf_counter()
    long_evaluation = seconds is not None and seconds >= LONG_EVALUATION_S
    if (p.compiled == "no" and compiles(p.train["compile"], "evaluation", p.device, long_evaluation)
            and compile_for(p.built.modules.values(), PROG)):
        p.compiled = "evaluation"
    summary = experiment.evaluate(p.ctx, p.built, p.data, p.out, progress, shared)
    summary.update({"eval": p.protocol, "train_steps": last["step"], "train_loss_last": last.get("loss"),
                    "train_wall_s": round(last["elapsed_s"], 1), "eval_wall_s": round(time.perf_counter() - started, 1),
                    "compiled": p.compiled, "machine": machine_fingerprint(p.device)})
    write_json(p.out / "summary.json", summary)
    experiment.plot(p.ctx, p.built, p.data, p.out, summary)
    curves = TensorBoardLog.open(p.out, quiet=True)
    if curves is not None:
        curves.images(p.out.glob("*.png"), last["step"])
        curves.settings(p.config, summary, last["step"])
        curves.close()
    print(json.dumps(summary, indent=2))
    print(f"wrote {p.out}/summary.json, metrics.csv, config.json, checkpoint.pt and plots")
    if parallel is not None:
        parallel.barrier()
    return summary
