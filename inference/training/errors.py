"""How training stops early: a non-finite loss, gradient or parameter, or a stop request."""
from pathlib import Path


class TrainingDiverged(RuntimeError):
    """The loss or the gradient stopped being finite; the last good checkpoint is untouched."""

    def __init__(self, step: int, what: str, checkpoint_step: int | None, checkpoint: Path, note: str = ""):
        where = f"{checkpoint} (step {checkpoint_step})" if checkpoint_step else "none was written yet"
        super().__init__(f"{what} became non-finite at step {step}{note}; last good checkpoint: {where}")
        self.step = step


class TrainingInterrupted(RuntimeError):
    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"interrupted after step {step}; checkpoint saved to {checkpoint}; continue with --resume")
        self.step = step
