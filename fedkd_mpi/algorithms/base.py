"""The algorithm interface: which models exist, the local objective, and both ends of the
round's payload.

An algorithm names the model a client keeps (``private_role``: never leaves its rank) and the
model that travels (``shared_role``), both "mentor" or "mentee" (the model settings and the
metric columns they report to). Per round and client: :meth:`begin_local` then local steps
with :meth:`loss` and :meth:`after_step`; :meth:`client_encode` (what goes up) ->
:meth:`server_aggregate` on rank 0 (how the server combines; default: the codec decodes, the
aggregator combines, the codec re-encodes) -> :meth:`client_decode` and :meth:`apply_update`
on every rank (what comes down and how a client applies it). It never touches MPI.

The codec is named by the config field :attr:`codec_field` (e.g. ``fedavg.codec``), so any
algorithm can travel with any codec. Per-client state lives in a :class:`ClientState`: the
codec's state and the algorithm's own typed :attr:`State`; the server keeps one of each.
"""

from __future__ import annotations

import math
from abc import ABC
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkd_mpi.codecs.base import Codec, CodecState, codec_class
from fedkd_mpi.config import Config, ConfigError
from fedkd_mpi.registry import Registered, Registry, plugin_settings
from fedkd_mpi.seeding import torch_seed
from fedkd_mpi.tensors import Payload, TensorSpec

if TYPE_CHECKING:
    from fedkd_mpi.aggregators import Aggregator
    from fedkd_mpi.models import EncoderOutput, ModelShape


class NonFiniteError(FloatingPointError):
    """A loss or update became NaN/Inf."""


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class LocalClient(Protocol):
    """What :meth:`Algorithm.local_round` gets of a client (the runtime's ``Client``)."""

    cid: int
    data: Any  # ClientData: train_x, train_y, num_train, ...
    state: ClientState
    private: nn.Module | None
    proj: nn.Module | None
    opt_private: torch.optim.Optimizer | None
    opt_shared: torch.optim.Optimizer | None


@dataclass
class AlgState(CodecState):
    """An algorithm's own state of one client (or the server): tensors and numbers only."""


@dataclass
class ClientState:
    """Everything an algorithm and its codec keep for one client across rounds."""

    codec: CodecState
    alg: AlgState = field(default_factory=AlgState)

    def state_dict(self) -> dict[str, Any]:
        return {"codec": self.codec.state_dict(), "alg": self.alg.state_dict()}

    def load_state_dict(self, tree: dict[str, Any]) -> None:
        self.codec.load_state_dict(tree["codec"])
        self.alg.load_state_dict(tree["alg"])


class Algorithm(Registered, ABC):
    """Base of every algorithm: one shared model trained with cross-entropy, sent with the
    codec named by :attr:`codec_field`, averaged by the configured aggregator."""

    registry = Registry("algorithms", "fedkd_mpi.algorithms")
    private_role: str | None = None
    shared_role: str | None = None
    #: config field naming this algorithm's codec (None: nothing is communicated)
    codec_field: ClassVar[str | None] = None
    State: ClassVar[type[AlgState]] = AlgState
    #: parts of :meth:`loss` recorded per client and round as ``clients/loss_<part>`` (the
    #: mean over the round's local steps) and ``rounds/loss_<part>`` (mean over clients)
    loss_parts: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.settings: Any = plugin_settings(type(self), cfg)
        self.specs: list[TensorSpec] = []
        self.codec: Codec | None = None
        self.server = ClientState(CodecState(None), self.State(None))

    # -- models ---------------------------------------------------------------------------
    @property
    def communicates(self) -> bool:
        return self.shared_role is not None

    @property
    def codec_name(self) -> str:
        """The configured codec (the value of :attr:`codec_field`)."""
        assert self.codec_field is not None
        section, key = self.codec_field.split(".")
        return getattr(getattr(self.cfg, section), key)

    def check_models(self, shapes: dict[str, ModelShape]) -> None:
        """Validate-time check that the built models give what the loss needs (ConfigError,
        one line); ``shapes`` by role, from :func:`fedkd_mpi.models.probe`."""

    def bind(self, specs: Sequence[TensorSpec], shapes: dict[str, ModelShape]) -> None:
        """Once per rank, after the models are built: the shared model's communicated
        tensors and the probed shapes of the models this rank built."""
        self.specs = list(specs)
        if self.codec_field is not None:
            cls = codec_class(self.codec_name, self.codec_field)
            self.codec = cls(cls.settings_from(self.cfg), self.wire_specs, self.cfg.seed,
                             self.cfg.train.rounds)
            self.server = self.new_state(None)

    @property
    def wire_specs(self) -> list[TensorSpec]:
        """Tensors a message carries (default: the shared model's communicated tensors)."""
        return self.specs

    def new_state(self, client_id: int | None) -> ClientState:
        """The initial state of client ``client_id`` (None: the server)."""
        codec = self.codec.new_state(client_id) if self.codec else CodecState(client_id)
        return ClientState(codec, self.State(client_id))

    def make_projection(self, seed: int) -> nn.Module | None:
        """Client-local extra modules trained with the shared model (FedKD's W^h)."""
        return None

    # -- local objective ------------------------------------------------------------------
    def begin_local(self, params: Sequence[nn.Parameter], state: ClientState) -> None:
        """Before a client's local steps; ``params`` are the shared model's trainable ones,
        at the round's global value."""

    def loss(self, private: EncoderOutput | None, shared: EncoderOutput | None,
             y: torch.Tensor, proj: nn.Module | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The scalar to back-propagate and its logged parts (``<role>_loss`` at least)."""
        out, role = (shared, self.shared_role) if shared is not None else (private,
                                                                            self.private_role)
        ce = F.cross_entropy(out.logits, y)
        return ce, {f"{role}_loss": float(ce.detach())}

    def after_step(self, state: ClientState, params: Sequence[torch.Tensor]) -> None:
        """After every local optimizer step, with the shared model's trainable params."""

    # -- the round's local work ---------------------------------------------------------
    def local_round(self, client: LocalClient, shared: nn.Module | None, rnd: int,
                    device: torch.device) -> dict[str, float]:
        """One client's local work in round ``rnd`` (0-based); returns the mean over its steps
        of each logged loss part. The default: ``train.local_steps`` (else ``local_epochs``
        epochs) of batches drawn from a generator keyed (seed, "train", rnd, cid), with
        :meth:`begin_local` before, :meth:`loss` + backward + every optimizer step and
        :meth:`after_step` per batch. An algorithm that needs another local procedure
        overrides this; the runtime only calls it, then extracts the shared model's update."""
        cfg = self.cfg
        tc = cfg.train
        seed = torch_seed(cfg.seed, "train", rnd, client.cid)
        torch.manual_seed(seed)  # dropout: keyed by (seed, round, client), never by rank
        gen = torch.Generator().manual_seed(seed)
        n = client.data.num_train
        per_epoch = math.ceil(n / tc.batch_size)
        steps = tc.local_steps if tc.local_steps is not None else tc.local_epochs * per_epoch
        models = [m for m in (client.private, shared, client.proj) if m is not None]
        shared_params = [] if shared is None else trainable(shared)
        for m in models:
            m.train()
        sums: dict[str, float] = {}
        if shared_params:
            self.begin_local(shared_params, client.state)
        perm = torch.randperm(n, generator=gen)
        for step in range(steps):
            j = step % per_epoch
            if j == 0 and step > 0:
                perm = torch.randperm(n, generator=gen)
            idx = perm[j * tc.batch_size : (j + 1) * tc.batch_size]
            x = client.data.train_x[idx].to(device)
            y = client.data.train_y[idx].to(device)
            out_p = client.private(x) if client.private is not None else None
            out_s = shared(x) if shared is not None else None
            total, parts = self.loss(out_p, out_s, y, client.proj)
            if not torch.isfinite(total):
                raise NonFiniteError(f"client {client.cid}, round {rnd + 1}, step {step}: "
                                     f"non-finite training loss {float(total.detach())}")
            for opt in (client.opt_private, client.opt_shared):
                if opt is not None:
                    opt.zero_grad(set_to_none=True)
            total.backward()
            for opt in (client.opt_private, client.opt_shared):
                if opt is not None:
                    opt.step()
            if shared_params:
                self.after_step(client.state, shared_params)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
        return {k: v / steps for k, v in sums.items()}

    # -- payload, both ends ---------------------------------------------------------------
    def energy_threshold(self, rnd: int) -> float | None:
        """The codec's energy share T of round ``rnd`` (None: not an SVD codec)."""
        return self.codec.energy_threshold(rnd) if self.codec is not None else None

    def client_encode(self, delta: Sequence[torch.Tensor], rnd: int,
                      state: ClientState) -> Payload:
        """One client's upload from its update ``delta`` (trained minus global)."""
        return self._codec.encode(delta, rnd, state.codec)

    def server_aggregate(self, payloads: Sequence[Payload], aggregator: Aggregator,
                         num_samples: np.ndarray, rnd: int) -> Payload:
        """Rank 0: the download from the participants' uploads (client-id order)."""
        return self._codec.aggregate(payloads, aggregator, num_samples, rnd, self.server.codec)

    def client_decode(self, payload: Payload,
                      device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """The download as ``wire_specs`` tensors (identical on every rank)."""
        return self._codec.decode(payload, device)

    @torch.no_grad()
    def apply_update(self, params: Sequence[torch.Tensor], theta0: Sequence[torch.Tensor],
                     decoded: Sequence[torch.Tensor], states: Sequence[ClientState]) -> None:
        """Set the shared params to ``theta0 + update`` (every rank, same float ops);
        ``states``: the states of the clients hosted on this rank (empty on rank 0)."""
        for p, t0, d in zip(params, theta0, decoded[: len(params)], strict=True):
            p.copy_(t0 + d)

    @property
    def _codec(self) -> Codec:
        if self.codec is None:
            raise RuntimeError(f"algorithm {self.name!r}: no codec bound (bind() not called)")
        return self.codec


def algorithm_class(cfg: Config) -> type[Algorithm]:
    return Algorithm.registry.get(cfg.algorithm, "algorithm", Algorithm)


def build_algorithm(cfg: Config) -> Algorithm:
    """The algorithm named by ``algorithm`` (built-in, entry point or module:attribute)."""
    alg = algorithm_class(cfg)(cfg)
    if alg.private_role not in (None, "mentor", "mentee") or \
            alg.shared_role not in (None, "mentor", "mentee"):
        raise ConfigError(f"config error: 'algorithm': {cfg.algorithm} has roles "
                          f"{alg.private_role!r}/{alg.shared_role!r}; each must be 'mentor', "
                          "'mentee' or None")
    return alg
