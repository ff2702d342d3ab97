"""Checks before allocations: the memory and disk a run will need, estimated from the config
before any model or tensor is built, and refused (one :class:`ConfigError` line naming the
keys to change) when they do not fit this machine.

Parameter counts come from the models built on torch's meta device (shapes only: no storage,
random initialisation skipped, the global RNG untouched), which works for any family built
from plain ``nn.Module`` s; the ``hf`` family is counted from its checkpoint's safetensors
header instead (building it reads the weights). A family that cannot be built on the meta
device is not estimated (no check). Activations: :func:`activation_bytes` (no forward pass).

Memory of one client rank: ``resident`` clients x (private model weights + gradients +
optimizer moments, the same for W^h, and the client's moments of the shared model) + the
shared model with its gradients + the activations of one training step of the private and the
shared model (no allocator slack: what must fit at least). It is compared with the node's
available memory (``MemAvailable``) divided by the ranks on the node: at ``validate`` one client
rank holding one client (the world size is not known yet); on rank 0 of ``run``, the busiest
rank's clients and the ranks per node from the launcher (``MPI_LOCALNRANKS``,
``OMPI_COMM_WORLD_LOCAL_SIZE``), else all ranks assumed on one node (the message says so).
The run-time check after building (:func:`fedkd_mpi.runtime.residency.budget_error`) is kept.

Disk: the checkpoint directory must hold one checkpoint (every client's private state and the
shared model) when periodic checkpoints will be written (``0 < runtime.checkpoint_every <
train.rounds``); the spill directory the spilled clients when ``runtime.resident_clients`` is
below a rank's clients (``validate``: at least one client's state).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from fedkd_mpi.config import Config, ConfigError
from fedkd_mpi.runtime.residency import available_memory_bytes
from fedkd_mpi.storage.disk import human_bytes
from fedkd_mpi.storage.paths import checkpoint_space_error, spill_space_error

FP32 = 4
FILE_ENTRY_BYTES = 300  # torch.save (zip) overhead per tensor: header, pickle, alignment
RANK_FILE_BYTES = 12 * 1024  # a checkpoint's rank_NNNN.pt: that rank's RNG states
#: launcher variables that give the number of ranks on this node
LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")
_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")
_RANDOM_FILLS = frozenset({
    "normal_", "uniform_", "trunc_normal_", "orthogonal_", "sparse_", "kaiming_normal_",
    "kaiming_uniform_", "xavier_normal_", "xavier_uniform_", "exponential_", "geometric_",
    "log_normal_", "cauchy_", "random_", "bernoulli_"})


@dataclass(frozen=True)
class ModelSize:
    """One model's size, estimated without allocating its tensors."""

    params: int
    trainable: int
    state_bytes: int  # state_dict: weights and buffers
    embedding: int  # parameters under an ``embeddings`` submodule (or named so)
    width: int  # hidden width of its layer outputs
    layers: int  # layer outputs (hidden states)
    activation_bytes: int  # kept for backward by one training step
    tensors: int = 0  # state_dict entries
    trainable_tensors: int = 0


def count_params(n: int) -> str:
    """``4.2 G``, ``22.6 M``, ``35.2 k``, ``512``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return str(n)


class _NoRandomFills(TorchFunctionMode):
    """Random fills (``nn.init``) of meta tensors are no-ops: torch's meta decompositions of
    some of them import torch._dynamo (seconds) for nothing."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        t = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
        if getattr(func, "__name__", "") in _RANDOM_FILLS and isinstance(t, torch.Tensor) \
                and t.is_meta:
            return t
        return func(*args, **kwargs)


def activation_bytes(example: tuple[int, ...], tokens: bool, batch: int, layers: int,
                     hidden: int, ffn: int, heads: int) -> int:
    """Bytes autograd keeps for backward in one training step of ``batch`` examples shaped
    like ``example`` (one example's shape, batch first), float32:

    * tokens ``[B, L]``: ``4 B L layers (12 hidden + 2 ffn + 3 heads L)`` (a post-LN encoder
      block: the inputs of its six matmuls, LayerNorm, GELU and dropout, and the attention
      scores, probabilities and their dropout);
    * images ``[B, C, H, W]``: ``4 B hidden H W (2.25 + 3 layers / 16)`` (the CNN's stem at
      full and half resolution, three maps per block at H/4 x W/4);
    * features ``[B, d]``: ``4 B (d + 3 layers hidden)``.

    The ``tiny`` and ``cnn`` families save 85-95% of it (their autograd graphs on meta
    tensors, distinct storages)."""
    if tokens and len(example) == 2:
        n = example[1]
        return FP32 * batch * n * layers * (12 * hidden + 2 * ffn + 3 * heads * n)
    if len(example) == 4:
        return int(FP32 * batch * hidden * example[2] * example[3] * (2.25 + 3 * layers / 16))
    return FP32 * batch * ((example[-1] if len(example) > 1 else 0) + 3 * layers * hidden)


def _meta_size(cfg: Config, family: Any, role: str, classes: int, freeze: bool,
               example: torch.Tensor | None) -> ModelSize | None:
    """Build on the meta device; None when the family cannot (not estimated)."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"), _NoRandomFills():
            model = family.build(role, classes, 0, freeze)
    except ConfigError:
        raise
    except Exception:
        return None
    params = list(model.parameters())
    emb = getattr(model, "embeddings", None)
    embedding = sum(p.numel() for p in emb.parameters()) if isinstance(emb, torch.nn.Module) \
        else 0
    spec = getattr(cfg.model, role)
    shape = tuple(example.shape) if example is not None else ()
    tokens = example is not None and not example.is_floating_point() and example.dim() == 2
    state = model.state_dict()
    return ModelSize(sum(p.numel() for p in params),
                     sum(p.numel() for p in params if p.requires_grad),
                     sum(t.numel() * t.element_size() for t in state.values()),
                     embedding, spec.hidden, spec.layers,
                     activation_bytes(shape, tokens, cfg.train.batch_size, spec.layers,
                                      spec.hidden, spec.ffn, spec.heads),
                     len(state), sum(1 for p in params if p.requires_grad))


def _pretrained_size(cfg: Config, role: str, classes: int, freeze: bool) -> ModelSize | None:
    """The ``hf`` family: its first ``model.<role>.layers`` layers counted from the
    checkpoint's safetensors header (no weights read), plus the classifier; None without a
    readable safetensors file."""
    from safetensors import safe_open

    from fedkd_mpi.models import hf

    layers = getattr(cfg.model, role).layers
    params = embedding = tensors = trainable_tensors = 0
    try:
        conf = hf.inspect(cfg.model.pretrained)
        with safe_open(str(hf.resolve(cfg.model.pretrained) / hf.WEIGHT_FILES[0]), "pt") as fh:
            for key in fh.keys():
                m = _LAYER.search(key)
                if "pooler" in key or key.endswith("_ids") or \
                        (m is not None and int(m.group(1)) >= layers):
                    continue  # no pooler; position_ids & co. are buffers; layers cut off
                n = 1
                for d in fh.get_slice(key).get_shape():
                    n *= int(d)
                params += n
                embedding += n if "embeddings" in key else 0
                tensors += 1
                trainable_tensors += 0 if freeze and "embeddings" in key else 1
        hidden, heads = int(conf["hidden_size"]), int(conf["num_attention_heads"])
        ffn = int(conf.get("intermediate_size") or 4 * hidden)
        n = min(cfg.data.max_len, int(conf.get("max_position_embeddings") or 512))
    except Exception:  # no safetensors file, a malformed header: not estimated
        return None
    params += hidden * classes + classes
    trainable = params - (embedding if freeze else 0)
    return ModelSize(params, trainable, FP32 * params, embedding, hidden, layers,
                     activation_bytes((1, n), True, cfg.train.batch_size, layers, hidden, ffn,
                                      heads), tensors + 2, trainable_tensors + 2)


def model_size(cfg: Config, family: Any, role: str, classes: int, freeze: bool,
               example: torch.Tensor | None) -> ModelSize | None:
    """The ``role`` model of ``family`` estimated without allocating it (None: unknown).
    ``example``: a real input batch (its shape and dtype say what the model reads)."""
    if getattr(family, "name", None) == "hf":
        return _pretrained_size(cfg, role, classes, freeze)
    return _meta_size(cfg, family, role, classes, freeze, example)


def launch_geometry() -> tuple[int | None, int | None, str]:
    """(world size, ranks on this node, where that came from): ``(None, None, ...)`` at
    ``validate`` (no MPI); under ``run`` the world size of an initialised MPI and the
    launcher's local size, else None (the caller assumes all ranks on one node)."""
    mpi = sys.modules.get("mpi4py.MPI")
    world = None
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        world = mpi.COMM_WORLD.Get_size()
    if world is None or world < 2:
        return None, None, ""
    for var in LOCAL_SIZE_VARS:
        try:
            n = int(os.environ.get(var, ""))
        except ValueError:
            continue
        if 1 <= n <= world:
            return world, n, var
    return world, None, ""


@dataclass(frozen=True)
class Budget:
    """The estimate for one config: per client and per client rank, in bytes."""

    private: ModelSize | None
    shared: ModelSize | None
    proj_params: int  # W^h
    moments: int  # optimizer moments per trainable parameter (Adam 2, SGD 0)
    private_role: str | None = None
    shared_role: str | None = None
    unused: tuple[tuple[str, ModelSize], ...] = ()  # roles preflight builds, the run does not

    @property
    def client_state_bytes(self) -> int:
        """One client's private state in memory: models + optimizer moments."""
        n, m = 0, self.moments * FP32
        if self.private is not None:
            n += self.private.state_bytes + m * self.private.trainable
        n += (FP32 + m) * self.proj_params
        if self.shared is not None:
            n += m * self.shared.trainable  # this client's moments of the shared model
        return n

    @property
    def client_file_bytes(self) -> int:
        """One client's private state as a file (spill, checkpoint): the tensors plus
        torch.save's ~300 bytes per entry (weights, each moment and step count)."""
        per = 1 + self.moments + (1 if self.moments else 0)  # value, moments, Adam's step
        entries = (self.proj_params > 0) * (1 + per)
        if self.private is not None:
            entries += self.private.tensors + (per - 1) * self.private.trainable_tensors
        if self.shared is not None:
            entries += (per - 1) * self.shared.trainable_tensors
        return self.client_state_bytes + FILE_ENTRY_BYTES * entries

    @property
    def resident_bytes(self) -> int:
        """One client kept in memory: its state plus the gradients it keeps after a step."""
        grads = self.proj_params + (self.private.trainable if self.private else 0)
        return self.client_state_bytes + FP32 * grads

    @property
    def rank_bytes(self) -> int:
        """A client rank besides its clients: the shared model, its gradients, activations."""
        n = sum(s.activation_bytes for s in (self.private, self.shared) if s is not None)
        if self.shared is not None:
            n += self.shared.state_bytes + FP32 * self.shared.trainable
        return n

    @property
    def activation_bytes(self) -> int:
        return sum(s.activation_bytes for s in (self.private, self.shared) if s is not None)


def estimate(cfg: Config, family: Any, alg: Any, classes: int,
             example: torch.Tensor | None) -> Budget | None:
    """The :class:`Budget` of ``cfg`` (None when a model of the family cannot be estimated)."""
    from fedkd_mpi.algorithms.base import Algorithm

    sizes: dict[str, ModelSize | None] = {}
    for role in dict.fromkeys(r for r in (alg.private_role, alg.shared_role, "mentor",
                                          "mentee") if r):
        freeze = (cfg.model.freeze_embeddings if role == alg.shared_role
                  else cfg.model.freeze_private_embeddings)
        sizes[role] = model_size(cfg, family, role, classes, freeze, example)
        if sizes[role] is None:
            return None
    private = sizes.get(alg.private_role) if alg.private_role else None
    shared = sizes.get(alg.shared_role) if alg.shared_role else None
    proj = 0
    if type(alg).make_projection is not Algorithm.make_projection and private and shared:
        proj = shared.layers * shared.width * private.width  # W^h: mentee -> mentor width
    unused = tuple((r, s) for r, s in sizes.items()
                   if s is not None and r not in (alg.private_role, alg.shared_role))
    return Budget(private, shared, proj, 2 if cfg.train.optimizer == "adam" else 0,
                  alg.private_role, alg.shared_role, unused)


def check_budget(cfg: Config, family: Any, alg: Any, classes: int,
                 example: torch.Tensor | None) -> None:
    """Preflight, before any model is built: ConfigError (one line) when the estimated memory
    of a client rank exceeds its share of this node, or a checkpoint or the spilled clients
    exceed the free space of their directory. Nothing is allocated."""
    budget = estimate(cfg, family, alg, classes, example)
    if budget is None:
        return
    world, node_ranks, source = launch_geometry()
    n, cap = cfg.data.num_clients, cfg.runtime.resident_clients
    hosted = 1 if world is None else -(-n // (world - 1))
    resident = hosted if cap is None else min(cap, hosted)
    avail = available_memory_bytes()
    if avail is not None:
        for role, size in budget.unused:  # preflight builds it once, to check model.kind
            if size.state_bytes > avail:
                keys = _model_keys(family, role, size)
                raise ConfigError(
                    f"config error: {'/'.join(repr(k) for k in keys)}: the {role} (not "
                    f"trained by algorithm '{cfg.algorithm}', built once to check "
                    f"model.kind) would hold {count_params(size.params)} parameters "
                    f"({human_bytes(size.state_bytes)} for weights), more than the "
                    f"{human_bytes(avail)} of memory available on this machine; lower "
                    f"{' or '.join(keys)}")
        _check_memory(cfg, family, budget, resident, avail, world, node_ranks, source)
    each = budget.client_file_bytes
    every = cfg.runtime.checkpoint_every
    if 0 < every < cfg.train.rounds:
        shared = 0 if budget.shared is None else \
            budget.shared.state_bytes + FILE_ENTRY_BYTES * budget.shared.tensors
        need = n * each + shared + RANK_FILE_BYTES * (world or 2)
        error = checkpoint_space_error(
            cfg, need, f"{n} clients' private state at ~{human_bytes(each)} each and the "
            f"shared model; runtime.checkpoint_every={every}")
        if error:
            raise ConfigError(error)
    if cap is not None and cap < (n if world is None else hosted):
        if world is None:
            spilled, what = 1, f"at least one client's private state, ~{human_bytes(each)}"
        else:
            ranks = min(world - 1, node_ranks or world - 1)
            spilled = (hosted - resident) * ranks
            what = (f"{spilled} clients' private state at ~{human_bytes(each)} each: "
                    f"{hosted - resident} per client rank, {ranks} client ranks on this node"
                    f"{'' if node_ranks else ' (all assumed on one node)'}")
        error = spill_space_error(cfg, spilled * each, what)
        if error:
            raise ConfigError(error)


def _model_keys(family: Any, role: str, size: ModelSize) -> list[str]:
    if getattr(family, "name", None) == "hf":
        return ["model.pretrained", f"model.{role}.layers"]
    if "tokens" in getattr(family, "input_kinds", ()) and 2 * size.embedding > size.params:
        return [f"model.{role}.hidden", "data.vocab_size"]
    return [f"model.{role}.hidden", f"model.{role}.layers"]


def _check_memory(cfg: Config, family: Any, b: Budget, resident: int, avail: int,
                  world: int | None, node_ranks: int | None, source: str) -> None:
    if world is None:
        share = avail
        where = (f"the {human_bytes(avail)} of memory available on this machine (validate: "
                 "one client rank holding one client)")
    else:
        ranks = node_ranks or world
        share = avail // ranks
        how = (f"{source} puts {ranks} ranks on this node" if node_ranks else
               f"all {world} ranks assumed on one node: the launcher did not say")
        where = (f"its share of this node's available memory, {human_bytes(share)} "
                 f"({human_bytes(avail)} over {ranks} ranks; {how})")
    need = resident * b.resident_bytes + b.rank_bytes
    if need <= share:
        return
    one = b.resident_bytes + b.rank_bytes
    if one > share and b.activation_bytes * 2 > one:
        tokens = "tokens" in getattr(family, "input_kinds", ())
        big = max(((r, s) for r, s in ((b.private_role, b.private), (b.shared_role, b.shared))
                   if r and s is not None), key=lambda rs: rs[1].activation_bytes)[0]
        keys = ["train.batch_size", "data.max_len" if tokens else f"model.{big}.hidden"]
        what = (f"a training step would keep ~{human_bytes(b.activation_bytes)} of "
                f"activations (train.batch_size {cfg.train.batch_size}"
                f"{f' x data.max_len {cfg.data.max_len}' if tokens else ''})")
    elif one > share:
        role, size = max(((r, s) for r, s in ((b.private_role, b.private),
                                               (b.shared_role, b.shared))
                          if r and s is not None), key=lambda rs: rs[1].params)
        keys = _model_keys(family, role, size)
        train = size.state_bytes + (1 + b.moments) * FP32 * size.trainable
        what = (f"the {role} would hold {count_params(size.params)} parameters "
                f"({human_bytes(size.state_bytes)} for weights, ~{human_bytes(train)} with "
                f"gradients{' and Adam state' if b.moments else ''} per client)")
    else:
        fit = max(1, (share - b.rank_bytes) // max(1, b.resident_bytes))
        cap = cfg.runtime.resident_clients
        now = "is unset (all)" if cap is None else f"is {cap}"
        raise ConfigError(
            f"config error: 'runtime.resident_clients': a client rank would keep {resident} "
            f"clients in memory (~{human_bytes(b.resident_bytes)} each) and "
            f"~{human_bytes(b.rank_bytes)} for training, ~{human_bytes(need)} in all, more "
            f"than {where}; runtime.resident_clients {now}, use at most {fit}")
    quoted = "/".join(f"'{k}'" for k in keys)
    raise ConfigError(f"config error: {quoted}: {what}; a client rank would need "
                      f"~{human_bytes(need)}, more than {where}; lower {' or '.join(keys)}")
