"""What ``--resume`` may change, and the config.json a resumed run writes.

A resumed run must be the run that was started: the same model, data, guide, seed and settings.
It may change its length, where the data are, the evaluation (``setting(..., evaluation=True)``
fields and ``--eval``), and, after a divergence, a lower learning rate or a gradient clip (Adam's
moments stay valid under either). The number of data-loading workers changes where batches are
read, never what they hold, and how often checkpoints are written changes nothing the run computes; the device and the number of processes change where the run computes,
not what: the shards fix its random streams; compiling changes speed, not results (to float
tolerance). Anything else would make it a different experiment.
"""
from lvm_app.saved_run import SavedRun

RESUMABLE_CHANGES = {"compile", "steps", "progress", "data_dir", "epochs", "eval", "lr", "clip_norm", "data_workers", "device",
                     "processes", "checkpoint_every"}


class ResumeRefused(RuntimeError):
    """--resume with settings the saved run did not have (exit 1: the saved run makes it wrong)."""


# Keys a run written before they existed lacks, with the value that does what that run did
# (auto: CPU training eager, as every run was then).
ADDED_LATER = {("train", "compile"): "auto"}


def changed_settings(saved: dict, config: dict) -> dict:
    """{(section, key): (saved value, new value)} for every setting that differs."""
    changes = {}
    for section in ("run", "train", "model_config", "settings"):
        for key, value in config[section].items():
            old = saved.get(section, {}).get(key, ADDED_LATER.get((section, key)))
            if old != value:
                changes[(section, key)] = (old, value)
    return changes


def check_resumable(saved: SavedRun, config: dict, evaluation_only: set[str]) -> dict:
    """The saved config.json (as this version writes it), if its run may be resumed with ``config``."""
    if not saved.has_checkpoint():
        raise ResumeRefused(f"--resume: no checkpoint.pt in {saved.path}; start the run without --resume")
    sections = saved.sections()
    allowed = RESUMABLE_CHANGES | evaluation_only
    refused = [f"{key}: {old!r} -> {new!r}" for (_, key), (old, new) in changed_settings(sections, config).items()
               if key not in allowed]
    if refused:
        raise ResumeRefused("--resume with different settings than the saved run: " + "; ".join(refused)
                            + f" (a resume may change only: {', '.join(sorted(RESUMABLE_CHANGES))} and the "
                              "evaluation settings)")
    return sections


def config_after_resume(saved: dict, config: dict, checkpoint_step: int) -> dict:
    """config.json of a resumed run: the saved one when nothing more is trained (a re-evaluation
    leaves the run's record as it was), else the new one with each change logged in ``resumed``."""
    if config["train"]["steps"] <= checkpoint_step:
        return saved
    changes = {key: [old, new] for (section, key), (old, new) in changed_settings(saved, config).items()
               if section == "train" and key != "steps"}
    history = saved.get("resumed", []) + ([{"at_step": checkpoint_step, "changed": changes}] if changes else [])
    return {**config, "resumed": history} if history else config
