"""The (model, guide) pairs of the gap atlas, each with its training budget and gap settings.

A budget is a list of ``run/svi.py`` flags; the gap settings are ``run/gap.py`` flags, applied
to a training subset and a test subset of the same size. ``TINY`` replaces both by settings that
only check the plumbing (the tests use it). Every subprocess runs with one torch thread.
"""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AtlasEntry:
    model: str
    guide: str
    dataset: str
    variant: str = ""  # a model setting that makes a different model (CompILE's codes)
    train_args: tuple[str, ...] = ()
    gap_args: tuple[str, ...] = ()
    tiny_train_args: tuple[str, ...] = ("--steps", "3")
    tiny_gap_args: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        guide = "" if self.guide == self.model else self.guide  # CompILE's guide is its own
        return "-".join(part for part in (self.model, self.variant, guide) if part)

    @property
    def bar_label(self) -> str:
        """What tells this entry apart within its model's panel of the figure."""
        return self.variant or self.guide

    @property
    def label(self) -> str:
        return f"{self.model}{f' ({self.variant})' if self.variant else ''} / {self.guide}"


# Fast evaluation at the end of training: the atlas's figures come from run/gap.py, not summary.json.
_VAE_EVAL = ("--iwae-k", "100", "--eval-points", "500", "--train-eval-points", "1000")
# Every AIS report checks itself: AIS with twice the steps and BDMC on 25 points each.
_AIS_GAP = ("--num-points", "50", "--ais-chains", "8", "--ais-leapfrog", "5", "--bdmc-points", "25",
            "--convergence-points", "25", "--iwae-k", "1000", "--elbo-samples", "500", "--local-steps", "1500")
# AIS length: on 10 test points of the VAE (ffg), 500 -> 1000 -> 2000 steps gave -107.39, -107.16,
# -107.15 (± 0.09) with the pilot-tuned, jittered AIS, so the VAE gets 1000 steps; MFCVAE keeps 500.
_VAE_AIS = ("--ais-steps", "1000")
_MFCVAE_AIS = ("--ais-steps", "500")
_AIS_TINY = ("--num-points", "4", "--ais-steps", "5", "--ais-chains", "2", "--ais-leapfrog", "2",
             "--bdmc-points", "0", "--iwae-k", "10", "--elbo-samples", "10", "--local-steps", "5")
_LFM_TRAIN = ("--epochs", "5", "--lr", "2e-3", "--clip-norm", "5", "--free-nats", "3", "--word-dropout", "0.3",
              "--eval-points", "1000", "--dev-points", "1000", "--train-eval-points", "1000", "--threads", "1")
_LFM_TINY = ("--steps", "2", "--latent-bits", "4", "--eval-points", "20", "--dev-points", "20",
             "--train-eval-points", "20", "--importance-samples", "2", "--dev-importance-samples", "2",
             "--threads", "1")
_COMPILE_GAP = ("--num-points", "100", "--elbo-samples", "1000", "--is-k", "10000", "--local-steps", "1000")
_COMPILE_TINY_GAP = ("--num-points", "4", "--elbo-samples", "10", "--is-k", "20", "--local-steps", "5")


def _vae(guide, variant="", *extra):
    """``variant``, ``extra``: a semi-amortised guide (its --refine flags), trained as the plain ones."""
    return AtlasEntry("vae", guide, "binarized_mnist", variant=variant, train_args=("--steps", "10000", *_VAE_EVAL, *extra),
                      gap_args=(*_AIS_GAP, *_VAE_AIS), tiny_gap_args=_AIS_TINY,
                      tiny_train_args=("--steps", "3", "--iwae-k", "5", "--eval-points", "20", "--train-eval-points", "20",
                                       *extra))


def _mfcvae(guide):
    return AtlasEntry("mfcvae", guide, "digits", train_args=("--iwae-k", "100", "--threads", "1"),
                      gap_args=(*_AIS_GAP, *_MFCVAE_AIS), tiny_gap_args=_AIS_TINY,
                      tiny_train_args=("--steps", "3", "--iwae-k", "5", "--eval-points", "20", "--threads", "1"))


def _compile(codes):
    return AtlasEntry("compile", "compile", "toy", variant=codes,
                      train_args=("--latent-dist", codes, "--steps", "300"), gap_args=_COMPILE_GAP,
                      tiny_train_args=("--latent-dist", codes, "--steps", "3"), tiny_gap_args=_COMPILE_TINY_GAP)


def _lfm(guide, *extra):
    return AtlasEntry("lfm", guide, "sigmorphon", train_args=(*_LFM_TRAIN, *extra),
                      gap_args=("--num-points", "25", "--local-steps", "500"),
                      tiny_train_args=(*_LFM_TINY, *extra), tiny_gap_args=("--num-points", "3", "--local-steps", "5"))


FAMILIES = ("ffg", "planar", "realnvp", "auxflow", "sylvester")
# Semi-amortised FFG (inference.RefinedGuide; docs/results/amortisation.md): refined by 100 steps at
# evaluation only (trained as the plain ffg), and SA-VAE-style training with 5 steps (stop-gradient).
REFINED = (_vae("ffg", "refine100-eval", "--refine", "100", "--refine-lr", "0.002", "--refine-mode", "eval"),
           _vae("ffg", "refine5-detach", "--refine", "5", "--refine-lr", "0.003", "--refine-mode", "detach"))
ENTRIES = (
    *(_vae(g) for g in FAMILIES),
    *REFINED,
    *(_mfcvae(g) for g in FAMILIES),
    _compile("gaussian"),
    _compile("concrete"),
    _lfm("bernoulli", "--baseline", "decaying"),
    _lfm("concrete"),
)
