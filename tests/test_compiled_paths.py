"""Compiled and eager programs give the same numbers: every model's log-weights (and CPC's loss),
compiled with ``pyro_models.compilation.compile_networks``, against the eager ones from the same
random draws. The comparison traces the same graphs as inductor (AOTAutograd, the compiled ELU)
but runs them with the ``aot_eager`` backend, which needs no C++ compile; one VAE test runs
inductor itself. A compiler that fails falls back to eager code, saying so in one line."""
import pytest
import torch
from pyro.infer import Trace_ELBO
from test_model_contract import CASES, library_guide

from inference import log_weights
from pyro_models import CPC, VAE, CompILE, CPCConfig, VAEConfig
from pyro_models.compilation import (
    CompileFailed,
    compile_networks,
    compiler_missing,
    outermost_sequentials,
    set_compiled_likelihoods,
)
from pyro_models.networks import ELU

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def eager_likelihoods_after():
    yield
    set_compiled_likelihoods(False)  # process-wide: the next test starts eager


GRAPHS = []  # every graph the counting backend was given


def counting_aot_eager(graph, example_inputs):
    """aot_eager that records what it compiles: proof that the compiled code ran."""
    GRAPHS.append(graph)
    return torch._dynamo.lookup_backend("aot_eager")(graph, example_inputs)


# The LFM's networks are LSTMs (one library kernel each already) and single Linear layers.
NOTHING_TO_COMPILE = {"lfm"}


def weights(model, guide, data, seed=0):
    """Three particles' log-weights per point; CompILE (whose guide takes no particle dimension):
    the ELBO of one draw."""
    torch.manual_seed(seed)
    with torch.no_grad():
        if isinstance(model, CompILE):
            return torch.as_tensor(Trace_ELBO().differentiable_loss(model.model, guide, **data))
        return log_weights(model.model, guide, 3, model.max_plate_nesting, **data)


def roots_of(model, guide):
    return [model, getattr(guide, "__self__", guide)]  # a structured guide is a bound method of its module


@pytest.mark.parametrize("name", sorted(CASES))
def test_compiled_log_weights_equal_the_eager_ones(name):
    case = CASES[name]
    model = case.make().eval()
    guide = library_guide(case, model)
    data = case.data()
    eager = weights(model, guide, data)
    compiled_names = compile_networks(*roots_of(model, guide), backend=counting_aot_eager)
    if name in NOTHING_TO_COMPILE:
        assert compiled_names == []
        return
    GRAPHS.clear()
    torch._dynamo.reset()  # graphs of same-shaped networks compiled by an earlier test would be reused
    compiled = weights(model, guide, data)
    assert GRAPHS, "the compiled networks did not run"
    assert torch.isfinite(eager).all()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-4)


def test_compiled_cpc_loss_equals_the_eager_one():
    model = CPC(CPCConfig(width=8, context_dim=8, prediction_steps=2)).eval()
    wave = torch.randn(2, 4000)

    def loss():
        torch.manual_seed(0)
        return model.loss(wave) if hasattr(model, "loss") else model.model(wave)[2].sum()

    eager = loss()
    assert compile_networks(model, backend="aot_eager")
    torch.testing.assert_close(loss(), eager, rtol=1e-5, atol=1e-5)


def test_the_compiled_elu_is_elu_to_float_tolerance_with_its_gradient():
    x = torch.linspace(-20, 5, 2001, requires_grad=True)
    compiled = torch.compile(ELU(), backend="aot_eager")
    y = compiled(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(y, torch.nn.functional.elu(x), rtol=0, atol=1e-7)
    torch.testing.assert_close(grad, torch.where(x > 0, 1.0, x.exp()), rtol=1e-6, atol=1e-7)


def test_compiling_keeps_parameters_and_state_dict_keys():
    vae = VAE(VAEConfig(data_dim=16, latent_dim=2, decoder_hidden=(8,)))
    keys, params = list(vae.state_dict()), list(vae.parameters())
    assert [name for name, _ in outermost_sequentials(vae)] == ["VAE.decoder"]
    compile_networks(vae, backend="aot_eager")
    compile_networks(vae, backend="aot_eager")  # idempotent
    assert list(vae.state_dict()) == keys
    assert all(a is b for a, b in zip(vae.parameters(), params))


def failing_backend(graph, example_inputs):
    raise RuntimeError("this backend compiles nothing")


def test_a_failing_compiler_falls_back_to_eager_code_in_one_line(capsys):
    case = CASES["vae"]
    model = case.make().eval()
    guide = library_guide(case, model)
    data = case.data()
    eager = weights(model, guide, data)
    compile_networks(model, guide, backend=failing_backend)
    compiled = weights(model, guide, data)
    torch.testing.assert_close(compiled, eager)
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert lines and all("failed" in line and "runs eagerly" in line for line in lines), lines
    assert len(lines) == len(set(lines)) <= 3  # once per compiled function, not once per call
    weights(model, guide, data)
    assert not capsys.readouterr().err


def test_no_cpp_compiler_is_refused_before_anything_compiles(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert "C++ compiler" in compiler_missing("cpu")
    with pytest.raises(CompileFailed, match="C\\+\\+ compiler"):
        compile_networks(VAE(VAEConfig(data_dim=16, latent_dim=2)))


@pytest.mark.slow
@pytest.mark.skipif(compiler_missing("cpu") is not None, reason="no C++ compiler for inductor here")
def test_inductor_compiled_vae_gives_the_eager_log_weights():
    case = CASES["vae"]
    model = case.make().eval()
    guide = library_guide(case, model)
    data = case.data()
    eager = weights(model, guide, data)
    compile_networks(model, guide)
    torch.testing.assert_close(weights(model, guide, data), eager, rtol=1e-5, atol=1e-4)


def test_an_error_of_the_code_itself_is_raised_as_it_is_without_a_compiler_line(capsys):
    vae = VAE(VAEConfig(data_dim=16, latent_dim=2, decoder_hidden=(8,)))
    compile_networks(vae, backend="aot_eager")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as raised:
        vae.decoder(torch.randn(3, 5))  # the decoder takes 2 inputs
    assert "Dynamo" not in type(raised.value).__name__  # torch's own error, not the compiler's wrapper
    assert "compilation" not in capsys.readouterr().err
    assert vae.decoder(torch.randn(3, 2)).shape == (3, 16)  # and the network still runs (compiled)
