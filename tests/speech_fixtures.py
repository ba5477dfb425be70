"""Tiny speech corpora written by the tests, in the layouts of the real ones."""
import numpy as np
import soundfile

PHONES = ["AH", "IY", "OW", "R", "SIL", "Z"]


def tone(samples: int, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(np.arange(samples) * 2 * np.pi * 440 / rate) + 0.01 * rng.standard_normal(samples)).astype(np.float32)


def write_tiny_fsdd(tmp_path):
    """FSDD in its layout: 2 speakers x 2 digits x indices 3..6 (3, 4 test; 5, 6 train); one file without labels."""
    folder = tmp_path / "fsdd" / "recordings"
    folder.mkdir(parents=True)
    lines = []
    for s, speaker in enumerate(["ann", "bob"]):
        for digit in (0, 7):
            for index in (3, 4, 5, 6):
                uid = f"{digit}_{speaker}_{index}"
                samples = 800 + 80 * index + 40 * s  # 8 kHz
                soundfile.write(folder / f"{uid}.wav", tone(samples, 8000, index), 8000, subtype="PCM_16")
                if uid != "7_bob_6":
                    frames = 2 * samples // 160 - index % 2  # the aligner gives n or n - 1 frames
                    lines.append(" ".join([uid] + [str((t // 3) % len(PHONES)) for t in range(frames)]))
    (tmp_path / "fsdd" / "fsdd_converted_aligned_phones.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "fsdd" / "fsdd_phone_index.txt").write_text("".join(f"{i} {p}\n" for i, p in enumerate(PHONES)))
    return tmp_path
