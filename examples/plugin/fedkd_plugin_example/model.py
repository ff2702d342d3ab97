"""The ``example_mlp`` model family: a multilayer perceptron for feature-vector inputs (not
a transformer, no attention). Not ``mlp``: a registered (built-in) name is found before any
entry point, so an entry point named like a built-in would never be reached.

Layout of a model of spec ``model.<role>`` (``layers``, ``hidden``, ``dropout``; ``heads`` and
``ffn`` are ignored)::

    embeddings: Linear(d, hidden) + ReLU        the input layer; frozen by freeze_embeddings
    layers:     ``layers`` x [Linear(hidden, hidden) + ReLU + Dropout]
    classifier: Linear(hidden, num_classes)

``forward(x)`` (float32 ``[B, d]``) returns an :class:`~fedkd_mpi.models.EncoderOutput` with
one hidden state per hidden layer, shaped ``(B, 1, hidden)`` (a sequence of length one, so
FedKD's hidden-state loss applies unchanged), and no attention maps. The input width ``d`` is
read from the configured dataset (``data.name``), which must give ``features``.
"""

from __future__ import annotations

import torch
from torch import nn

from fedkd_mpi.config import ConfigError
from fedkd_mpi.data import DataError, dataset_of
from fedkd_mpi.models import EncoderOutput, ModelFamily


class MLP(nn.Module):
    """Input layer ("embeddings"), ``layers`` hidden layers of width ``hidden``, classifier."""

    def __init__(self, in_features: int, layers: int, hidden: int, num_classes: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.embeddings = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout))
            for _ in range(layers)
        )
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        h = self.embeddings(x.float())
        hidden = []
        for layer in self.layers:
            h = layer(h)
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
    """``model.kind: example_mlp``: mentor and mentee MLPs shaped by ``model.mentor`` /
    ``model.mentee`` (layers, hidden, dropout)."""

    name = "example_mlp"
    input_kinds = ("features",)

    def in_features(self) -> int:
        """The feature width of the configured dataset (ConfigError when it has none)."""
        try:
            corpus = dataset_of(self.cfg.data).load()
        except DataError as exc:
            raise ConfigError(str(exc)) from None
        if corpus.features is None or corpus.features.ndim != 2:
            raise ConfigError(f"config error: 'model.kind': example_mlp takes feature "
                              f"vectors; data.name '{self.cfg.data.name}' gives "
                              f"{corpus.input_kind}")
        return int(corpus.features.shape[1])

    def build(self, role: str, num_classes: int, seed: int, freeze_embeddings: bool) -> nn.Module:
        spec = self.spec(role)
        return build_mlp(self.in_features(), spec.layers, spec.hidden, num_classes,
                         spec.dropout, seed, freeze_embeddings)
