"""The latent factor language model (VI tutorial, "LatentFactorModel") on SIGMORPHON 2016
Spanish inflected forms: K Bernoulli bits, an LSTM character decoder, a BiLSTM inference network.

Guides (``--guide``): ``bernoulli`` (independent bits, score-function gradients through
``TraceGraph_ELBO``, with ``--baseline none|decaying|neural``) and ``concrete`` (straight-through
concrete samples of the same Bernoulli q, ``TraceMeanField_ELBO`` with the analytic KL).

Metrics (``summary.json``), for the generator and inference network of the epoch with the best
dev perplexity (restored together; ``best.pt`` in the run directory):

- ``{dev,test}_elbo``: mean over words of the ELBO (nats per word; ``S`` guide samples each);
- ``{dev,test}_kl``: mean analytic KL(q(z | x) || p(z)) per word;
- ``{dev,test}_nll``: mean of -log p(x), importance sampled with ``S`` samples from q
  (log-mean-exp of the weights: the IWAE-S bound), nats per word;
- ``{dev,test}_perplexity``: exp(sum of NLL over words / number of characters including each
  word's end symbol), the notebook's per-character perplexity;
- ``num_importance_samples`` = S.
"""
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from pyro.infer import TraceGraph_ELBO, TraceMeanField_ELBO

from guides import build_guide, guide_family
from inference import ElboObjective, GapSettings
from inference.throughput import seconds_per_point_pass
from inference.training.checkpoint import ParamStoreEntries
from inference.training.run_files import save_torch, write_text
from inference.training.schedules import linear_warmup
from pyro_models.core import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, PROBABILITY, device_of
from pyro_models.experiment_kit import plots
from pyro_models.experiment_kit.protocol import (
    Built,
    EvaluationPlan,
    Experiment,
    RunContext,
    TrainDefaults,
    set_threads,
    setting,
)
from pyro_models.lfm.baselines import BASELINES, Baselines, FreeNatsObjective
from pyro_models.lfm.data import BucketedBatches, load_sigmorphon
from pyro_models.lfm.evaluation import BestState, qualitative, score_words, spread_subset
from pyro_models.lfm.gap import lfm_gap_estimates
from pyro_models.lfm.model import LatentFactorModel, LFMConfig
from pyro_models.lfm.plots import curves


@dataclass
class LFMSettings:
    baseline: str = setting("neural", "baseline of the score-function gradient (bernoulli guide): none, a decaying "
                            "average of the cost, or a network of x fitted to the cost",
                            choices=list(BASELINES))
    baseline_beta: float = setting(0.9, "decay of the decaying-average baseline", valid=PROBABILITY)
    temperature: float = setting(1.0, "temperature of the concrete guide's relaxed samples", valid=POSITIVE)
    kl_warmup_steps: int = setting(0, "KL annealing: the KL weight rises linearly from 0 to 1 over this many steps")
    free_nats: float = setting(0.0, "free nats: no KL gradient while the batch's mean KL is below this (training only)", valid=NON_NEGATIVE)
    word_dropout: float = setting(0.0, "probability of replacing a decoder input character by UNK (training only)", valid=FRACTION)
    importance_samples: int = setting(50, "S, guide samples per word for the final dev/test NLL and perplexity", valid=AT_LEAST_ONE, evaluation=True)
    dev_importance_samples: int = setting(10, "guide samples per word for the dev metrics logged during training "
                                          "(early stopping on dev perplexity)", valid=AT_LEAST_ONE)
    eval_points: int = setting(0, "test words to evaluate (0: all)", evaluation=True)
    dev_points: int = setting(0, "dev words to evaluate (0: all)")
    train_eval_points: int = setting(1000, "training words for the logged train metrics")
    early_stopping: int = setting(1, "1: evaluate the modules of the logged step with the best dev perplexity; 0: the last")
    max_word_length: int = setting(30, "drop words longer than this many characters", valid=AT_LEAST_ONE)
    eval_max_rows: int = setting(16384, "particles x words per forward pass (bounds evaluation memory)", valid=AT_LEAST_ONE, evaluation=True)
    threads: int = setting(1, "torch intra-op threads (0: torch's default)")


class LFMExperiment(Experiment):
    name = "lfm"
    description = ("latent factor language model of the VI tutorial: 16 Bernoulli bits, LSTM character decoder, "
                   "SIGMORPHON 2016 Spanish words; REINFORCE (bernoulli) or straight-through concrete guide")
    config_cls = LFMConfig
    settings_cls = LFMSettings
    datasets = ("sigmorphon",)
    default_dataset = "sigmorphon"
    bf16_refusal = ("a 300-step bf16 run matched fp32 (within 0.011 nats per word) only while its latent bits were "
                    "unused (KL 0.06 nats): REINFORCE training of a latent in use is untested in bfloat16")
    guides = ("bernoulli", "concrete")
    default_guide = "bernoulli"
    guide_note = ("its latent site z is a vector of K bits, which the binary-site families serve: bernoulli "
                  "(score-function gradients) and concrete (straight-through)")
    supports_local_guide = True
    quick_evaluation = {"importance_samples": 10, "eval_points": 5000}
    shards_evaluation = True

    def train_defaults(self, dataset):
        return TrainDefaults(steps=4000, batch_size=64, lr=1e-3, log_every=196, checkpoint_every=500)

    def load_data(self, ctx: RunContext):
        return load_sigmorphon(ctx.data_dir, ctx.settings.max_word_length)

    def model_config(self, ctx: RunContext, data):
        return dataclasses.replace(ctx.config, vocab_size=len(data.vocab))

    def build(self, ctx: RunContext, data):
        config, settings, guide = ctx.config, ctx.settings, ctx.guide
        set_threads(settings.threads)
        model = LatentFactorModel(config)
        family = guide_family(guide)
        if guide == "concrete":
            family = _with_temperature(family, settings.temperature)
        baselines = Baselines(settings.baseline if guide == "bernoulli" else "none", config.vocab_size,
                              config.latent_bits, settings.baseline_beta)
        if ctx.local:
            q = build_guide(family, model.latent_sites, num_points=len(data.train), site_infer=baselines)
        else:
            encoder, encoder_dim = model.make_encoder()
            q = build_guide(family, model.latent_sites, encoder=encoder, encoder_dim=encoder_dim, site_infer=baselines)
        elbo = TraceGraph_ELBO() if guide == "bernoulli" else TraceMeanField_ELBO()
        objective = ElboObjective(elbo, model.model, q)
        if settings.free_nats > 0:
            objective = FreeNatsObjective(objective, q, config.prior_prob, settings.free_nats)
        modules = {"model": model, "guide": q}
        modules["best"] = BestState(modules)
        if baselines.kind == "decaying":  # Pyro keeps the running average in its param store: checkpoint it
            modules["param_store"] = ParamStoreEntries()
        return Built(model=model, guide=q, objective=objective, modules=modules)

    def steps_per_epoch(self, ctx: RunContext, data):
        return len(data.train) // ctx.batch_size

    def batches(self, ctx: RunContext, data):
        return BucketedBatches(data.train, ctx.batch_size, ctx.seed)

    def schedule(self, ctx: RunContext, built):
        settings = ctx.settings
        if settings.kl_warmup_steps <= 0 and settings.word_dropout <= 0:
            return None

        def schedule(step):
            extra = {"word_dropout": settings.word_dropout} if settings.word_dropout > 0 else {}
            if settings.kl_warmup_steps > 0:
                extra["latent_scales"] = {"z": linear_warmup(step, settings.kl_warmup_steps)}  # 0 at step 0: masked
            return extra

        return schedule

    def evaluation_plan(self, ctx: RunContext, built, data):
        settings, s = ctx.settings, ctx.settings.importance_samples
        if not built.guide.amortised:
            n = min(settings.train_eval_points or len(data.train), len(data.train))
            return EvaluationPlan(f"{s} importance samples on {n} training words", s * n)
        n_dev = min(settings.dev_points or len(data.dev), len(data.dev))
        n_test = min(settings.eval_points or len(data.test), len(data.test))
        return EvaluationPlan(f"{s} importance samples on {n_dev} dev and {n_test} test words", s * (n_dev + n_test))

    @staticmethod
    def train_eval_words(settings, data):
        """The first training words (and their rows in a local guide's table) for the train metrics."""
        rows = torch.arange(min(settings.train_eval_points or len(data.train), len(data.train)))
        return data.train.take(rows), rows

    def on_log(self, ctx: RunContext, built, data):
        settings = ctx.settings
        modules = {k: built.modules[k] for k in ("model", "guide")}

        def log(step):
            for module in modules.values():
                module.eval()
            row = {}
            train_words, train_idx = self.train_eval_words(settings, data)
            scores = score_words(built.model, built.guide, train_words, settings.dev_importance_samples,
                                 settings.eval_max_rows, idx=None if built.guide.amortised else train_idx)
            row.update({f"train_{k}": v for k, v in scores.items()})
            if built.guide.amortised:
                dev = spread_subset(data.dev, settings.dev_points)
                scores = score_words(built.model, built.guide, dev, settings.dev_importance_samples, settings.eval_max_rows)
                row.update({f"dev_{k}": v for k, v in scores.items()})
                built.modules["best"].update(modules, scores["perplexity"], step)
            for module in modules.values():
                module.train()
            return row

        return log

    def evaluate(self, ctx: RunContext, built, data, out_dir, progress, parallel=None):
        settings = ctx.settings
        main_process = parallel is None or parallel.is_main  # the others share the scoring and write nothing
        best = built.modules["best"]
        summary = {"guide_family": type(built.guide.families[0]).__name__, "baseline": built.guide.site_infer.kind,
                   "best_step": None}
        if settings.early_stopping and int(best.best_step) > 0:
            states = best.states()
            for name in ("model", "guide"):
                built.modules[name].load_state_dict(states[name])
            if main_process:
                save_torch(Path(out_dir) / "best.pt", {"step": int(best.best_step),
                                                       "dev_perplexity_logged": best.best_value.item(), "modules": states})
            summary["best_step"] = int(best.best_step)
        model, guide, s = built.model, built.guide, settings.importance_samples
        if guide.amortised:
            splits = {"dev": spread_subset(data.dev, settings.dev_points),
                      "test": spread_subset(data.test, settings.eval_points)}
            idx = None
        else:  # a local guide has parameters for training words only
            words, idx = self.train_eval_words(settings, data)
            splits = {"train": words}
        for label, words in splits.items():
            scores = score_words(model, guide, words, s, settings.eval_max_rows, idx=idx, progress=progress,
                                 desc=f"{label}: {s} importance samples", parallel=parallel)
            summary.update({f"{label}_{k}": v for k, v in scores.items()})
            summary[f"num_{label}_words"] = len(words)
            summary[f"num_{label}_chars"] = int(words.lengths.sum())
        summary["num_importance_samples"] = s
        if main_process:
            write_text(Path(out_dir) / "samples.txt", qualitative(model, guide, data, idx is None))
        return summary

    def evaluation_points(self, ctx: RunContext, data, num_points: int, split: str = "train") -> dict:
        """The first ``num_points`` words of a split, padded to their own longest word."""
        if split not in ("train", "dev", "test"):
            raise ValueError(f"unknown split {split!r}; choose from: train, dev, test")
        words = getattr(data, split)
        return words.batch(torch.arange(min(num_points, len(words))))

    def evaluation_pass_seconds(self, ctx: RunContext, built, data) -> float | None:
        """Timed on the first dev words (a local guide has parameters for training words only: None)."""
        if not built.guide.amortised:
            return None
        points = {k: v.to(device_of(built.model)) for k, v in self.evaluation_points(ctx, data, 32, "dev").items()}
        return seconds_per_point_pass(built.model.model, built.guide, points, built.model.max_plate_nesting)

    def gap_estimates(self, ctx: RunContext, built, points, settings: GapSettings, progress: bool = False):
        """log p(x), L[q] and L[q*] exactly, by enumerating the 2^K codes (pyro_models/lfm/gap.py)."""
        return lfm_gap_estimates(built.model, built.guide, points, settings, progress)

    def plot(self, ctx: RunContext, built, data, out_dir, summary):
        metrics = Path(out_dir) / "metrics.csv"
        return [plots.training_curve(metrics, Path(out_dir) / "training_curve.png", ylabel="training loss per word"),
                curves(metrics, Path(out_dir) / "curves.png")]


def _with_temperature(family_cls, temperature):
    def make(site):
        return family_cls(site, temperature=temperature)
    return make
