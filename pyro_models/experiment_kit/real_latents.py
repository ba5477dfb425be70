"""The experiment of every model whose latents are real vectors (the VAE, the linear-Gaussian
model, MFCVAE): any real-site guide family, amortised or local, trained with
Trace_ELBO and scored by importance sampling. The VAE and the linear-Gaussian model also train
with the IWAE-K bound (``--objective iwae --particles K [--gradient dreg]``) and with
semi-amortised guides (``--refine K [--refine-lr X] [--refine-mode eval|detach|full]``:
``inference.RefinedGuide``)."""
import dataclasses
from dataclasses import dataclass

import pyro
import torch

from guides import auxiliary_reverse_for, build_guide, guide_family, with_auxiliary
from inference import ElboObjective, IwaeObjective, RefinedGuide, evaluate_importance
from inference.iwae_objective import GRADIENTS
from inference.refine import MODES as REFINE_MODES
from inference.throughput import seconds_per_point_pass
from inference.training.schedules import kl_warmup
from pyro_models.core import AT_LEAST_ONE, POSITIVE, device_of, setting
from pyro_models.datasets.vector_data import as_float, binarise_fixed, evenly_spaced

from . import plots
from .batching import EpochBatches
from .protocol import Built, EvaluationPlan, Experiment, RunContext

TRAIN_EVAL_BINARISATION_SEED = 4321
REFINE_LR = 0.002  # default step of --refine: stable for 5 to 100 steps on the binarised-MNIST VAE (docs/results/amortisation.md)
REFINE_POINT_CHUNK = 500  # points refined at once in evaluation (bounds memory)
PILOT_POINTS = 32  # points of the pilot that times an evaluation pass (its cost estimate)


@dataclass
class RealLatentSettings:
    iwae_k: int = setting(5000, "importance samples per test point for IWAE-K", valid=AT_LEAST_ONE, evaluation=True)
    eval_points: int = setting(0, "test points to evaluate (0: all)", evaluation=True)
    train_eval_points: int = setting(0, "training points for train_elbo, one sample each (0: all)", evaluation=True)
    kl_warmup_steps: int = setting(0, "linear KL annealing from 0 to 1 over this many steps")
    eval_max_rows: int = setting(32768, "particles x points per forward pass (bounds evaluation memory)", valid=AT_LEAST_ONE, evaluation=True)
    objective: str = setting("elbo", "training objective: elbo, or iwae (the IWAE-K bound per point, K = --particles)",
                             choices=("elbo", "iwae"))
    particles: int = setting(0, "particles K per data point of --objective iwae (needed with it; 0: not iwae)")
    gradient: str = setting("standard", "gradient of --objective iwae for the guide: standard, or dreg (doubly "
                            "reparameterised, Tucker et al. 2019; not for planar or sylvester)", choices=GRADIENTS)
    refine: int = setting(0, "semi-amortised guide: gradient steps per point on its own ELBO that refine the encoder's "
                          "parameters (0: none)")
    refine_lr: float = setting(REFINE_LR, "step size of each refinement step (with --refine)", valid=POSITIVE)
    refine_mode: str = setting("detach", "with --refine: eval (refine at evaluation only), detach (also in training; "
                               "the encoder trains on its own initial ELBO, Kim et al.'s stop-gradient), full (SA-VAE: "
                               "back-propagate through the steps)", choices=REFINE_MODES)


def check_objective_settings(settings, guide: str | None = None) -> None:
    """Refuse (ValueError, one line naming the flag) combinations of the objective and refinement
    settings that cannot train; ``guide``: the family, where known (``build`` checks with it, the
    CLI's ``validate`` without: only the latter refuses flags that would be ignored, so a run
    saved under other defaults still loads)."""
    if settings.objective == "iwae" and settings.particles < 1:
        raise ValueError("--objective iwae needs --particles K (K >= 1 particles per data point)")
    if settings.objective == "elbo" and settings.particles:
        raise ValueError(f"--particles {settings.particles} applies to --objective iwae only (the ELBO objective "
                         "draws one particle per point): add --objective iwae, or drop --particles")
    if settings.gradient == "dreg" and settings.objective != "iwae":
        raise ValueError("--gradient dreg needs --objective iwae --particles K (it is a gradient of the IWAE bound)")
    if settings.gradient == "dreg" and guide in ("planar", "sylvester"):
        raise ValueError(f"--gradient dreg does not apply to --guide {guide}: DReG scores each particle with the "
                         f"guide's parameters held fixed, and a {guide} flow has no closed-form inverse to score a "
                         "point it did not sample; use --gradient standard, or --guide ffg, realnvp or auxflow")
    if settings.gradient == "dreg" and settings.refine and settings.refine_mode == "full":
        raise ValueError("--gradient dreg with --refine-mode full: the refined q depends on the model's parameters "
                         "through the steps, so the model would not get the IWAE gradient; use --refine-mode detach "
                         "or eval, or --gradient standard")
    if not settings.refine and guide is None:
        for name, default in (("refine_lr", REFINE_LR), ("refine_mode", "detach")):
            if getattr(settings, name) != default:
                raise ValueError(f"--{name.replace('_', '-')} applies only with --refine K (K >= 1 refinement steps)")


class RealLatentExperiment(Experiment):
    settings_cls = RealLatentSettings
    guides = ("ffg", "planar", "realnvp", "auxflow", "sylvester")
    default_guide = "ffg"
    guide_note = ("its latent sites are real vectors, which the real-site families serve: ffg, planar, realnvp, auxflow, "
                  "sylvester")
    supports_local_guide = True
    shards_evaluation = True
    quick_evaluation = {"iwae_k": 100, "eval_points": 1000, "train_eval_points": 10000}
    model_cls = None

    # Whether the settings carry the training objective and refinement flags (--objective, --refine):
    # the VAE's and the linear-Gaussian model's do; MFCVAE's train with the ELBO only.
    trains_with_objectives = True

    def validate(self, ctx: RunContext):
        if self.trains_with_objectives:
            check_objective_settings(ctx.settings)
        self.check_guide_options(ctx.settings, ctx.guide, ctx.local)

    def check_guide_options(self, settings, guide, local) -> None:
        """What depends on the guide family and --local (the CLI's validate and every build)."""
        if self.trains_with_objectives:
            check_objective_settings(settings, guide)
        if local and self.training_options(settings)["refine"]:
            raise ValueError("--refine does not apply to --local: a local guide's parameters are already free "
                             "per point and trained to their optimum; refinement starts from an encoder's output")

    def training_options(self, settings) -> dict:
        """The objective and refinement settings (the ELBO and no refinement where the settings have
        none of them: ``trains_with_objectives`` False)."""
        names = ("objective", "particles", "gradient", "refine", "refine_lr", "refine_mode")
        if self.trains_with_objectives:
            return {name: getattr(settings, name) for name in names}
        return dict(zip(names, ("elbo", 0, "standard", 0, REFINE_LR, "detach")))

    def build(self, ctx: RunContext, data):
        config, settings = ctx.config, ctx.settings
        options = self.training_options(settings)
        self.check_guide_options(settings, ctx.guide, ctx.local)
        model = self.model_cls(config)
        family = guide_family(ctx.guide)
        if ctx.local:
            q = build_guide(family, model.latent_sites, num_points=data.train.shape[0])
        else:
            encoder, encoder_dim = model.make_encoder()
            q = build_guide(family, model.latent_sites, encoder=encoder, encoder_dim=encoder_dim)
        modules = {"model": model, "guide": q}
        reverse = auxiliary_reverse_for(q, *model.make_encoder())  # r(v | z, x) of an auxiliary flow
        if reverse is not None:
            modules["reverse"] = reverse
        built = Built(model=model, guide=q, objective=None, modules=modules)
        program = self.model_program(built)
        if options["refine"]:  # the checkpoint keeps the plain guide: interchangeable with an unrefined run's
            built.guide = RefinedGuide(q, program, options["refine"], options["refine_lr"], mode=options["refine_mode"],
                                       max_plate_nesting=model.max_plate_nesting)
        if options["objective"] == "iwae":
            built.objective = IwaeObjective(program, built.guide, options["particles"], gradient=options["gradient"],
                                            max_plate_nesting=model.max_plate_nesting, data_plate=model.plate_name)
        else:
            built.objective = ElboObjective(pyro.infer.Trace_ELBO(), program, built.guide)
        return built

    def plain_guide(self, built):
        """The amortised (or local) guide without refinement."""
        return built.guide.guide if isinstance(built.guide, RefinedGuide) else built.guide

    def model_program(self, built):
        """The program the guide is scored against: the model, plus r(v | z, x) for an
        auxiliary-variable guide (its bound is E[log p(x,z) + log r(v|z,x) - log q(z,v|x)])."""
        reverse = built.modules.get("reverse")
        model = built.model
        return model.model if reverse is None else with_auxiliary(model.model, reverse, model.plate_name)

    def evaluation_points(self, ctx: RunContext, data, num_points: int, split: str = "train") -> dict:
        """The first ``num_points`` points of a split as model keyword arguments (training
        images fixed-binarised once when the data set binarises dynamically)."""
        x = data.train if split == "train" else data.test
        if split == "train" and data.dynamic_binarisation:
            x = binarise_fixed(x, TRAIN_EVAL_BINARISATION_SEED)
        x = as_float(x[:num_points])
        return {"x": x, "idx": torch.arange(x.shape[0])}

    def model_config(self, ctx: RunContext, data):
        return dataclasses.replace(ctx.config, data_dim=data.data_dim)

    def steps_per_epoch(self, ctx: RunContext, data):
        return data.train.shape[0] // ctx.batch_size

    def batches(self, ctx: RunContext, data):
        sampler = EpochBatches(data.train.shape[0], ctx.batch_size, ctx.seed)

        def batch_for_step(step):
            idx = sampler.indices(step)
            x = as_float(data.train[idx])
            if data.dynamic_binarisation:
                x = torch.bernoulli(x)
            return {"x": x, "idx": idx}

        return batch_for_step

    def schedule(self, ctx: RunContext, built):
        if ctx.settings.kl_warmup_steps <= 0:
            return None
        return kl_warmup([site.name for site in built.model.latent_sites], ctx.settings.kl_warmup_steps)

    def evaluate(self, ctx: RunContext, built, data, out_dir, progress, parallel=None):
        model, guide, program, settings = built.model, built.guide, self.model_program(built), ctx.settings
        train_x = data.train
        if data.dynamic_binarisation:
            train_x = binarise_fixed(train_x, TRAIN_EVAL_BINARISATION_SEED)
        common = dict(max_plate_nesting=model.max_plate_nesting, max_rows=settings.eval_max_rows, progress=progress,
                      parallel=parallel)
        summary = {}
        if guide.amortised:
            n_train = min(settings.train_eval_points or train_x.shape[0], train_x.shape[0])  # the points scored
            train = score(program, guide, {"x": train_x[:n_train]}, 1, "train ELBO", common)
            summary.update({"train_elbo": train[0].elbo.double().mean().item(), "num_train_points": n_train})
            if train[1] is not None:
                summary["train_elbo_unrefined"] = train[1].elbo.double().mean().item()
            label = "test"
            points = {"x": data.test[evenly_spaced(settings.eval_points, data.test.shape[0])]}
            n = points["x"].shape[0]
        else:  # a local guide has parameters for training points only: score those
            label, n = "train", settings.eval_points or train_x.shape[0]
            points = {"x": train_x[:n], "idx": torch.arange(n)}
        result, unrefined = score(program, guide, points, settings.iwae_k, f"IWAE-{settings.iwae_k}", common)
        summary.update(result.summary(label))
        if unrefined is not None:  # the same K, from the encoder's own parameters
            summary.update({f"{key}_unrefined": value for key, value in unrefined.summary(label).items()})
            summary[f"{label}_elbo_refinement_gain"] = summary[f"{label}_elbo"] - summary[f"{label}_elbo_unrefined"]
            summary.update({"refine_steps": guide.steps, "refine_lr": guide.lr, "refine_mode": guide.mode})
        summary.update({"iwae_k": settings.iwae_k, f"num_{label}_points": n})
        summary.update(self.exact_metrics(model, points["x"], label))
        return summary

    def evaluation_plan(self, ctx: RunContext, built, data):
        settings = ctx.settings
        num_train, num_test = data.train.shape[0], data.test.shape[0]
        k = settings.iwae_k
        if not built.guide.amortised:
            n = min(settings.eval_points or num_train, num_train)
            return EvaluationPlan(f"IWAE-{k} on {n} training points", k * n)
        n_train = min(settings.train_eval_points or num_train, num_train)
        n_test = min(settings.eval_points or num_test, num_test)
        if isinstance(built.guide, RefinedGuide):  # each point refined once (forward + backward per step), then
            steps = built.guide.steps                # scored refined and unrefined
            return EvaluationPlan(
                f"{steps} refinement steps per point, then the ELBO on {n_train} training points and IWAE-{k} on "
                f"{n_test} test points, each refined and unrefined",
                2 * n_train + 2 * k * n_test + 3 * steps * built.guide.num_samples * (n_train + n_test))
        return EvaluationPlan(f"the ELBO on {n_train} training points and IWAE-{k} on {n_test} test points",
                              n_train + k * n_test)

    def evaluation_pass_seconds(self, ctx: RunContext, built, data) -> float:
        split = "test" if built.guide.amortised else "train"
        points = self.evaluation_points(ctx, data, PILOT_POINTS, split)
        device = device_of(built.model)
        points = {key: value.to(device) for key, value in points.items()}
        return seconds_per_point_pass(self.model_program(built), self.plain_guide(built), points,
                                      built.model.max_plate_nesting)

    def exact_metrics(self, model, x, label) -> dict:
        return {}

    def plot(self, ctx: RunContext, built, data, out_dir, summary):
        files = [plots.training_curve(out_dir / "metrics.csv", out_dir / "training_curve.png", ylabel="-ELBO per data point")]
        if data.image_shape is None:
            return files
        model, guide = built.model, built.guide  # a refined guide shows its refined reconstructions
        device = device_of(model)
        with torch.no_grad():
            x = data.test[:10] if guide.amortised else binarise_fixed(data.train[:10], TRAIN_EVAL_BINARISATION_SEED)
            x = x.to(device)
            z = guide(x=x, idx=torch.arange(10, device=device))["z"]
            recon = torch.sigmoid(model.decoder(z))
            # drawn on the CPU, so the figure shows the same z on every device
            prior_z = torch.randn(20, model.config.latent_dim, generator=torch.Generator().manual_seed(0)).to(device)
            samples = torch.sigmoid(model.decoder(prior_z))
        files.append(plots.image_grid([x, recon], data.image_shape, out_dir / "reconstructions.png",
                                      ["input", "reconstruction (pixel probabilities)"]))
        files.append(plots.image_grid([samples[:10], samples[10:]], data.image_shape, out_dir / "samples.png",
                                      title="decoder means for z ~ p(z)"))
        return files


def refinement(guide: RefinedGuide, points: dict, chunk: int = REFINE_POINT_CHUNK):
    """``guide.refine`` over the points in chunks: (initial, refined) parameters, each (N, P)."""
    device = device_of(guide)
    x = {key: value.to(device) for key, value in points.items() if key != "idx"}
    n = next(iter(x.values())).shape[0]
    parts = [guide.refine(**{key: value[start:start + chunk] for key, value in x.items()})
             for start in range(0, n, chunk)]
    return torch.cat([p.initial for p in parts]), torch.cat([p.refined for p in parts])


def score(program, guide, points: dict, num_particles: int, desc: str, common: dict):
    """(result, unrefined result or None): ``evaluate_importance`` of the guide; a refined guide is
    refined once per point and both its refined and its initial parameters are scored with the
    same K (evaluate_importance on the RefinedGuide itself would refine again for every chunk of
    particles)."""
    if not isinstance(guide, RefinedGuide):
        return evaluate_importance(program, guide, points, num_particles, desc=desc, **common), None
    initial, refined = refinement(guide, points)
    indexed = {**{key: value for key, value in points.items() if key != "idx"}, "idx": torch.arange(initial.shape[0])}
    after = evaluate_importance(program, guide.local_guide(refined), indexed, num_particles, desc=f"{desc} (refined)",
                                **common)
    before = evaluate_importance(program, guide.local_guide(initial), indexed, num_particles,
                                 desc=f"{desc} (unrefined)", **common)
    return after, before
