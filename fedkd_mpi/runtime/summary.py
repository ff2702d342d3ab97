"""The run file's fixed content (root attributes, static datasets) and the end-of-run
summary printed by rank 0."""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from mpi4py import MPI

from fedkd_mpi import __version__
from fedkd_mpi.comm.wire import header_bytes
from fedkd_mpi.config import Config
from fedkd_mpi.data import FederatedData
from fedkd_mpi.metrics import metric_names
from fedkd_mpi.runtime.context import Context
from fedkd_mpi.storage.h5 import RunWriter, open_live
from fedkd_mpi.tensors import TensorSpec


def count_trainable(cfg: Config, role: str, num_classes: int) -> list[TensorSpec]:
    """Specs of the tensors a model of ``role`` would communicate."""
    from fedkd_mpi.models import build_for

    model = build_for(cfg, role, num_classes, 0, cfg.model.freeze_embeddings)
    return [TensorSpec(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]


def dense_message_bytes(specs: list[TensorSpec]) -> int:
    """Bytes of one message carrying ``specs`` as float32 (the dense reference)."""
    return header_bytes(len(specs)) + 4 * sum(s.numel for s in specs)


def writer_for(ctx: Context, fed: FederatedData,
               attrs: dict[str, object]) -> tuple[RunWriter, dict[str, object]]:
    """Rank 0: a new run file, or the existing one cut back to the checkpoint (resume)."""
    cfg, alg = ctx.cfg, ctx.alg
    specs = alg.specs
    attrs = dict(attrs)
    attrs.update(
        header_bytes=header_bytes(len(alg.wire_specs)) if specs else 0,
        dense_bytes_mentee=dense_message_bytes(count_trainable(cfg, "mentee", fed.num_classes)),
        dense_bytes_mentor=dense_message_bytes(count_trainable(cfg, "mentor", fed.num_classes)),
        client_rank=ctx.placement.client_rank,
        metric_names=metric_names(cfg.data.metric, fed.num_classes),
    )
    extra = tuple(f"{role}_{m}" for m in attrs["metric_names"] for role in ("mentor", "mentee"))
    if ctx.start > 0:  # resume: same file, per-round datasets cut back to the checkpoint
        with open_live(cfg.output) as f:
            before = [int(x) for x in f.attrs.get("resumed_from_round", [])]
            unix = [float(x) for x in f.attrs.get("resumed_unix", [])]
        writer = RunWriter.resume(cfg.output, ctx.start, {
            "resumed_from_round": np.array([*before, ctx.start], np.int64),
            "resumed_unix": np.array([*unix, time.time()]), "devices": attrs["devices"]})
        return writer, attrs
    static = {"partition/num_train": fed.sizes.astype(np.int64)}
    if fed.label_hist is not None:
        static["partition/label_hist"] = fed.label_hist.astype(np.int64)
    writer = RunWriter(cfg.output, attrs, cfg.data.num_clients, ctx.comm.Get_size(),
                       [s.name for s in specs],
                       np.array([[s.rows, s.cols] for s in specs], dtype=np.int64),
                       extra_fields=extra, static=static)
    return writer, attrs


def print_summary(cfg: Config, history: list[dict], attrs: dict) -> None:
    from tabulate import tabulate

    n, rounds = cfg.data.num_clients, len(history)
    last = history[-1]
    up = sum(h["bytes_up"] for h in history) / n
    down = sum(h["bytes_down"] for h in history) / n
    total = up + down

    def ratio(per_msg: int) -> str:
        return f"{2 * rounds * per_msg / total:.1f}x" if total > 0 else "n/a (no communication)"

    rows = [
        ["algorithm", cfg.algorithm], ["rounds", rounds], ["clients", n],
        [f"mentor test {cfg.data.metric} (mean over clients)", _fmt(last["mentor_metric"])],
        [f"mentee test {cfg.data.metric} (mean over clients)", _fmt(last["mentee_metric"])],
        ["MB up per client (total)", f"{up / 1e6:.4f}"],
        ["MB down per client (total)", f"{down / 1e6:.4f}"],
        ["reduction vs mentee sent dense", ratio(int(attrs["dense_bytes_mentee"]))],
        ["reduction vs FedAvg on the mentor", ratio(int(attrs["dense_bytes_mentor"]))],
        ["output", cfg.output],
    ]
    print(tabulate(rows, tablefmt="simple", disable_numparse=True), flush=True)
    print("(reductions: measured bytes up+down against the dense message size of that model "
          "for the same rounds)", flush=True)


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.4f}"


def split_protocol(d) -> str:
    """One line saying how training and held-out data were formed (root attr)."""
    part = d.partition + (f" (alpha={d.dirichlet_alpha})" if d.partition == "dirichlet" else "")
    sub = "" if d.max_samples is None else f", subsampled to {d.max_samples} examples"
    if d.test_protocol == "global":
        cap = "" if d.test_samples is None else f", {d.test_samples} examples"
        return (f"global: one held-out set (official test split if the dataset has one, else a "
                f"seeded {d.test_fraction} of the corpus{cap}) evaluated by every client's "
                f"models; the rest split {part} over {d.num_clients} clients{sub}")
    return (f"per_client: {part} partition over {d.num_clients} clients{sub}; each client's "
            f"models evaluated on a held-out {d.test_fraction} of its own share")


def run_attrs(cfg: Config, comm: MPI.Intracomm, devices: list[str],
              fed: FederatedData) -> dict[str, object]:
    """Root attributes of the run file."""
    return dict(
        fedkd_mpi_version=__version__, config=cfg.to_yaml(), seed=cfg.seed,
        world_size=comm.Get_size(), num_clients=cfg.data.num_clients, algorithm=cfg.algorithm,
        metric_name=cfg.data.metric, mpi_library=MPI.Get_library_version().strip(),
        torch_version=torch.__version__, devices=list(devices),
        split_protocol=split_protocol(cfg.data),
        round_numbering="1-based: rounds/round = r + 1",
        created_unix=time.time(),
        class_names=list(fed.class_names), dataset=cfg.data.name,
    )
