"""The model axis: model families (what the mentor and the mentee are).

A **model family** is a :class:`ModelFamily` subclass with a ``name``; ``model.kind`` names it
(a registered name, ``module:attribute`` or an entry point of the group
``fedkd_mpi.models``, see :mod:`fedkd_mpi.registry`). It is instantiated with the whole
config and

* ``build(role, num_classes, seed, freeze_embeddings)`` returns the ``role`` ("mentor" or
  "mentee") model, initialised from ``seed`` only (never from the global RNG); a model with
  an ``embeddings`` submodule gets it frozen (requires_grad=False) when ``freeze_embeddings``;
  ``forward(x)`` returns an :class:`EncoderOutput`; a forward that also takes the keyword
  ``features: bool = True`` may skip the hidden states and attention maps when it is False
  (``EncoderOutput(logits, [], [])``, the same logits): evaluation asks for logits only
  (:func:`logits_of`);
* ``input_kinds`` (class attribute) says which corpus inputs it accepts: ``tokens`` (int64
  token ids ``[B, L]``), ``images`` (uint8 ``[B, C, H, W]``), ``features`` (float32
  ``[B, d]``);
* ``check()`` is the cheap validate-time check beyond the schema (``fedkd-mpi validate`` and
  rank 0 before any rank trains); it raises :class:`~fedkd_mpi.config.ConfigError` with one
  line naming the config field.

Widths and depths are read from the built modules with :func:`probe` (a family may ignore
``model.mentor/mentee`` fields, e.g. hf takes them from the checkpoint).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fedkd_mpi.registry import Registered, Registry

if TYPE_CHECKING:
    from fedkd_mpi.config import Config

__all__ = ["EncoderOutput", "ModelFamily", "ModelOutputError", "ModelShape", "family_of",
           "layer_map", "logits_of", "probe"]


@dataclass
class EncoderOutput:
    logits: torch.Tensor  # (B, C)
    hidden_states: list[torch.Tensor]  # per layer output, (B, L, d); embeddings excluded
    attentions: list[torch.Tensor]  # per layer post-softmax probabilities, (B, h, L, L); or []


class ModelFamily(Registered, ABC):
    """How to build the mentor and the mentee of one kind of model."""

    registry = Registry("models", "fedkd_mpi.models")
    #: corpus inputs this family accepts: "tokens", "images", "features"
    input_kinds: ClassVar[tuple[str, ...]] = ("tokens",)

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    @abstractmethod
    def build(self, role: str, num_classes: int, seed: int, freeze_embeddings: bool) -> nn.Module:
        """The ``role`` ("mentor"/"mentee") model; ``forward(x)`` returns EncoderOutput."""

    def spec(self, role: str) -> Any:
        """``model.<role>`` (ValueError unless role is "mentor" or "mentee")."""
        if role not in ("mentor", "mentee"):
            raise ValueError(f"role must be 'mentor' or 'mentee', got {role!r}")
        return getattr(self.cfg.model, role)

    def check(self) -> None:
        """Cheap validate-time check; ConfigError (one line naming the config field)."""


def family_of(cfg: Config) -> ModelFamily:
    """The model family ``cfg.model.kind`` names, instantiated with ``cfg`` (PluginError if
    it cannot be resolved)."""
    cls = ModelFamily.registry.get(cfg.model.kind, "model.kind", ModelFamily)
    return cls(cfg)


class ModelOutputError(ValueError):
    """A model's forward fails or does not return an EncoderOutput; one line for the user."""


@dataclass(frozen=True)
class ModelShape:
    """What :func:`probe` reads from one forward pass."""

    num_classes: int  # logits width
    hidden_widths: list[int] = field(default_factory=list)  # last dim of each hidden state
    attention_heads: list[int] = field(default_factory=list)  # dim 1 of each attention map


def probe(model: nn.Module, x: Any) -> ModelShape:
    """Run ``model`` once on ``x`` (eval mode, no grad, the global RNG untouched, training
    flags restored) and read its output shape; ModelOutputError if the forward raises or
    does not return an EncoderOutput-like object."""
    flags = [(m, m.training) for m in model.modules()]
    param = next(model.parameters(), None)
    if param is not None and isinstance(x, torch.Tensor):
        x = x.to(param.device)
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()
            try:
                out = model(x)
            except Exception as exc:
                raise ModelOutputError(f"forward raised {type(exc).__name__}: "
                                       f"{_first_line(exc)}") from None
    finally:
        for m, was in flags:
            m.training = was
    return _shape_of(out, _batch(x))


def _shape_of(out: Any, batch: int | None) -> ModelShape:
    def bad(why: str) -> ModelOutputError:
        return ModelOutputError(f"forward returned {why}; expected an EncoderOutput (logits "
                                "[B, C], hidden_states: list of [B, L, d], attentions: list of "
                                "[B, h, L, L] or [])")

    logits = getattr(out, "logits", None)
    if logits is None:
        raise bad(f"a {type(out).__name__} without .logits")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise bad(f".logits {got}")
    if batch is not None and logits.shape[0] != batch:
        raise bad(f".logits for {logits.shape[0]} examples from a batch of {batch}")
    seqs = {"hidden_states": getattr(out, "hidden_states", None),
            "attentions": getattr(out, "attentions", None)}
    for name, dims in (("hidden_states", 3), ("attentions", 4)):
        seq = seqs[name]
        if not isinstance(seq, (list, tuple)):
            raise bad(f".{name} of type {type(seq).__name__}, not a list")
        for i, t in enumerate(seq):
            if not isinstance(t, torch.Tensor) or t.dim() != dims:
                got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise bad(f".{name}[{i}] {got}")
            if t.shape[0] != logits.shape[0]:
                raise bad(f".{name}[{i}] for {t.shape[0]} examples, .logits for "
                          f"{logits.shape[0]}")
    return ModelShape(int(logits.shape[1]), [int(t.shape[-1]) for t in seqs["hidden_states"]],
                      [int(t.shape[1]) for t in seqs["attentions"]])


def _batch(x: Any) -> int | None:
    return int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 0 else None


def _first_line(exc: object, limit: int = 200) -> str:
    """The first line of ``str(exc)``, at most ``limit`` characters."""
    lines = str(exc).strip().splitlines()
    line = lines[0].strip() if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


@lru_cache(maxsize=64)
def _takes_features(cls: type) -> bool:
    try:
        return "features" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x).logits``, with ``features=False`` when the forward takes that keyword (no
    hidden states or attention maps collected)."""
    if _takes_features(type(model)):
        return model(x, features=False).logits
    return model(x).logits


def layer_map(mentor_layers: int, mentee_layers: int) -> list[tuple[int, int]]:
    """Pairs (mentee k, mentor m) 0-based: mentee layer k+1 <-> mentor layer (k+1)*Lt/Ls."""
    return [(k, (k + 1) * mentor_layers // mentee_layers - 1) for k in range(mentee_layers)]
