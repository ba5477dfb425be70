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
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from pyro.infer import TraceGraph_ELBO, TraceMeanField_ELBO
from torch import nn

from guides import build_guide, guide_family
from inference import ElboObjective, evaluate_importance
from inference.training.checkpoint import ParamStoreEntries
from inference.training.metrics_log import read_metrics
from inference.training.schedules import linear_warmup
from pyro_models.experiment_kit import plots
from pyro_models.experiment_kit.protocol import Built, EvaluationPlan, Experiment, TrainDefaults, set_threads, setting
from pyro_models.core import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, PROBABILITY, device_of
from pyro_models.datasets.vector_data import evenly_spaced
from pyro_models.lfm.data import BucketedBatches, Words, load_sigmorphon
from pyro_models.lfm.gap import lfm_gap_estimates
from pyro_models.lfm.model import LatentFactorModel, LFMConfig, bernoulli_kl, sequence_mask


@dataclass
class LFMSettings:
    baseline: str = setting("neural", "baseline of the score-function gradient (bernoulli guide): none, a decaying "
                            "average of the cost, or a network of x fitted to the cost",
                            choices=["none", "decaying", "neural"])
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


class NeuralBaseline(nn.Module):
    """b(x) for the score-function gradient: a small network of the word's bag of characters, its
    length and the guide's logits (detached: the baseline is fitted by its own squared loss)."""

    def __init__(self, vocab_size: int, bits: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(vocab_size + 1 + bits, hidden), nn.ELU(), nn.Linear(hidden, 1))

    def features(self, tokens, lengths, params):
        tokens = tokens[:, :int(lengths.max())]
        mask = sequence_mask(lengths, tokens.shape[1]).to(params.dtype)
        bag = params.new_zeros(tokens.shape[0], self.net[0].in_features - 1 - params.shape[-1])
        bag.scatter_add_(1, tokens, mask)
        length = lengths.to(params.dtype).unsqueeze(-1)
        return torch.cat([bag / length, length / 10, params.detach()], dim=-1)

    def forward(self, features):
        return self.net(features).squeeze(-1)


class Baselines(nn.Module):
    """The guide's ``site_infer``: TraceGraph_ELBO baseline options for the latent site."""

    def __init__(self, kind: str, vocab_size: int, bits: int, beta: float = 0.9):
        super().__init__()
        self.kind, self.beta = kind, beta
        self.net = NeuralBaseline(vocab_size, bits) if kind == "neural" else None

    def forward(self, name, data, params):
        if self.kind == "decaying":
            return {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": self.beta}}
        if self.kind == "neural":
            features = self.net.features(data["tokens"], data["lengths"], params)
            return {"baseline": {"nn_baseline": self.net, "nn_baseline_input": features}}
        return {}


class FreeNatsObjective:
    """Free nats: the KL term gets weight 0 (no gradient) while the batch's mean analytic KL is
    below ``free_nats``, i.e. the gradient of E[log p(x | z)] - max(KL, free_nats). The returned
    loss is then not the ELBO; the logged train/dev ELBO are."""

    def __init__(self, inner: ElboObjective, guide, prior_prob: float, free_nats: float):
        self.inner, self.guide, self.prior_prob, self.free_nats = inner, guide, prior_prob, free_nats

    def __call__(self, batch, **schedule):
        with torch.no_grad():
            data = {k: v for k, v in batch.items() if k != "idx"}
            kl = bernoulli_kl(self.guide.params(idx=batch.get("idx"), **data), self.prior_prob).mean().item()
        if kl < self.free_nats:
            schedule = {**schedule, "latent_scales": {"z": 0.0}}  # exact: latent_scale masks the site
        return self.inner(batch, **schedule)


class BestState(nn.Module):
    """Copies (buffers) of the modules' states at the best dev perplexity so far: part of the
    runner's checkpoint, so an interrupted and resumed run keeps its best epoch."""

    def __init__(self, modules: dict):
        super().__init__()
        self.names = {}
        for name, module in modules.items():
            for key, value in module.state_dict().items():
                buffer = f"{name}__{key}".replace(".", "__")
                self.names[buffer] = (name, key)
                self.register_buffer(buffer, value.detach().clone())
        self.register_buffer("best_value", torch.tensor(math.inf))
        self.register_buffer("best_step", torch.tensor(0))

    @torch.no_grad()
    def update(self, modules: dict, value: float, step: int) -> bool:
        if not value < self.best_value.item():
            return False
        for buffer, (name, key) in self.names.items():
            getattr(self, buffer).copy_(modules[name].state_dict()[key])
        self.best_value.fill_(value)
        self.best_step.fill_(step)
        return True

    def states(self) -> dict:
        out = {}
        for buffer, (name, key) in self.names.items():
            out.setdefault(name, {})[key] = getattr(self, buffer).detach().to("cpu", copy=True)  # best.pt: any device
        return out


def guide_logits(guide, words, idx=None, chunk: int = 1024) -> torch.Tensor:
    """The guide's logits for ``words`` (on the CPU, where the words are), computed on the guide's device."""
    out, device = [], device_of(guide)
    with torch.no_grad():
        for start in range(0, len(words), chunk):
            rows = torch.arange(start, min(start + chunk, len(words)))
            batch = {key: value.to(device) for key, value in words.batch(rows).items()}
            out.append(guide.params(idx=None if idx is None else idx[rows].to(device), **batch).cpu())
    return torch.cat(out)


def score_words(model, guide, words, num_samples: int, max_rows: int = 16384, idx=None,
                progress: bool = False, desc: str = "importance sampling", parallel=None) -> dict:
    """ELBO, KL, importance-sampled NLL (nats per word) and per-character perplexity of ``words``
    (a ``Words``; ``idx``: their training ids, for a local guide). ``parallel``: the processes
    of a data-parallel run share the words (``evaluate_importance``)."""
    order = torch.argsort(words.lengths, stable=True)  # similar lengths share a forward pass
    lengths = words.lengths[order]
    data = {"tokens": words.tokens[order, :int(lengths.max())], "lengths": lengths}
    if idx is not None:
        data["idx"] = idx[order]
    result = evaluate_importance(model.model, guide, data, num_samples, max_plate_nesting=1, max_rows=max_rows,
                                 point_chunk=max(1, min(512, max_rows // num_samples)), progress=progress, desc=desc,
                                 parallel=parallel)
    nll = -result.iwae.double()
    kl = bernoulli_kl(guide_logits(guide, words, idx), model.config.prior_prob).double()
    return {"elbo": result.elbo.double().mean().item(), "kl": kl.mean().item(), "nll": nll.mean().item(),
            "perplexity": math.exp(nll.sum().item() / lengths.sum().item())}


class LFMExperiment(Experiment):
    name = "lfm"
    description = ("latent factor language model of the VI tutorial: 16 Bernoulli bits, LSTM character decoder, "
                   "SIGMORPHON 2016 Spanish words; REINFORCE (bernoulli) or straight-through concrete guide")
    config_cls = LFMConfig
    settings_cls = LFMSettings
    datasets = ("sigmorphon",)
    default_dataset = "sigmorphon"
    bf16_note = ("a 300-step bf16 run matched fp32 (within 0.011 nats per word) only while its latent bits were "
                 "unused (KL 0.06 nats): REINFORCE training of a latent in use is untested in bfloat16")
    guides = ("bernoulli", "concrete")
    default_guide = "bernoulli"
    guide_note = ("its latent site z is a vector of K bits, which the binary-site families serve: bernoulli "
                  "(score-function gradients) and concrete (straight-through)")
    supports_local_guide = True
    supports_gap_report = True
    quick_evaluation = {"importance_samples": 10, "eval_points": 5000}
    own_gap_estimator = True
    shards_evaluation = True

    def train_defaults(self, dataset):
        return TrainDefaults(steps=4000, batch_size=64, lr=1e-3, log_every=196, checkpoint_every=500)

    def load_data(self, dataset, data_dir):
        self.data_dir = data_dir
        self.data = load_sigmorphon(data_dir, LFMSettings.max_word_length)
        return self.data

    def build(self, config, settings, data, guide, local):
        set_threads(settings.threads)
        if settings.max_word_length != self.data.max_length:  # data are read before the settings are known
            self.data = load_sigmorphon(self.data_dir, settings.max_word_length)
        config.vocab_size = len(self.data.vocab)
        model = LatentFactorModel(config)
        family = guide_family(guide)
        if guide == "concrete":
            family = _with_temperature(family, settings.temperature)
        baselines = Baselines(settings.baseline if guide == "bernoulli" else "none", config.vocab_size,
                              config.latent_bits, settings.baseline_beta)
        if local:
            q = build_guide(family, model.latent_sites, num_points=len(self.data.train), site_infer=baselines)
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

    def steps_per_epoch(self, data, batch_size):
        return len(self.data.train) // batch_size

    def batches(self, data, batch_size, seed):
        return BucketedBatches(self.data.train, batch_size, seed)

    def schedule(self, settings, built):
        if settings.kl_warmup_steps <= 0 and settings.word_dropout <= 0:
            return None

        def schedule(step):
            extra = {"word_dropout": settings.word_dropout} if settings.word_dropout > 0 else {}
            if settings.kl_warmup_steps > 0:
                extra["latent_scales"] = {"z": linear_warmup(step, settings.kl_warmup_steps)}  # 0 at step 0: masked
            return extra

        return schedule

    def evaluation_plan(self, built, data, settings, batch_size):
        s = settings.importance_samples
        if not built.guide.amortised:
            n = min(settings.train_eval_points or len(self.data.train), len(self.data.train))
            return EvaluationPlan(f"{s} importance samples on {n} training words", s * n)
        n_dev = min(settings.dev_points or len(self.data.dev), len(self.data.dev))
        n_test = min(settings.eval_points or len(self.data.test), len(self.data.test))
        return EvaluationPlan(f"{s} importance samples on {n_dev} dev and {n_test} test words", s * (n_dev + n_test))

    def _train_eval(self, settings):
        n = min(settings.train_eval_points or len(self.data.train), len(self.data.train))
        rows = torch.arange(n)  # a local guide's table rows: the first n training words
        return Words(self.data.train.words[:n], self.data.train.tokens[rows], self.data.train.lengths[rows]), rows

    def on_log(self, built, data, settings):
        modules = {k: built.modules[k] for k in ("model", "guide")}

        def log(step):
            for module in modules.values():
                module.eval()
            row = {}
            train_words, train_idx = self._train_eval(settings)
            scores = score_words(built.model, built.guide, train_words, settings.dev_importance_samples,
                                 settings.eval_max_rows, idx=None if built.guide.amortised else train_idx)
            row.update({f"train_{k}": v for k, v in scores.items()})
            if built.guide.amortised:
                dev = _subset(self.data.dev, settings.dev_points)
                scores = score_words(built.model, built.guide, dev, settings.dev_importance_samples, settings.eval_max_rows)
                row.update({f"dev_{k}": v for k, v in scores.items()})
                built.modules["best"].update(modules, scores["perplexity"], step)
            for module in modules.values():
                module.train()
            return row

        return log

    def evaluate(self, built, data, settings, out_dir, progress):
        parallel = built.info.get("parallel")
        main_process = parallel is None or parallel.is_main  # the others share the scoring and write nothing
        best = built.modules["best"]
        summary = {"guide_family": type(built.guide.families[0]).__name__, "baseline": built.guide.site_infer.kind,
                   "best_step": None}
        if settings.early_stopping and int(best.best_step) > 0:
            states = best.states()
            for name in ("model", "guide"):
                built.modules[name].load_state_dict(states[name])
            if main_process:
                torch.save({"step": int(best.best_step), "dev_perplexity_logged": best.best_value.item(),
                            "modules": states}, Path(out_dir) / "best.pt")
            summary["best_step"] = int(best.best_step)
        model, guide, s = built.model, built.guide, settings.importance_samples
        if guide.amortised:
            splits = {"dev": _subset(self.data.dev, settings.dev_points), "test": _subset(self.data.test, settings.eval_points)}
            idx = None
        else:  # a local guide has parameters for training words only
            words, idx = self._train_eval(settings)
            splits = {"train": words}
        for label, words in splits.items():
            scores = score_words(model, guide, words, s, settings.eval_max_rows, idx=idx, progress=progress,
                                 desc=f"{label}: {s} importance samples", parallel=parallel)
            summary.update({f"{label}_{k}": v for k, v in scores.items()})
            summary[f"num_{label}_words"] = len(words)
            summary[f"num_{label}_chars"] = int(words.lengths.sum())
        summary["num_importance_samples"] = s
        if main_process:
            (Path(out_dir) / "samples.txt").write_text(qualitative(model, guide, self.data, idx is None))
        return summary

    def evaluation_points(self, data, num_points: int, split: str = "train") -> dict:
        """The first ``num_points`` words of a split (the experiment's current data: ``build`` may
        have re-read it with another --max-word-length), padded to their own longest word."""
        if split not in ("train", "dev", "test"):
            raise ValueError(f"unknown split {split!r}; choose from: train, dev, test")
        words = getattr(getattr(self, "data", data), split)
        return words.batch(torch.arange(min(num_points, len(words))))

    def gap_estimates(self, built, points, options):
        """log p(x), L[q] and L[q*] exactly, by enumerating the 2^K codes (pyro_models/lfm/gap.py)."""
        return lfm_gap_estimates(built, points, options)

    def plot(self, built, data, out_dir):
        metrics = Path(out_dir) / "metrics.csv"
        return [plots.training_curve(metrics, Path(out_dir) / "training_curve.png", ylabel="training loss per word"),
                curves(metrics, Path(out_dir) / "curves.png")]


def _with_temperature(family_cls, temperature):
    def make(site):
        return family_cls(site, temperature=temperature)
    return make


def _subset(words, n):
    """``n`` words spread evenly over the split (all when n is 0): the files are grouped by lemma."""
    if not n or n >= len(words):
        return words
    rows = evenly_spaced(n, len(words))
    return Words([words.words[i] for i in rows.tolist()], words.tokens[rows], words.lengths[rows])


def qualitative(model, guide, data, amortised: bool, num: int = 10, seed: int = 0) -> str:
    """Greedy decodes: prior samples, posterior-mean and posterior-sample reconstructions of test
    words, and an interpolation between the posterior means of two test words."""
    # Every draw is made on the CPU with ``generator`` (the same text on any device), then moved.
    vocab, generator, device = data.vocab, torch.Generator().manual_seed(seed), device_of(model)
    decode = lambda z: [vocab.decode(row) for row in model.greedy(z.to(device), data.max_length + 1).cpu()]
    bits = model.config.latent_bits
    lines = ["# greedy decodes of z ~ p(z)"]
    z = torch.bernoulli(torch.full((num, bits), model.config.prior_prob), generator=generator)
    lines += [f"{''.join(str(int(b)) for b in row)}  {word}" for row, word in zip(z, decode(z))]
    if not amortised:
        return "\n".join(lines) + "\n"
    words = data.test
    rows = torch.randperm(len(words), generator=generator)[:num]
    with torch.no_grad():
        batch = {key: value.to(device) for key, value in words.batch(rows).items()}
        probs = torch.sigmoid(guide.params(**batch)).cpu()
    sample = torch.bernoulli(probs, generator=generator)
    lines += ["", "# test word -> greedy decode of E_q[z] (posterior mean) | of z ~ q(z | x) (posterior sample)"]
    for i, mean_word, sample_word in zip(rows.tolist(), decode(probs), decode(sample)):
        lines.append(f"{words.words[i]:>20}  ->  {mean_word:<20} | {sample_word}")
    a, b = probs[0], probs[1]
    lines += ["", f"# interpolation between the posterior means of {words.words[rows[0]]!r} and {words.words[rows[1]]!r}"]
    steps = torch.linspace(0, 1, 7).unsqueeze(-1)
    for t, word in zip(steps.squeeze(-1).tolist(), decode((1 - steps) * a + steps * b)):
        lines.append(f"t={t:.2f}  {word}")
    return "\n".join(lines) + "\n"


def curves(metrics_csv: Path, path: Path) -> Path:
    """Train and dev ELBO, KL and perplexity against the step."""
    rows = read_metrics(metrics_csv)
    fig, axes = plots.plt.subplots(1, 3, figsize=(12, 3.3))
    for ax, key, label in zip(axes, ("elbo", "kl", "perplexity"), ("ELBO (nats/word)", "KL (nats/word)", "perplexity (per char)")):
        for split in ("train", "dev"):
            points = [(r["step"], r[f"{split}_{key}"]) for r in rows if r.get(f"{split}_{key}") is not None]
            if points:
                ax.plot(*zip(*points), label=split, marker=".")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    return plots.save(fig, path)

