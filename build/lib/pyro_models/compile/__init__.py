"""CompILE (Kipf et al., ICML 2019): model.py (segmentation + codes as a Pyro program), guide.py
(its own structured guide), data.py (the toy sequences), gap.py (the exact gap estimator of the
discrete model) and experiment.py (training, metrics, plots)."""
from .guide import CompILEGuide
from .model import CompILE, CompILEConfig

__all__ = ["CompILE", "CompILEConfig", "CompILEGuide"]
