"""How the LFM is scored: ELBO, KL, importance-sampled NLL and per-character perplexity of a set of
words; the best dev perplexity's modules kept for early stopping; greedy decodes for samples.txt."""
import math

import torch
from torch import nn

from inference import evaluate_importance
from pyro_models.core import device_of
from pyro_models.datasets.vector_data import evenly_spaced
from pyro_models.lfm.data import WordSet
from pyro_models.lfm.model import bernoulli_kl


class BestState(nn.Module):
    """Copies (buffers) of the modules' states at the best dev perplexity so far: part of the
    runner's checkpoint, so an interrupted and resumed run keeps its best epoch."""

    def __init__(self, modules: dict):
        super().__init__()
        self.names = {}
        for name, module in modules.items():
            for key, value in module.state_dict().items():
                buffer = f"{name}__{key}".replace(".", "__")
                self.names[buffer] = (name, key)
                self.register_buffer(buffer, value.detach().clone())
        self.register_buffer("best_value", torch.tensor(math.inf))
        self.register_buffer("best_step", torch.tensor(0))

    @torch.no_grad()
    def update(self, modules: dict, value: float, step: int) -> bool:
        if not value < self.best_value.item():
            return False
        for buffer, (name, key) in self.names.items():
            getattr(self, buffer).copy_(modules[name].state_dict()[key])
        self.best_value.fill_(value)
        self.best_step.fill_(step)
        return True

    def states(self) -> dict:
        out = {}
        for buffer, (name, key) in self.names.items():
            out.setdefault(name, {})[key] = getattr(self, buffer).detach().to("cpu", copy=True)  # best.pt: any device
        return out


def spread_subset(words: WordSet, n: int) -> WordSet:
    """``n`` words spread evenly over the split (all when n is 0): the files are grouped by lemma."""
    if not n or n >= len(words):
        return words
    return words.take(evenly_spaced(n, len(words)))


def guide_logits(guide, words: WordSet, idx=None, chunk: int = 1024) -> torch.Tensor:
    """The guide's logits for ``words`` (on the CPU, where the words are), computed on the guide's device."""
    out, device = [], device_of(guide)
    with torch.no_grad():
        for start in range(0, len(words), chunk):
            rows = torch.arange(start, min(start + chunk, len(words)))
            batch = {key: value.to(device) for key, value in words.batch(rows).items()}
            out.append(guide.params(idx=None if idx is None else idx[rows].to(device), **batch).cpu())
    return torch.cat(out)


def score_words(model, guide, words: WordSet, num_samples: int, max_rows: int = 16384, idx=None,
                progress: bool = False, desc: str = "importance sampling", parallel=None) -> dict:
    """ELBO, KL, importance-sampled NLL (nats per word) and per-character perplexity of ``words``
    (``idx``: their training ids, for a local guide). ``parallel``: the processes of a
    data-parallel run share the words (``evaluate_importance``)."""
    order = torch.argsort(words.lengths, stable=True)  # similar lengths share a forward pass
    lengths = words.lengths[order]
    data = {"tokens": words.tokens[order, :int(lengths.max())], "lengths": lengths}
    if idx is not None:
        data["idx"] = idx[order]
    result = evaluate_importance(model.model, guide, data, num_samples, max_plate_nesting=1, max_rows=max_rows,
                                 point_chunk=max(1, min(512, max_rows // num_samples)), progress=progress, desc=desc,
                                 parallel=parallel)
    nll = -result.iwae.double()
    kl = bernoulli_kl(guide_logits(guide, words, idx), model.config.prior_prob).double()
    return {"elbo": result.elbo.double().mean().item(), "kl": kl.mean().item(), "nll": nll.mean().item(),
            "perplexity": math.exp(nll.sum().item() / lengths.sum().item())}


def qualitative(model, guide, data, amortised: bool, num: int = 10, seed: int = 0) -> str:
    """Greedy decodes: prior samples, posterior-mean and posterior-sample reconstructions of test
    words, and an interpolation between the posterior means of two test words."""
    # Every draw is made on the CPU with ``generator`` (the same text on any device), then moved.
    vocab, generator, device = data.vocab, torch.Generator().manual_seed(seed), device_of(model)

    def decode(z):
        return [vocab.decode(row) for row in model.greedy(z.to(device), data.max_length + 1).cpu()]

    bits = model.config.latent_bits
    lines = ["# greedy decodes of z ~ p(z)"]
    z = torch.bernoulli(torch.full((num, bits), model.config.prior_prob), generator=generator)
    lines += [f"{''.join(str(int(b)) for b in row)}  {word}" for row, word in zip(z, decode(z))]
    if not amortised:
        return "\n".join(lines) + "\n"
    words = data.test
    rows = torch.randperm(len(words), generator=generator)[:num]
    with torch.no_grad():
        batch = {key: value.to(device) for key, value in words.batch(rows).items()}
        probs = torch.sigmoid(guide.params(**batch)).cpu()
    sample = torch.bernoulli(probs, generator=generator)
    lines += ["", "# test word -> greedy decode of E_q[z] (posterior mean) | of z ~ q(z | x) (posterior sample)"]
    for i, mean_word, sample_word in zip(rows.tolist(), decode(probs), decode(sample)):
        lines.append(f"{words.words[i]:>20}  ->  {mean_word:<20} | {sample_word}")
    a, b = probs[0], probs[1]
    lines += ["", f"# interpolation between the posterior means of {words.words[rows[0]]!r} and {words.words[rows[1]]!r}"]
    steps = torch.linspace(0, 1, 7).unsqueeze(-1)
    for t, word in zip(steps.squeeze(-1).tolist(), decode((1 - steps) * a + steps * b)):
        lines.append(f"t={t:.2f}  {word}")
    return "\n".join(lines) + "\n"
