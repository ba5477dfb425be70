"""Speech loaders for CPC: FSDD and LibriSpeech train-clean-100 on tiny corpora written here in the
real layouts, the split files, the window batches, and the real FSDD when the data directory is set."""
import pytest
import soundfile
import torch
from speech_fixtures import PHONES, tone, write_tiny_fsdd

from pyro_models.cpc.data import WindowBatches, load_fsdd, load_librispeech100, read_split
from pyro_models.datasets import DataDir, DataError


@pytest.fixture
def fsdd_dir(tmp_path):
    return write_tiny_fsdd(tmp_path)


def test_fsdd_split_resampling_and_labels(fsdd_dir):
    corpus = load_fsdd(DataDir(fsdd_dir))
    assert corpus.speakers == ["ann", "bob"] and corpus.phone_names == PHONES
    assert sorted(u.uid.split("_")[2] for u in corpus.test) == ["3"] * 4 + ["4"] * 4
    assert len(corpus.train) == 8 and all(u.uid.split("_")[2] in ("5", "6") for u in corpus.train)
    utt = next(u for u in corpus.train if u.uid == "0_bob_5")
    assert utt.speaker == 1 and utt.num_samples == 2 * (800 + 400 + 40) and utt.audio.dtype == torch.float32
    original, _ = soundfile.read(fsdd_dir / "fsdd" / "recordings" / "0_bob_5.wav", dtype="float32")
    # 8 -> 16 kHz: the even samples of the upsampled signal are (close to) the original samples
    assert torch.allclose(utt.audio[200:-200:2], torch.from_numpy(original)[100:-100], atol=0.02)
    assert len(utt.phones) == utt.num_samples // 160 - 1
    assert next(u for u in corpus.train if u.uid == "7_bob_6").phones is None


def test_fsdd_missing_and_malformed_files_say_what_to_do(fsdd_dir, tmp_path):
    with pytest.raises(DataError, match="missing data file fsdd/recordings .*Free Spoken Digit.*--data-dir"):
        load_fsdd(DataDir(tmp_path / "elsewhere"))
    (fsdd_dir / "fsdd" / "fsdd_converted_aligned_phones.txt").write_text("0_ann_3 1 2 x\n")
    with pytest.raises(DataError, match="line 1: expected 'utterance_id label"):
        load_fsdd(DataDir(fsdd_dir))
    (fsdd_dir / "fsdd" / "fsdd_converted_aligned_phones.txt").write_text("0_ann_3 1 2 99\n")
    with pytest.raises(DataError, match="outside 0..5"):
        load_fsdd(DataDir(fsdd_dir))


def test_windows_start_on_frames_and_carry_their_labels(fsdd_dir):
    corpus = load_fsdd(DataDir(fsdd_dir))
    batches = WindowBatches(corpus.train, 1600, 6, seed=3)
    batch = batches(4)
    assert batch["wave"].shape == (6, 1600) and batch["phones"].shape == (6, 10)
    for wave, speaker, phones in zip(batch["wave"], batch["speaker"], batch["phones"]):
        matches = [u for u in corpus.train if u.speaker == speaker and u.num_samples >= 1600]
        found = False
        for u in matches:
            for start in range(0, u.num_samples - 1600 + 1, 160):
                if torch.equal(u.audio[start:start + 1600], wave):
                    expected = torch.full((10,), -1) if u.phones is None else u.phones[start // 160:start // 160 + 10]
                    expected = torch.cat([expected, torch.full((10 - len(expected),), -1)])
                    found = found or torch.equal(phones, expected)
        assert found, "a window that is not a frame-aligned crop with its labels"
    assert all(torch.equal(a, b) for a, b in zip(batches(4).values(), batch.values()))  # a function of the step
    assert not torch.equal(batches(5)["wave"], batch["wave"])
    with pytest.raises(ValueError, match="multiple of 160"):
        WindowBatches(corpus.train, 1000, 2, 0)
    with pytest.raises(ValueError, match="shorter --window"):
        WindowBatches(corpus.train, 160 * 100, 2, 0)


@pytest.fixture
def librispeech_dir(tmp_path):
    """Speakers 19 and 250, 3 utterances each, FLAC in the train-clean-100 layout, CPC-style split
    files (one with the lbi- prefix) and converted_aligned_phones.txt."""
    ids = []
    for speaker, chapter in ((19, 198), (250, 142276)):
        folder = tmp_path / "LibriSpeech" / "train-clean-100" / str(speaker) / str(chapter)
        folder.mkdir(parents=True)
        for utt in range(3):
            uid = f"{speaker}-{chapter}-{utt:04d}"
            soundfile.write(folder / f"{uid}.flac", tone(3200 + 480 * utt, 16000, utt), 16000, format="FLAC")
            ids.append(uid)
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(f"{u} WORDS\n" for u in ids[-3:]))
    splits = tmp_path / "librispeech100_cpc_splits"
    splits.mkdir()
    (splits / "train_split.txt").write_text("\n".join(ids[0:2] + ids[3:5]) + "\n")
    (splits / "test_split.txt").write_text("\n".join("lbi-" + u for u in (ids[2], ids[5])) + "\n")
    labels = [f"{u} " + " ".join(str(t % 41) for t in range((3200 + 480 * int(u[-1])) // 160)) for u in ids[:5]]
    (splits / "converted_aligned_phones.txt").write_text("\n".join(labels) + "\n")
    return tmp_path


def test_librispeech_layout_split_and_labels(librispeech_dir):
    corpus = load_librispeech100(DataDir(librispeech_dir))
    assert corpus.speakers == ["19", "250"]
    assert [u.uid for u in corpus.train] == ["19-198-0000", "19-198-0001", "250-142276-0000", "250-142276-0001"]
    assert [u.uid for u in corpus.test] == ["19-198-0002", "250-142276-0002"]
    assert [u.speaker for u in corpus.test] == [0, 1]
    utt = corpus.train[1]
    assert utt.audio is None and utt.num_samples == 3680  # read from disk on demand
    assert torch.allclose(utt.read(160, 480), torch.from_numpy(tone(3680, 16000, 1)[160:480]), atol=1e-4)
    assert torch.equal(utt.phones, torch.arange(23) % 41)
    assert corpus.test[1].phones is None and corpus.num_phones == 41
    batch = WindowBatches(corpus.train, 3200, 3, seed=0)(0)
    assert batch["wave"].shape == (3, 3200)


def test_librispeech_errors_say_what_to_do(librispeech_dir, tmp_path):
    with pytest.raises(DataError, match="extract train-clean-100.tar.gz"):
        load_librispeech100(DataDir(tmp_path / "none"))
    (librispeech_dir / "LibriSpeech" / "train-clean-100" / "250" / "142276" / "250-142276-0001.flac").unlink()
    with pytest.raises(DataError, match="250-142276-0001.flac is listed in .*train_split.txt but missing"):
        load_librispeech100(DataDir(librispeech_dir))


def test_real_fsdd(data_dir):
    corpus = load_fsdd(DataDir(data_dir))
    assert (len(corpus.train), len(corpus.test), len(corpus.speakers), corpus.num_phones) == (2700, 300, 6, 20)
    labelled = [u for u in corpus.train + corpus.test if u.phones is not None]
    assert len(labelled) == 2983
    assert {u.num_samples // 160 - len(u.phones) for u in labelled} <= {0, 1}
    assert all(u.num_samples % 2 == 0 for u in corpus.test)  # twice the 8 kHz length


def test_real_cpc_split_files(data_dir):
    train = read_split(data_dir / "librispeech100_cpc_splits" / "train_split.txt")
    test = read_split(data_dir / "librispeech100_cpc_splits" / "test_split.txt")
    assert (len(train), len(test)) == (22830, 5708) and not set(train) & set(test)
    assert len({u.split("-")[0] for u in train}) == len({u.split("-")[0] for u in test}) == 251
    assert read_split(data_dir / "librispeech100_cpc_splits" / "train_clean_100_test_subset.txt") == test
