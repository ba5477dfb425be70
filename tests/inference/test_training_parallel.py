"""Data parallelism on the CPU: ``torchrun --nproc_per_node 2`` (gloo) trains the same run as one
process with the same ``--shards`` (parameters and metrics.csv equal to float tolerance), for
the VAE (DistributedDataParallel), MFCVAE through its fade-in (parameters unused early on), the
LFM's REINFORCE with each kind of baseline (an explicit all-reduce; the decaying average kept in
Pyro's param store) and CPC; a resume across a 2-process run is exact; bad layouts exit 2."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from lvm_app import cli

pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
NEEDS_DATA = {"lfm", "cpc"}
TIMINGS = {"train_wall_s", "eval_wall_s", "train_audio_s_per_s"}
CASES = {
    # --eval-max-rows 4: 10 test points in chunks of 4, so the two processes evaluate 2 and 1 chunks
    "vae": ["--model", "vae", "--steps", "8", "--log-every", "4", "--iwae-k", "2", "--eval-points", "10",
            "--train-eval-points", "10", "--eval-max-rows", "4"],
    "mfcvae-fade-in": ["--model", "mfcvae", "--steps", "8", "--log-every", "4", "--phase-steps", "2",
                       "--fade-in-steps", "4", "--iwae-k", "2", "--eval-points", "20", "--gmm-init-points", "200",
                       "--batch-size", "32", "--log-eval-points", "20"],
    # --eval-max-rows 16: chunks of 8 words, which the processes share
    "lfm-decaying": ["--model", "lfm", "--guide", "bernoulli", "--baseline", "decaying", "--steps", "6",
                     "--log-every", "3", "--batch-size", "16", "--importance-samples", "2",
                     "--dev-importance-samples", "2", "--eval-points", "20", "--dev-points", "20",
                     "--train-eval-points", "20", "--embedding-dim", "16", "--hidden-dim", "16", "--eval-max-rows", "16"],
    "lfm-neural": ["--model", "lfm", "--guide", "bernoulli", "--baseline", "neural", "--steps", "6",
                   "--log-every", "3", "--batch-size", "16", "--importance-samples", "2",
                   "--dev-importance-samples", "2", "--eval-points", "20", "--dev-points", "20",
                   "--train-eval-points", "20", "--embedding-dim", "16", "--hidden-dim", "16", "--eval-max-rows", "16"],
    "cpc": ["--model", "cpc", "--steps", "6", "--log-every", "3", "--width", "16", "--context-dim", "16",
            "--batch-size", "4", "--eval-batches", "1", "--probe-utterances", "20", "--probe-iterations", "5",
            "--baselines", ""],
}


def torchrun(*args, processes: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["torchrun", "--standalone", "--nproc_per_node", str(processes),
                           str(ROOT / "run" / "svi.py"), *map(str, args), "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)


def one_process(*args) -> int:
    return cli.main([*map(str, args), "--no-progress"])


def modules(out) -> dict:
    return torch.load(out / "checkpoint.pt", weights_only=True)["modules"]


def assert_same_run(a, b) -> None:
    ma, mb = modules(a), modules(b)
    assert ma.keys() == mb.keys()
    for name in ma:
        for key, value in ma[name].items():
            if torch.is_tensor(value) and value.is_floating_point():
                assert torch.allclose(value, mb[name][key], atol=1e-6, rtol=1e-5), f"{name}.{key}"
    rows = [line.split(",")[:3] for line in (a / "metrics.csv").read_text().splitlines()]  # step, loss, grad_norm
    other = [line.split(",")[:3] for line in (b / "metrics.csv").read_text().splitlines()]
    assert len(rows) == len(other) and rows[0] == other[0]
    for r, o in zip(rows[1:], other[1:]):
        assert r[0] == o[0] and abs(float(r[1]) - float(o[1])) <= 1e-5 * abs(float(r[1])), (r, o)
    # the evaluation too: shared among the processes (VAE, MFCVAE) or the main one's, from one stream
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for key, value in sa.items():
        if isinstance(value, float) and key not in TIMINGS:
            assert value == pytest.approx(sb[key], rel=1e-5, abs=1e-6, nan_ok=True), key


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_two_processes_train_the_run_of_one(case, tmp_path):
    argv = CASES[case]
    if argv[1] in NEEDS_DATA and not os.environ.get("PYRO_MODELS_DATA"):
        pytest.skip("PYRO_MODELS_DATA is not set (CI sets it to ../shared/data)")
    assert one_process(*argv, "--shards", "2", "--out", tmp_path / "one") == 0
    result = torchrun(*argv, "--shards", "2", "--out", tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert not (tmp_path / "two" / "summary.json").read_text().count("NaN")
    curves = [sorted((tmp_path / run / "tensorboard").glob("events*")) for run in ("one", "two")]
    assert len(curves[0]) == len(curves[1])  # the main process alone writes TensorBoard's files


@pytest.mark.slow
@pytest.mark.parametrize("negatives", [[], ["--negatives", "other", "--num-negatives", "3"]], ids=["all", "sampled"])
def test_cpc_processes_draw_negatives_from_the_whole_batch(negatives, tmp_path):
    """Each process scores its windows against every process's encodings: two processes train
    the objective of one process with the whole batch. Every eligible negative: the unsharded run
    itself; sampled negatives: drawn for the whole batch from the step's stream (--shards 2), and
    each process reading its own windows ahead in a worker (--data-workers 1)."""
    if not os.environ.get("PYRO_MODELS_DATA"):
        pytest.skip("PYRO_MODELS_DATA is not set (CI sets it to ../shared/data)")
    argv = [*CASES["cpc"], *negatives]
    assert one_process(*argv, *(["--shards", "2"] if negatives else []), "--out", tmp_path / "one") == 0
    result = torchrun(*argv, *(["--data-workers", "1"] if negatives else []), "--out", tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two")


def test_shards_accumulate_within_a_process(tmp_path):
    """4 shards: one process runs all four, each of two processes runs two (DDP's no_sync)."""
    argv = CASES["vae"]
    assert one_process(*argv, "--shards", "4", "--out", tmp_path / "one") == 0
    result = torchrun(*argv, "--shards", "4", "--out", tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_a_two_process_run_resumes_exactly(tmp_path):
    argv = [a if a != "8" else "4" for a in CASES["vae"]]  # the first half: 4 of 8 steps
    assert one_process(*CASES["vae"], "--shards", "2", "--out", tmp_path / "straight") == 0
    first = torchrun(*argv, "--shards", "2", "--out", tmp_path / "resumed")
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun(*CASES["vae"], "--shards", "2", "--out", tmp_path / "resumed", "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def test_a_resume_keeps_the_shards_of_the_run_and_refuses_others(tmp_path, capsys):
    """The shards fix a run's random streams: --resume takes them from config.json when not given
    (the run goes on as it would have), and refuses another number (another run)."""
    half = [a if a != "8" else "4" for a in CASES["vae"]]
    assert one_process(*CASES["vae"], "--shards", "2", "--out", tmp_path / "straight") == 0
    assert one_process(*half, "--shards", "2", "--out", tmp_path / "resumed") == 0
    assert one_process(*CASES["vae"], "--out", tmp_path / "resumed", "--resume") == 0  # no --shards
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    config = json.loads((tmp_path / "resumed" / "config.json").read_text())
    assert config["train"]["shards"] == 2 and config["run"]["device"] == "cpu" and config["run"]["processes"] == 1
    assert one_process(*half, "--out", tmp_path / "unsharded") == 0
    capsys.readouterr()
    assert one_process(*CASES["vae"], "--shards", "2", "--out", tmp_path / "unsharded", "--resume") == 1
    assert "shards: None -> 2" in capsys.readouterr().err


def test_shards_must_divide_the_batch_and_suit_the_processes(tmp_path, capsys):
    assert one_process(*CASES["vae"], "--shards", "3", "--out", tmp_path / "a") == 2  # batch 100
    assert "cannot be cut into 3 equal shards" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # refused before data are read or the run directory is made
    result = torchrun(*CASES["vae"], "--shards", "3", "--batch-size", "90", "--out", tmp_path / "b")
    assert result.returncode != 0 and "multiple of the number of processes (2)" in result.stderr
    assert not (tmp_path / "b" / "config.json").exists()


def test_an_explicit_cpu_device_is_the_default_run(tmp_path):
    argv = CASES["vae"]
    assert one_process(*argv, "--device", "cpu", "--out", tmp_path / "cpu") == 0
    assert one_process(*argv, "--out", tmp_path / "auto") == 0
    assert_same_run(tmp_path / "cpu", tmp_path / "auto")


def test_cuda_is_refused_where_there_is_none(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert one_process(*CASES["vae"], "--device", "cuda", "--out", tmp_path / "run") == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on these CPU machines)")
def test_the_whole_cli_on_cuda_and_the_checkpoint_back_on_the_cpu(tmp_path):
    argv = CASES["vae"]
    assert one_process(*argv, "--device", "cuda", "--out", tmp_path / "gpu") == 0
    assert one_process(*[a if a != "8" else "12" for a in argv], "--device", "cpu", "--out", tmp_path / "gpu",
                       "--resume") == 0
    result = subprocess.run([sys.executable, str(ROOT / "run" / "gap.py"), "--checkpoint", str(tmp_path / "gpu"),
                             "--device", "cuda", "--num-points", "3", "--ais-steps", "4", "--ais-chains", "2",
                             "--bdmc-points", "0", "--iwae-k", "5", "--elbo-samples", "5", "--local-steps", "3",
                             "--out", str(tmp_path / "gap")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_with_a_checkpoint_that_resumes(tmp_path):
    """The stop request of any process is shared at the next step boundary: every process stops,
    the main one writes the checkpoint, and --resume finishes the run as if it never stopped."""
    import signal
    import time

    argv = ["--model", "vae", "--steps", "400", "--log-every", "20", "--iwae-k", "2", "--eval-points", "10",
            "--train-eval-points", "10", "--shards", "2", "--no-progress"]
    out = tmp_path / "stopped"
    launcher = subprocess.Popen(["torchrun", "--standalone", "--nproc_per_node", "2", str(ROOT / "run" / "svi.py"),
                                 *argv, "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (out / "metrics.csv").exists() and time.time() < deadline:
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(max(workers, key=int)), signal.SIGTERM)  # one worker only
    _, stderr = launcher.communicate(timeout=120)
    assert "continue with --resume" in stderr
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < step < 400
    assert not (out / "summary.json").exists()
    resumed = torchrun(*argv[:-1], "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert one_process(*argv[:-1], "--out", tmp_path / "straight") == 0
    assert_same_run(tmp_path / "straight", out)


def test_evaluation_ranges_cover_every_point_once_in_order():
    from inference.training.parallel import Parallel

    for items in (0, 1, 3, 10):
        for world in (1, 2, 3):
            ranges = [Parallel(shards=world, seed=0, rank=r, world_size=world).my_range(items) for r in range(world)]
            assert [i for r in ranges for i in r] == list(range(items))  # contiguous, in rank order, no padding
            assert max(map(len, ranges)) - min(map(len, ranges)) <= 1


BROADCAST = """
import torch, torch.distributed as dist
from inference.training.parallel import from_environment
parallel = from_environment(None, 0, torch.device("cpu"))
module = torch.nn.Linear(2, 2)
module.register_buffer("best", torch.full((3,), float(parallel.rank)))
with torch.no_grad():
    module.weight.fill_(parallel.rank)
parallel.broadcast_state({"m": module})
assert torch.all(module.best == 0) and torch.all(module.weight == 0), (parallel.rank, module.best, module.weight)
dist.destroy_process_group()
"""


def test_every_process_evaluates_the_state_the_main_one_holds(tmp_path):
    """Log callbacks run on the main process only (the LFM's best-so-far copy is updated there):
    before a shared evaluation, every process takes the main one's parameters and buffers."""
    script = tmp_path / "broadcast.py"
    script.write_text(BROADCAST)
    result = subprocess.run(["torchrun", "--standalone", "--nproc_per_node", "2", str(script)], capture_output=True,
                            text=True, cwd=ROOT, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
