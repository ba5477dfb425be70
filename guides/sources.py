"""Where a guide's per-datapoint parameters come from: an encoder, or a free table."""
import functools
import inspect
from collections.abc import Sequence

import torch
from torch import nn


class AmortisedParams(nn.Module):
    """params = head(encoder(data)): one network shared by all data points."""

    amortised = True

    def __init__(self, encoder: nn.Module, encoder_dim: int, param_dims: Sequence[int]):
        super().__init__()
        self.encoder = encoder
        feature_dims = getattr(encoder, "feature_dims", None)
        if feature_dims is not None and len(feature_dims) == len(param_dims):
            self.head = BlockHead(feature_dims, param_dims)
        else:
            self.head = nn.Linear(encoder_dim, sum(param_dims))

    def forward(self, args: tuple, data: dict, idx: torch.Tensor | None, batch: int | None = None) -> torch.Tensor:
        return self.head(call_encoder(self.encoder, args, data))


def call_encoder(encoder: nn.Module, args: tuple, data: dict) -> torch.Tensor:
    """The encoder on the data as the model got it. A keyword encoder (the library's take
    ``forward(x, **unused)``) gets every argument; a plain network such as ``nn.Sequential``
    (``forward(input)``) gets the one data tensor positionally."""
    if _takes_keywords(type(encoder), frozenset(data)):
        return encoder(*args, **data)
    if args:
        return encoder(*args)
    tensors = [value for value in data.values() if torch.is_tensor(value)]
    if len(tensors) == 1:
        return encoder(tensors[0])
    raise TypeError(f"the encoder {type(encoder).__name__} takes neither the data keywords {sorted(data)} nor one "
                    "tensor: give it a forward(**data) (e.g. wrap it in pyro_models.networks.KeywordInput)")


@functools.cache
def _takes_keywords(encoder_cls: type, keys: frozenset) -> bool:
    """Whether ``encoder_cls.forward`` accepts these keywords (cached: guides call it every step)."""
    parameters = inspect.signature(encoder_cls.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return True
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return keys <= names


class BlockHead(nn.Module):
    """One linear head per site, each reading only its own slice of the features: a ladder
    encoder (``encoder.feature_dims``, one entry per site) gives site s its own rung."""

    def __init__(self, feature_dims: Sequence[int], param_dims: Sequence[int]):
        super().__init__()
        self.feature_dims = list(feature_dims)
        self.heads = nn.ModuleList(nn.Linear(f, p) for f, p in zip(feature_dims, param_dims))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        chunks = features.split(self.feature_dims, dim=-1)
        return torch.cat([head(chunk) for head, chunk in zip(self.heads, chunks)], dim=-1)


class LocalParams(nn.Module):
    """params = table[idx]: free parameters per training data point (no amortisation)."""

    amortised = False

    def __init__(self, num_points: int, initial_row: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(initial_row.detach().expand(num_points, -1).clone())

    def forward(self, args: tuple, data: dict, idx: torch.Tensor | None, batch: int | None = None) -> torch.Tensor:
        """Rows ``idx``; without ``idx``, a batch of exactly the table's size is the whole table in order."""
        if idx is None:
            if batch != self.table.shape[0]:
                raise ValueError(f"a local guide of {self.table.shape[0]} points called on a batch of {batch}: call it "
                                 "(and the model) with idx=..., the points' rows in its table; a model of your own "
                                 "must then take idx too (def model(x, idx=None): ..., and pass it to the plate as "
                                 "pyro.plate('data', N, subsample=idx) on minibatches)")
            return self.table
        return self.table[idx]

    @torch.no_grad()
    def set_rows(self, idx: torch.Tensor, params: torch.Tensor) -> None:
        """Start the given points from other parameters (e.g. the amortised guide's output)."""
        self.table[idx] = params.to(self.table)
