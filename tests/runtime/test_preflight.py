"""What ``fedkd-mpi validate`` checks beyond the schema (runtime/preflight.py): each named
implementation is tried on real data and fails with one line naming its config field."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from fedkd_mpi.aggregators import Aggregator
from fedkd_mpi.codecs.base import Codec
from fedkd_mpi.codecs.dense import DenseCodec
from fedkd_mpi.config import ConfigError, load_config
from fedkd_mpi.models import EncoderOutput, ModelFamily
from fedkd_mpi.runtime.preflight import preflight

from ..conftest import TINY


class _Bag(nn.Module):
    def __init__(self, vocab: int, width: int, classes: int, hidden: bool) -> None:
        super().__init__()
        self.embeddings = nn.EmbeddingBag(vocab, width, mode="mean", padding_idx=0)
        self.head = nn.Linear(width, classes)
        self.hidden = hidden

    def forward(self, ids: torch.Tensor) -> EncoderOutput:
        h = self.embeddings(ids)
        return EncoderOutput(self.head(h), [h.unsqueeze(1)] if self.hidden else [], [])


class NoHidden(ModelFamily):
    """A family whose models return no hidden states."""

    name = "test_no_hidden"

    def build(self, role, num_classes, seed, freeze_embeddings):
        torch.manual_seed(seed)
        return _Bag(self.cfg.data.vocab_size, self.spec(role).hidden, num_classes, False)


class BareLogits(ModelFamily):
    """A family whose forward returns a bare tensor."""

    name = "test_bare_logits"

    def build(self, role, num_classes, seed, freeze_embeddings):
        return nn.Sequential(nn.EmbeddingBag(self.cfg.data.vocab_size, 8), nn.Linear(8, 2))


class ShortCodec(DenseCodec):
    """Declares one byte less than it sends."""

    name = "test_short"

    def body_nbytes(self, meta):
        return super().body_nbytes(meta) - 1


def _line(*overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        preflight(load_config(TINY, list(overrides)))
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_the_tiny_config_and_every_codec_pass():
    """Every built-in codec and aggregator, from the registries (a new one is covered)."""
    for codec in Codec.registry.builtin_names():
        preflight(load_config(TINY, [f"fedkd.codec={codec}"]))
    for agg in Aggregator.registry.builtin_names():
        preflight(load_config(TINY, ["algorithm=fedavg", f"train.aggregation={agg}"]))


def test_a_model_without_hidden_states_and_fedkd_hidden_loss():
    kind = f"model.kind={__name__}:NoHidden"
    assert _line(kind) == ("config error: 'fedkd.hidden_loss': the mentor of model.kind "
                           f"'{__name__}:NoHidden' returns no hidden states; return them or set "
                           "fedkd.hidden_loss=false")
    preflight(load_config(TINY, [kind, "fedkd.hidden_loss=false"]))
    preflight(load_config(TINY, [kind, "algorithm=fedavg"]))  # FedAvg needs no hidden states


def test_a_forward_that_is_not_an_encoder_output():
    line = _line(f"model.kind={__name__}:BareLogits")
    assert line.startswith(f"config error: 'model.kind': the mentor of '{__name__}:BareLogits' "
                           "forward returned a Tensor without .logits; expected an "
                           "EncoderOutput"), line


def test_a_codec_that_misdeclares_its_size():
    line = _line(f"fedkd.codec={__name__}:ShortCodec")
    assert line.startswith(f"config error: 'fedkd.codec': codec '{__name__}:ShortCodec' failed "
                           "its probe: ValueError: body_nbytes(meta) declares"), line


def test_wrong_types_and_bad_imports_name_the_field():
    assert _line("train.aggregation=fedkd_mpi.codecs.dense:DenseCodec") == (
        "config error: 'train.aggregation': fedkd_mpi.codecs.dense:DenseCodec is the class "
        "fedkd_mpi.codecs.dense.DenseCodec, not a subclass of "
        "fedkd_mpi.aggregators.base.Aggregator")
    assert _line("model.kind=fedkd_mpi.models:nothing") == (
        "config error: 'model.kind': module 'fedkd_mpi.models' has no attribute 'nothing'")


def test_misspelled_plugin_sections_and_settings_are_refused():
    """``plugins.krumm`` (no such implementation) and ``plugins.fedavgm.momentun`` (no such
    setting) were accepted silently; a registered but unused section stays allowed (sweeps)."""
    tiny = str(TINY)
    with pytest.raises(ConfigError, match=r"^config error: 'plugins\.krumm': no registered "
                       r"implementation is named 'krumm' \(registered: .*fedavgm.*\)"):
        preflight(load_config(tiny, ["plugins.krumm.f=1"]))
    with pytest.raises(ConfigError, match=r"^config error: 'plugins\.fedavgm\.momentun': not a "
                       r"setting of 'fedavgm' \(its settings: momentum, server_lr, weighted\)"):
        preflight(load_config(tiny, ["train.aggregation=fedavgm",
                                     "plugins.fedavgm.momentun=0.5"]))
    preflight(load_config(tiny, ["plugins.fedavgm.momentum=0.5"]))
    with pytest.raises(ConfigError, match=r"^config error: 'plugins\.svd': 'svd' takes no "
                       r"plugins settings \(its settings are the 'svd:' section\)"):
        preflight(load_config(tiny, ["plugins.svd.t_start=0.5"]))


class NumpyMean(Aggregator):
    """A plug-in mistake seen from outside: numpy arrays instead of torch tensors."""

    name = "numpy_mean"

    def aggregate(self, updates, num_samples):
        return [np.mean([u[j].numpy() for u in updates], axis=0)
                for j in range(len(updates[0]))]


class Flat(Aggregator):
    name = "flat_mean"

    def aggregate(self, updates, num_samples):
        return [u.reshape(-1) for u in next(iter(updates))]


def test_aggregator_probe_names_the_tensor_and_the_cause():
    line = _line(f"train.aggregation={__name__}:NumpyMean")
    assert re.fullmatch(r"config error: 'train\.aggregation': aggregator 'numpy_mean' failed "
                        r"its probe: ValueError: aggregate returned a numpy array for tensor "
                        r"\S+, expected a torch tensor \(torch\.from_numpy\)", line), line
    line = _line(f"train.aggregation={__name__}:Flat")
    assert re.fullmatch(r".*aggregate returned shape \(\d+,\) for tensor \S+, expected "
                        r"\(\d+, \d+\)", line), line
