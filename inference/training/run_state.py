"""Where a training run stands, and its checkpoints: the step, the training time over all of the
run's sessions, and the losses since the last log row (they travel in the checkpoint, so the first
row after a resume averages the same steps as the uninterrupted run's row)."""
import os
import time
from pathlib import Path

from .checkpoint import NonFiniteCheckpoint, checkpoint_state, load_checkpoint, restore_modules, set_rng_state
from .errors import TrainingDiverged
from .run_files import WriteFailed, save_torch


class RunState:
    def __init__(self, step: int = 0, elapsed: float = 0.0, pending=(), resumed_at: int | None = None):
        self.step = step
        self.pending = list(pending)  # losses since the last log row
        self.resumed_at = resumed_at  # the checkpoint's step when resumed, else None
        self.checkpoint_step = resumed_at  # the last checkpoint written (or resumed from)
        self.started = time.perf_counter() - elapsed

    @classmethod
    def start(cls, path: Path, resume, modules: dict, optimizer, lr: float) -> "RunState":
        """A fresh run (``resume`` False), or the one in the checkpoint (True: read ``path``; a dict:
        a checkpoint already read), restored into the modules, the optimizer (at the rate ``lr``: a
        resume may lower it) and every random number generator."""
        if resume is False:
            return cls()
        state = load_checkpoint(path) if resume is True else resume
        restore_modules(state, modules)
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the saved state holds the old rate
            group["lr"] = lr
        set_rng_state(state["rng"])
        extra = state["extra"]
        return cls(state["step"], extra.get("elapsed_s", 0.0), extra.get("pending_losses", []), state["step"])

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def advance(self, loss: float) -> None:
        self.step += 1
        self.pending.append(loss)

    def log_row(self, grad_norm: float) -> dict:
        """The metrics row of this step: the mean loss since the last row."""
        row = {"step": self.step, "loss": sum(self.pending) / len(self.pending), "grad_norm": grad_norm,
               "elapsed_s": round(self.elapsed(), 3)}
        self.pending = []
        return row


class Checkpointer:
    """Writes the run's checkpoint (the main process only, ``write``).

    A checkpoint's parameters are known to be good only once a step has computed a finite loss from
    them. So the checkpoint before, once confirmed, is kept as ``checkpoint.previous.pt`` until the
    new one is confirmed; when the first step after a checkpoint diverges (the checkpoint holds the
    parameters that gave the non-finite loss, e.g. after a learning rate that blew them up),
    ``roll_back`` puts the previous one back (or moves the bad one aside, to
    ``checkpoint.diverged.pt``, when there is none), so that ``--resume`` continues from parameters
    that trained. A parameter that is not finite is never written (``TrainingDiverged``)."""

    PREVIOUS, DIVERGED = "checkpoint.previous.pt", "checkpoint.diverged.pt"

    def __init__(self, path: Path, modules: dict, optimizer, run: RunState, write: bool = True):
        self.path, self.modules, self.optimizer, self.run, self.write = Path(path), modules, optimizer, run, write
        self.previous, self.diverged = self.path.with_name(self.PREVIOUS), self.path.with_name(self.DIVERGED)
        self.confirmed = run.checkpoint_step is None  # a resumed run's checkpoint is confirmed by its next step
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        run = self.run
        if self.write:
            try:
                state = checkpoint_state(run.step, self.modules, self.optimizer,
                                         {"elapsed_s": run.elapsed(), "pending_losses": list(run.pending)})
            except NonFiniteCheckpoint as bad:
                raise TrainingDiverged(run.step, f"a parameter ({bad})", run.checkpoint_step, self.path) from None
            if self.confirmed and self.path.exists():  # the good one stays until the new one proves itself
                os.replace(self.path, self.previous)
            try:
                save_torch(self.path, state)
            except WriteFailed:
                if self.previous.exists() and not self.path.exists():
                    os.replace(self.previous, self.path)
                raise
        if run.step != run.checkpoint_step:
            self.confirmed = False
        run.checkpoint_step = run.step

    def confirm(self) -> None:
        """A step computed a finite loss from the parameters since the last checkpoint: it is good."""
        if not self.confirmed:
            self.confirmed = True
            if self.write:
                self.previous.unlink(missing_ok=True)

    def finish(self) -> None:
        """Training reached its last step: the run's checkpoint is its final one, and the one before
        it is not kept (a finished run holds one checkpoint)."""
        if self.write:
            self.previous.unlink(missing_ok=True)

    def roll_back(self) -> str:
        """The parameters of the latest checkpoint (at this step) gave a non-finite loss: put the
        previous checkpoint back, or move this one aside. Returns what was done, for the message."""
        run, bad_step = self.run, self.run.checkpoint_step
        if self.confirmed or bad_step != run.step or not self.write:  # (only the main process writes: it says)
            return ""
        if self.write:
            if self.previous.exists():
                os.replace(self.previous, self.path)
            else:
                os.replace(self.path, self.diverged)
        run.checkpoint_step = load_checkpoint(self.path)["step"] if self.path.exists() else None
        self.confirmed = True
        return (f"; the checkpoint of step {bad_step} held the parameters that gave it and was "
                + ("replaced by the one before it" if run.checkpoint_step else f"moved to {self.diverged.name}"))
