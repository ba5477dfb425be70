"""Speech corpora for CPC: utterances of 16 kHz mono audio with a speaker and, where available,
one phone label per 10 ms frame (frame t = samples [160 t, 160 t + 160)).

- FSDD (``fsdd/`` in the data directory): 3000 recordings ``{digit}_{speaker}_{index}.wav`` at
  8 kHz, resampled to 16 kHz with torchaudio; official split: index 0-4 test, 5-49 train; phone
  labels from ``fsdd/fsdd_converted_aligned_phones.txt`` (20 classes, 2983 files),
  class names from ``fsdd/fsdd_phone_index.txt``. Every recording must be a complete WAV file
  with samples; those with an FSDD v1.0.10 name must match its sha256 (``fsdd_sums.py``),
  and then the two label files must match theirs.
- LibriSpeech train-clean-100 (``LibriSpeech/train-clean-100/{speaker}/{chapter}/
  {speaker}-{chapter}-{utterance}.flac``, the layout of the released tarball), with the CPC paper's
  split (``librispeech100_cpc_splits/{train,test}_split.txt``) and, when the file
  ``librispeech100_cpc_splits/converted_aligned_phones.txt`` is there, its phone labels (41
  classes). Audio is read from disk when a window is needed, not held in memory.

Label files have one line per utterance: ``utterance_id label label ...`` (the format of the CPC
release's ``converted_aligned_phones.txt``).
"""
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pyro_models.cpc.fsdd_sums import recording_sums
from pyro_models.datasets.files import DataDir, DataError, check_digest, decode_lines, verify_checksum

SAMPLE_RATE = 16000
FRAME = 160
FSDD_FOLDER = "fsdd"
FSDD_RATE = 8000
FSDD_TEST_INDICES = range(5)
FSDD_LABELS = "fsdd/fsdd_converted_aligned_phones.txt"
FSDD_PHONES = "fsdd/fsdd_phone_index.txt"
FSDD_LABEL_SHA256 = {  # as in shared/data/SHA256SUMS (labels made for this project, see its README)
    FSDD_LABELS: "4ad091a2b20388d2c180bbefd0a1d64e669c1eba193ed8cab6b6d34e53e1784b",
    FSDD_PHONES: "9e63ee0a2a1030d3c8f04edd2c7a165e2c0bc9bee331cfee60644330198912f2",
}
LIBRI_AUDIO = "LibriSpeech/train-clean-100"
LIBRI_SPLITS = "librispeech100_cpc_splits"
LIBRI_LABELS = f"{LIBRI_SPLITS}/converted_aligned_phones.txt"
LIBRI_NUM_PHONES = 41  # the CPC release's phone set


@dataclass
class Utterance:
    uid: str
    speaker: int  # index into SpeechCorpus.speakers
    num_samples: int  # at 16 kHz
    phones: torch.Tensor | None = None  # (frames,) long, one label per 10 ms
    audio: torch.Tensor | None = None  # (num_samples,) float32 in [-1, 1], when held in memory
    path: Path | None = None  # read from here when ``audio`` is None

    def read(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        stop = self.num_samples if stop is None else stop
        if self.audio is not None:
            return self.audio[start:stop]
        import soundfile

        try:
            data, rate = soundfile.read(self.path, start=start, stop=stop, dtype="float32", always_2d=True)
        except RuntimeError as error:  # soundfile.LibsndfileError: missing, truncated or corrupt file
            reason = getattr(error, "error_string", None) or str(error)
            raise DataError(f"cannot read samples {start}..{stop} of {self.path} ({reason.strip().rstrip('.')}): "
                            f"{LIBRI_REFETCH}") from None
        if rate != SAMPLE_RATE:
            raise DataError(f"{self.path}: sample rate {rate} Hz, expected {SAMPLE_RATE}")
        if len(data) != stop - start:  # a file shorter than its header said
            raise DataError(f"{self.path} gave {len(data)} samples of {start}..{stop}: it is truncated; {LIBRI_REFETCH}")
        return torch.from_numpy(data[:, 0].copy())


@dataclass
class SpeechCorpus:
    name: str
    train: list[Utterance]
    test: list[Utterance]
    speakers: list[str]
    phone_names: list[str] = field(default_factory=list)  # empty: no phone labels

    @property
    def num_phones(self) -> int:
        return len(self.phone_names)


def read_phone_labels(path: Path) -> dict[str, torch.Tensor]:
    labels = {}
    for number, line in enumerate(decode_lines(path, path.read_bytes()), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            labels[parts[0]] = torch.tensor([int(p) for p in parts[1:]], dtype=torch.long)
        except ValueError:
            raise DataError(f"{path}, line {number}: expected 'utterance_id label label ...' with integer labels") from None
    return labels


def read_phone_index(path: Path) -> list[str]:
    """Phone names from lines ``index name``, indices 0, 1, 2, ... in order."""
    names = []
    for number, line in enumerate(decode_lines(path, path.read_bytes()), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[0] != str(len(names)):
            raise DataError(f"{path}, line {number}: expected 'index phone' with indices 0, 1, 2, ... in order, "
                            f"got {line[:80]!r}")
        names.append(parts[1])
    return names


FSDD_HOW = ("copy the Free Spoken Digit Dataset v1.0.10 (github.com/Jakobovski/free-spoken-digit-dataset: "
            "recordings/*.wav) and its phone-label files into fsdd/ there (the layout of shared/data, see its README), "
            "or point --data-dir or $PYRO_MODELS_DATA at a directory that has them")
FSDD_REFETCH = ("delete it and copy it again from the Free Spoken Digit Dataset v1.0.10 "
                "(github.com/Jakobovski/free-spoken-digit-dataset, recordings/)")
FSDD_LABELS_REFETCH = "delete it and copy it again from fsdd/ of shared/data (see its README)"
OWN_RECORDING_FIX = "replace it with a complete WAV recording or remove it from recordings/"
LIBRI_REFETCH = "the train-clean-100 copy is damaged; extract the full tarball again"
LIBRI_HOW = ("put the CPC split files (train_split.txt, test_split.txt of the CPC release) into "
             f"{LIBRI_SPLITS}/ there, or point --data-dir or $PYRO_MODELS_DATA at a directory that has them")


def _require(data_dir: DataDir, relative: str, how: str) -> Path:
    path = data_dir.path / relative
    if not path.exists():
        raise DataError(f"missing data file {relative} in data directory {data_dir.describe()}: {how}")
    return path


def _check_labels(labels: dict, num_classes: int, source: Path) -> None:
    for uid, row in labels.items():
        if len(row) and (row.min() < 0 or row.max() >= num_classes):
            raise DataError(f"{source}: utterance {uid} has a label outside 0..{num_classes - 1}")


def check_file_set(folder: Path, found: set[str], listed: set[str]) -> None:
    """FSDD is its listed recordings, all of them: a missing one or an unlisted one is refused."""
    missing, extra = sorted(listed - found), sorted(found - listed)
    if missing:
        raise DataError(f"{folder} lacks {len(missing)} of FSDD's {len(listed)} recordings ({', '.join(missing[:3])}"
                        f"{', ...' if len(missing) > 3 else ''}): {FSDD_HOW}")
    if extra:
        raise DataError(f"{folder} holds {len(extra)} .wav files that are not FSDD v1.0.10's ({', '.join(extra[:3])}"
                        f"{', ...' if len(extra) > 3 else ''}): move them out (a folder of your own recordings, "
                        "none named as FSDD's, is read as a corpus of its own)")


def load_fsdd(data_dir: DataDir) -> SpeechCorpus:
    import torchaudio.transforms as AT

    folder = _require(data_dir, f"{FSDD_FOLDER}/recordings", FSDD_HOW)
    files = sorted(folder.glob("*.wav"))
    if not files:
        raise DataError(f"no .wav file in {folder}: {FSDD_HOW}")
    phones_path = _require(data_dir, FSDD_PHONES, FSDD_HOW)
    labels_path = _require(data_dir, FSDD_LABELS, FSDD_HOW)
    sums = recording_sums()
    if any(path.name in sums for path in files):
        # FSDD's own recordings: the data set is every listed file and only those, and its labels
        # are the released ones (a directory of other recordings in the FSDD layout, e.g. the
        # tests' tiny corpora, brings its own labels)
        check_file_set(folder, {path.name for path in files}, set(sums))
        for relative, sha256 in FSDD_LABEL_SHA256.items():
            verify_checksum(data_dir.path / relative, sha256, how=FSDD_LABELS_REFETCH)
    phone_names = read_phone_index(phones_path)
    labels = read_phone_labels(labels_path)
    _check_labels(labels, len(phone_names), labels_path)
    parsed = []
    for path in files:
        parts = path.stem.split("_")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
            raise DataError(f"{path}: FSDD file names are {{digit}}_{{speaker}}_{{index}}.wav")
        parsed.append((path, parts[1], int(parts[2])))
    speakers = sorted({speaker for _, speaker, _ in parsed})
    # All files checked before any is decoded: a bad one fails in a tenth of a second, not after
    # a second of resampling. Each file is read once (then decoded from memory), so the checks add
    # only the hashing: about 0.015 s for the 27 MB of all 3000, no need to cache the result.
    parsed = [(path, speaker, index, _read_wav_bytes(path, sums.get(path.name))) for path, speaker, index in parsed]
    resample = AT.Resample(FSDD_RATE, SAMPLE_RATE)  # the windowed-sinc kernel, computed once
    train, test = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 3000 small convolutions: 40x faster than 2 threads on busy cores
    try:
        _read_fsdd(parsed, speakers, labels, resample, train, test)
    finally:
        torch.set_num_threads(threads)
    return SpeechCorpus("fsdd", train, test, speakers, phone_names)


def _read_wav_bytes(path: Path, sha256_prefix: str | None) -> bytes:
    """The bytes of a recording that is a complete WAV file and, for an FSDD name, FSDD's own."""
    raw = path.read_bytes()
    how = OWN_RECORDING_FIX if sha256_prefix is None else FSDD_REFETCH
    _check_wav_structure(path, raw, how)
    if sha256_prefix is not None:
        check_digest(path, hashlib.sha256(raw).hexdigest(), sha256_prefix, how=how)
    return raw


def _check_wav_structure(path: Path, raw: bytes, how: str) -> None:
    """A RIFF/WAVE header and a 'data' chunk with samples, all of them in the file: libsndfile
    reads a truncated file without complaint (it returns the samples that are there)."""
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise DataError(f"{path} is not a WAV file (it does not start with a RIFF/WAVE header); {how}")
    position = 12
    while position + 8 <= len(raw):
        chunk, size = raw[position:position + 4], int.from_bytes(raw[position + 4:position + 8], "little")
        if chunk == b"data":
            available = len(raw) - position - 8
            if available == 0:
                raise DataError(f"{path} has a WAV header but no samples (an empty or truncated file); {how}")
            if size > available and size != 0xFFFFFFFF:  # 0xFFFFFFFF: size unknown (written as a stream)
                raise DataError(f"{path} is truncated: its WAV header announces {size} bytes of samples, the file "
                                f"holds {available}; {how}")
            return
        position += 8 + size + (size & 1)
    raise DataError(f"{path} is not a complete WAV file (no 'data' chunk: truncated in its header or corrupt); {how}")


def _decode_wav(path: Path, raw: bytes, how: str) -> tuple[np.ndarray, int]:
    import soundfile

    try:
        data, rate = soundfile.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except RuntimeError as error:  # soundfile.LibsndfileError: unknown format, broken header
        reason = getattr(error, "error_string", None) or str(error)
        raise DataError(f"cannot read {path} as a WAV file ({reason.rstrip('.')}); {how}") from None
    if len(data) == 0:
        raise DataError(f"{path} has a WAV header but no samples (an empty or truncated file); {how}")
    return data, rate


def _read_fsdd(parsed, speakers, labels, resample, train, test):
    sums = recording_sums()
    for path, speaker, index, raw in parsed:
        data, rate = _decode_wav(path, raw, FSDD_REFETCH if path.name in sums else OWN_RECORDING_FIX)
        if rate != FSDD_RATE:
            raise DataError(f"{path}: sample rate {rate} Hz, FSDD is {FSDD_RATE} Hz")
        with torch.no_grad():
            audio = resample(torch.from_numpy(data[:, 0].copy()))
        utt = Utterance(path.stem, speakers.index(speaker), len(audio), labels.get(path.stem), audio=audio)
        (test if index in FSDD_TEST_INDICES else train).append(utt)


def read_split(path: Path) -> list[str]:
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [uid.removeprefix("lbi-") for uid in ids]


def load_librispeech100(data_dir: DataDir) -> SpeechCorpus:
    """train-clean-100 with the CPC split; every utterance of the split files must be present."""
    import soundfile

    root = data_dir.path / LIBRI_AUDIO
    if not root.is_dir():
        raise DataError(f"no LibriSpeech train-clean-100 in {data_dir.describe()}: extract train-clean-100.tar.gz "
                        f"(openslr.org/12) there, so that {LIBRI_AUDIO}/<speaker>/<chapter>/*.flac exists, "
                        f"or point --data-dir or $PYRO_MODELS_DATA at a directory that has it")
    splits = {name: read_split(_require(data_dir, f"{LIBRI_SPLITS}/{name}_split.txt", LIBRI_HOW))
              for name in ("train", "test")}
    labels_path = data_dir.path / LIBRI_LABELS
    labels = read_phone_labels(labels_path) if labels_path.exists() else {}
    _check_labels(labels, LIBRI_NUM_PHONES, labels_path)
    num_phones = LIBRI_NUM_PHONES if labels else 0
    speakers = sorted({uid.split("-")[0] for ids in splits.values() for uid in ids}, key=int)
    index = {speaker: i for i, speaker in enumerate(speakers)}
    corpus = {}
    for name, ids in splits.items():
        utterances = []
        for uid in ids:
            speaker, chapter, _ = uid.split("-")
            path = root / speaker / chapter / f"{uid}.flac"
            if not path.exists():
                raise DataError(f"{path} is listed in {LIBRI_SPLITS}/{name}_split.txt but missing: the "
                                "train-clean-100 copy is incomplete; extract the full tarball again")
            info = soundfile.info(path)
            if info.samplerate != SAMPLE_RATE:
                raise DataError(f"{path}: sample rate {info.samplerate} Hz, expected {SAMPLE_RATE}")
            utterances.append(Utterance(uid, index[speaker], info.frames, labels.get(uid), path=path))
        corpus[name] = utterances
    phone_names = [str(i) for i in range(num_phones)]
    return SpeechCorpus("librispeech100", corpus["train"], corpus["test"], speakers, phone_names)


SPEECH_DATASETS = {"fsdd": load_fsdd, "librispeech100": load_librispeech100}


class WindowBatches:
    """(step, rows) -> {"wave": (R, window), "speaker": (R,), "phones": (R, window // 160)} of random crops.

    Crops start on a 10 ms frame boundary, so ``phones[:, t]`` labels encoder output t; frames
    without a label are -1. Utterances shorter than the window are not used. ``rows`` (default:
    all ``batch_size``) are rows of the step's global batch: a data-parallel process reads only
    its own crops' audio. A pure function of (seed, step, rows), so a resumed run sees the same
    batches and they can be computed ahead in other processes (``inference/training/prefetch.py``).
    """

    takes_rows = True  # pure in (step, rows): see inference/training/prefetch.py

    def __init__(self, utterances: list[Utterance], window: int, batch_size: int, seed: int,
                 labelled_only: bool = False):
        if window % FRAME:
            raise ValueError(f"the window ({window} samples) must be a multiple of {FRAME} (10 ms at 16 kHz)")
        self.pool = [u for u in utterances if u.num_samples >= window and (u.phones is not None or not labelled_only)]
        if not self.pool:
            raise ValueError(f"no utterance is at least {window} samples long: use a shorter --window")
        self.window, self.batch_size, self.seed = window, batch_size, seed
        self.frames = window // FRAME

    def __call__(self, step: int, rows: range | None = None) -> dict:
        rows = range(self.batch_size) if rows is None else rows
        if not rows or rows[0] < 0 or rows[-1] >= self.batch_size:
            raise ValueError(f"rows {rows} are not a non-empty part of the batch's {self.batch_size} rows")
        # The whole batch is drawn, in the order of the draws of earlier versions (utterances, then
        # one start per row), so any rows equal those rows of the full batch and old runs replay.
        rng = np.random.default_rng([self.seed, step])
        chosen = rng.integers(0, len(self.pool), self.batch_size)
        starts = [FRAME * int(rng.integers(0, (self.pool[i].num_samples - self.window) // FRAME + 1)) for i in chosen]
        waves, speakers, phones = [], [], torch.full((len(rows), self.frames), -1, dtype=torch.long)
        for out, row in enumerate(rows):
            utt, start = self.pool[chosen[row]], starts[row]
            waves.append(utt.read(start, start + self.window))
            speakers.append(utt.speaker)
            if utt.phones is not None:
                labels = utt.phones[start // FRAME: start // FRAME + self.frames]
                phones[out, : len(labels)] = labels
        return {"wave": torch.stack(waves), "speaker": torch.tensor(speakers), "phones": phones}
