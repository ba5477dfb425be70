"""Where a training run stands, and its checkpoints: the step, the training time over all of the
run's sessions, and the losses since the last log row (they travel in the checkpoint, so the first
row after a resume averages the same steps as the uninterrupted run's row)."""
import time
from pathlib import Path

from .checkpoint import NonFiniteCheckpoint, load_checkpoint, restore_modules, save_checkpoint, set_rng_state
from .errors import TrainingDiverged


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
    """Writes the run's checkpoint (the main process only, ``write``); a parameter that is not
    finite stops training (``TrainingDiverged``) and leaves the last good checkpoint."""

    def __init__(self, path: Path, modules: dict, optimizer, run: RunState, write: bool = True):
        self.path, self.modules, self.optimizer, self.run, self.write = Path(path), modules, optimizer, run, write
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        run = self.run
        if self.write:
            try:
                save_checkpoint(self.path, run.step, self.modules, self.optimizer,
                                {"elapsed_s": run.elapsed(), "pending_losses": list(run.pending)})
            except NonFiniteCheckpoint as bad:
                raise TrainingDiverged(run.step, f"a parameter ({bad})", run.checkpoint_step, self.path) from None
        run.checkpoint_step = run.step
