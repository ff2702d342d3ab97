"""Model families (``model.kind``): the mentor/mentee builders, :func:`probe` and the layer
map between mentor and mentee. See :mod:`fedkd_mpi.models.base` for the interface."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from fedkd_mpi.models.base import (
    EncoderOutput,
    ModelFamily,
    ModelOutputError,
    ModelShape,
    family_of,
    layer_map,
    logits_of,
    probe,
)
from fedkd_mpi.models.transformer import TinyEncoder, build_model

if TYPE_CHECKING:
    from fedkd_mpi.config import Config

__all__ = ["EncoderOutput", "ModelFamily", "ModelOutputError", "ModelShape", "TinyEncoder",
           "build_for", "build_model", "family_of", "layer_map", "logits_of", "probe"]


def build_for(cfg: Config, role: str, num_classes: int, seed: int,
              freeze_embeddings: bool) -> nn.Module:
    """The ``role`` ("mentor"/"mentee") model of the family ``cfg.model.kind``."""
    return family_of(cfg).build(role, num_classes, seed, freeze_embeddings)
