"""Pretrained Hugging Face encoders (offline): the mentor is the full model, the mentee its first k
layers, both with a classification head on the pooled output.

``model.pretrained`` is either a packaged name (:data:`PACKAGED`) or a local folder holding a
Hugging Face ``config.json`` and weights (``model.safetensors`` or ``pytorch_model.bin``).
Nothing is ever downloaded: ``HF_HUB_OFFLINE=1`` is set before ``transformers`` is imported.
BERT checkpoints with ``model.safetensors`` are built by :mod:`fedkd_mpi.models.bert` (bitwise
the same model, without importing transformers); every other one by ``transformers.AutoModel``.

The ``hf`` model family (:class:`HFFamily`): ``model.mentor.layers`` / ``model.mentee.layers``
say how many layers each keeps; their ``hidden``, ``heads`` and ``ffn`` are ignored (the
checkpoint's; :func:`fedkd_mpi.models.probe` reads them from the built modules).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from fedkd_mpi.models.base import EncoderOutput, ModelFamily, _first_line
from fedkd_mpi.pretrained import (  # noqa: F401  (re-exported: models.hf is their old home)
    PACKAGED,
    WEIGHT_FILES,
    PretrainedError,
    resolve,
    tokenizer_file,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@lru_cache(maxsize=8)
def inspect(name: str) -> dict:
    """Check a pretrained folder cheaply (config + weight-file header); returns its config.

    Raises PretrainedError naming what is missing or malformed.
    """
    path = resolve(name)
    cfg_file = path / "config.json"
    try:
        conf = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise PretrainedError(f"'model.pretrained' {name!r}: {cfg_file} is missing or not "
                              f"valid JSON ({type(exc).__name__})") from None
    for key in ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads"):
        if not isinstance(conf, dict) or key not in conf:
            raise PretrainedError(f"'model.pretrained' {name!r}: config.json has no '{key}'")
    weights = next((path / w for w in WEIGHT_FILES if (path / w).is_file()), None)
    if weights is None:
        raise PretrainedError(f"'model.pretrained' {name!r}: no weights file "
                              f"({' or '.join(WEIGHT_FILES)}) in {path}")
    if weights.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(weights), "pt") as fh:
                keys = list(fh.keys())
        except (SafetensorError, OSError, ValueError) as exc:
            raise PretrainedError(f"'model.pretrained' {name!r}: {weights.name} is not a "
                                  f"readable safetensors file ({exc})") from None
        if not any(".layer.0." in k or k.startswith("layer.0.") for k in keys):
            raise PretrainedError(f"'model.pretrained' {name!r}: {weights.name} holds no "
                                  "encoder layer weights")
    return conf


def pooling_mode(name: str) -> str:
    """``mean`` (masked token mean) or ``cls``: the sentence-transformers pooling the checkpoint
    was trained with (``1_Pooling/config.json``); ``mean`` when the folder does not say."""
    try:
        conf = json.loads((resolve(name) / "1_Pooling" / "config.json").read_text())
    except (OSError, ValueError):
        return "mean"
    return "cls" if conf.get("pooling_mode_cls_token") else "mean"


class HFEncoder(nn.Module):
    """A pretrained encoder truncated to ``layers`` layers + dropout + linear classifier on the
    pooled output (the checkpoint's own sentence pooling, :func:`pooling_mode`; MiniLM: masked
    mean). ``forward(ids)`` returns the project's :class:`EncoderOutput`."""

    def __init__(self, name: str, layers: int, num_classes: int) -> None:
        super().__init__()
        path = resolve(name)
        conf = _native_config(name)
        if conf is not None:  # no transformers import (~5 s of CPU per process)
            from fedkd_mpi.models.bert import load

            self.encoder = load(path, layers)
            self.native = True
            spec = self.encoder.spec
            pad, hidden, p_drop = spec.pad_token_id, spec.hidden_size, spec.hidden_dropout_prob
        else:
            auto = _auto_model()
            conf = _hf_config(path, layers)
            try:  # no BERT pooler: it would be an untrained, never-updated (but sent) matrix
                self.encoder = auto.from_pretrained(path, config=conf, add_pooling_layer=False)
            except TypeError:
                self.encoder = auto.from_pretrained(path, config=conf)
            self.native = False
            pad, hidden = conf.pad_token_id, conf.hidden_size
            p_drop = float(getattr(conf, "hidden_dropout_prob", 0.1))
        self.pooling = pooling_mode(name)
        self.pad_id = int(pad or 0)
        self.drop = nn.Dropout(p_drop)
        self.classifier = nn.Linear(hidden, num_classes)

    @property
    def embeddings(self) -> nn.Module:
        """The (optionally frozen) embedding block."""
        return self.encoder.embeddings

    def forward(self, ids: torch.Tensor, features: bool = True) -> EncoderOutput:
        """``features=False``: logits only (``EncoderOutput(logits, [], [])``, same logits)."""
        mask = ids != self.pad_id
        n = max(1, int(mask.sum(1).max()))  # right-padded: trim the all-padding tail
        ids, mask = ids[:, :n], mask[:, :n]
        if self.native:
            out = self.encoder(ids, mask.long(), features=features)
        else:
            out = self.encoder(input_ids=ids, attention_mask=mask.long(),
                               output_hidden_states=features, output_attentions=features,
                               return_dict=True)
        last = out.last_hidden_state
        if self.pooling == "cls":
            pooled = last[:, 0]
        else:
            keep = mask.unsqueeze(-1).to(last.dtype)
            pooled = (last * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        logits = self.classifier(self.drop(pooled))
        if not features:
            return EncoderOutput(logits, [], [])
        return EncoderOutput(logits, list(out.hidden_states[1:]), list(out.attentions))


def _native_config(name: str) -> dict | None:
    """The checkpoint's parsed config.json (:func:`inspect`, cached) if
    :mod:`fedkd_mpi.models.bert` builds it (BERT with model.safetensors), else None:
    transformers builds it (and reports what is wrong with the folder)."""
    from fedkd_mpi.models.bert import WEIGHTS, supports

    try:
        conf = inspect(name)
    except PretrainedError:
        return None
    return conf if supports(conf) and (resolve(name) / WEIGHTS).is_file() else None


def _auto_model():
    """transformers' AutoModel, logging quietened."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return AutoModel


def _hf_config(path: Path, layers: int):
    """transformers' config of ``path`` cut to ``layers`` layers, eager attention."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, num_hidden_layers=layers,
                                      attn_implementation="eager")


def build_hf(name: str, layers: int, num_classes: int, seed: int,
             freeze_embeddings: bool) -> HFEncoder:
    """First ``layers`` layers of the pretrained model; the head (and anything the checkpoint
    lacks, e.g. a pooler) initialised from ``seed``. Frozen embeddings: requires_grad=False."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HFEncoder(name, layers, num_classes)
    if freeze_embeddings:
        for p in model.embeddings.parameters():
            p.requires_grad_(False)
    return model


@lru_cache(maxsize=8)
def _build_error(name: str, layers: int) -> str | None:
    """None if the ``layers``-layer mentor of ``name`` builds, else the one-line error."""
    try:
        build_hf(name, layers, 2, 0, True)
    except Exception as exc:  # whatever transformers raises on a config/weights mismatch
        why = _first_shape_mismatch(name, layers) or f"{type(exc).__name__}: {_first_line(exc)}"
        return (f"config error: 'model.pretrained' {name!r}: config.json does not match the "
                f"weights ({_first_line(why, 200)})")
    return None


def _first_shape_mismatch(name: str, layers: int) -> str | None:
    """'<tensor> is [..] in model.safetensors, config.json gives [..]' for the first tensor
    whose shapes differ (the model skeleton on the meta device: no memory, no init); None
    when there is no safetensors file or no such tensor."""
    try:
        from safetensors import safe_open

        path = resolve(name)
        native = _native_config(name)
        if native is not None:
            from fedkd_mpi.models.bert import skeleton

            model, prefix = skeleton(native, layers), "bert."
        else:
            from transformers import AutoConfig, AutoModel

            conf = AutoConfig.from_pretrained(path, num_hidden_layers=layers)
            with torch.device("meta"):
                model = AutoModel.from_config(conf)
            prefix = f"{model.base_model_prefix}."
        want = {k: list(v.shape) for k, v in model.state_dict().items()}
        with safe_open(str(path / WEIGHT_FILES[0]), "pt") as fh:
            for key in fh.keys():
                got = list(fh.get_slice(key).get_shape())
                mine = key[len(prefix):] if key.startswith(prefix) else key
                if mine in want and want[mine] != got:
                    return (f"{key} is {got} in {WEIGHT_FILES[0]}, config.json gives "
                            f"{want[mine]}")
    except Exception:  # no detail available: the caller reports the build error itself
        return None
    return None


class HFFamily(ModelFamily):
    """``hf``: the pretrained encoder ``model.pretrained`` truncated to ``model.<role>.layers``
    layers (:func:`build_hf`)."""

    name = "hf"
    input_kinds = ("tokens",)

    def build(self, role: str, num_classes: int, seed: int, freeze_embeddings: bool) -> nn.Module:
        return build_hf(self.cfg.model.pretrained, self.spec(role).layers, num_classes, seed,
                        freeze_embeddings)

    def check(self) -> None:
        """The folder is readable, deep enough for ``model.mentor.layers``, and its config.json
        fits its weights: the mentor is built once per process, folder and depth (cached;
        all-MiniLM-L6-v2: ~2.5 s cold on top of importing transformers, then microseconds)."""
        from fedkd_mpi.config import ConfigError

        m = self.cfg.model
        try:
            conf = inspect(m.pretrained)
        except PretrainedError as exc:
            raise ConfigError(f"config error: {exc}") from None
        try:
            layers = int(conf["num_hidden_layers"])
        except (TypeError, ValueError):
            raise ConfigError(f"config error: 'model.pretrained' {m.pretrained!r}: config.json "
                              f"'num_hidden_layers' is not an integer "
                              f"({conf['num_hidden_layers']!r})") from None
        if m.mentor.layers > layers:
            raise ConfigError(f"config error: 'model.mentor.layers': {m.mentor.layers} exceeds "
                              f"the {layers} layers of model.pretrained '{m.pretrained}'")
        error = _build_error(m.pretrained, m.mentor.layers)
        if error is not None:
            raise ConfigError(error)
