"""The codec interface: how one round's tensors become a payload and back.

A codec is built once per run (the same on every rank) for the tensors it carries
(``specs``), from its settings. It owns:

* ``encode(tensors, rnd, state) -> Payload`` and ``decode(payload, device) -> tensors``;
* ``body_nbytes(meta)``: the exact body size in bytes the per-tensor ``meta`` implies (the
  wire checks every received message against it; raise ValueError for invalid meta);
* ``wire_dtype``: the numpy dtype of every body;
* ``State``: a typed state object per client and one on the server (error-feedback residuals,
  warm-start matrices, ...): a dataclass of tensors and numbers, checkpointed by field;
* ``aggregate``: the server's step, decode -> :class:`~fedkd_mpi.aggregators.Aggregator` ->
  encode with the server's state (a codec may average in its own domain, e.g. SVD factors,
  when the aggregator is a weighted mean).

Register a codec by subclassing with a ``name``; a plug-in may declare ``Settings`` (a
pydantic model) read from the config's ``plugins.<name>`` section.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from fedkd_mpi.registry import Registered, Registry, plugin_settings
from fedkd_mpi.tensors import Payload, TensorSpec

if TYPE_CHECKING:
    from fedkd_mpi.aggregators.base import Aggregator
    from fedkd_mpi.config import Config


@dataclass
class CodecState:
    """A codec's state of one client (``client_id``) or of the server (``client_id=None``).

    Subclasses add dataclass fields holding tensors, lists of tensors (or None) and numbers.
    """

    client_id: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def load_state_dict(self, tree: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        for k, v in tree.items():
            if k not in names:
                raise ValueError(f"{type(self).__name__} has no field '{k}'")
            setattr(self, k, v)


class Codec(Registered, ABC):
    """Base of every codec (see the module docstring)."""

    registry = Registry("codecs", "fedkd_mpi.codecs")
    State: ClassVar[type[CodecState]] = CodecState
    wire_dtype: ClassVar[np.dtype] = np.dtype(np.float32)
    #: the built-in config section holding this codec's settings (None: ``plugins.<name>``)
    section: ClassVar[str | None] = None
    #: what the per-tensor ``meta`` holds, recorded in the run file (attr ``layer_meta``) for
    #: ``layers/rank_up`` / ``rank_down``: ``"rank"`` (a factor rank, -1 = sent dense) draws
    #: ``report``'s rank heat map; anything else (the default) is plotted nowhere
    meta_means: ClassVar[str] = "codec-specific"

    def __init__(self, settings: Any, specs: Sequence[TensorSpec], seed: int, rounds: int) -> None:
        self.settings = settings
        self.specs = list(specs)
        self.seed = seed
        self.rounds = rounds

    @classmethod
    def settings_from(cls, cfg: Config) -> Any:
        """This codec's settings in ``cfg``: its :attr:`section`, else ``plugins.<name>``
        checked against ``Settings`` (None when it declares none)."""
        return getattr(cfg, cls.section) if cls.section else plugin_settings(cls, cfg)

    def new_state(self, client_id: int | None) -> CodecState:
        """The initial state of client ``client_id`` (None: the server's)."""
        return self.State(client_id=client_id)

    def energy_threshold(self, rnd: int) -> float | None:
        """The round's singular-value energy share T (SVD codecs); None for others."""
        return None

    @abstractmethod
    def encode(self, tensors: Sequence[torch.Tensor], rnd: int, state: CodecState) -> Payload:
        """Encode one update (``rnd`` 0-based); may read and update ``state``."""

    @abstractmethod
    def decode(self, payload: Payload, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """float32 tensors of the ``specs`` shapes; identical on every rank."""

    @abstractmethod
    def body_nbytes(self, meta: np.ndarray) -> int:
        """Exact body bytes for this meta; ValueError (one line) when the meta is invalid."""

    def aggregate(self, payloads: Sequence[Payload], aggregator: Aggregator,
                  num_samples: np.ndarray, rnd: int, state: CodecState) -> Payload:
        """The server's download: decode, aggregate, re-encode with the server's state."""
        agg = aggregator.aggregate(Decoded(self, payloads), num_samples)
        return self.encode(agg, rnd, state)


class Decoded(Sequence):
    """The decoded updates of a round, decoded when read (a mean streams through them)."""

    def __init__(self, codec: Codec, payloads: Sequence[Payload]) -> None:
        self.codec, self.payloads = codec, list(payloads)

    def __len__(self) -> int:
        return len(self.payloads)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self.codec.decode(p) for p in self.payloads[i]]
        return self.codec.decode(self.payloads[i])

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        for p in self.payloads:
            yield self.codec.decode(p)


def checked_body_bytes(payload: Payload, size_rule) -> np.ndarray:
    """``payload.body`` as flat uint8, after checking its length against ``size_rule(meta)``."""
    body = np.ascontiguousarray(payload.body).view(np.uint8).reshape(-1)
    need = size_rule(payload.meta)
    if body.size != need:
        raise ValueError(f"payload holds {body.size} bytes, meta requires {need}")
    return body


def codec_class(name: str, field: str) -> type[Codec]:
    """The codec class named ``name`` (built-in, entry point or module:attribute)."""
    return Codec.registry.get(name, field, Codec)
