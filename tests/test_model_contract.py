"""One contract, every model (as zuko tests every flow with one test): each latent-variable model
of the library is a plain Pyro program that follows ``pyro_models.LatentVariableModel``.

For each model: the trace's latent sites are exactly ``latent_sites`` (name, event size, inside
the plate ``plate_name`` at dim -1) and its observed site scores one value per point; Predictive
samples from the prior without data; two instances register their networks under their own
names; a guide of the library (from ``make_encoder``, or the model's own structured guide) serves
exactly the model's sites; one SVI step gives a finite loss and moves the parameters. CPC, the
one model that is not a latent-variable model, has a contract of its own below.
"""
import subprocess
import sys
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import ROOT
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceGraph_ELBO

from guides import GUIDE_FAMILIES, build_guide
from inference import check_sites_match
from pyro_models import (
    CPC,
    MFCVAE,
    VAE,
    CompILE,
    CompILEConfig,
    CompILEGuide,
    CPCConfig,
    LatentFactorModel,
    LatentVariableModel,
    LFMConfig,
    LinearGaussian,
    LinearGaussianConfig,
    MFCVAEConfig,
    VAEConfig,
)

pytestmark = pytest.mark.usefixtures("one_thread")
BATCH = 4
FAMILY_FOR_SUPPORT = {"real": "ffg", "binary": "bernoulli"}


@dataclass
class Case:
    """How to make a small instance of a model, data for it, and the guide that serves it."""

    make: object  # () -> model
    data: object  # () -> model keyword arguments for BATCH points
    prior: dict = field(default_factory=lambda: {"batch_size": BATCH})  # what a model needs without data
    observed: str = "x"
    own_guide: object = None  # model -> guide program, for a model whose guide the families cannot serve
    elbo: object = Trace_ELBO


def lfm_words():
    tokens = torch.tensor([[3, 4, 5, 1], [6, 1, 0, 0], [7, 8, 1, 0], [9, 3, 4, 1]])  # 1: EOS, 0: PAD
    return {"tokens": tokens, "lengths": torch.tensor([4, 2, 3, 4])}


def toy_sequences():
    from pyro_models.compile.data import SequenceSpec, generate

    batch = generate(SequenceSpec(), BATCH, torch.Generator().manual_seed(0))
    return {"tokens": batch.tokens, "lengths": batch.lengths}


def binary(dim=64):
    return {"x": torch.bernoulli(torch.full((BATCH, dim), 0.3))}


SMALL_COMPILE = dict(hidden_dim=8, latent_dim=3)
CASES = {
    "vae": Case(lambda: VAE(VAEConfig(data_dim=64, latent_dim=4, decoder_hidden=(16,), encoder_hidden=(16,))), binary),
    "linear_gaussian": Case(lambda: LinearGaussian(LinearGaussianConfig(data_dim=6, latent_dim=2)),
                            lambda: {"x": torch.randn(BATCH, 6)}),
    "mfcvae": Case(lambda: MFCVAE(MFCVAEConfig(data_dim=64, image_shape=(8, 8), encoder_backbone=(16, 16),
                                               decoder_rungs=(16, 16), decoder_backbone=(16, 16))), binary),
    "lfm": Case(lambda: LatentFactorModel(LFMConfig(vocab_size=12, embedding_dim=8, hidden_dim=8, latent_bits=4)),
                lfm_words, elbo=TraceGraph_ELBO),
    "compile (gaussian codes)": Case(lambda: CompILE(CompILEConfig(**SMALL_COMPILE)), toy_sequences,
                                     prior={"lengths": torch.tensor([5, 8, 13, 9]), "relaxed": False},
                                     observed="tokens", own_guide=lambda m: CompILEGuide(m.config).guide),
    "compile (concrete codes)": Case(lambda: CompILE(CompILEConfig(latent_dist="concrete", **SMALL_COMPILE)),
                                     toy_sequences, prior={"lengths": torch.tensor([5, 8, 13, 9]), "relaxed": False},
                                     observed="tokens", own_guide=lambda m: CompILEGuide(m.config).guide),
}


def library_guide(case: Case, model):
    """The model's own structured guide, or a family of ``guides`` per support, amortised by its encoder."""
    if case.own_guide is not None:
        return case.own_guide(model)
    supports = {site.support for site in model.latent_sites}
    assert len(supports) == 1, supports
    encoder, width = model.make_encoder()
    return build_guide(GUIDE_FAMILIES[FAMILY_FOR_SUPPORT[supports.pop()]], model.latent_sites, encoder=encoder,
                       encoder_dim=width, plate_name=model.plate_name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_trace_holds_exactly_the_declared_latent_sites(name):
    case = CASES[name]
    model = case.make()
    assert isinstance(model, LatentVariableModel)
    trace = poutine.trace(model.model).get_trace(**case.data())
    latent = {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]
              and not s["infer"].get("_do_not_trace") and n != model.plate_name}
    assert set(latent) == {site.name for site in model.latent_sites}
    for site in model.latent_sites:
        node = latent[site.name]
        assert node["value"].shape == (BATCH, site.dim), site
        assert node["fn"].event_shape == (site.dim,), site
        frames = {frame.name: frame.dim for frame in node["cond_indep_stack"]}
        assert frames.get(model.plate_name) == -1, (site, frames)
        assert site.support in ("real", "binary", "one_hot"), site
    trace.compute_log_prob()
    assert trace.nodes[case.observed]["is_observed"] and trace.nodes[case.observed]["log_prob"].shape == (BATCH,)


@pytest.mark.parametrize("name", sorted(CASES))
def test_predictive_samples_from_the_prior_without_data(name):
    case = CASES[name]
    model = case.make().eval()
    samples = Predictive(model.model, num_samples=2)(**case.prior)
    assert samples[case.observed].shape[:2] == (2, BATCH)
    for site in model.latent_sites:
        assert samples[site.name].shape == (2, BATCH, site.dim)


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_instances_register_their_networks_under_their_own_names(name):
    case = CASES[name]
    first, second = case.make(), case.make()
    assert first.name != second.name
    for model in (first, second):
        poutine.trace(model.model).get_trace(**case.data())
    store = set(pyro.get_param_store().keys())
    assert any(key.startswith(f"{first.name}$$$") for key in store)
    assert any(key.startswith(f"{second.name}$$$") for key in store)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_library_guide_serves_exactly_the_model_sites_and_one_svi_step_trains(name):
    case = CASES[name]
    model = case.make()
    guide = library_guide(case, model)
    data = case.data()
    guide_trace = poutine.trace(guide).get_trace(**data)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(**data)
    check_sites_match(model_trace, guide_trace)  # raises SiteMismatch naming a site
    svi = SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-2}), case.elbo())
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = svi.step(**data)
    assert torch.isfinite(torch.tensor(loss))
    moved = [name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert moved, "one step moved none of the model's parameters"


def test_compile_brings_its_own_guide_because_no_family_serves_one_hot_sites():
    model = CASES["compile (concrete codes)"].make()
    supports = {site.support for site in model.latent_sites}
    assert supports == {"one_hot"}
    served = {support for family in GUIDE_FAMILIES.values() for support in family.supports}
    assert not supports & served


def test_cpc_is_a_pyro_program_without_latent_sites():
    """CPC is not a latent-variable model: its program registers its networks and samples nothing."""
    model = CPC(CPCConfig(width=8, context_dim=8, prediction_steps=2))
    wave = torch.randn(2, 4000)
    trace = poutine.trace(model.model).get_trace(wave)
    assert not [n for n, s in trace.nodes.items() if s["type"] == "sample"]
    assert any(key.startswith(f"{model.name}$$$") for key in pyro.get_param_store().keys())
    z, c, predictions = model.model(wave)
    assert predictions.shape[:2] == z.shape[:2] and predictions.shape[2] == 2


def handwritten_guide(x, idx=None, latent_scales=None):
    """A guide written without the library: free loc/scale shared by all points."""
    loc = pyro.param("loc", torch.zeros(4))
    scale = pyro.param("scale", torch.ones(4), constraint=dist.constraints.positive)
    with pyro.plate("data", x.shape[0], dim=-1):
        pyro.sample("z", dist.Normal(loc, scale).expand([x.shape[0], 4]).to_event(1))


def test_a_model_trains_with_a_guide_from_another_module():
    vae = CASES["vae"].make()
    x = torch.bernoulli(torch.full((20, 64), 0.3))
    svi = SVI(vae.model, handwritten_guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x=x) for _ in range(30)]
    assert sum(losses[-5:]) < sum(losses[:5])


def test_models_import_without_torchvision_or_torchaudio():
    code = ("import sys, pyro_models, guides, inference, lvm_app.registry; "
            "assert not {'torchvision', 'torchaudio'} & set(sys.modules), 'imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
