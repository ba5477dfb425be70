"""SIGMORPHON 2016 task 1, Spanish: the inflected forms (last column) as character sequences.

Files ``sigmorphon2016/spanish-task1-{train,dev,test}`` in the data directory (lines
``lemma<TAB>features<TAB>inflected form``, UTF-8), from the shared task's repository
(https://github.com/ryancotterell/sigmorphon2016, folder ``data/``); their sha256 is checked and
a malformed line is refused with its number. Words longer than ``max_length`` characters
are dropped. The vocabulary holds the characters of train + dev plus four symbols: PAD (0), UNK
(1), BOS (2, the decoder's first input) and EOS (3, scored after the last character).

A word of n characters is stored as n + 1 token ids (its characters, then EOS), right-padded
with PAD; ``lengths`` counts the EOS, so it is also the number of scored symbols.
"""
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from pyro_models.datasets.files import DataDir, DataError, check_digest, decode_lines

FOLDER = "sigmorphon2016"
SPLITS = ("train", "dev", "test")
SHA256 = {  # of the copies in shared/data (its SHA256SUMS), taken from the shared task's repository
    "train": "d66985d60e6ebf0881b2a2a5f1c263db24ab0e6bce0b53434d989d6ba4730353",
    "dev": "d492f5634a5ca39e47aa590031ca5c4261cf775df7ea43455880e1b3549935ab",
    "test": "a5bcb345c732168a9adf5f8ebe513b4e9c427e4de20276196128ee7ee1a56d2e",
}
SOURCE = "https://github.com/ryancotterell/sigmorphon2016"
REFETCH = f"delete it and copy it again from {SOURCE} (folder data/)"
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
class WordSet:
    words: list[str]
    tokens: torch.Tensor  # (N, max_length + 1) long, PAD-padded
    lengths: torch.Tensor  # (N,) long: characters + 1 (EOS)

    def __len__(self):
        return len(self.words)

    def batch(self, idx: torch.Tensor) -> dict:
        """Model keyword arguments for the words ``idx``, padded to their own longest word."""
        lengths = self.lengths[idx]
        return {"tokens": self.tokens[idx, :int(lengths.max())], "lengths": lengths}

    def take(self, rows: torch.Tensor) -> "WordSet":
        """The words ``rows``, in that order."""
        return WordSet([self.words[i] for i in rows.tolist()], self.tokens[rows], self.lengths[rows])


@dataclass
class SigmorphonData:
    vocab: Vocabulary
    train: WordSet
    dev: WordSet
    test: WordSet
    max_length: int


def encode_words(words: list[str], vocab: Vocabulary, max_length: int) -> WordSet:
    tokens = torch.full((len(words), max_length + 1), PAD, dtype=torch.long)
    lengths = torch.empty(len(words), dtype=torch.long)
    for i, word in enumerate(words):
        ids = vocab.encode(word)
        tokens[i, :len(ids)] = torch.tensor(ids)
        lengths[i] = len(ids)
    return WordSet(list(words), tokens, lengths)


def read_forms(path, raw: bytes | None = None) -> list[str]:
    """The inflected forms (third column) of a task-1 file; ``raw``: its bytes, if already read.

    Every line must be ``lemma<TAB>features<TAB>form`` with three non-empty fields (an empty line
    too is refused): a DataError names the file and the line."""
    path = Path(path)
    lines = decode_lines(path, path.read_bytes() if raw is None else raw, REFETCH)
    forms = []
    for number, line in enumerate(lines, 1):
        columns = line.split("\t")
        if len(columns) != 3 or not all(columns):
            if not line:
                got = "an empty line"
            else:
                got = f"{len(columns)} fields" if len(columns) != 3 else "an empty field"
                got += f" in {line[:80]!r}"
            raise DataError(f"{path}, line {number}: expected lemma<TAB>features<TAB>form, got {got}; the file is corrupt: {REFETCH}")
        forms.append(columns[2])
    return forms


def load_sigmorphon(data_dir: DataDir, max_length: int = 30) -> SigmorphonData:
    raw = {}
    for split in SPLITS:
        relative = f"{FOLDER}/spanish-task1-{split}"
        path = data_dir.path / relative
        if not path.exists():
            raise data_dir.missing(
                relative, downloadable=False,
                hint=f"; the files come from the SIGMORPHON 2016 shared task repository, {SOURCE}, folder data/: "
                     f"copy spanish-task1-train, spanish-task1-dev and spanish-task1-test (Spanish, task 1) into "
                     f"{data_dir.path / FOLDER}/")
        content = path.read_bytes()
        forms = read_forms(path, content)  # a malformed line is named before the checksum is compared
        check_digest(path, hashlib.sha256(content).hexdigest(), SHA256[split], how=REFETCH)
        raw[split] = [w for w in forms if len(w) <= max_length]
    vocab = Vocabulary(c for split in ("train", "dev") for word in raw[split] for c in word)
    encoded = {split: encode_words(raw[split], vocab, max_length) for split in SPLITS}
    return SigmorphonData(vocab, encoded["train"], encoded["dev"], encoded["test"], max_length)


class BucketedBatches:
    """Equal-size batches of words of similar length, a pure function of the step.

    Epoch e shuffles the words with a generator seeded by (seed, e), drops the ragged tail, sorts
    pools of ``pool`` batches by length, cuts them into batches and shuffles the batch order: the
    LSTMs see little padding, and every batch has ``batch_size`` words.
    """

    def __init__(self, words: WordSet, batch_size: int, seed: int, pool: int = 50):
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
