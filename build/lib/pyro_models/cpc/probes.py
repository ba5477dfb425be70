"""Frozen-feature evaluation for CPC (the paper's Table 1): features of whole utterances, linear
probes trained on the train split and scored on the test split, and the baselines' features.

- Context features: c_t of the GRU for each 10 ms frame of an utterance (cropped to a whole
  number of frames, processed alone so no padding of another utterance leaks in).
- Speaker: one label per utterance, from the mean (or last) c_t; phone: one label per frame.
- MFCC baseline: 13 MFCCs + deltas + delta-deltas (torchaudio), 25 ms Hann windows every 10 ms,
  window t centred on the middle of frame t like encoder output t.
- Supervised baseline: the same encoder + GRU, trained end to end with a linear head on the labels.
"""
import math
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from pyro_models.core import device_of
from pyro_models.cpc.data import FRAME, SAMPLE_RATE, WindowBatches
from pyro_models.cpc.model import CPC

MFCC_WINDOW = 400  # 25 ms


def whole_frames(utt) -> torch.Tensor:
    frames = utt.num_samples // FRAME
    return utt.read(0, frames * FRAME)


@torch.no_grad()
def context_features(model: CPC, utterances, progress: bool = False, desc: str = "features") -> list[torch.Tensor]:
    """(T_i, H) c_t per utterance; T_i = samples // 160. Computed on the model's device, kept on the
    CPU (all of a corpus's frames need not fit in a GPU's memory)."""
    model.eval()
    device = device_of(model)
    return [model.context(model.encode(whole_frames(u).unsqueeze(0).to(device)))[0].cpu()
            for u in tqdm(utterances, disable=not progress, desc=desc, leave=False)]


def mfcc_features(utterances, n_mfcc: int = 13) -> list[torch.Tensor]:
    """(T_i, 3 n_mfcc) per utterance: MFCC, delta, delta-delta; frame t sees samples
    [160 t - 120, 160 t + 280), centred on frame t's middle."""
    import torchaudio.functional as AF
    import torchaudio.transforms as AT

    mfcc = AT.MFCC(sample_rate=SAMPLE_RATE, n_mfcc=n_mfcc,
                   melkwargs={"n_fft": MFCC_WINDOW, "hop_length": FRAME, "n_mels": 40, "center": False})
    pad = (MFCC_WINDOW - FRAME) // 2
    out = []
    with torch.no_grad():
        for u in utterances:
            wave = F.pad(whole_frames(u), (pad, pad))
            coefficients = mfcc(wave)  # (n_mfcc, T)
            delta = AF.compute_deltas(coefficients)
            out.append(torch.cat([coefficients, delta, AF.compute_deltas(delta)]).T)
    return out


def speaker_dataset(features, utterances, pool: str):
    x = torch.stack([f.mean(0) if pool == "mean" else f[-1] for f in features])
    return x, torch.tensor([u.speaker for u in utterances])


def phone_dataset(features, utterances):
    """Frames with a label: t < min(encoder frames, label frames)."""
    xs, ys = [], []
    for f, u in zip(features, utterances):
        if u.phones is None:
            continue
        n = min(len(f), len(u.phones))
        xs.append(f[:n])
        ys.append(u.phones[:n])
    if not xs:
        raise ValueError("no utterance has phone labels")
    return torch.cat(xs), torch.cat(ys)


def linear_probe(train_x, train_y, test_x, test_y, num_classes: int, weight_decay: float = 1e-4,
                 iterations: int = 200, device=None) -> dict:
    """Multinomial logistic regression on standardised features (full-batch L-BFGS, L2 penalty),
    on ``device`` (default: the features')."""
    train_x, train_y, test_x, test_y = (t.to(device or train_x.device) for t in (train_x, train_y, test_x, test_y))
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    a, b = (train_x - mean) / std, (test_x - mean) / std
    probe = nn.Linear(a.shape[1], num_classes).to(a.device)  # zeros below: the same start on any device
    nn.init.zeros_(probe.weight)  # a convex problem: start at 0, so the result does not depend on the RNG
    nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1, max_iter=iterations, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(a), train_y) + weight_decay * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return {"train_acc": (probe(a).argmax(-1) == train_y).float().mean().item(),
                "test_acc": (probe(b).argmax(-1) == test_y).float().mean().item()}


def probe_both(train_features, test_features, train_utts, test_utts, num_speakers, num_phones, pool,
               weight_decay, iterations, device=None) -> dict:
    speaker = linear_probe(*speaker_dataset(train_features, train_utts, pool),
                           *speaker_dataset(test_features, test_utts, pool), num_speakers, weight_decay, iterations,
                           device)
    result = {"speaker_acc": speaker["test_acc"], "speaker_train_acc": speaker["train_acc"]}
    if num_phones:
        phone = linear_probe(*phone_dataset(train_features, train_utts), *phone_dataset(test_features, test_utts),
                             num_phones, weight_decay, iterations, device)
        result.update({"phone_acc": phone["test_acc"], "phone_train_acc": phone["train_acc"]})
    return result


class Supervised(nn.Module):
    """The CPC encoder + GRU with a linear head: per frame (phones) or on the pooled c_t (speaker)."""

    def __init__(self, config, task: str, num_classes: int, pool: str):
        super().__init__()
        self.cpc, self.task, self.pool = CPC(config), task, pool
        self.head = nn.Linear(self.cpc.feature_dim, num_classes)

    def logits(self, wave):
        c = self.cpc.context(self.cpc.encode(wave))
        if self.task == "phone":
            return self.head(c)
        return self.head(c.mean(1) if self.pool == "mean" else c[:, -1])


def train_supervised(config, corpus, task: str, window: int, batch_size: int, lr: float, steps: int, seed: int,
                     pool: str, progress: bool = False, device=None) -> dict:
    """End-to-end training on the train split's labels, on ``device`` (default: the CPU); accuracy on
    the test split (whole utterances)."""
    torch.manual_seed(seed)
    num_classes = corpus.num_phones if task == "phone" else len(corpus.speakers)
    net = Supervised(config, task, num_classes, pool).to(device)  # initialised on the CPU: the same on any device
    batches = WindowBatches(corpus.train, window, batch_size, seed + 1, labelled_only=task == "phone")
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    started, losses = time.perf_counter(), []
    net.train()
    for step in tqdm(range(steps), disable=not progress, desc=f"supervised {task}", leave=False):
        batch = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batches(step).items()}
        logits = net.logits(batch["wave"])
        if task == "phone":
            loss = F.cross_entropy(logits.reshape(-1, num_classes), batch["phones"].reshape(-1), ignore_index=-1)
        else:
            loss = F.cross_entropy(logits, batch["speaker"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise RuntimeError(f"supervised {task} baseline: the loss became non-finite at step {step + 1}")
    wall = time.perf_counter() - started
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for u in corpus.test:
            if task == "phone" and u.phones is None:
                continue
            logits = net.logits(whole_frames(u).unsqueeze(0).to(device))[0].cpu()
            if task == "phone":
                n = min(len(logits), len(u.phones))
                correct += (logits[:n].argmax(-1) == u.phones[:n]).sum().item()
                total += n
            else:
                correct += int(logits.argmax().item() == u.speaker)
                total += 1
    tail = losses[-max(1, steps // 10):]
    return {"test_acc": correct / total, "steps": steps, "wall_s": round(wall, 1),
            "train_loss_last": float(np.mean(tail))}
