"""Contrastive Predictive Coding (van den Oord et al. 2018) on speech: InfoNCE through the runner,
then the paper's Table 1 on frozen features.

Training: random windows (``--window`` samples, on 10 ms frame boundaries) of the train split;
the loss is InfoNCE (``inference/infonce.py``) with ``--negatives`` and ``--num-negatives``.

Metrics (``summary.json``), all on the test split, never seen in training:

- ``infonce_acc_k{k}`` for k = 1..K (so ``infonce_acc_k1``, ``infonce_acc_k12``): InfoNCE accuracy
  on ``--eval-batches`` batches of test windows (fixed crops), same negatives as in training;
  ``test_infonce`` the loss there;
- ``speaker_acc``, ``phone_acc``: linear probes (trained on the train split's frozen features,
  scored on the test split) on the mean (``--speaker-pool``) c_t of an utterance and on each
  frame's c_t;
- ``baseline_{random,mfcc,supervised}_{speaker,phone}_acc``: the same probes on a randomly
  initialised encoder + GRU and on MFCCs (+ deltas), and the same architecture trained end to end
  on the labels for ``--supervised-steps`` steps (null when left out with ``--baselines``);
- ``train_audio_s_per_s``: seconds of audio consumed per second of training.
"""
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from inference import GlobalBatchLoss
from inference.infonce import MODES, info_nce
from inference.throughput import kept_random_state
from inference.training.metrics_log import read_metrics
from inference.training.prefetch import PrefetchedBatches
from pyro_models.core import AT_LEAST_ONE, NON_NEGATIVE, device_of
from pyro_models.cpc.data import FRAME, SAMPLE_RATE, SPEECH_DATASETS, WindowBatches
from pyro_models.cpc.model import CPC, ConvEncoder, CPCConfig, paper_layers, parse_layers
from pyro_models.cpc.probes import context_features, mfcc_features, probe_both, train_supervised
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

MFCC_COEFFICIENTS = 13  # probes.mfcc_features: 13 coefficients, their deltas and delta-deltas
DEFAULT_WINDOW = {"fsdd": 4000, "librispeech100": 20480}  # FSDD clips: median 6700 samples at 16 kHz
BASELINES = ("random", "mfcc", "supervised")


@dataclass
class CPCSettings:
    window: int = setting(0, "training window in samples at 16 kHz, a multiple of 160 (0: the data set's default: "
                          "fsdd 4000, shorter than 95 percent of its clips; librispeech100 20480, the paper's)")
    negatives: str = setting("both", "where InfoNCE negatives come from: other time steps of the same window, of the "
                             "other windows of the batch, or both", choices=list(MODES))
    num_negatives: int = setting(0, "negatives per anchor, drawn with replacement (0: every eligible time step)")
    eval_batches: int = setting(8, "batches of test windows for the InfoNCE accuracy (logged and final)", valid=AT_LEAST_ONE)
    speaker_pool: str = setting("mean", "utterance feature for the speaker probe: mean or last c_t",
                                choices=["mean", "last"], evaluation=True)
    probe_iterations: int = setting(300, "L-BFGS iterations of each linear probe", evaluation=True)
    probe_weight_decay: float = setting(1e-4, "L2 penalty of the linear probes", valid=NON_NEGATIVE, evaluation=True)
    probe_utterances: int = setting(0, "use only N evenly spaced train and N test utterances for probes and "
                                    "baselines (0: all; for quick checks)", evaluation=True)
    baselines: str = setting("random,mfcc,supervised", "baselines to compute, comma-separated (empty: none)", evaluation=True)
    supervised_steps: int = setting(1000, "training steps of each supervised baseline (speaker, phone), with the "
                                    "run's batch size and learning rate", evaluation=True)
    threads: int = setting(1, "torch intra-op threads (0: torch's default)")
    data_workers: int = setting(0, "processes that read and crop the training windows ahead of the step (0: the "
                                "training process reads each batch when it needs it); the batches do not depend on it",
                                valid=NON_NEGATIVE)


def window_of(ctx: RunContext) -> int:
    """The run's training window in samples: ``--window``, else the data set's default."""
    return ctx.settings.window or DEFAULT_WINDOW[ctx.dataset]


def check_window(window: int, encoder: ConvEncoder, prediction_steps: int) -> None:
    """A window must be whole 10 ms frames and leave the encoder more steps than K."""
    if window <= 0 or window % FRAME:
        raise ValueError(f"--window must be a positive multiple of {FRAME} samples, got {window}")
    frames = encoder.output_length(window)
    if frames <= prediction_steps:
        raise ValueError(f"a window of {window} samples gives {frames} encoder steps, not more than "
                         f"K = {prediction_steps}: use a longer --window or fewer --prediction-steps")


def parse_baselines(text: str) -> list[str]:
    chosen = [b.strip() for b in text.split(",") if b.strip()]
    unknown = set(chosen) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(sorted(unknown))}; choose from: {', '.join(BASELINES)}")
    return chosen


class CPCExperiment(Experiment):
    name = "cpc"
    description = ("Contrastive Predictive Coding (van den Oord et al. 2018): strided conv encoder, GRU, InfoNCE on "
                   "raw speech; linear speaker/phone probes and the paper's baselines")
    config_cls = CPCConfig
    settings_cls = CPCSettings
    datasets = ("fsdd", "librispeech100")
    default_dataset = "fsdd"
    bf16_refusal = None  # 300 steps (--width 64): InfoNCE within 0.01 of fp32's; paper size 1.6x faster
    guides = ()
    default_guide = None
    guide_note = "it is not a latent-variable model (InfoNCE on a deterministic encoder): it takes no guide"
    supports_local_guide = False
    quick_evaluation = {"baselines": "random,mfcc"}  # the supervised baselines are trainings of their own

    def train_defaults(self, dataset):
        return TrainDefaults(steps=3000, batch_size=32, lr=2e-4, log_every=100, checkpoint_every=500)

    def load_data(self, ctx: RunContext):
        return SPEECH_DATASETS[ctx.dataset](ctx.data_dir)

    def validate(self, ctx: RunContext):
        """The window, the encoder layers and the baselines, before any audio is read."""
        config = ctx.config
        parse_baselines(ctx.settings.baselines)
        encoder = ConvEncoder(parse_layers(config.encoder_layers) if config.encoder_layers else paper_layers(config.width),
                              config.norm)
        check_window(window_of(ctx), encoder, config.prediction_steps)

    def build(self, ctx: RunContext, data):
        config, settings = ctx.config, ctx.settings
        set_threads(settings.threads)
        parse_baselines(settings.baselines)
        model = CPC(config)
        check_window(window_of(ctx), model.encoder, config.prediction_steps)

        def loss(wave, rows=None, **unused):
            z, _, predictions = model(wave)
            if rows is None:
                return info_nce(predictions, z, settings.negatives, settings.num_negatives).loss
            # data-parallel: this process's windows, negatives from every process's (as in one process)
            return info_nce(predictions, z, settings.negatives, settings.num_negatives,
                            candidates=rows.gather(z), first_row=rows.start).loss

        return Built(model=model, guide=None, objective=GlobalBatchLoss(loss), modules={"model": model})

    def batches(self, ctx: RunContext, data):
        batches = WindowBatches(data.train, window_of(ctx), ctx.batch_size, ctx.seed)
        workers = ctx.settings.data_workers
        return PrefetchedBatches(batches, workers) if workers else batches

    def steps_per_epoch(self, ctx: RunContext, data):
        return max(1, len(data.train) // ctx.batch_size)  # an epoch: one window per train utterance

    def test_infonce(self, ctx: RunContext, model, data) -> dict:
        """InfoNCE loss and accuracy per k on ``eval_batches`` batches of test windows, of the run's
        batch size (fixed crops)."""
        settings = ctx.settings
        batches = WindowBatches(data.test, window_of(ctx), ctx.batch_size, seed=12345)
        device = device_of(model)
        generator = torch.Generator(device=device).manual_seed(0)  # the negatives are drawn on the model's device
        losses, accuracies = [], []
        model.eval()
        with torch.no_grad():
            for step in range(settings.eval_batches):
                z, _, predictions = model(batches(step)["wave"].to(device))
                result = info_nce(predictions, z, settings.negatives, settings.num_negatives, generator)
                losses.append(result.loss)
                accuracies.append(result.accuracy_per_k)
        model.train()
        return {"loss": torch.stack(losses).mean().item(), "accuracy": torch.stack(accuracies).mean(0).tolist()}

    def evaluation_pass_seconds(self, ctx: RunContext, built, data) -> float:
        """Seconds of the encoder and GRU on one test window (the plan's unit), timed on one batch."""
        model, device = built.model, device_of(built.model)
        wave = WindowBatches(data.test, window_of(ctx), ctx.batch_size, seed=12345)(0)["wave"].to(device)
        with torch.no_grad(), kept_random_state():
            model(wave[:1])  # warm-up
            started = time.perf_counter()
            model(wave)
            return (time.perf_counter() - started) / wave.shape[0]

    def on_log(self, ctx: RunContext, built, data):
        def log(step):
            result = self.test_infonce(ctx, built.model, data)
            K = len(result["accuracy"])
            return {"test_infonce": result["loss"], "test_acc_k1": result["accuracy"][0],
                    f"test_acc_k{K}": result["accuracy"][-1]}

        return log

    def evaluation_plan(self, ctx: RunContext, built, data):
        return _evaluation_plan(data, ctx.settings, window_of(ctx), ctx.batch_size, built.model.feature_dim)

    def evaluate(self, ctx: RunContext, built, data, out_dir, progress, parallel=None):
        model, config, settings = built.model, built.model.config, ctx.settings
        device = device_of(model)  # features, probes and baselines are computed there
        out_dir = Path(out_dir)
        summary = {}
        result = self.test_infonce(ctx, model, data)
        summary["test_infonce"] = result["loss"]
        summary.update({f"infonce_acc_k{k}": acc for k, acc in enumerate(result["accuracy"], 1)})
        train_utts, test_utts = spread(data.train, settings.probe_utterances), spread(data.test, settings.probe_utterances)
        num_speakers, num_phones = len(data.speakers), data.num_phones
        probe_args = (train_utts, test_utts, num_speakers, num_phones, settings.speaker_pool,
                      settings.probe_weight_decay, settings.probe_iterations, device)
        timings = {}

        def probe(features_of, label):
            started = time.perf_counter()
            scores = probe_both(features_of(train_utts, "train"), features_of(test_utts, "test"), *probe_args)
            timings[label] = round(time.perf_counter() - started, 1)
            tqdm.write(f"{label} probes: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
            return scores

        cpc = probe(lambda utts, split: context_features(model, utts, progress, f"CPC features ({split})"), "cpc")
        summary["speaker_acc"], summary["phone_acc"] = cpc["speaker_acc"], cpc.get("phone_acc")
        summary["speaker_train_acc"], summary["phone_train_acc"] = cpc["speaker_train_acc"], cpc.get("phone_train_acc")
        chosen = parse_baselines(settings.baselines)
        for name in BASELINES:
            for task in ("speaker", "phone"):
                summary[f"baseline_{name}_{task}_acc"] = None
        if "random" in chosen:
            torch.manual_seed(1)
            random_model = CPC(config).to(device)  # initialised on the CPU: the same encoder on any device
            scores = probe(lambda utts, split: context_features(random_model, utts, progress, f"random ({split})"),
                           "random")
            summary["baseline_random_speaker_acc"] = scores["speaker_acc"]
            summary["baseline_random_phone_acc"] = scores.get("phone_acc")
        if "mfcc" in chosen:
            scores = probe(lambda utts, split: mfcc_features(utts), "mfcc")
            summary["baseline_mfcc_speaker_acc"] = scores["speaker_acc"]
            summary["baseline_mfcc_phone_acc"] = scores.get("phone_acc")
        if "supervised" in chosen:
            subset = _Subset(data, train_utts, test_utts)
            for task in ("speaker", "phone") if num_phones else ("speaker",):
                result = train_supervised(config, subset, task, window_of(ctx), ctx.batch_size, ctx.lr,
                                          settings.supervised_steps, seed=2, pool=settings.speaker_pool,
                                          progress=progress, device=device)
                tqdm.write(f"supervised {task}: " + ", ".join(f"{k} {v}" for k, v in result.items()))
                summary[f"baseline_supervised_{task}_acc"] = result["test_acc"]
                summary[f"supervised_{task}_train_loss_last"] = result["train_loss_last"]
                timings[f"supervised_{task}"] = result["wall_s"]
            summary["supervised_steps"] = settings.supervised_steps
        rows = read_metrics(out_dir / "metrics.csv") if (out_dir / "metrics.csv").exists() else []
        if rows:
            last = rows[-1]
            samples = last["step"] * ctx.batch_size * window_of(ctx)
            summary["train_audio_s_per_s"] = round(samples / SAMPLE_RATE / max(last["elapsed_s"], 1e-9), 2)
        summary.update({"window": window_of(ctx), "negatives": settings.negatives,
                        "num_negatives": settings.num_negatives, "encoder_width": model.encoder.output_dim,
                        "encoder_layers": ",".join("-".join(map(str, layer)) for layer in model.encoder.layers),
                        "num_train_utterances": len(train_utts), "num_test_utterances": len(test_utts),
                        "eval_wall_s_parts": timings})
        return summary

    def plot(self, ctx: RunContext, built, data, out_dir, summary):
        out_dir = Path(out_dir)
        return [plots.training_curve(out_dir / "metrics.csv", out_dir / "training_curve.png",
                                     ylabel="InfoNCE loss (train windows)"),
                accuracy_per_k(summary, out_dir / "infonce_accuracy.png"),
                probe_table(summary, out_dir / "probes.png")]


def _evaluation_plan(data, settings, window: int, batch_size: int, feature_dim: int) -> EvaluationPlan:
    """In training windows: the features of every probe utterance (CPC's, and the random
    encoder's), and each supervised baseline's steps (a forward and backward pass, 2 windows' worth, measured);
    and, as matrix work, the linear probes' L-BFGS iterations on each set of features (on frames for
    the phone probe: the larger part; each iteration a forward and backward pass, 6 flops per
    multiply-add of features x classes, about 1.25 evaluations per iteration)."""
    utterances = spread(data.train, settings.probe_utterances) + spread(data.test, settings.probe_utterances)
    feature_windows = sum(u.num_samples for u in utterances) / window
    chosen = parse_baselines(settings.baselines)
    encoders = 1 + ("random" in chosen)
    supervised = 2 * settings.supervised_steps * batch_size * 2 if "supervised" in chosen else 0
    frames = sum(u.num_samples for u in utterances) / FRAME
    dims = [feature_dim] * encoders + ([3 * MFCC_COEFFICIENTS] if "mfcc" in chosen else [])
    per_set = 1.25 * settings.probe_iterations * 6 * (frames * max(data.num_phones, 0) + len(utterances) * len(data.speakers))
    what = f"linear probes on {len(utterances)} utterances" + (f", baselines {', '.join(chosen)}" if chosen else "")
    if supervised:
        what += f" (supervised: 2 x {settings.supervised_steps} steps)"
    return EvaluationPlan(what, encoders * feature_windows + supervised, flops=per_set * sum(dims))


def spread(utterances: list, n: int) -> list:
    """``n`` evenly spaced utterances (all when n is 0 or more than there are)."""
    if not n or n >= len(utterances):
        return utterances
    return [utterances[i] for i in torch.linspace(0, len(utterances) - 1, n).round().long().tolist()]


class _Subset:
    def __init__(self, data, train, test):
        self.train, self.test, self.speakers, self.num_phones = train, test, data.speakers, data.num_phones


def accuracy_per_k(summary: dict, path: Path) -> Path:
    ks = sorted(int(key.rsplit("k", 1)[1]) for key in summary if key.startswith("infonce_acc_k"))
    fig, ax = plots.plt.subplots(figsize=(5, 3.2))
    ax.bar(ks, [summary[f"infonce_acc_k{k}"] for k in ks], color="tab:blue")
    ax.set_xlabel("k (prediction steps of 10 ms ahead)")
    ax.set_ylabel("InfoNCE accuracy (test windows)")
    ax.set_xticks(ks)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3, axis="y")
    return plots.save(fig, path)


def probe_table(summary: dict, path: Path) -> Path:
    """Table 1 as bars: linear-probe test accuracy of each feature, speaker and phone."""
    names = ["random", "mfcc", "cpc", "supervised"]
    fig, axes = plots.plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, task in zip(axes, ("phone", "speaker")):
        values = [summary.get(f"{task}_acc") if n == "cpc" else summary.get(f"baseline_{n}_{task}_acc") for n in names]
        ax.bar(names, [v if v is not None else 0 for v in values], color=["grey", "tab:orange", "tab:blue", "tab:green"])
        for i, v in enumerate(values):
            ax.text(i, (v or 0) + 0.01, "n/a" if v is None else f"{100 * v:.1f}", ha="center", fontsize=8)
        ax.set_title(f"{task} classification (test split)")
        ax.set_ylim(0, 1.08)
        ax.set_ylabel("accuracy")
    return plots.save(fig, path)
