"""What every rank of a running job shares: the :class:`Context`, the per-client telemetry
row layout, the round-boundary checkpoint step, and held-out evaluation."""

from __future__ import annotations

import resource
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI

from fedkd_mpi.aggregators import Aggregator
from fedkd_mpi.algorithms import Algorithm
from fedkd_mpi.comm.mpi import Transport
from fedkd_mpi.comm.placement import Placement
from fedkd_mpi.config import Config
from fedkd_mpi.data import FederatedData
from fedkd_mpi.metrics import METRICS, evaluate, metric_names
from fedkd_mpi.runtime.checkpoint import Checkpointer, StopFlag, agree

#: per-client telemetry row a client rank sends rank 0 each round (float64)
ROW = ("client", "num_samples", "mentor_metric", "mentee_metric", "mentor_train_loss",
       "mentee_train_loss", "train_time_s", "encode_time_s",
       *(f"{role}_{m}" for m in METRICS for role in ("mentor", "mentee")),
       "skipped")  # 1: update dropped (runtime.nonfinite=skip)
#: roles whose metrics a row carries
ROLES = ("mentor", "mentee")


def record_fields(cfg: Config, alg: Algorithm, names: tuple[str, ...] | list[str]
                  ) -> tuple[str, ...]:
    """The float64 ``rounds/`` + ``clients/`` fields beyond storage.schema's fixed ones,
    declared here once for the rows, the writer and the round record: every metric ``names``
    per role, the same on the validation split (``data.val_fraction`` > 0: ``val_<role>_*``),
    and the algorithm's :attr:`~fedkd_mpi.algorithms.Algorithm.loss_parts` (``loss_<part>``,
    the mean over the round's local steps)."""
    out = [f"{role}_{m}" for m in names for role in ROLES]
    if cfg.data.val_fraction > 0:
        out += [f"val_{role}_{m}" for m in ("metric", *names) for role in ROLES]
    return (*out, *(f"loss_{p}" for p in alg.loss_parts))


def row_layout(cfg: Config, alg: Algorithm) -> tuple[str, ...]:
    """This run's per-client row: :data:`ROW`, then the :func:`record_fields` it lacks."""
    return (*ROW, *(k for k in record_fields(cfg, alg, METRICS) if k not in ROW))


#: per-rank values gathered each round
RANKVAL = ("train_s", "encode_s", "comm_s", "aggregate_s", "decode_s", "eval_s", "checksum",
           "rss_mb", "round_s")


@dataclass
class Context:
    cfg: Config
    comm: MPI.Intracomm
    device: torch.device
    alg: Algorithm
    aggregator: Aggregator
    placement: Placement
    transport: Transport
    shared: torch.nn.Module | None
    params: list[torch.nn.Parameter]
    ckpt: Checkpointer
    stop: StopFlag
    start: int = 0  # rounds already done (resume)
    ckdir: Path | None = None  # checkpoint round directory to resume from
    row: tuple[str, ...] = ROW  # the per-client row (row_layout)


def checksum(params: list[torch.Tensor]) -> int:
    """CRC32 of the shared parameters' bytes (every replica must agree)."""
    crc = 0
    for p in params:
        crc = zlib.crc32(p.detach().cpu().contiguous().numpy().tobytes(), crc)
    return crc


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def round_boundary(ctx: Context, rnd: int, store) -> bool:
    """Collective, after round ``rnd``: checkpoint when due or when any rank got SIGTERM /
    SIGUSR1. True (on every rank) when the run must stop now."""
    cfg, done = ctx.cfg, rnd + 1
    if done >= cfg.train.rounds:  # the last round: finish normally
        return False
    stop = agree(ctx.comm, ctx.stop.signum != 0, ctx.transport.poll_s)
    every = cfg.runtime.checkpoint_every
    if stop or (every > 0 and done % every == 0):
        server = None
        if ctx.comm.Get_rank() == 0:
            server = {"server_state": ctx.alg.server.state_dict(),
                      "aggregator": ctx.aggregator.state_dict()}
            if ctx.shared is not None:
                server["shared"] = ctx.shared.state_dict()
        ctx.ckpt.save(done, store, server)
    return stop


def evaluates(cfg: Config, rnd: int) -> bool:
    """Held-out evaluation after round ``rnd`` (every train.eval_every rounds and the last)."""
    return (rnd + 1) % cfg.train.eval_every == 0 or rnd + 1 == cfg.train.rounds


def metric_cols(cfg: Config, fed: FederatedData, role: str, model: torch.nn.Module, data,
                device: torch.device, split: str = "test") -> dict[str, float]:
    """``<role>_metric`` (the headline, data.metric) and ``<role>_<name>`` for every metric of
    the task, of ``model`` on the client's held-out data (``split="val"``: on its validation
    split, as ``val_<role>_*``; nothing when it has none)."""
    x, y = (data.test_x, data.test_y) if split == "test" else (data.val_x, data.val_y)
    if x is None:
        return {}
    pre = "" if split == "test" else f"{split}_"
    names = metric_names(cfg.data.metric, fed.num_classes)
    res = evaluate(model, x, y, cfg.train.eval_batch_size, device, names)
    return {f"{pre}{role}_metric": res[names[0]],
            **{f"{pre}{role}_{k}": v for k, v in res.items()}}


def nanmean(x: np.ndarray) -> float:
    """Mean over the finite entries (clients that were not sampled are NaN); NaN if none."""
    x = np.asarray(x, np.float64)
    ok = ~np.isnan(x)
    return float(x[ok].mean()) if ok.any() else float("nan")
