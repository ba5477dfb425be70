"""Every path that runs after training, on a CUDA device simulated on the CPU (tests/fake_cuda.py):
each model's training with its on_log metrics, its evaluation, plots and samples, its gap report
(run/gap.py) and CPC's probes (run/probe.py), on tiny runs. A tensor left on the CPU that meets a
GPU one, a GPU tensor sent to numpy, or a CPU generator sampling on the GPU raises DeviceMixError.
The detector itself is checked first: each kind of bug is caught, each legal pattern passes.
(On a machine with a GPU, the last test runs the real thing.)"""
import json

import numpy as np
import pytest
import torch
from fake_cuda import DeviceMixError, FakeCuda
from speech_fixtures import write_tiny_fsdd
from torch.nn import functional as F

from lvm_app import cli, gap
from lvm_app import probe as probe_cli

GAP = ["--num-points", "3", "--ais-steps", "5", "--ais-chains", "2", "--ais-leapfrog", "2", "--bdmc-points", "2",
       "--convergence-points", "2", "--iwae-k", "4", "--elbo-samples", "4", "--is-k", "8", "--local-steps", "3",
       "--local-particles", "2", "--no-progress"]
# --compile off: on a GPU, --compile auto compiles training; the simulated one runs CPU kernels
# under a CUDA name, where compiling would only cost time (compiled paths: test_compiled_paths.py).
SMALL = ["--steps", "4", "--log-every", "2", "--no-progress", "--compile", "off"]
DENSITY = [*SMALL, "--iwae-k", "2", "--eval-points", "10", "--train-eval-points", "10"]
MFCVAE = [*SMALL, "--iwae-k", "2", "--eval-points", "20", "--phase-steps", "2", "--fade-in-steps", "2",
          "--gmm-init-points", "200", "--batch-size", "32", "--log-eval-points", "20"]
LFM = [*SMALL, "--batch-size", "16", "--importance-samples", "2", "--dev-importance-samples", "2", "--eval-points",
       "20", "--dev-points", "20", "--train-eval-points", "20", "--embedding-dim", "16", "--hidden-dim", "16",
       "--latent-bits", "4"]
CPC = [*SMALL, "--width", "8", "--context-dim", "8", "--prediction-steps", "4", "--window", "1920", "--batch-size",
       "4", "--eval-batches", "1", "--num-negatives", "2", "--probe-iterations", "5", "--supervised-steps", "2",
       "--eval", "paper"]
# name: (run/svi.py flags, whether run/gap.py applies). Together they reach every model's
# evaluation, the local and refined guides, the flows with their auxiliary model, both CompILE codes.
RUNS = {
    "vae": (["--model", "vae", *DENSITY], True),
    "vae-planar-local": (["--model", "vae", "--guide", "planar", "--local", *DENSITY], False),
    "vae-refined": (["--model", "vae", "--refine", "2", *DENSITY], True),
    "linear_gaussian-auxflow": (["--model", "linear_gaussian", "--guide", "auxflow", *DENSITY], True),
    "mfcvae": (["--model", "mfcvae", *MFCVAE], True),
    "mfcvae-full-local": (["--model", "mfcvae", "--covariance", "full", "--local", *MFCVAE], False),
    "lfm-bernoulli": (["--model", "lfm", "--guide", "bernoulli", *LFM], True),
    "lfm-concrete-local": (["--model", "lfm", "--guide", "concrete", "--local", *LFM], False),
    "compile-gaussian": (["--model", "compile", *SMALL], True),
    "compile-concrete": (["--model", "compile", "--latent-dist", "concrete", *SMALL], True),
    "cpc": (["--model", "cpc", *CPC], False),
}


def on_fake_gpu(main, argv):
    """``main(argv)`` on the simulated GPU: it must succeed with no device bug."""
    with FakeCuda() as fake:
        code = main([*map(str, argv), "--device", "cuda"])
    fake.assert_clean()
    assert code == 0


@pytest.fixture
def data_flags(request, tmp_path):
    def flags(model):
        if model == "cpc":
            folder = tmp_path / "fsdd"
            return ["--data-dir", folder if folder.exists() else write_tiny_fsdd(folder)]
        if model == "lfm":
            return ["--data-dir", request.getfixturevalue("data_dir")]  # skipped without PYRO_MODELS_DATA
        return []
    return flags


@pytest.mark.parametrize("name", sorted(RUNS))
def test_training_evaluation_plots_and_gap_report_on_a_gpu(name, data_flags, tmp_path, one_thread):
    argv, has_gap = RUNS[name]
    run = tmp_path / "run"
    on_fake_gpu(cli.main, [*argv, *data_flags(argv[1]), "--out", run])
    assert json.loads((run / "summary.json").read_text())["train_steps"] == 4
    if has_gap:
        on_fake_gpu(gap.main, ["--checkpoint", run, "--out", tmp_path / "gap", *GAP])
        # and the checkpoint written "on the GPU" evaluates on the CPU (no simulation: a real CPU run)
        assert gap.main(["--checkpoint", str(run), "--out", str(tmp_path / "gap-cpu"), *GAP, "--device", "cpu"]) == 0
    if argv[1] == "cpc":  # a CPU-trained run's probes on the GPU
        cpu_run = tmp_path / "cpu-run"
        assert cli.main([*map(str, argv), *map(str, data_flags("cpc")), "--out", str(cpu_run), "--device", "cpu"]) == 0
        on_fake_gpu(probe_cli.main, ["--run", cpu_run, "--baselines", "random,mfcc,supervised", "--no-progress"])


def test_an_injected_device_bug_fails_the_run(tmp_path, one_thread, monkeypatch):
    """The bug this issue fixed in the VAE's plots: the test images left on the CPU."""
    monkeypatch.setattr("pyro_models.experiment_kit.real_latents.device_of", lambda module: torch.device("cpu"))
    with FakeCuda() as fake, pytest.raises(DeviceMixError, match="a GPU tensor .* meets a CPU tensor"):
        cli.main(["--model", "vae", *DENSITY, "--out", str(tmp_path / "run"), "--device", "cuda"])
    assert len(fake.errors) == 1 and "pyro_models/networks.py" in fake.errors[0]


def _gpu(*shape):
    return torch.ones(*shape).cuda()


BUGS = {
    "mixed operands": lambda: _gpu(3) + torch.arange(3.0),
    "CPU labels": lambda: F.cross_entropy(_gpu(4, 3), torch.zeros(4, dtype=torch.long)),
    "stack across devices": lambda: torch.stack([_gpu(2), torch.ones(2)]),
    "factory without device": lambda: _gpu(2, 2) @ torch.eye(2),
    "CPU module, GPU input": lambda: torch.nn.Linear(2, 2)(_gpu(1, 2)),
    "GPU tensor to numpy": lambda: _gpu(2).numpy(),
    "GPU tensor to matplotlib/sklearn": lambda: np.asarray(_gpu(2)),
    "CPU generator on the GPU": lambda: torch.randn(2, generator=torch.Generator().manual_seed(0),
                                                    device=_gpu(1).device),
    "CPU tensor, GPU indices": lambda: torch.ones(3)[_gpu(2).long()],
    "index assignment across devices": lambda: torch.ones(3).__setitem__(torch.tensor([0, 1]), _gpu(2)),
    "GPU lengths to pack_padded_sequence": lambda: torch.nn.utils.rnn.pack_padded_sequence(
        _gpu(2, 3, 1), _gpu(2).long(), batch_first=True),
}


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_the_detector_catches(bug):
    with FakeCuda() as fake, pytest.raises(DeviceMixError):
        BUGS[bug]()
    assert len(fake.errors) == 1


def test_the_detector_allows_what_cuda_allows():
    with FakeCuda() as fake:
        module = torch.nn.LSTM(2, 3, batch_first=True).to(torch.device("cuda"))
        x = torch.randn(2, 4, 2, device=module.weight_ih_l0.device)
        lengths = torch.tensor([4, 2])  # on the CPU, as pack_padded_sequence wants them
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(module(packed)[0], batch_first=True)
        assert out.is_cuda and out.device.type == "cuda" and not (out * 2).cpu().is_cuda
        y = out * torch.tensor(2.0) + 1  # 0-dim CPU tensors and Python numbers are scalars
        y[torch.tensor([0])] = y[1:].detach().clone()  # CPU indices into a GPU tensor
        z = y[torch.tensor([0, 1])].detach()
        cpu = torch.zeros_like(z, device="cpu")
        cpu[:] = z  # slice assignment and copy_ copy across devices
        cpu.copy_(z)
        z.sum().item(), z.tolist(), float(z[0, 0, 0])
        np.asarray(z.cpu())
        torch.randn(2, generator=torch.Generator(device="cuda").manual_seed(0), device=z.device)
        sample = torch.distributions.Normal(z, 1.0).sample()
        assert sample.is_cuda and torch.nn.Parameter(sample).is_cuda
    fake.assert_clean()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the tests above simulate one)")
@pytest.mark.parametrize("name", ["vae", "mfcvae", "compile-gaussian", "cpc"])
def test_on_a_real_gpu(name, data_flags, tmp_path):
    argv, has_gap = RUNS[name]
    run = tmp_path / "run"
    assert cli.main([*map(str, argv), *map(str, data_flags(argv[1])), "--out", str(run), "--device", "cuda"]) == 0
    if has_gap:
        assert gap.main(["--checkpoint", str(run), "--out", str(tmp_path / "gap"), *GAP, "--device", "cuda"]) == 0
        assert gap.main(["--checkpoint", str(run), "--out", str(tmp_path / "gap-cpu"), *GAP, "--device", "cpu"]) == 0
    else:
        assert probe_cli.main(["--run", str(run), "--no-progress", "--device", "cpu"]) == 0
