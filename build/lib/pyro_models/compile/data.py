"""The toy sequences of CompILE's reference code, generated in batches with torch.

A sequence is ``[s_1]*l_1 + ... + [s_n]*l_n + [EOS]``: the n symbols drawn without replacement
from 1..num_symbols, each length uniform on 1..max_segment_length, EOS = 0, right-padded with 0 to
the width ``n * max_segment_length + 1``. A batch is a function of its seed alone.
"""
from dataclasses import dataclass

import numpy as np
import torch

HELDOUT_ENTROPY = 20190601  # the held-out batch's stream, shared by every run seed


@dataclass(frozen=True)
class SequenceSpec:
    num_symbols: int = 5
    num_segments: int = 3
    max_segment_length: int = 4

    @property
    def width(self) -> int:
        return self.num_segments * self.max_segment_length + 1


@dataclass
class SequenceBatch:
    tokens: torch.Tensor  # (B, T) int64
    lengths: torch.Tensor  # (B,) content + EOS
    boundaries: torch.Tensor  # (B, n): end (exclusive) of each segment; the last is the EOS position
    symbols: torch.Tensor  # (B, n)

    def model_inputs(self) -> dict:
        return {"tokens": self.tokens, "lengths": self.lengths}


def seeded_generator(entropy: int, *key: int) -> torch.Generator:
    """An independent stream for (entropy, key...), e.g. (run seed, step)."""
    state = np.random.SeedSequence(entropy, spawn_key=key).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def generate(spec: SequenceSpec, batch_size: int, generator: torch.Generator) -> SequenceBatch:
    if spec.num_segments > spec.num_symbols:
        raise ValueError(f"{spec.num_segments} segments need as many distinct symbols, only {spec.num_symbols}")
    n = spec.num_segments
    symbols = torch.rand(batch_size, spec.num_symbols, generator=generator).argsort(-1)[:, :n] + 1
    seg_lengths = torch.randint(1, spec.max_segment_length + 1, (batch_size, n), generator=generator)
    ends = seg_lengths.cumsum(-1)
    t = torch.arange(spec.width)
    segment_of = (t[None, :, None] >= ends[:, None, :]).sum(-1)  # (B, T): index of the segment holding t
    content = t[None, :] < ends[:, -1:]
    tokens = torch.where(content, symbols.gather(1, segment_of.clamp(max=n - 1)), torch.zeros_like(segment_of))
    return SequenceBatch(tokens=tokens, lengths=ends[:, -1] + 1, boundaries=ends, symbols=symbols)


def training_batches(spec: SequenceSpec, batch_size: int, seed: int):
    """step -> batch of model inputs, a pure function of (seed, step)."""

    def batch_for_step(step: int) -> dict:
        return generate(spec, batch_size, seeded_generator(seed, step)).model_inputs()

    return batch_for_step


def heldout_batch(spec: SequenceSpec, batch_size: int = 512) -> SequenceBatch:
    return generate(spec, batch_size, seeded_generator(HELDOUT_ENTROPY))
