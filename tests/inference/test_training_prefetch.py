"""Training windows read by DataLoader worker processes (inference/training/prefetch.py) and by rows of the
global batch (WindowBatches(step, rows)), on a tiny LibriSpeech written here: the same batches as
reading them in the training process, from any step, and failures that say what is wrong."""
import multiprocessing
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from conftest import ROOT

from inference.training.prefetch import PrefetchedBatches
from lvm_app.cli import parse
from pyro_models.cpc.data import FRAME, WindowBatches, load_librispeech100
from pyro_models.cpc.experiment import CPCExperiment, CPCSettings
from pyro_models.cpc.model import CPCConfig
from pyro_models.datasets import DataDir, DataError

WINDOW, BATCH = 1600, 8
LENGTHS = [3200, 4000, 5600, 7200, 8000, 9600]  # samples of each speaker's utterances 0..5


def write_librispeech(root: Path) -> Path:
    """Speakers 19 and 250, 6 utterances each, in the train-clean-100 layout with CPC split files.
    Sample n of an utterance is n / 32768 (16-bit FLAC is lossless), so a window's first sample
    says where its crop starts."""
    ids = []
    for speaker, chapter in ((19, 198), (250, 142276)):
        folder = root / "LibriSpeech" / "train-clean-100" / str(speaker) / str(chapter)
        folder.mkdir(parents=True)
        for utt, length in enumerate(LENGTHS):
            uid = f"{speaker}-{chapter}-{utt:04d}"
            soundfile.write(folder / f"{uid}.flac", np.arange(length) / 32768, 16000, format="FLAC", subtype="PCM_16")
            ids.append(uid)
    splits = root / "librispeech100_cpc_splits"
    splits.mkdir()
    (splits / "train_split.txt").write_text("\n".join(ids[:5] + ids[6:11]) + "\n")
    (splits / "test_split.txt").write_text("\n".join([ids[5], ids[11]]) + "\n")
    labels = [f"{u} " + " ".join(str((t + i) % 41) for t in range(LENGTHS[i % 6] // FRAME)) for i, u in enumerate(ids)
              if i % 2 == 0]  # every other utterance has phone labels
    (splits / "converted_aligned_phones.txt").write_text("\n".join(labels) + "\n")
    return root


@pytest.fixture
def corpus(tmp_path):
    return load_librispeech100(DataDir(write_librispeech(tmp_path)))


def windows(corpus, seed=3):
    return WindowBatches(corpus.train, WINDOW, BATCH, seed)


def reference_batch(batches: WindowBatches, step: int) -> dict:
    """WindowBatches.__call__ as it was before ``rows`` (commit 1708f7e): draws and reads interleaved."""
    rng = np.random.default_rng([batches.seed, step])
    chosen = rng.integers(0, len(batches.pool), batches.batch_size)
    waves, speakers = [], []
    phones = torch.full((batches.batch_size, batches.frames), -1, dtype=torch.long)
    for row, i in enumerate(chosen):
        utt = batches.pool[i]
        start = FRAME * int(rng.integers(0, (utt.num_samples - batches.window) // FRAME + 1))
        waves.append(utt.read(start, start + batches.window))
        speakers.append(utt.speaker)
        if utt.phones is not None:
            labels = utt.phones[start // FRAME: start // FRAME + batches.frames]
            phones[row, : len(labels)] = labels
    return {"wave": torch.stack(waves), "speaker": torch.tensor(speakers), "phones": phones}


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def workers_alive() -> set[int]:
    return {p.pid for p in multiprocessing.active_children()}


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_full_batch_is_the_draw_of_earlier_versions(corpus):
    batches = windows(corpus)
    for step in (0, 1, 7, 123):
        assert_same(batches(step), reference_batch(batches, step))
    batch = batches(7)  # pinned: the utterances' speakers and crop starts of seed 3, step 7
    assert batch["speaker"].tolist() == [1, 1, 1, 1, 0, 1, 1, 0]
    assert (batch["wave"][:, 0] * 32768).round().long().tolist() == [160, 2400, 4480, 480, 1120, 1280, 1280, 4800]
    assert batch["phones"][:, 0].tolist() == [7, -1, 38, -1, 9, 14, -1, -1]


def test_rows_are_those_rows_of_the_full_batch_and_read_only_their_audio(corpus, monkeypatch):
    batches = windows(corpus)
    full = batches(5)
    for rows in (range(4), range(4, 8), range(2, 3), range(8)):
        part = batches(5, rows=rows)
        assert_same(part, {key: value[rows.start:rows.stop] for key, value in full.items()})
    reads = []
    original = type(batches.pool[0]).read
    monkeypatch.setattr(type(batches.pool[0]), "read", lambda utt, *a: reads.append(utt.uid) or original(utt, *a))
    batches(5, rows=range(6, 8))
    assert len(reads) == 2
    for rows in (range(0), range(6, 9), range(-1, 2)):
        with pytest.raises(ValueError, match="rows"):
            batches(5, rows=rows)
    assert WindowBatches.takes_rows and PrefetchedBatches.takes_rows


def test_two_workers_give_the_batches_of_none(corpus):
    batches = windows(corpus)
    before = workers_alive()
    prefetched = PrefetchedBatches(batches, workers=2)
    try:
        for step in range(6):
            assert_same(prefetched(step), batches(step))
            assert len(workers_alive() - before) == 2  # they were computed in two other processes
        assert prefetched.batch_size == BATCH
    finally:
        prefetched.close()
    direct = PrefetchedBatches(batches, workers=0)
    assert_same(direct(3, range(2, 6)), batches(3, range(2, 6)))


def test_resume_jump_back_and_rows_change_restart_at_the_step_asked(corpus):
    batches = windows(corpus)
    with_rows = [(9, None), (10, None), (11, None),  # a resume at step 9
                 (4, None), (5, None),  # backwards
                 (6, range(4)), (7, range(4)),  # other rows
                 (8, range(4, 8)), (20, range(4, 8))]  # forwards, skipping steps
    prefetched = PrefetchedBatches(batches, workers=2, prefetch=1)
    try:
        for step, rows in with_rows:
            assert_same(prefetched(step, rows), batches(step, rows))
    finally:
        prefetched.close()


def test_the_training_process_random_state_is_left_alone(corpus):
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    prefetched = PrefetchedBatches(windows(corpus), workers=2)
    try:
        prefetched(0), prefetched(1), prefetched(5)  # two iterators started
    finally:
        prefetched.close()
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]


def test_a_batch_function_that_is_not_declared_pure_is_refused(corpus):
    with pytest.raises(ValueError, match=r"not declared a pure function of \(step, rows\).*global random state"):
        PrefetchedBatches(lambda step, rows=None: {"x": torch.rand(2)}, workers=2)
    with pytest.raises(ValueError, match="workers must be zero or more"):
        PrefetchedBatches(windows(corpus), workers=-1)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_a_damaged_flac_in_a_worker_is_one_line_and_stops_the_workers(corpus, damage):
    before = workers_alive()
    prefetched = PrefetchedBatches(windows(corpus), workers=2)
    for utt in corpus.train:  # damaged after the corpus was listed, as a disk or copy can
        raw = utt.path.read_bytes()
        if damage == "missing":
            utt.path.unlink()
        else:
            utt.path.write_bytes(b"not a FLAC file" * 40 if damage == "garbage" else raw[: len(raw) // 3])
    with pytest.raises(DataError) as caught:
        prefetched(0)
    message = str(caught.value)
    assert "\n" not in message and ".flac" in message and "extract the full tarball again" in message, message
    assert "Traceback" not in message and "DataLoader worker" not in message
    assert "data worker" in "".join(caught.value.__notes__)  # the worker's traceback, for --traceback
    assert not [pid for pid in workers_alive() - before if alive(pid)]


def test_close_leaves_no_worker_and_a_later_call_starts_again(corpus):
    batches = windows(corpus)
    before = workers_alive()
    prefetched = PrefetchedBatches(batches, workers=2)
    prefetched(0)
    started = workers_alive() - before
    assert len(started) == 2
    prefetched.close()
    assert not [pid for pid in started if alive(pid)]
    assert_same(prefetched(1), batches(1))
    prefetched.close()


def test_no_worker_outlives_its_process_after_an_exception(tmp_path):
    """Not closed: the workers stop at interpreter exit, also when the program dies of an exception."""
    write_librispeech(tmp_path)
    script = textwrap.dedent(f"""
        import multiprocessing
        from inference.training.prefetch import PrefetchedBatches
        from pyro_models.cpc.data import WindowBatches, load_librispeech100
        from pyro_models.datasets import DataDir
        corpus = load_librispeech100(DataDir({str(tmp_path)!r}))
        batches = PrefetchedBatches(WindowBatches(corpus.train, {WINDOW}, {BATCH}, 0), workers=2)
        batches(0)
        print(*[p.pid for p in multiprocessing.active_children()], flush=True)
        raise RuntimeError("the training step failed")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                            check=False, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1 and "the training step failed" in result.stderr, result.stderr
    pids = [int(pid) for pid in result.stdout.split()]
    assert len(pids) == 2 and not [pid for pid in pids if alive(pid)]


def test_cpc_reads_with_data_workers_and_refuses_a_negative_count(corpus, capsys):
    experiment = CPCExperiment()
    config = CPCConfig(width=8, context_dim=8, prediction_steps=4)
    ctx = experiment.context(dataset="librispeech100", config=config, batch_size=BATCH, seed=3,
                             settings=CPCSettings(window=WINDOW, data_workers=2, threads=0))
    prefetched = experiment.batches(ctx, corpus)
    try:
        assert isinstance(prefetched, PrefetchedBatches) and prefetched.workers == 2
        assert_same(prefetched(4), windows(corpus)(4))
    finally:
        prefetched.close()
    ctx = ctx.replace(settings=CPCSettings(window=WINDOW, threads=0))
    assert isinstance(experiment.batches(ctx, corpus), WindowBatches)  # the default: no workers
    with pytest.raises(SystemExit) as caught:
        parse(["--model", "cpc", "--data-workers", "-1"])
    assert caught.value.code == 2
    assert "--data-workers must be zero or more, got -1" in capsys.readouterr().err
