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
from fedkd_mpi.config import Config, changed_settings
from fedkd_mpi.data import FederatedData
from fedkd_mpi.metrics import metric_names
from fedkd_mpi.runtime.context import Context, record_fields
from fedkd_mpi.storage.h5 import RunWriter, open_live, writer_id
from fedkd_mpi.tensors import TensorSpec


def count_trainable(cfg: Config, role: str, num_classes: int) -> list[TensorSpec]:
    """Specs of the tensors a model of ``role`` would communicate."""
    from fedkd_mpi.models import build_for

    model = build_for(cfg, role, num_classes, 0, cfg.model.freeze_embeddings)
    return [TensorSpec(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]


def dense_message_bytes(specs: list[TensorSpec]) -> int:
    """Bytes of one message carrying ``specs`` as float32 (the dense reference)."""
    return header_bytes(len(specs)) + 4 * sum(s.numel for s in specs)


def writer_for(ctx: Context, fed: FederatedData, attrs: dict[str, object]) -> RunWriter:
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
        layer_meta=type(alg.codec).meta_means if alg.codec is not None else "none",
    )
    extra = record_fields(cfg, alg, attrs["metric_names"])
    if ctx.start > 0:  # resume: same file, per-round datasets cut back to the checkpoint
        with open_live(cfg.output) as f:
            before = [int(x) for x in f.attrs.get("resumed_from_round", [])]
            unix = [float(x) for x in f.attrs.get("resumed_unix", [])]
            notes = [str(x) for x in f.attrs.get("lease_takeovers", [])]
        more = {"lease_takeovers": [*notes, *attrs["lease_takeovers"]]} \
            if "lease_takeovers" in attrs else {}
        writer = RunWriter.resume(cfg.output, ctx.start, {
            "resumed_from_round": np.array([*before, ctx.start], np.int64),
            "resumed_unix": np.array([*unix, time.time()]), "devices": attrs["devices"],
            **more})
        return writer
    static = {"partition/num_train": fed.sizes.astype(np.int64)}
    if fed.label_hist is not None:
        static["partition/label_hist"] = fed.label_hist.astype(np.int64)
    if fed.test_label_hist is not None:
        static["partition/test_label_hist"] = fed.test_label_hist.astype(np.int64)
    if fed.val_label_hist is not None:
        static["partition/val_label_hist"] = fed.val_label_hist.astype(np.int64)
    writer = RunWriter(cfg.output, attrs, cfg.data.num_clients, ctx.comm.Get_size(),
                       [s.name for s in specs],
                       np.array([[s.rows, s.cols] for s in specs], dtype=np.int64),
                       extra_fields=extra, static=static)
    return writer


def print_summary(cfg: Config) -> bool:
    """The end-of-run table, read back from the run file by the same code as ``fedkd-mpi
    report`` (fedkd_mpi/analysis/reader.py), so both give the same figures. False, after one
    line on stderr, when the file cannot give this run's summary (unreadable, or written by
    another process since: never another job's figures as this run's)."""
    import sys

    from tabulate import tabulate

    from fedkd_mpi.analysis.reader import RunFileError, load
    from fedkd_mpi.analysis.spread import spread_rows

    try:
        run = load(cfg.output)
        if run.attrs.get("writer") != writer_id():
            raise RunFileError(f"{cfg.output} was written by another process "
                               f"({run.attrs.get('writer')}) after this run closed it")
    except RunFileError as exc:
        print(f"fedkd-mpi: no end-of-run summary: {exc}", file=sys.stderr, flush=True)
        return False
    s = run.summary
    print(tabulate([["algorithm", s.algorithm], ["aggregator", cfg.train.aggregation],
                    ["rounds", s.rounds_completed], ["clients", s.num_clients]],
                   tablefmt="plain", disable_numparse=True))
    print(settings_text(cfg.model_dump(mode="json")))
    rows = [[name, _fmt(s.final[f"mentor_{name}"]), _fmt(s.final[f"mentee_{name}"]),
             _fmt(s.majority_rate) if name == "accuracy" else ""] for name in s.metric_names]
    print(tabulate(rows, headers=["held-out (mean over clients)", "mentor", "mentee",
                                  "majority class"], tablefmt="simple", disable_numparse=True))
    spread = spread_rows(run)
    if spread and s.num_clients > 1:
        print(tabulate(spread, tablefmt="plain", disable_numparse=True))
    rows = [["MB up per client (total)", f"{s.mb_up_per_client:.4f}"],
            ["MB down per client (total)", f"{s.mb_down_per_client:.4f}"],
            ["reduction vs mentee sent dense", _x(s.reduction_vs_dense_mentee)],
            ["reduction vs FedAvg on the mentor", _x(s.reduction_vs_mentor_fedavg)],
            ["output", cfg.output]]
    print(tabulate(rows, tablefmt="plain", disable_numparse=True), flush=True)
    print("(majority class: the accuracy of always answering the held-out data's most frequent "
          "class; reductions: the same messages carrying that model dense, against the bytes "
          "sent up+down)", flush=True)
    return True


def settings_text(tree: dict) -> str:
    """Every non-default setting (output and runtime aside), wrapped: the line that tells two
    runs apart (shared with ``fedkd-mpi report``)."""
    import textwrap

    items = changed_settings(tree)
    return textwrap.fill(" ".join(items) or "(all defaults)", width=96,
                         initial_indent="settings    ", subsequent_indent=" " * 12,
                         break_on_hyphens=False, break_long_words=False)


def _x(v: float) -> str:
    return "n/a (no communication)" if math.isnan(v) else f"{v:.1f}x"


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
        **getattr(fed, "provenance", {}),  # data files: data_path, data_bytes, data_sha256, ...
    )
