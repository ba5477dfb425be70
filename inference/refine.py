"""Semi-amortised guides: the encoder's per-point parameters refined by a few gradient steps on
each point's own ELBO (Kim, Wiseman, Miller, Sontag & Rush 2018, "Semi-Amortized Variational
Autoencoders"; Krishnan, Liang & Hoffman 2018; Marino, Yue & Mandt 2018).

For a data point x with the amortised guide's parameters lambda_0 = guide.params(x):

    lambda_{t+1} = lambda_t + lr * clip(grad_lambda ELBO_S(x; lambda_t)),   t = 0 .. steps - 1,

plain stochastic gradient ascent, where ELBO_S is the reparameterised S-sample estimate
(``num_samples``) of the point's ELBO, unscaled (no annealing weight, no subsampling factor:
refinement is inference for the current model) and ``clip`` optionally caps each point's
gradient norm at ``max_grad_norm``. Points are independent, so the gradient of the ELBO summed
over the batch with respect to the (batch, P) parameter tensor gives every point its own step.
Only the per-point parameters move: a family's shared networks (RealNVP's couplings, the
auxiliary flow's) are held at their trained values, as in the local q*.

Refinement runs once per call and per data point, *outside* any particles plate the caller has
opened (``inference.log_weights`` and ``evaluate_importance`` call the guide inside one): its
own model and guide runs are hidden from the caller's handlers (``poutine.block``), its S
samples are drawn by repeating the batch S times, and then the caller's particles are all drawn
from the one refined q(z; lambda_T). So the refined guide is a guide like any other: Trace_ELBO,
``log_weights``, ``evaluate_importance`` and ``IwaeObjective`` score it, with every real-site
family (ffg, planar, realnvp, sylvester, and auxflow with the model ``guides.with_auxiliary`` makes).

Modes (``mode``), for the module in training mode (``.train()``); in evaluation mode
(``.eval()``) every mode refines from the encoder's detached output and returns detached
parameters:

- ``"eval"``: refine at evaluation only; in training the module is the plain guide.
- ``"detach"``: refine in training too, from the detached lambda_0 (Kim et al.'s stop-gradient
  variant): the model (and the shared networks of a flow) train on the ELBO of the refined q;
  the encoder trains on the ELBO of its own lambda_0, through a zero-valued guide factor whose
  gradient is grad_lambda ELBO_S(lambda_0) . d lambda_0 / d phi (the first refinement step's
  gradient, which holds the model's parameters fixed).
- ``"full"`` (SA-VAE): back-propagate through the steps (``create_graph=True``): the encoder
  and the model get the gradient of the refined ELBO, through lambda_T(lambda_0(phi), theta).

``refine(...)`` returns the parameters before and after (``Refinement``), and
``local_guide(params)`` turns either into a guide (one free row per point, called with
``idx = 0..N-1``) that ``evaluate_importance`` scores exactly, so L[q] before and after
refinement come from one refinement (a refined guide scored by ``evaluate_importance`` with many
particle chunks refines again for each chunk: every one a valid proposal, but at a cost).
"""
import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from torch import nn

from guides import Guide, LocalParams, batch_size_of_call
from pyro_models.core import data_plate, unique_name

from .log_weights import check_sites_match, sum_sites

MODES = ("eval", "detach", "full")
ENCODER_TERM = "refine_initial_elbo"  # the name of the encoder's factor in "detach" mode


@dataclass
class Refinement:
    """Per-point parameters of one refinement, each (batch, P), detached."""

    initial: torch.Tensor  # the amortised guide's output, lambda_0
    refined: torch.Tensor  # lambda_T after the steps
    initial_grad: torch.Tensor  # grad_lambda of the S-sample ELBO estimate at lambda_0 (the first step's)
    elbo: torch.Tensor  # (steps, batch): the S-sample ELBO estimate at each step's start


class RefinedGuide(nn.Module):
    """A semi-amortised guide: ``guide``'s parameters refined per point by ``steps`` gradient steps
    of size ``lr`` on each point's ELBO under ``model`` (see the module docstring).

    ``guide``: a ``guides.Guide`` whose families serve real sites; ``model``: the program it is
    scored against (``guides.with_auxiliary(model, reverse)`` for an auxiliary flow), held by
    reference, not as a submodule (its parameters are not the guide's); ``mode``: ``"eval"``,
    ``"detach"`` or ``"full"``; ``num_samples``: S, samples per point per step;
    ``max_grad_norm``: cap on each point's gradient norm per step (None: no cap);
    ``max_plate_nesting``: the model's.

    Called as the wrapped guide is; its parameters are the wrapped guide's (registered under the
    same name in Pyro's param store), so checkpoints of the two are interchangeable.
    """

    def __init__(self, guide: Guide, model: Callable, steps: int, lr: float, mode: str = "eval",
                 num_samples: int = 1, max_grad_norm: float | None = None, max_plate_nesting: int = 1):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown refinement mode {mode!r}; choose from: {', '.join(MODES)}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer of at least 1 (0 steps is the plain guide), got {steps!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer of at least 1, got {num_samples!r}")
        if max_grad_norm is not None and not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be positive and finite (or None), got {max_grad_norm!r}")
        if not isinstance(guide, Guide):
            raise TypeError(f"RefinedGuide wraps a guides.Guide (a family per site with a parameter vector per "
                             f"point), got {type(guide).__name__}")
        for family in guide.families:
            if family.site.support != "real":
                raise ValueError(f"RefinedGuide refines by reparameterised gradients, which {type(family).__name__} "
                                 f"(site {family.site.name!r}, {family.site.support} support) does not have: it "
                                 "applies to the real-site families (ffg, planar, realnvp, auxflow, sylvester)")
        self.guide = guide
        object.__setattr__(self, "model", model)  # a reference, not a submodule
        self.steps = steps
        self.lr = float(lr)
        self.mode = mode
        self.num_samples = num_samples
        self.max_grad_norm = max_grad_norm
        self.max_plate_nesting = max_plate_nesting
        self._checked = False

    # What estimators and the gap report read from a guide.
    @property
    def families(self):
        return self.guide.families

    @property
    def amortised(self) -> bool:
        return self.guide.amortised

    @property
    def plate_name(self) -> str:
        return self.guide.plate_name

    @property
    def name(self) -> str:
        return self.guide.name

    def params(self, *args, idx=None, batch_size=None, **data) -> torch.Tensor:
        """The wrapped guide's (unrefined) parameters, as ``Guide.params``."""
        return self.guide.params(*args, idx=idx, batch_size=batch_size, **data)

    @property
    def in_training(self) -> bool:
        """The wrapped guide's mode: ``.train()``/``.eval()`` on this module set it, and so do they
        on the wrapped guide alone (e.g. when only it is among the modules a runner checkpoints)."""
        return self.guide.training

    def refines(self) -> bool:
        """Whether a call in the module's current mode refines."""
        return not self.in_training or self.mode != "eval"

    def forward(self, *args, idx=None, latent_scales=None, num_data=None, batch_size=None, **data):
        if not self.refines():
            return self.guide(*args, idx=idx, latent_scales=latent_scales, num_data=num_data,
                              batch_size=batch_size, **data)
        self.guide.register_with_pyro()
        batch = batch_size_of_call(args, data, idx, batch_size)
        initial = self.guide.params(*args, idx=idx, batch_size=batch, **data)
        full = self.in_training and self.mode == "full"
        refined, first_grad, _ = self._refine(initial, args, data, idx, differentiable=full)
        encoder_term = None
        if self.in_training and self.mode == "detach":
            # zero-valued; its gradient is grad ELBO(lambda_0) . d lambda_0 / d phi (a guide factor
            # enters Trace_ELBO's loss with a plus sign, hence the minus)
            encoder_term = -((initial - initial.detach()) * first_grad).sum(-1)
        with data_plate(self.guide.plate_name, batch, idx, num_data):
            if encoder_term is not None:
                pyro.factor(ENCODER_TERM, encoder_term, has_rsample=True)
            return sample_sites(self.guide, refined, data, latent_scales)

    def refine(self, *args, idx=None, batch_size=None, **data) -> Refinement:
        """Refine once (as in evaluation: from the detached encoder output) and return both
        parameter tensors; no gradient reaches any module."""
        batch = batch_size_of_call(args, data, idx, batch_size)
        with torch.no_grad():
            initial = self.guide.params(*args, idx=idx, batch_size=batch, **data)
        refined, first_grad, elbo = self._refine(initial, args, data, idx, differentiable=False)
        return Refinement(initial=initial.detach(), refined=refined.detach(), initial_grad=first_grad,
                          elbo=torch.stack(elbo))

    def local_guide(self, params: torch.Tensor) -> Guide:
        """A guide with the same families and one free row per point, set to ``params`` (N, P):
        q(z; params_n) for point n, called (with the model) as ``guide(x=..., idx=arange(N))``.
        Each gets a name never used before: under a used one it would take the store's old rows."""
        prior_row = torch.cat([family.prior_params() for family in self.guide.families])
        local = Guide(list(self.guide.families), LocalParams(params.shape[0], prior_row.to(params)),
                      site_infer=self.guide.site_infer, name=unique_name(f"{self.guide.name}_refined"),
                      plate_name=self.guide.plate_name)
        local.source.set_rows(torch.arange(params.shape[0]), params.detach())
        return local

    # --- the steps ---------------------------------------------------------------------------
    def _refine(self, initial: torch.Tensor, args, data: dict, idx, differentiable: bool):
        """(lambda_T, grad at lambda_0 (detached), per-step ELBO estimates). ``differentiable``:
        lambda_T is a differentiable function of ``initial`` and the model (mode "full")."""
        history, first_grad = [], None
        differentiable = differentiable and initial.requires_grad
        with torch.enable_grad(), poutine.block():
            params = initial if differentiable else initial.detach().requires_grad_()
            for _ in range(self.steps):
                elbo = self.point_elbo(params, args, data, idx)
                (grad,) = torch.autograd.grad(elbo.sum(), params, create_graph=differentiable)
                if first_grad is None:
                    first_grad = grad.detach()
                if self.max_grad_norm is not None:
                    norm = grad.norm(dim=-1, keepdim=True)
                    grad = grad * (self.max_grad_norm / norm.clamp(min=1e-12)).clamp(max=1.0)
                params = params + self.lr * grad
                if not differentiable:
                    params = params.detach().requires_grad_()
                history.append(elbo.detach())
        return (params if differentiable else params.detach()), first_grad, history

    def point_elbo(self, params: torch.Tensor, args: tuple, data: dict, idx=None) -> torch.Tensor:
        """The S-sample reparameterised ELBO estimate of each point under q(z; params), (batch,),
        unscaled; the S samples are the batch repeated S times. Call it inside ``poutine.block()``
        when other handlers are active."""
        n, s = params.shape[0], self.num_samples
        repeat = _Repeat(n, s)
        args_s = tuple(repeat(a) for a in args)
        data_s = {k: repeat(v) for k, v in data.items()}
        params_s = params.repeat(s, 1) if s > 1 else params
        plate = self.guide.plate_name

        def proposal(*_, **__):
            with data_plate(plate, n * s):
                sample_sites(self.guide, params_s, data_s, None)

        model_kwargs = dict(data_s) if idx is None else {**data_s, "idx": repeat(idx)}
        guide_trace = poutine.trace(proposal).get_trace()
        model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(*args_s, **model_kwargs)
        if not self._checked:
            check_sites_match(model_trace, guide_trace)
            self._checked = True
        nesting = self.max_plate_nesting
        log_w = (sum_sites(model_trace, 1, nesting, latent_only=False, data_plate=plate)
                 - sum_sites(guide_trace, 1, nesting, latent_only=True, data_plate=plate))
        return log_w.reshape(s, n).mean(0)


class _Repeat:
    """Tensors whose first dimension is the batch, repeated ``s`` times along it; others as they are."""

    def __init__(self, n: int, s: int):
        self.n, self.s = n, s

    def __call__(self, value):
        if self.s == 1 or not torch.is_tensor(value) or value.dim() == 0 or value.shape[0] != self.n:
            return value
        return value.repeat(self.s, *([1] * (value.dim() - 1)))


def sample_sites(guide: Guide, params: torch.Tensor, data: dict, latent_scales) -> dict:
    """The sample statements of ``guide`` with given per-point parameters instead of ``guide.params(...)``."""
    return guide.sample_sites(params, data, latent_scales)
