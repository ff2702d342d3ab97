"""Mentor/mentee builders and the layer map between them."""

from __future__ import annotations

from torch import nn

from fedkd_mpi.models.transformer import EncoderOutput, TinyEncoder, build_model, layer_map

__all__ = ["EncoderOutput", "TinyEncoder", "build_for", "build_model", "layer_map"]


def build_for(cfg, role: str, num_classes: int, seed: int, freeze_embeddings: bool) -> nn.Module:
    """The ``role`` ("mentor"/"mentee") model of ``cfg.model.kind`` (tiny | hf | cnn)."""
    m = cfg.model
    spec = getattr(m, role)
    if m.kind == "hf":
        from fedkd_mpi.models.hf import build_hf

        return build_hf(m.pretrained, spec.layers, num_classes, seed, freeze_embeddings)
    if m.kind == "cnn":
        from fedkd_mpi.models.cnn import build_cnn

        return build_cnn(spec, num_classes, seed, freeze_embeddings)
    return build_model(spec, cfg.data.vocab_size, cfg.data.max_len, num_classes, seed,
                       freeze_embeddings)
