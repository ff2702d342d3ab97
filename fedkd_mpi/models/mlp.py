"""The ``mlp`` model family: multilayer perceptrons for feature-vector inputs (``features``,
e.g. ``data.name: table`` with ``data.feature_columns``).

A model of spec ``model.<role>`` (``layers``, ``hidden``, ``dropout``; ``heads`` and ``ffn``
are unused)::

    embeddings: LayerNorm(d) + Linear(d, hidden)   the input layer; frozen by freeze_embeddings
    layers:     ``layers`` x [Linear(hidden, hidden) + GELU + Dropout]
    classifier: Linear(hidden, num_classes)

The mentor is the deeper/wider model of ``model.mentor``, the mentee the shallower one of
``model.mentee``. ``forward(x)`` (float ``[B, d]``) returns an :class:`EncoderOutput` whose
hidden states are the output of each hidden layer as ``(B, 1, hidden)`` (a sequence of
length one: FedKD's hidden loss applies unchanged) and no attention maps. The input width
``d`` is read from the configured dataset (``data.name``), which must give features.
"""

from __future__ import annotations

import torch
from torch import nn

from fedkd_mpi.config import ConfigError
from fedkd_mpi.models.base import EncoderOutput, ModelFamily

__all__ = ["MLP", "MLPFamily", "build_mlp"]


class MLP(nn.Module):
    """Input layer (``embeddings``), ``layers`` hidden layers of width ``hidden``, classifier."""

    def __init__(self, in_features: int, layers: int, hidden: int, num_classes: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.embeddings = nn.Sequential(nn.LayerNorm(in_features), nn.Linear(in_features, hidden))
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        h = self.embeddings(x.float())
        hidden = []
        for layer in self.layers:
            h = self.drop(self.act(layer(h)))
            hidden.append(h.unsqueeze(1))  # (B, 1, hidden)
        return EncoderOutput(self.classifier(h), hidden_states=hidden, attentions=[])


def build_mlp(in_features: int, layers: int, hidden: int, num_classes: int, dropout: float,
              seed: int, freeze_embeddings: bool) -> MLP:
    """An :class:`MLP` initialised from ``seed`` only (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLP(in_features, layers, hidden, num_classes, dropout)
    if freeze_embeddings:
        for p in model.embeddings.parameters():
            p.requires_grad_(False)
    return model


class MLPFamily(ModelFamily):
    """``mlp``: :class:`MLP` mentor and mentee shaped by ``model.mentor`` / ``model.mentee``."""

    name = "mlp"
    input_kinds = ("features",)

    def in_features(self) -> int:
        """The feature width of the configured dataset; ConfigError when it has none."""
        from fedkd_mpi.data import DataError, dataset_of

        try:
            corpus = dataset_of(self.cfg.data).load()
        except DataError as exc:
            raise ConfigError(str(exc)) from None
        f = corpus.features
        if f is None or f.ndim != 2:
            raise ConfigError(f"config error: 'model.kind': mlp takes feature vectors; "
                              f"data.name '{self.cfg.data.name}' gives {corpus.input_kind}")
        return int(f.shape[1])

    def build(self, role: str, num_classes: int, seed: int, freeze_embeddings: bool) -> nn.Module:
        spec = self.spec(role)
        return build_mlp(self.in_features(), spec.layers, spec.hidden, num_classes,
                         spec.dropout, seed, freeze_embeddings)
