"""``--compile {auto,on,off}`` of run/svi.py and run/gap.py: when the networks and likelihoods
run compiled (``pyro_models.compilation``), and the one line said when compilation cannot run.

Measured on the VAE of Cremer et al. (run/bench.py, docs/results/speed.md): compiled code
doubles the estimators' throughput on the CPU (IWAE 31% -> 56% of the matmul peak, AIS 32% ->
44%) but makes a CPU training step of batch 100 no faster (it is bound by its matrix products and
Pyro's per-step work) while costing tens of seconds of compiling. So ``auto`` compiles:
- the estimators of run/gap.py (models with real latents) and the evaluation after run/svi.py when
  their pilots estimate at least ``LONG_EVALUATION_S`` of work;
- on CUDA, run/svi.py's training too (kernel launches, which compiling fuses, dominate small networks there;
  written for the GPU, not measured on one).
``on`` compiles training and evaluation, ``off`` nothing. The choice changes speed, not results
(to float tolerance), so a ``--resume`` may change it.
"""
import sys

import torch

from pyro_models.compilation import CompileFailed, compile_networks

COMPILE_CHOICES = ("auto", "on", "off")
# auto compiles an evaluation estimated (from pilots) to take at least this long: compiling costs
# 20-40 s on the CPU and halves the estimators' time.
LONG_EVALUATION_S = 120
COMPILE_HELP = ("compile the networks and likelihoods with torch.compile: on, off, or auto (the default: the "
                "estimators of an evaluation that takes minutes, and on a GPU the training too; a CPU training "
                "step is not faster compiled). Changes speed, not results; a --resume may change it")


def compiles(asked: str, stage: str, device: torch.device, long_evaluation: bool = True) -> bool:
    """Whether ``stage`` ("training" or "evaluation") runs compiled."""
    if asked != "auto":
        return asked == "on"
    if stage == "training":
        return device.type == "cuda"
    return long_evaluation


def compile_for(modules, prog: str) -> bool:
    """Compile ``modules`` in place; where no compiler can run, one line on stderr and eager code."""
    try:
        compile_networks(*modules)
    except CompileFailed as why:
        print(f"{prog}: not compiling: {why}; running eagerly (--compile off silences this)", file=sys.stderr)
        return False
    return True
