"""The library inside a Pyro user's own program: their SVI loop, Pyro's autoguides, NUTS,
Predictive, their own model with the library's guides and estimators (issue: a library a Pyro
user can import). Each test is one of the cases that used to fail silently or oddly."""
import gc
import importlib.metadata
import json
import pickle
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import ROOT
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal
from torch import nn

import inference
import pyro_models
from guides import MeanFieldNormal, build_guide, guide_family
from inference.local_opt import LocalOptSettings, optimise_local
from pyro_models import (
    MFCVAE,
    VAE,
    CompILE,
    CompILEConfig,
    LatentFactorModel,
    LatentVariableModel,
    LFMConfig,
    LinearGaussian,
    LinearGaussianConfig,
    MFCVAEConfig,
    VAEConfig,
)

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL_MFCVAE = dict(data_dim=64, image_shape=(8, 8), encoder_backbone=(32, 32), decoder_rungs=(32, 32),
                    decoder_backbone=(32, 32))


def small_models():
    return {
        "vae": VAE(VAEConfig(data_dim=64, latent_dim=4, decoder_hidden=(16,), encoder_hidden=(16,))),
        "linear_gaussian": LinearGaussian(LinearGaussianConfig(data_dim=6, latent_dim=2)),
        "mfcvae": MFCVAE(MFCVAEConfig(**SMALL_MFCVAE)),
        "lfm": LatentFactorModel(LFMConfig(vocab_size=12, embedding_dim=8, hidden_dim=8, latent_bits=4)),
    }


def binary_images(n=20, dim=64):
    return torch.bernoulli(torch.full((n, dim), 0.3))


# 1. names ------------------------------------------------------------------------------------

def fit(vae, x, steps=20):
    encoder, dim = vae.make_encoder()
    guide = build_guide(MeanFieldNormal, vae.latent_sites, encoder=encoder, encoder_dim=dim)
    svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(steps):
        svi.step(x)


def test_two_models_in_one_program_train_their_own_parameters():
    x = binary_images()
    first, second = VAE(VAEConfig(data_dim=64)), VAE(VAEConfig(data_dim=64))
    assert first.name != second.name and VAE(VAEConfig(data_dim=64), name="mine").name == "mine"
    before = [m.decoder[0].weight.detach().clone() for m in (first, second)]
    fit(first, x)
    fit(second, x)  # the same param store: the second must not share the first's parameters
    for model, old in zip((first, second), before):
        assert (model.decoder[0].weight.detach() - old).abs().max() > 1e-3
    names = set(pyro.get_param_store().keys())
    assert any(n.startswith(f"{first.name}$$$") for n in names) and any(n.startswith(f"{second.name}$$$") for n in names)


def test_a_copy_trains_its_own_parameters_and_leaves_the_original_alone():
    x = binary_images()
    original = VAE(VAEConfig(data_dim=64))
    fit(original, x, steps=2)
    copy = deepcopy(original)
    assert copy.name != original.name
    kept = original.decoder[0].weight.detach().clone()
    before = copy.decoder[0].weight.detach().clone()
    fit(copy, x)
    assert (copy.decoder[0].weight.detach() - before).abs().max() > 1e-3  # a copy that shared the name never moved
    assert torch.equal(original.decoder[0].weight.detach(), kept)


def test_a_trained_model_pickles_and_the_loaded_one_trains():
    x = binary_images()
    vae = VAE(VAEConfig(data_dim=64))
    fit(vae, x, steps=2)  # registered with Pyro: its parameters carry Pyro's links to the store
    loaded = pickle.loads(pickle.dumps(vae))
    assert loaded.name != vae.name and torch.equal(loaded.decoder[0].weight, vae.decoder[0].weight)
    before = loaded.decoder[0].weight.detach().clone()
    fit(loaded, x)
    assert (loaded.decoder[0].weight.detach() - before).abs().max() > 1e-3


def test_a_name_a_live_module_holds_is_refused_and_free_again_once_it_is_gone():
    held = VAE(VAEConfig(data_dim=64), name="held")
    with pytest.raises(ValueError, match="already registers its parameters under the name 'held'"):
        VAE(VAEConfig(data_dim=64), name="held")
    del held
    gc.collect()
    assert VAE(VAEConfig(data_dim=64), name="held").name == "held"


def test_a_saved_param_store_or_state_dict_restores_a_model_that_then_trains(tmp_path):
    x = binary_images()
    vae = VAE(VAEConfig(data_dim=64), name="saved_vae")
    fit(vae, x)
    trained = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    pyro.get_param_store().save(tmp_path / "params.pt")
    del vae
    gc.collect()
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt")
    restored = VAE(VAEConfig(data_dim=64), name="saved_vae")
    assert not torch.equal(restored.decoder[0].weight, trained["decoder.0.weight"])  # fresh weights until
    restored.register_with_pyro()  # ... the store's values become the module's (as on its first model call)
    for key, value in restored.state_dict().items():
        assert torch.equal(value, trained[key]), key
    fit(restored, x, steps=3)  # and SVI moves them
    assert not torch.equal(restored.decoder[0].weight, trained["decoder.0.weight"])

    torch.save(trained, tmp_path / "vae.pt")  # the torch way: a state_dict into a new instance
    reloaded = VAE(VAEConfig(data_dim=64))
    reloaded.load_state_dict(torch.load(tmp_path / "vae.pt"))
    before = reloaded.decoder[0].weight.detach().clone()
    assert torch.equal(before, trained["decoder.0.weight"])
    fit(reloaded, x, steps=3)
    assert (reloaded.decoder[0].weight.detach() - before).abs().max() > 1e-4


# 2. generation -------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["vae", "linear_gaussian", "mfcvae", "lfm"])
def test_every_model_samples_from_its_prior_and_works_with_predictive(key):
    model = small_models()[key]
    model.eval()
    samples = Predictive(model.model, num_samples=3)(batch_size=5)
    assert samples["x"].shape[:2] == (3, 5) and samples["z" if key != "mfcvae" else "z0"].shape[:2] == (3, 5)
    trace = pyro.poutine.trace(model.model).get_trace(batch_size=5)
    assert not trace.nodes["x"]["is_observed"]
    trace.compute_log_prob()
    assert torch.isfinite(trace.nodes["x"]["log_prob"]).all()


def test_the_lfm_generates_words_symbol_by_symbol():
    model = small_models()["lfm"]
    model.eval()
    words = Predictive(model.model, num_samples=2)(batch_size=50, max_length=10)["x"]
    assert words.shape == (2, 50, 10) and words.dtype == torch.long and 0 <= words.min() and words.max() < 12
    after_eos = torch.cumsum((words == 3).int(), -1) - (words == 3).int() > 0  # positions after the first EOS
    assert (words[after_eos] == 0).all()  # PAD after each word
    assert len({tuple(w.tolist()) for w in words.reshape(-1, 10)}) > 10  # sampled, not one greedy word


def test_compile_samples_sequences_given_their_lengths():
    model = CompILE(CompILEConfig())
    samples = Predictive(model.model, num_samples=2)(lengths=torch.tensor([5, 7, 9]), relaxed=False)
    assert samples["tokens"].shape == (2, 3, model.config.max_length)
    with pytest.raises(ValueError, match="give lengths="):  # was an AttributeError on None
        model.model()


# 3. what Pyro users pass ---------------------------------------------------------------------

def test_guides_take_positional_data_and_plain_encoders():
    vae = VAE(VAEConfig(data_dim=64, latent_dim=4))
    encoder = nn.Sequential(nn.Linear(64, 32), nn.ELU())  # forward(input): no keywords
    guide = build_guide(MeanFieldNormal, vae.latent_sites, encoder=encoder, encoder_dim=32)
    svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    x = binary_images()
    losses = [svi.step(x) for _ in range(30)]  # positional, as Pyro's examples call it
    assert sum(losses[-5:]) < sum(losses[:5])
    assert guide(x=x)["z"].shape == (20, 4)  # and by keyword


def users_model(x):
    """A user's probabilistic PCA that takes no idx and names its plate "data"."""
    weight = pyro.param("weight", torch.ones(6, 2) * 0.5)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ weight.T, 0.5).to_event(1), obs=x)


def test_a_local_guide_and_local_optimisation_on_a_users_model_without_idx():
    sites = (pyro_models.LatentSite("z", 2),)
    x = torch.randn(30, 6)
    local = build_guide(MeanFieldNormal, sites, num_points=30)
    svi = SVI(users_model, local, pyro.optim.Adam({"lr": 5e-2}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(40)]  # the whole data set in order: no idx needed
    assert sum(losses[-5:]) < sum(losses[:5])
    with pytest.raises(ValueError, match="idx=.*a model of your own must then take idx too"):
        local(x[:10])  # a part of the data set without its rows is refused, not guessed, saying what to change
    result = optimise_local(users_model, local, {"x": x}, LocalOptSettings(init="prior", max_steps=200))
    assert result.steps > 0 and result.points_guide()(x=x)["z"].shape == (30, 2)


# 4. MFCVAE with Pyro's autoguides and NUTS -----------------------------------------------------

@pytest.mark.parametrize("autoguide", [AutoNormal, AutoDiagonalNormal])
def test_mfcvae_trains_with_pyros_autoguides(autoguide):
    model = MFCVAE(MFCVAEConfig(**SMALL_MFCVAE))
    x = binary_images(8)
    guide = autoguide(model.model)
    svi = SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(20)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_nuts_samples_one_images_mfcvae_posterior():
    model = MFCVAE(MFCVAEConfig(**SMALL_MFCVAE))
    mcmc = MCMC(NUTS(model.model), num_samples=10, warmup_steps=10, disable_progbar=True)
    mcmc.run(binary_images(1))
    assert mcmc.get_samples()["z0"].shape == (10, 1, 5)


# 5. the per-datapoint plate --------------------------------------------------------------------

def test_a_library_model_inside_a_program_with_its_own_data_plate():
    vae = VAE(VAEConfig(data_dim=64, latent_dim=4), plate_name="images")

    def program(x, weights):
        with pyro.plate("data", weights.shape[0]):
            pyro.sample("w", dist.Normal(0.0, 1.0), obs=weights)
        vae.model(x)

    trace = pyro.poutine.trace(program).get_trace(binary_images(5), torch.zeros(3))
    assert trace.nodes["z"]["cond_indep_stack"][0].name == "images"
    encoder, dim = vae.make_encoder()
    guide = build_guide(MeanFieldNormal, vae.latent_sites, encoder=encoder, encoder_dim=dim, plate_name="images")
    result = inference.evaluate_importance(vae.model, guide, {"x": binary_images(5)}, 4, data_plate="images")
    assert result.iwae.shape == (5,)


def test_subsampling_gives_autoguides_one_parameter_per_point_and_the_full_data_scale():
    model = LinearGaussian(LinearGaussianConfig(data_dim=6, latent_dim=2))
    data = torch.randn(100, 6)
    guide = AutoNormal(model.model)
    svi = SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(3):
        idx = torch.randperm(100)[:10]
        svi.step(data[idx], idx=idx, num_data=100)
    assert pyro.param("AutoNormal.locs.z").shape == (100, 2)  # per data point, not per batch position
    idx = torch.arange(10)
    full = pyro.poutine.trace(model.model).get_trace(data[idx], idx=idx, num_data=100)
    plain = pyro.poutine.trace(pyro.poutine.condition(model.model, {"z": full.nodes["z"]["value"]})).get_trace(data[idx])
    torch.testing.assert_close(full.log_prob_sum(), 10 * plain.log_prob_sum())
    with pytest.raises(ValueError, match="needs idx="):
        model.model(data[idx], num_data=100)


# 6. the public surface -------------------------------------------------------------------------

def test_the_public_surface():
    for name in ("VAE", "LinearGaussian", "MFCVAE", "LatentFactorModel", "CompILE", "CompILEGuide", "CPC",
                 "LatentVariableModel", "ReplicatedPPCA"):
        assert name in pyro_models.__all__ and hasattr(pyro_models, name)
    for name in ("ais", "AISSettings", "bdmc", "optimise_local", "LocalOptSettings", "gap_report", "GapSettings",
                 "evaluate_importance", "log_weights", "SiteMismatch"):
        assert name in inference.__all__ and hasattr(inference, name)
    for model in small_models().values():
        assert isinstance(model, LatentVariableModel), type(model)
        assert model.model.__doc__ and "plate" in model.model.__doc__
    for package in ("pyro_models", "guides", "inference", "lvm_app"):
        assert (ROOT / package / "py.typed").exists()
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("pyro-lvm-train") == "lvm_app.entry:train" and scripts.get("pyro-lvm-gap") == "lvm_app.entry:gap"


def test_python_m_trains(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "lvm_app.cli", "--model", "vae", "--steps", "2", "--out", out,
                             "--no-progress", "--iwae-k", "2", "--eval-points", "10", "--train-eval-points", "10"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads((Path(out) / "summary.json").read_text())["train_steps"] == 2


# 7. which guides apply where -------------------------------------------------------------------

def test_the_guide_families_say_which_sites_they_serve():
    lfm = small_models()["lfm"]
    with pytest.raises(ValueError, match="binary"):
        build_guide(guide_family("ffg"), lfm.latent_sites, num_points=3)


# 8. enumeration --------------------------------------------------------------------------------

def test_enumeration_the_models_cannot_serve_is_refused_saying_why():
    """config_enumerate on the LFM silently gave a Monte Carlo ELBO (its bits are one event site),
    and CompILE failed with a stack size mismatch inside the model: both now say why, and what to use."""
    from pyro.infer import TraceEnum_ELBO, config_enumerate

    from pyro_models.compile.data import SequenceSpec, generate, seeded_generator

    lfm = small_models()["lfm"]
    guide = build_guide(guide_family("bernoulli"), lfm.latent_sites, num_points=4)
    tokens = torch.tensor([[4, 5, 3], [6, 3, 0], [7, 8, 3], [5, 3, 0]])
    lengths = torch.tensor([3, 2, 3, 2])
    with pytest.raises(NotImplementedError, match="Pyro cannot enumerate.*Trace_ELBO"):
        TraceEnum_ELBO(max_plate_nesting=1).loss(config_enumerate(lfm.model), guide, tokens, lengths)
    assert Trace_ELBO().loss(lfm.model, guide, tokens, lengths) > 0  # the ELBO it does serve

    compile_model = CompILE(CompILEConfig(hidden_dim=16, latent_dim=8))
    batch = generate(SequenceSpec(), 4, seeded_generator(2, 0)).model_inputs()

    def codes_only_guide(tokens, lengths, relaxed=False):  # leaves the boundaries to enumeration
        with pyro.plate("data", len(lengths)):
            for i in range(1, compile_model.config.num_segments + 1):
                pyro.sample(f"z_{i}", dist.Normal(torch.zeros(8), 1.0).to_event(1))

    with pytest.raises(NotImplementedError, match="enumeration cannot broadcast"):
        TraceEnum_ELBO(max_plate_nesting=1).loss(config_enumerate(compile_model.model), codes_only_guide,
                                                 batch["tokens"], batch["lengths"], relaxed=False)
