#!/usr/bin/env python
"""Reading CPC's LibriSpeech training windows in the training process against DataLoader workers
(inference/training/prefetch.py): how long each step waits for its batch.

Writes a synthetic train-clean-100 (``--utterances`` FLAC files of ``--seconds`` s at 16 kHz, a
tone plus noise, which FLAC compresses less than speech) into a temporary directory, then reads
``--steps`` batches of ``--batch-size`` windows of ``--window`` samples with 0 and with
``--workers`` workers. Between two batches a simulated model step of ``--step-ms`` ms either
keeps one core busy (``--model busy``: a 1-thread matrix-product loop, what a CPU training step
does) or sleeps (``--model sleep``: the accelerator computes, the CPU is free). The first
``--warmup`` steps (worker start-up) are left out. The files are in the page cache: this
measures decoding and cropping, not the disk.

    python run/bench_prefetch.py [--workers 2 --steps 40 --step-ms 100 --model busy]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np
import soundfile
import torch

from inference.training.prefetch import PrefetchedBatches
from pyro_models.cpc.data import LIBRI_AUDIO, LIBRI_SPLITS, SAMPLE_RATE, WindowBatches, load_librispeech100
from pyro_models.datasets import DataDir


def write_corpus(root: Path, utterances: int, seconds: float) -> None:
    rng = np.random.default_rng(0)
    ids = []
    for i in range(utterances):
        speaker, chapter = 100 + i % 4, 10
        folder = root / LIBRI_AUDIO / str(speaker) / str(chapter)
        folder.mkdir(parents=True, exist_ok=True)
        n = int(seconds * SAMPLE_RATE)
        audio = 0.3 * np.sin(np.arange(n) * 2 * np.pi * (200 + 20 * i) / SAMPLE_RATE) + 0.05 * rng.standard_normal(n)
        uid = f"{speaker}-{chapter}-{i:04d}"
        soundfile.write(folder / f"{uid}.flac", audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        ids.append(uid)
    (root / LIBRI_SPLITS).mkdir()
    (root / LIBRI_SPLITS / "train_split.txt").write_text("\n".join(ids) + "\n")
    (root / LIBRI_SPLITS / "test_split.txt").write_text(ids[0] + "\n")


def model_step(milliseconds: float, busy: bool) -> None:
    end = time.perf_counter() + milliseconds / 1000
    if not busy:
        time.sleep(milliseconds / 1000)
        return
    a = torch.randn(128, 128)
    while time.perf_counter() < end:
        a = torch.tanh(a @ a)


def measure(batches, args) -> dict:
    waits, started = [], None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            started = time.perf_counter()
        before = time.perf_counter()
        batch = batches(step)
        if step >= args.warmup:
            waits.append(time.perf_counter() - before)
        model_step(args.step_ms, args.model == "busy")
    assert batch["wave"].shape == (args.batch_size, args.window)
    return {"wait": float(np.mean(waits)), "step": (time.perf_counter() - started) / args.steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--window", type=int, default=20480)
    parser.add_argument("--utterances", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--step-ms", type=float, default=100.0)
    parser.add_argument("--model", choices=["busy", "sleep"], default="busy")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as directory:
        write_corpus(Path(directory), args.utterances, args.seconds)
        corpus = load_librispeech100(DataDir(directory))
        windows = WindowBatches(corpus.train, args.window, args.batch_size, seed=0)
        alone = measure(windows, args)
        prefetched = PrefetchedBatches(windows, args.workers)
        try:
            ahead = measure(prefetched, args)
        finally:
            prefetched.close()
    print(f"{args.batch_size} windows of {args.window} samples from {args.utterances} FLAC files of {args.seconds:g} s; "
          f"model step {args.step_ms:g} ms ({args.model}), {args.steps} steps after {args.warmup}")
    for label, result in (("0 workers", alone), (f"{args.workers} workers", ahead)):
        print(f"{label:>10}: waits {result['wait']:.4f} s per batch, {result['step']:.4f} s per step")
    print(f"wait ratio (0 / {args.workers} workers): {alone['wait'] / max(ahead['wait'], 1e-9):.1f}; "
          f"step time ratio: {alone['step'] / ahead['step']:.2f}")


if __name__ == "__main__":
    main()
