"""``--compile {auto,on,off}`` of run/svi.py and run/gap.py: when the networks and likelihoods
run compiled (``pyro_models.compilation``), and the one line said when compilation cannot run.

Measured (run/bench.py, run/bench_compiled_steps.py, docs/results/speed.md): compiled code
roughly doubles the estimators' throughput on the CPU (the VAE's IWAE from about 30% to 50-65% of
the matmul peak), while CPU training gains from nothing (the VAE on 64-pixel digits, the LFM, CPC)
to 1.30x (the VAE on binarised MNIST, 50,000 steps, 2 threads) and loses 19% on MFCVAE. So
``auto`` compiles, where it does not risk being slower:
- the estimators of run/gap.py (models with real latents) and the evaluation after run/svi.py when
  their pilots estimate at least ``LONG_EVALUATION_S`` of work;
- on CUDA, run/svi.py's training too (kernel launches, which compiling fuses, dominate small
  networks there; written for the GPU, not measured on one).
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
                "estimators of an evaluation that takes minutes, and on a GPU the training too; on a CPU, training "
                "gains 0-30%% compiled, e.g. a long binarised-MNIST VAE run, and MFCVAE loses: use on for those "
                "you measured). Changes speed, not results; a --resume may change it")


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
