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

from inference import ElboObjective, GapEstimates, GapSettings
from inference.training.metrics_log import read_metrics
from pyro_models.compile.data import SequenceSpec, heldout_batch, training_batches
from pyro_models.compile.gap import (
    compile_gap_estimates,
    enumeration_bytes_per_point,
    max_configurations,
    memory_budget,
)
from pyro_models.compile.guide import CompILEGuide
from pyro_models.compile.metrics import boundary_counts, f1_score, reconstruct, reconstruction_accuracy
from pyro_models.compile.model import CompILE, CompILEConfig
from pyro_models.core import AT_LEAST_ONE, device_of
from pyro_models.experiment_kit import plots
from pyro_models.experiment_kit.protocol import Built, Experiment, RunContext, TrainDefaults, set_threads, setting

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
    """A run's generated data: the generator's settings (from the model config) and the held-out
    batches of each size, made once when first asked for."""

    def __init__(self, spec: SequenceSpec):
        self.spec = spec
        self._heldout = {}

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
    bf16_refusal = ("its relaxed (Gumbel-softmax) segmentation drifts from the float32 run (training losses 4 percent "
                    "apart after 300 steps) for 7 percent more speed")
    guides = ("compile",)
    default_guide = "compile"
    guide_note = ("its boundaries b_i are positions that depend on each other and on the codes: it brings its own "
                  "structured guide (compile: q(b_1|x) q(z_1|b_1,x) q(b_2|b_1,x) ...), the paper's")
    supports_local_guide = False

    def train_defaults(self, dataset):
        return TrainDefaults(steps=100, batch_size=512, lr=1e-2, log_every=5, checkpoint_every=50)

    def load_data(self, ctx: RunContext):
        config = ctx.config
        return ToySequences(SequenceSpec(config.num_symbols, config.num_segments, config.max_segment_length))

    def build(self, ctx: RunContext, data):
        set_threads(ctx.settings.threads)
        model, q = CompILE(ctx.config), CompILEGuide(ctx.config)
        elbo = TraceMeanField_ELBO() if ctx.settings.kl == "analytic" else Trace_ELBO()
        objective = ElboObjective(elbo, model.model, q.guide)
        return Built(model=model, guide=q, objective=objective, modules={"model": model, "guide": q})

    def batches(self, ctx: RunContext, data):
        return training_batches(data.spec, ctx.batch_size, ctx.seed)

    def steps_per_epoch(self, ctx: RunContext, data):
        return 1  # fresh sequences every step: an "epoch" is one batch

    def schedule(self, ctx: RunContext, built):
        scales = {"latent_scales": built.model.config.kl_weights()}
        return lambda step: scales

    def on_log(self, ctx: RunContext, built, data):
        settings = ctx.settings
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

    def evaluate(self, ctx: RunContext, built, data, out_dir, progress, parallel=None):
        settings = ctx.settings
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

    def max_evaluation_points(self, ctx: RunContext, data) -> tuple[int, str]:
        """The toy task's distinct sequences (orders of distinct symbols x segment lengths: more
        points would repeat sequences), and at most as many as the exact enumeration of their
        boundary configurations has memory for (pyro_models/compile/gap.py)."""
        spec = data.spec
        distinct = math.perm(spec.num_symbols, spec.num_segments) * spec.max_segment_length ** spec.num_segments
        per_point, budget = enumeration_bytes_per_point(spec, ctx.config.hidden_dim), memory_budget()
        if budget // per_point < distinct:
            return budget // per_point, (
                f"a sequence of this task has up to {max_configurations(spec):,} boundary configurations, whose exact "
                f"enumeration takes about {per_point / 2**20:,.0f} MiB per point, and this machine gives a report "
                f"{budget / 2**30:.0f} GiB (half its memory)")
        return distinct, f"the task has only {distinct} distinct sequences"

    def evaluation_points(self, ctx: RunContext, data, num_points: int, split: str = "train") -> dict:
        """The sequences of a gap report, deterministically. ``test``: the first ``num_points`` of the
        held-out batch the metrics use (a held-out batch of ``num_points`` from the same stream if
        that is larger). ``train``: the first ``num_points`` sequences the run trained on, from step
        0 on (the run's seed and batch size; the toy task has only 3840 distinct sequences, so most
        held-out ones were also seen in training)."""
        if split == "test":
            batch = data.heldout(max(num_points, ctx.settings.eval_batch_size))
            return {"tokens": batch.tokens[:num_points], "lengths": batch.lengths[:num_points]}
        if split != "train":
            raise ValueError(f"unknown split {split!r}; choose from: train, test")
        batch_for_step = training_batches(data.spec, ctx.batch_size, ctx.seed)
        tokens, lengths, step = [], [], 0
        while sum(len(x) for x in lengths) < num_points:
            batch = batch_for_step(step)
            tokens.append(batch["tokens"])
            lengths.append(batch["lengths"])
            step += 1
        return {"tokens": torch.cat(tokens)[:num_points], "lengths": torch.cat(lengths)[:num_points]}

    def gap_estimates(self, ctx: RunContext, built, points: dict, settings: GapSettings,
                      progress: bool = False) -> GapEstimates:
        """log p(x), L[q], L[q*] of the discrete model (``relaxed=False``), exact sums over the
        boundary configurations (pyro_models/compile/gap.py)."""
        return compile_gap_estimates(built.model, built.guide, points["tokens"], points["lengths"], settings, progress)

    def plot(self, ctx: RunContext, built, data, out_dir, summary):
        metrics = out_dir / "metrics.csv"
        return [plots.training_curve(metrics, out_dir / "training_curve.png",
                                     ylabel="training loss per sequence (rec + 0.1 KL)"),
                plots.training_curve(metrics, out_dir / "rec_acc.png", column="rec_acc_eval",
                                     ylabel="rec_acc_eval (held-out, argmax)")]
