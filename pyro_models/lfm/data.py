"""SIGMORPHON 2016 task 1, Spanish: the inflected forms (last column) as character sequences.

Files ``sigmorphon2016/spanish-task1-{train,dev,test}`` in the data directory (lines
``lemma<TAB>features<TAB>inflected form``, UTF-8). Words longer than ``max_length`` characters
are dropped. The vocabulary holds the characters of train + dev plus four symbols: PAD (0), UNK
(1), BOS (2, the decoder's first input) and EOS (3, scored after the last character).

A word of n characters is stored as n + 1 token ids (its characters, then EOS), right-padded
with PAD; ``lengths`` counts the EOS, so it is also the number of scored symbols.
"""
from dataclasses import dataclass

import torch

from pyro_models.datasets.files import DataDir, DataError

FOLDER = "sigmorphon2016"
SPLITS = ("train", "dev", "test")
PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")


class Vocabulary:
    def __init__(self, characters):
        self.symbols = list(SPECIALS) + sorted(set(characters) - set(SPECIALS))
        self.index = {symbol: i for i, symbol in enumerate(self.symbols)}

    def __len__(self):
        return len(self.symbols)

    def encode(self, word: str) -> list[int]:
        """Character ids followed by EOS."""
        return [self.index.get(c, UNK) for c in word] + [EOS]

    def decode(self, ids) -> str:
        """Characters up to the first EOS (PAD and BOS skipped, UNK shown as U+FFFD)."""
        out = []
        for i in (int(i) for i in ids):
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            out.append("\ufffd" if i == UNK else self.symbols[i])
        return "".join(out)


@dataclass
class Words:
    words: list[str]
    tokens: torch.Tensor  # (N, max_length + 1) long, PAD-padded
    lengths: torch.Tensor  # (N,) long: characters + 1 (EOS)

    def __len__(self):
        return len(self.words)

    def batch(self, idx: torch.Tensor) -> dict:
        """Model keyword arguments for the words ``idx``, padded to their own longest word."""
        lengths = self.lengths[idx]
        return {"tokens": self.tokens[idx, :int(lengths.max())], "lengths": lengths}


@dataclass
class SigmorphonData:
    vocab: Vocabulary
    train: Words
    dev: Words
    test: Words
    max_length: int


def encode_words(words: list[str], vocab: Vocabulary, max_length: int) -> Words:
    tokens = torch.full((len(words), max_length + 1), PAD, dtype=torch.long)
    lengths = torch.empty(len(words), dtype=torch.long)
    for i, word in enumerate(words):
        ids = vocab.encode(word)
        tokens[i, :len(ids)] = torch.tensor(ids)
        lengths[i] = len(ids)
    return Words(list(words), tokens, lengths)


def read_forms(path) -> list[str]:
    forms = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            columns = line.split("\t")
            if len(columns) < 2:
                raise DataError(f"{path}:{number}: expected tab-separated columns, got {line!r}")
            forms.append(columns[-1])
    return forms


def load_sigmorphon(data_dir: DataDir, max_length: int = 30) -> SigmorphonData:
    raw = {}
    for split in SPLITS:
        relative = f"{FOLDER}/spanish-task1-{split}"
        path = data_dir.path / relative
        if not path.exists():
            raise data_dir.missing(relative, " (SIGMORPHON 2016 shared task, Spanish task 1)")
        raw[split] = [w for w in read_forms(path) if len(w) <= max_length]
    vocab = Vocabulary(c for split in ("train", "dev") for word in raw[split] for c in word)
    encoded = {split: encode_words(raw[split], vocab, max_length) for split in SPLITS}
    return SigmorphonData(vocab, encoded["train"], encoded["dev"], encoded["test"], max_length)


class BucketedBatches:
    """Equal-size batches of words of similar length, a pure function of the step.

    Epoch e shuffles the words with a generator seeded by (seed, e), drops the ragged tail, sorts
    pools of ``pool`` batches by length, cuts them into batches and shuffles the batch order: the
    LSTMs see little padding, and every batch has ``batch_size`` words.
    """

    def __init__(self, words: Words, batch_size: int, seed: int, pool: int = 50):
        if batch_size > len(words):
            raise ValueError(f"batch size {batch_size} is larger than the training set ({len(words)} words)")
        self.words, self.batch_size, self.seed, self.pool = words, batch_size, seed, pool
        self.per_epoch = len(words) // batch_size
        self._epoch, self._batches = None, None

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.words), generator=generator)[:self.per_epoch * self.batch_size]
        size = self.pool * self.batch_size
        batches = []
        for start in range(0, order.numel(), size):
            chunk = order[start:start + size]
            chunk = chunk[torch.argsort(self.words.lengths[chunk], stable=True)]
            batches.extend(chunk.split(self.batch_size))
        shuffle = torch.randperm(len(batches), generator=generator)
        return [batches[i] for i in shuffle]

    def __call__(self, step: int) -> dict:
        epoch, position = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self.epoch_batches(epoch)
        idx = self._batches[position]
        return {**self.words.batch(idx), "idx": idx}
