"""The experiment glue shared by the models of vectors with continuous latents (the VAE, the
linear-Gaussian model, MFCVAE): any real-site guide family, amortised or local, trained with
Trace_ELBO and scored by importance sampling."""
from dataclasses import dataclass

import pyro
import torch

from guides import auxiliary_reverse_for, build_guide, guide_family, with_auxiliary
from inference import ElboObjective, evaluate_importance
from inference.schedules import kl_warmup
from pyro_models.core import AT_LEAST_ONE, setting
from pyro_models.datasets.vector_data import as_float, binarise_fixed, evenly_spaced

from . import plots
from .batching import EpochBatches
from .protocol import Built, EvaluationPlan, Experiment

TRAIN_EVAL_BINARISATION_SEED = 4321


@dataclass
class DensitySettings:
    iwae_k: int = setting(5000, "importance samples per test point for IWAE-K", valid=AT_LEAST_ONE, evaluation=True)
    eval_points: int = setting(0, "test points to evaluate (0: all)", evaluation=True)
    train_eval_points: int = setting(0, "training points for train_elbo, one sample each (0: all)", evaluation=True)
    kl_warmup_steps: int = setting(0, "linear KL annealing from 0 to 1 over this many steps")
    eval_max_rows: int = setting(32768, "particles x points per forward pass (bounds evaluation memory)", valid=AT_LEAST_ONE, evaluation=True)


class DensityExperiment(Experiment):
    settings_cls = DensitySettings
    guides = ("ffg", "planar", "realnvp", "auxflow")
    default_guide = "ffg"
    guide_note = "its latent sites are real vectors, which the real-site families serve: ffg, planar, realnvp, auxflow"
    supports_local_guide = True
    supports_gap_report = True
    quick_evaluation = {"iwae_k": 100, "eval_points": 1000, "train_eval_points": 10000}
    model_cls = None

    def build(self, config, settings, data, guide, local):
        config.data_dim = data.data_dim
        model = self.model_cls(config)
        family = guide_family(guide)
        if local:
            q = build_guide(family, model.latent_sites, num_points=data.train.shape[0])
        else:
            encoder, encoder_dim = model.make_encoder()
            q = build_guide(family, model.latent_sites, encoder=encoder, encoder_dim=encoder_dim)
        modules = {"model": model, "guide": q}
        reverse = auxiliary_reverse_for(q, *model.make_encoder())  # r(v | z, x) of an auxiliary flow
        if reverse is not None:
            modules["reverse"] = reverse
        built = Built(model=model, guide=q, objective=None, modules=modules)
        built.objective = ElboObjective(pyro.infer.Trace_ELBO(), self.model_program(built), q)
        return built

    def model_program(self, built):
        """The program the guide is scored against: the model, plus r(v | z, x) for an
        auxiliary-variable guide (its bound is E[log p(x,z) + log r(v|z,x) - log q(z,v|x)])."""
        reverse = built.modules.get("reverse")
        model = built.model
        return model.model if reverse is None else with_auxiliary(model.model, reverse, model.plate_name)

    def evaluation_points(self, data, num_points: int, split: str = "train") -> dict:
        """The first ``num_points`` points of a split as model keyword arguments (training
        images fixed-binarised once when the data set binarises dynamically)."""
        x = data.train if split == "train" else data.test
        if split == "train" and data.dynamic_binarisation:
            x = binarise_fixed(x, TRAIN_EVAL_BINARISATION_SEED)
        x = as_float(x[:num_points])
        return {"x": x, "idx": torch.arange(x.shape[0])}

    def steps_per_epoch(self, data, batch_size):
        return data.train.shape[0] // batch_size

    def batches(self, data, batch_size, seed):
        sampler = EpochBatches(data.train.shape[0], batch_size, seed)

        def batch_for_step(step):
            idx = sampler.indices(step)
            x = as_float(data.train[idx])
            if data.dynamic_binarisation:
                x = torch.bernoulli(x)
            return {"x": x, "idx": idx}

        return batch_for_step

    def schedule(self, settings, built):
        if settings.kl_warmup_steps <= 0:
            return None
        return kl_warmup([site.name for site in built.model.latent_sites], settings.kl_warmup_steps)

    def evaluate(self, built, data, settings, out_dir, progress):
        model, guide, program = built.model, built.guide, self.model_program(built)
        train_x = data.train
        if data.dynamic_binarisation:
            train_x = binarise_fixed(train_x, TRAIN_EVAL_BINARISATION_SEED)
        common = dict(max_plate_nesting=model.max_plate_nesting, max_rows=settings.eval_max_rows, progress=progress)
        summary = {}
        if guide.amortised:
            n_train = settings.train_eval_points or train_x.shape[0]
            train = evaluate_importance(program, guide, {"x": train_x[:n_train]}, 1, desc="train ELBO", **common)
            summary.update({"train_elbo": train.elbo.double().mean().item(), "num_train_points": n_train})
            label = "test"
            points = {"x": data.test[evenly_spaced(settings.eval_points, data.test.shape[0])]}
            n = points["x"].shape[0]
        else:  # a local guide has parameters for training points only: score those
            label, n = "train", settings.eval_points or train_x.shape[0]
            points = {"x": train_x[:n], "idx": torch.arange(n)}
        result = evaluate_importance(
            program, guide, points, settings.iwae_k, desc=f"IWAE-{settings.iwae_k}", **common
        )
        summary.update(result.summary(label))
        summary.update({"iwae_k": settings.iwae_k, f"num_{label}_points": n})
        summary.update(self.exact_metrics(model, points["x"], label))
        return summary

    def evaluation_plan(self, built, data, settings, batch_size):
        num_train, num_test = data.train.shape[0], data.test.shape[0]
        k = settings.iwae_k
        if not built.guide.amortised:
            n = min(settings.eval_points or num_train, num_train)
            return EvaluationPlan(f"IWAE-{k} on {n} training points", k * n)
        n_train = min(settings.train_eval_points or num_train, num_train)
        n_test = min(settings.eval_points or num_test, num_test)
        return EvaluationPlan(f"the ELBO on {n_train} training points and IWAE-{k} on {n_test} test points",
                              n_train + k * n_test)

    def exact_metrics(self, model, x, label) -> dict:
        return {}

    def plot(self, built, data, out_dir):
        files = [plots.training_curve(out_dir / "metrics.csv", out_dir / "training_curve.png", ylabel="-ELBO per data point")]
        if data.image_shape is None:
            return files
        model, guide = built.model, built.guide
        with torch.no_grad():
            x = data.test[:10] if guide.amortised else binarise_fixed(data.train[:10], TRAIN_EVAL_BINARISATION_SEED)
            z = guide(x=x, idx=torch.arange(10))["z"]
            recon = torch.sigmoid(model.decoder(z))
            prior_z = torch.randn(20, model.config.latent_dim, generator=torch.Generator().manual_seed(0))
            samples = torch.sigmoid(model.decoder(prior_z))
        files.append(plots.image_grid([x, recon], data.image_shape, out_dir / "reconstructions.png",
                                      ["input", "reconstruction (pixel probabilities)"]))
        files.append(plots.image_grid([samples[:10], samples[10:]], data.image_shape, out_dir / "samples.png",
                                      title="decoder means for z ~ p(z)"))
        return files
