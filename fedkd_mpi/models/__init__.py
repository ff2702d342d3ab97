"""Mentor/mentee builders and the layer map between them."""

from fedkd_mpi.models.transformer import EncoderOutput, TinyEncoder, build_model, layer_map

__all__ = ["EncoderOutput", "TinyEncoder", "build_model", "layer_map"]
