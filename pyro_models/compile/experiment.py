"""CompILE (Kipf et al. 2019) on the toy sequences of the authors' code: learn where segments end
and one code per segment, from which the segment is reconstructed.

Metrics (``summary.json``), all on one held-out batch of 512 sequences generated from a fixed
stream (the same for every run seed):

- ``rec_acc_eval``: the reference's metric, in evaluation mode (argmax boundaries; the Gaussian
  code's mean or the argmax concrete code; argmax symbol of each segment's decoder): the fraction
  of content positions (EOS excluded) reconstructed, averaged over sequences.
- ``boundary_f1``: F1 of the boundaries between segments (distinct positions; the fixed EOS
  boundary is not counted) against the generator's, tolerance 0, pooled over the 512 sequences.
- ``steps_to_rec_acc_0.99``: the first logged step (``metrics.csv``; step = updates done) at which
  rec_acc_eval >= 0.99; null if never.
- ``test_nll``: the negative ELBO per sequence of the *discrete* model (one-hot categorical b and
  concrete z, the evaluation-mode model), with KL weights 1 (not the training betas): the mean of
  ``-log p(x | b, z)`` over samples from the guide (``test_nll_particles`` per sequence) plus the
  analytic KLs (categorical for b and concrete z, Gaussian for Gaussian z). It is an upper bound on
  -log p(tokens | lengths) of the discrete model; EOS and padding are not scored.
"""
import math
from dataclasses import dataclass

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from tqdm.auto import tqdm

from inference import ElboObjective
from inference.gap.estimates import GapEstimates, GapOptions
from inference.training.metrics_log import read_metrics
from pyro_models.experiment_kit import plots
from pyro_models.experiment_kit.protocol import Built, Experiment, TrainDefaults, set_threads, setting
from pyro_models.compile.data import SequenceSpec, heldout_batch, training_batches
from pyro_models.compile.gap import compile_gap_estimates
from pyro_models.compile.guide import CompILEGuide
from pyro_models.compile.model import (
    CompILE,
    CompILEConfig,
    boundary_counts,
    f1_score,
    reconstruct,
    reconstruction_accuracy,
)
from pyro_models.core import AT_LEAST_ONE, device_of

TARGET_ACCURACY = 0.99


@dataclass
class CompILESettings:
    kl: str = setting("analytic", "KL of relaxed sites: the categorical KL they relax (TraceMeanField_ELBO, as the "
                      "reference) or a one-sample estimate on the relaxed densities (Trace_ELBO)",
                      choices=["analytic", "relaxed"])
    eval_batch_size: int = setting(512, "held-out sequences for the metrics", valid=AT_LEAST_ONE)
    test_nll_particles: int = setting(10, "guide samples per sequence for test_nll", valid=AT_LEAST_ONE)
    print_every: int = setting(1, "print a sample every this many log steps; 0: never")
    threads: int = setting(1, "torch intra-op threads for the run (0: torch's default); the networks are small, "
                              "and on 2 shared cores one thread is 3x faster than two (run/bench_compile.py)")


class ToySequences:
    """Generated data: the generator's settings come from the model config (``configure``), the
    held-out batch's size from the settings; ``train_seed``/``train_batch_size`` are the run's once
    ``CompILEExperiment.batches`` was called (else seed 0 and the default batch size)."""

    def __init__(self):
        self.spec = None
        self._heldout = {}
        self.eval_batch_size = CompILESettings().eval_batch_size
        self.train_seed = 0
        self.train_batch_size = None

    def configure(self, config: CompILEConfig, eval_batch_size: int | None = None) -> None:
        self.spec = SequenceSpec(config.num_symbols, config.num_segments, config.max_segment_length)
        self._heldout = {}
        if eval_batch_size is not None:
            self.eval_batch_size = eval_batch_size

    def heldout(self, size: int):
        if size not in self._heldout:
            self._heldout[size] = heldout_batch(self.spec, size)
        return self._heldout[size]


def segmentation_scores(model: CompILE, guide: CompILEGuide, batch) -> dict:
    """Evaluation-mode reconstruction and boundaries of ``batch`` (a SequenceBatch, on the CPU;
    computed on the model's device; ``positions`` and ``predicted`` come back on the CPU)."""
    device = device_of(model)
    tokens, lengths = batch.tokens.to(device), batch.lengths.to(device)
    with torch.no_grad():
        positions, codes = guide.greedy(tokens, lengths)
        symbols = model.symbol_logits(codes).argmax(-1)
        predicted = reconstruct(positions, symbols, tokens.shape[-1])
        accuracy = reconstruction_accuracy(predicted, tokens, lengths)
    counts = boundary_counts(positions, batch.boundaries.to(device), lengths)
    return {"rec_acc_eval": accuracy.mean().item(), "boundary_f1": f1_score(*counts),
            "positions": positions.cpu(), "predicted": predicted.cpu()}


def describe_sample(batch, scores, index: int = 0) -> str:
    length = int(batch.lengths[index]) - 1
    found = [int(p) for p in scores["positions"][index]]
    true = [int(p) for p in batch.boundaries[index]]
    return (f"  input sample:   {batch.tokens[index, :length].tolist()}\n"
            f"  reconstruction: {scores['predicted'][index, :length].tolist()}\n"
            f"  boundaries found {found}, true {true} (last = EOS)")


def discrete_test_nll(model: CompILE, guide: CompILEGuide, batch, particles: int) -> float:
    elbo = TraceMeanField_ELBO(num_particles=particles)
    device = device_of(model)
    with torch.no_grad(), pyro.validation_enabled(False):  # one-hot sites are not reparameterised
        loss = elbo.loss(model.model, guide.guide, tokens=batch.tokens.to(device), lengths=batch.lengths.to(device),
                         relaxed=False)
    return loss / batch.tokens.shape[0]


class CompILEExperiment(Experiment):
    name = "compile"
    description = ("CompILE of Kipf et al. (2019): learned segmentation of toy sequences, "
                   "Gaussian or concrete segment codes (--latent-dist)")
    config_cls = CompILEConfig
    settings_cls = CompILESettings
    datasets = ("toy",)
    default_dataset = "toy"
    bf16_note = ("its relaxed (Gumbel-softmax) segmentation drifts from the float32 run (training losses 4 percent "
                 "apart after 300 steps) for 7 percent more speed")
    guides = ("compile",)
    default_guide = "compile"
    guide_note = ("its boundaries b_i are positions that depend on each other and on the codes: it brings its own "
                  "structured guide (compile: q(b_1|x) q(z_1|b_1,x) q(b_2|b_1,x) ...), the paper's")
    supports_local_guide = False
    supports_gap_report = True
    own_gap_estimator = True

    def train_defaults(self, dataset):
        return TrainDefaults(steps=100, batch_size=512, lr=1e-2, log_every=5, checkpoint_every=50)

    def load_data(self, dataset, data_dir):
        return ToySequences()

    def build(self, config, settings, data, guide, local):
        set_threads(settings.threads)
        data.configure(config, settings.eval_batch_size)
        model, q = CompILE(config), CompILEGuide(config)
        elbo = TraceMeanField_ELBO() if settings.kl == "analytic" else Trace_ELBO()
        objective = ElboObjective(elbo, model.model, q.guide)
        return Built(model=model, guide=q, objective=objective, modules={"model": model, "guide": q})

    def batches(self, data, batch_size, seed):
        data.train_seed, data.train_batch_size = seed, batch_size
        return training_batches(data.spec, batch_size, seed)

    def steps_per_epoch(self, data, batch_size):
        return 1  # fresh sequences every step: an "epoch" is one batch

    def schedule(self, settings, built):
        scales = {"latent_scales": built.model.config.kl_weights()}
        return lambda step: scales

    def on_log(self, built, data, settings):
        batch = data.heldout(settings.eval_batch_size)
        calls = [0]

        def log(step):
            scores = segmentation_scores(built.model, built.guide, batch)
            calls[0] += 1
            if settings.print_every and calls[0] % settings.print_every == 0:
                tqdm.write(f"step {step}: rec_acc_eval {scores['rec_acc_eval']:.3f}, "
                           f"boundary_f1 {scores['boundary_f1']:.3f}\n" + describe_sample(batch, scores))
            return {"rec_acc_eval": scores["rec_acc_eval"], "boundary_f1": scores["boundary_f1"]}

        return log

    def evaluate(self, built, data, settings, out_dir, progress):
        batch = data.heldout(settings.eval_batch_size)
        scores = segmentation_scores(built.model, built.guide, batch)
        reached = None
        metrics = out_dir / "metrics.csv"
        if metrics.exists():
            hits = [row["step"] for row in read_metrics(metrics)
                    if row.get("rec_acc_eval") is not None and row["rec_acc_eval"] >= TARGET_ACCURACY]
            reached = int(hits[0]) if hits else None
        return {
            "rec_acc_eval": scores["rec_acc_eval"],
            "boundary_f1": scores["boundary_f1"],
            f"steps_to_rec_acc_{TARGET_ACCURACY}": reached,
            "test_nll": discrete_test_nll(built.model, built.guide, batch, settings.test_nll_particles),
            "test_nll_particles": settings.test_nll_particles,
            "num_test_points": batch.tokens.shape[0],
            "latent_dist": built.model.config.latent_dist,
            "kl": settings.kl,
        }

    def max_evaluation_points(self, data) -> int:
        """The toy task's distinct sequences (orders of distinct symbols x segment lengths): more
        points would repeat sequences, and the report's memory grows with the points."""
        spec = data.spec
        return math.perm(spec.num_symbols, spec.num_segments) * spec.max_segment_length ** spec.num_segments

    def evaluation_points(self, data, num_points: int, split: str = "train") -> dict:
        """The sequences of a gap report, deterministically. ``test``: the first ``num_points`` of the
        held-out batch the metrics use (a held-out batch of ``num_points`` from the same stream if
        that is larger). ``train``: the first ``num_points`` sequences the run trained on, from step
        0 on (the run's seed and batch size when ``batches`` was called, else seed 0 and the
        default batch size; the toy task has only 3840 distinct sequences, so most held-out ones
        were also seen in training)."""
        if split == "test":
            batch = data.heldout(max(num_points, data.eval_batch_size))
            return {"tokens": batch.tokens[:num_points], "lengths": batch.lengths[:num_points]}
        if split != "train":
            raise ValueError(f"unknown split {split!r}; choose from: train, test")
        batch_size = data.train_batch_size or self.train_defaults(self.default_dataset).batch_size
        batch_for_step = training_batches(data.spec, batch_size, data.train_seed)
        tokens, lengths, step = [], [], 0
        while sum(len(x) for x in lengths) < num_points:
            batch = batch_for_step(step)
            tokens.append(batch["tokens"])
            lengths.append(batch["lengths"])
            step += 1
        return {"tokens": torch.cat(tokens)[:num_points], "lengths": torch.cat(lengths)[:num_points]}

    def gap_estimates(self, built, points: dict, options: GapOptions) -> GapEstimates:
        """log p(x), L[q], L[q*] of the discrete model (``relaxed=False``), exact sums over the
        boundary configurations (pyro_models/compile/gap.py)."""
        return compile_gap_estimates(built.model, built.guide, points["tokens"], points["lengths"], options)

    def plot(self, built, data, out_dir):
        metrics = out_dir / "metrics.csv"
        return [plots.training_curve(metrics, out_dir / "training_curve.png",
                                     ylabel="training loss per sequence (rec + 0.1 KL)"),
                plots.training_curve(metrics, out_dir / "rec_acc.png", column="rec_acc_eval",
                                     ylabel="rec_acc_eval (held-out, argmax)")]
