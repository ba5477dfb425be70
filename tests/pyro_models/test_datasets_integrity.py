"""Bad or corrupt data files fail with one DataError line that names the file and says what to do:
FSDD recordings and labels, the SIGMORPHON 2016 files, Fashion-MNIST. The real files are copied to
tmp_path before they are truncated or altered; the shared data are never written."""
import shutil
import subprocess

import numpy as np
import pytest
import soundfile
from helpers import run_cli, write_fake_fashion_mnist
from speech_fixtures import write_tiny_fsdd

from pyro_models.cpc.data import FSDD_LABELS, FSDD_PHONES, load_fsdd
from pyro_models.cpc.fsdd_sums import recording_sums
from pyro_models.datasets import DataDir, DataError
from pyro_models.datasets import fashion_mnist as fm
from pyro_models.datasets.files import md5_of
from pyro_models.lfm.data import SHA256, load_sigmorphon, read_forms

# test (index 0) and train (index 5) recordings of two speakers
REAL_RECORDINGS = ["0_george_0.wav", "0_george_5.wav", "1_jackson_0.wav", "1_jackson_5.wav"]


def load_error(loader, directory) -> str:
    with pytest.raises(DataError) as caught:
        loader(DataDir(directory))
    message = str(caught.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- FSDD


@pytest.fixture
def real_fsdd(tmp_path, data_dir):
    """The real recordings (a few copied, writable, the rest linked) and the real label files,
    copied into tmp_path/fsdd."""
    recordings = tmp_path / "fsdd" / "recordings"
    recordings.mkdir(parents=True)
    for source in (data_dir / "fsdd" / "recordings").glob("*.wav"):
        if source.name in REAL_RECORDINGS:
            shutil.copyfile(source, recordings / source.name)
        else:
            (recordings / source.name).symlink_to(source)
    for relative in (FSDD_LABELS, FSDD_PHONES):
        shutil.copyfile(data_dir / relative, tmp_path / relative)
    return tmp_path


def test_the_embedded_recording_sums_are_those_of_the_data_set(data_dir):
    """Reviewable: the module holds exactly ``cut -c1-16,65- fsdd/SHA256SUMS.recordings``."""
    listed = {}
    for line in (data_dir / "fsdd" / "SHA256SUMS.recordings").read_text().splitlines():
        digest, name = line.split("  ")
        listed[name] = digest[:16]
    assert dict(recording_sums()) == listed and len(listed) == 3000


def test_a_copy_of_real_recordings_loads(real_fsdd):
    corpus = load_fsdd(DataDir(real_fsdd))
    assert (len(corpus.train), len(corpus.test)) == (2700, 300)  # indices 0-4 of each speaker and digit: test
    assert sum(u.phones is not None for u in corpus.train + corpus.test) == 2983  # the aligner's files


def test_the_fsdd_is_every_listed_recording_and_only_those(real_fsdd):
    recordings = real_fsdd / "fsdd" / "recordings"
    (recordings / "9_yweweler_49.wav").unlink()  # a deleted recording
    message = load_error(load_fsdd, real_fsdd)
    assert "lacks 1 of FSDD's 3000 recordings (9_yweweler_49.wav)" in message
    shutil.copyfile(recordings / REAL_RECORDINGS[0], recordings / "9_yweweler_49.wav")
    shutil.copyfile(recordings / REAL_RECORDINGS[0], recordings / "3_stranger_0.wav")  # an unlisted one
    assert "holds 1 .wav files that are not FSDD v1.0.10's (3_stranger_0.wav)" in load_error(load_fsdd, real_fsdd)


def test_a_truncated_recording_is_refused_by_name(real_fsdd):
    path = real_fsdd / "fsdd" / "recordings" / "0_george_5.wav"
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])
    message = load_error(load_fsdd, real_fsdd)
    assert f"{path} is truncated: its WAV header announces" in message
    assert "copy it again from the Free Spoken Digit Dataset" in message


def test_a_recording_truncated_with_a_consistent_header_fails_its_checksum(real_fsdd):
    """Half the samples, header rewritten to match: a valid WAV, but not FSDD's file."""
    path = real_fsdd / "fsdd" / "recordings" / "1_jackson_0.wav"
    data, rate = soundfile.read(path, dtype="int16")
    soundfile.write(path, data[:len(data) // 2], rate, subtype="PCM_16")
    message = load_error(load_fsdd, real_fsdd)
    assert message.startswith(f"checksum mismatch for {path}: sha256 ")
    assert f"expected {recording_sums()['1_jackson_0.wav']} (its first 16 hex digits)" in message
    assert "delete it and copy it again from the Free Spoken Digit Dataset" in message


def test_an_altered_sample_fails_the_checksum(real_fsdd):
    path = real_fsdd / "fsdd" / "recordings" / "1_jackson_5.wav"
    raw = bytearray(path.read_bytes())
    raw[1000] ^= 0x01  # one bit of one sample: same size, still a valid WAV
    path.write_bytes(bytes(raw))
    assert load_error(load_fsdd, real_fsdd).startswith(f"checksum mismatch for {path}: sha256 ")


@pytest.mark.parametrize("content, expected", [
    (lambda raw: raw[:44], "has a WAV header but no samples"),
    (lambda raw: b"this is not audio\n" * 20, "is not a WAV file (it does not start with a RIFF/WAVE header)"),
    (lambda raw: b"", "is not a WAV file"),
    (lambda raw: raw[:30], "is not a complete WAV file (no 'data' chunk"),
])
def test_a_header_only_or_non_wav_recording_is_refused_by_name(real_fsdd, content, expected):
    path = real_fsdd / "fsdd" / "recordings" / "0_george_0.wav"
    path.write_bytes(content(path.read_bytes()))
    message = load_error(load_fsdd, real_fsdd)
    assert message.startswith(str(path)) and expected in message


def test_a_corrupt_label_file_is_refused_with_real_recordings(real_fsdd):
    path = real_fsdd / FSDD_LABELS
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-10]))  # an interrupted copy
    message = load_error(load_fsdd, real_fsdd)
    assert message.startswith(f"checksum mismatch for {path}: sha256 ") and "copy it again from fsdd/" in message


# Recordings that are not FSDD's (names outside its list, e.g. the tests' tiny corpora) have no
# checksum: the WAV structure is what catches their damage.


@pytest.fixture
def own_fsdd(tmp_path):
    return write_tiny_fsdd(tmp_path)


def test_own_recordings_truncated_or_empty_are_refused_by_name(own_fsdd):
    path = own_fsdd / "fsdd" / "recordings" / "7_ann_5.wav"
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) - 100])
    message = load_error(load_fsdd, own_fsdd)
    assert message.startswith(f"{path} is truncated: its WAV header announces {len(raw) - 44} bytes of samples, "
                              f"the file holds {len(raw) - 144}")
    assert "replace it with a complete WAV recording or remove it from recordings/" in message

    soundfile.write(path, np.zeros(0, dtype=np.float32), 8000, subtype="PCM_16")  # a valid header, 0 frames
    assert path.stat().st_size == 44
    assert load_error(load_fsdd, own_fsdd).startswith(f"{path} has a WAV header but no samples")

    path.write_text("not a wav")
    assert load_error(load_fsdd, own_fsdd).startswith(f"{path} is not a WAV file")


def test_a_wav_that_libsndfile_cannot_decode_is_a_data_error(own_fsdd):
    path = own_fsdd / "fsdd" / "recordings" / "0_bob_6.wav"
    raw = bytearray(path.read_bytes())
    raw[20:22] = b"\x99\x99"  # the 'fmt ' chunk's format code
    path.write_bytes(bytes(raw))
    message = load_error(load_fsdd, own_fsdd)
    assert message.startswith(f"cannot read {path} as a WAV file (") and "fmt " in message


def test_label_files_that_are_not_utf8_or_malformed_are_named_with_the_line(own_fsdd):
    labels = own_fsdd / FSDD_LABELS
    labels.write_bytes(labels.read_bytes().replace(b"0_bob_5", b"0_b\xffb_5"))
    message = load_error(load_fsdd, own_fsdd)
    assert message.startswith(f"{labels}, line ") and "not UTF-8 text (byte 0xff, byte 4 of the line)" in message
    phones = own_fsdd / FSDD_PHONES
    phones.write_text("0 AH\n1\n")
    assert load_error(load_fsdd, own_fsdd).startswith(f"{phones}, line 2: expected 'index phone'")


def test_a_truncated_recording_stops_training_before_it_starts(tmp_path):
    data = write_tiny_fsdd(tmp_path / "data")
    path = data / "fsdd" / "recordings" / "0_ann_5.wav"
    path.write_bytes(path.read_bytes()[:200])
    result = run_cli("--model", "cpc", "--data-dir", data, "--steps", "1", "--out", tmp_path / "run", "--no-progress")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{path} is truncated" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "summary.json").exists()


# ---------------------------------------------------------------- SIGMORPHON 2016


@pytest.fixture
def real_sigmorphon(tmp_path, data_dir):
    (tmp_path / "sigmorphon2016").mkdir()
    for split in SHA256:
        name = f"sigmorphon2016/spanish-task1-{split}"
        shutil.copyfile(data_dir / name, tmp_path / name)
    return tmp_path


def test_sigmorphon_copies_load_and_a_changed_or_truncated_file_fails_its_checksum(real_sigmorphon):
    assert len(load_sigmorphon(DataDir(real_sigmorphon)).dev) > 1500
    path = real_sigmorphon / "sigmorphon2016" / "spanish-task1-dev"
    raw = path.read_bytes()
    path.write_bytes(bytes([raw[0] ^ 0x01]) + raw[1:])  # one letter of the first lemma: still well-formed
    message = load_error(load_sigmorphon, real_sigmorphon)
    assert message.startswith(f"checksum mismatch for {path}: sha256 ")
    assert "copy it again from https://github.com/ryancotterell/sigmorphon2016 (folder data/)" in message
    path.write_bytes(raw[:raw.rindex(b"\n", 0, len(raw) - 1) + 1])  # the last line lost, every line well-formed
    assert load_error(load_sigmorphon, real_sigmorphon).startswith(f"checksum mismatch for {path}")


def test_sigmorphon_malformed_line_in_a_real_copy_is_named(real_sigmorphon):
    path = real_sigmorphon / "sigmorphon2016" / "spanish-task1-test"
    lines = path.read_bytes().split(b"\n")
    lines[6] = lines[6].replace(b"\t", b" ", 1)
    path.write_bytes(b"\n".join(lines))
    message = load_error(load_sigmorphon, real_sigmorphon)
    assert message.startswith(f"{path}, line 7: expected lemma<TAB>features<TAB>form, got 2 fields")


@pytest.mark.parametrize("line, got", [
    (b"comer\tpos=V", "got 2 fields in 'comer\\tpos=V'"),
    (b"comer\tpos=V\tcomo\textra", "got 4 fields"),
    (b"comer\t\tcomo", "got an empty field in 'comer\\t\\tcomo'"),
    (b"comer\tpos=V\t", "got an empty field"),
    (b"", "got an empty line"),
])
def test_sigmorphon_lines_need_three_non_empty_fields(tmp_path, line, got):
    path = tmp_path / "spanish-task1-train"
    path.write_bytes(b"ababol\tpos=N,num=PL\tababoles\n" + line + b"\nzuzar\tpos=V\tzuzara\n")
    with pytest.raises(DataError) as caught:
        read_forms(path)
    assert str(caught.value).startswith(f"{path}, line 2: expected lemma<TAB>features<TAB>form, {got}")
    assert "delete it and copy it again from https://github.com/ryancotterell/sigmorphon2016" in str(caught.value)


def test_sigmorphon_non_utf8_bytes_are_named_with_the_line(tmp_path):
    path = tmp_path / "spanish-task1-dev"
    path.write_bytes("ababol\tpos=N\tababoles\nábaco\tpos=N\tábaco\n".encode() + "niño\tpos=N\tniño\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"spanish-task1-dev, line 3: not UTF-8 text \(byte 0xf1, byte 3 of the line\)"):
        read_forms(path)


def test_missing_sigmorphon_says_where_the_files_come_from(tmp_path):
    message = load_error(load_sigmorphon, tmp_path)
    assert message.startswith("missing data file sigmorphon2016/spanish-task1-train in data directory")
    assert "SIGMORPHON 2016 shared task repository, https://github.com/ryancotterell/sigmorphon2016, folder data/" in message
    assert f"into {tmp_path / 'sigmorphon2016'}/" in message
    assert "download" not in message  # the loader cannot download them


# ---------------------------------------------------------------- Fashion-MNIST


@pytest.fixture
def fake_fashion(tmp_path):
    write_fake_fashion_mnist(tmp_path)
    return tmp_path


def test_fashion_mnist_md5_are_the_published_ones():
    datasets = pytest.importorskip("torchvision.datasets")
    assert fm.MD5 == dict(datasets.FashionMNIST.resources)


def test_fake_fashion_mnist_files_fail_the_published_md5(fake_fashion):
    message = load_error(fm.load_fashion_mnist, fake_fashion)
    path = fake_fashion / "fashion_mnist" / "train-images-idx3-ubyte.gz"
    assert message.startswith(f"checksum mismatch for {path}: md5 ")
    assert "expected 8d4fb7e6c68d591d4c3dfef9ec88bf0d; the file is truncated or corrupt: delete it" in message


def test_one_altered_fashion_mnist_file_is_named(fake_fashion, monkeypatch):
    folder = fake_fashion / "fashion_mnist"
    monkeypatch.setattr(fm, "MD5", {name: md5_of(folder / name) for name in fm.FILES})
    assert fm.load_fashion_mnist(DataDir(fake_fashion)).test.shape == (4, 784)
    broken = folder / "t10k-labels-idx1-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:-3])
    assert load_error(fm.load_fashion_mnist, fake_fashion).startswith(f"checksum mismatch for {broken}: md5 ")


def test_shared_data_is_untouched(data_dir):
    """The copies above are the only files written: the real ones still pass ``sha256sum -c``."""
    if shutil.which("sha256sum") is None:
        pytest.skip("no sha256sum")
    result = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=data_dir, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
