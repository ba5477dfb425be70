"""The one training loop: any objective, any model, checkpoints that resume exactly.

A batch is a function of the step number (``batch_for_step``), and the checkpoint holds the
modules, the optimizer and every random number generator, so a run interrupted at step n and
resumed is the same run as one that never stopped.
"""
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import NonFiniteCheckpoint, load_checkpoint, restore_modules, save_checkpoint, set_rng_state
from .metrics_log import MetricsLog, read_metrics

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class TrainSettings:
    steps: int
    lr: float = 1e-3
    clip_norm: float | None = None  # max global gradient norm; None: no clipping
    log_every: int = 100
    checkpoint_every: int = 1000
    progress: bool = True


class TrainingDiverged(RuntimeError):
    """The loss or the gradient stopped being finite; the last good checkpoint is untouched."""

    def __init__(self, step: int, what: str, checkpoint_step: int | None, checkpoint: Path):
        where = f"{checkpoint} (step {checkpoint_step})" if checkpoint_step else "none was written yet"
        super().__init__(f"{what} became non-finite at step {step}; last good checkpoint: {where}")
        self.step = step


class TrainingInterrupted(RuntimeError):
    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"interrupted after step {step}; checkpoint saved to {checkpoint}; continue with --resume")
        self.step = step


def make_optimizer(params, lr: float) -> torch.optim.Adam:
    """Adam with the fused CPU kernel: one pass over each tensor instead of a dozen
    element-wise ops per parameter (5x faster on a 3M-parameter model; same update rule)."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def parameters_of(modules: dict) -> list[torch.nn.Parameter]:
    seen, params = set(), []
    for module in modules.values():
        for p in module.parameters():
            if id(p) not in seen and p.requires_grad:
                seen.add(id(p))
                params.append(p)
    return params


class _StopRequest:
    """SIGINT/SIGTERM ask the loop to stop at the next step boundary (a second SIGINT aborts)."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def train(
    objective: Callable[..., float],
    modules: dict,
    batch_for_step: Callable[[int], dict],
    settings: TrainSettings,
    out_dir: Path,
    resume: bool = False,
    schedule: Callable[[int], dict] | None = None,
    on_log: Callable[[int], dict] | None = None,
) -> dict:
    """Minimise ``objective(batch, **schedule(step))`` for ``settings.steps`` steps.

    ``modules`` (name -> nn.Module) hold every trained parameter; ``on_log(step)`` may return
    extra metrics for the log row. Returns the last logged row, with ``step`` the steps done
    (more than ``settings.steps`` when resuming a longer run just to evaluate it) and
    ``elapsed_s`` the training time over all sessions of the run.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT_NAME
    params = parameters_of(modules)
    optimizer = make_optimizer(params, settings.lr)
    step, elapsed, last_ckpt = 0, 0.0, None
    if resume:
        state = load_checkpoint(ckpt_path)
        restore_modules(state, modules)
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the saved state holds the old rate: a resume may lower it
            group["lr"] = settings.lr
        set_rng_state(state["rng"])
        step = last_ckpt = state["step"]
        elapsed = state["extra"].get("elapsed_s", 0.0)
    log = MetricsLog(out_dir / "metrics.csv", resume_from_step=step if resume else None)
    clip = settings.clip_norm if settings.clip_norm is not None else math.inf
    # The losses since the last log row travel in the checkpoint, so the first row after a
    # resume averages the same steps as the uninterrupted run's row.
    losses = list(state["extra"].get("pending_losses", [])) if resume else []
    last_row = {}
    started = time.perf_counter() - elapsed

    def checkpoint(at_step):
        try:
            save_checkpoint(ckpt_path, at_step, modules, optimizer,
                            {"elapsed_s": time.perf_counter() - started, "pending_losses": list(losses)})
        except NonFiniteCheckpoint as bad:
            raise TrainingDiverged(at_step, f"a parameter ({bad})", last_ckpt, ckpt_path) from None
        return at_step

    bar = tqdm(total=settings.steps, initial=step, disable=not settings.progress, desc="training", dynamic_ncols=True)
    with _StopRequest() as stop, bar:
        while step < settings.steps:
            if stop.requested:
                checkpoint(step)
                raise TrainingInterrupted(step, ckpt_path)
            batch = batch_for_step(step)
            optimizer.zero_grad(set_to_none=True)
            loss = objective(batch, **(schedule(step) if schedule else {}))
            if not math.isfinite(loss):
                raise TrainingDiverged(step + 1, f"the loss ({loss})", last_ckpt, ckpt_path)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip).item()
            if not math.isfinite(grad_norm):
                raise TrainingDiverged(step + 1, f"the gradient norm ({grad_norm})", last_ckpt, ckpt_path)
            optimizer.step()
            step += 1
            losses.append(loss)
            bar.update(1)
            if step % settings.log_every == 0 or step == settings.steps:
                now = time.perf_counter() - started
                last_row = {"step": step, "loss": sum(losses) / len(losses), "grad_norm": grad_norm, "elapsed_s": round(now, 3)}
                if on_log is not None:
                    last_row.update(on_log(step))
                log.write(last_row)
                bar.set_postfix(loss=f"{last_row['loss']:.4g}")
                losses = []
            if step % settings.checkpoint_every == 0 or step == settings.steps:
                last_ckpt = checkpoint(step)
    if not last_row and resume:  # nothing left to train (a re-evaluation): the run's last log row
        rows = read_metrics(log.path) if log.path.exists() else []
        last_row = rows[-1] if rows else {}
    return {**last_row, "step": step, "elapsed_s": round(time.perf_counter() - started, 3)}
