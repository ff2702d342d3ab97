"""The federated run: setup on every rank, then the server loop (rank 0) and client loop.

Round r (0-based) on a client rank: train each hosted client in turn from the global shared
model theta, encode its delta, send all messages in one Gatherv, receive the server's one
message by Bcast, set theta <- theta + Decode(message), evaluate. Rank 0 decodes, averages in
client-id order, re-encodes, broadcasts, checks that every replica of theta is bit-identical
and appends the round to the HDF5 file.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from mpi4py import MPI
from tqdm import tqdm

from fedkd_mpi import __version__
from fedkd_mpi.algorithms import Algorithm, build_algorithm
from fedkd_mpi.codecs.svd import TensorSpec
from fedkd_mpi.comm.mpi import Transport
from fedkd_mpi.comm.wire import header_bytes, pack, unpack
from fedkd_mpi.config import Config
from fedkd_mpi.data import FederatedData
from fedkd_mpi.models import build_model
from fedkd_mpi.runtime.client import Client, accuracy, local_train, make_optimizer, trainable
from fedkd_mpi.seeding import torch_seed
from fedkd_mpi.storage.h5 import RunWriter

ROW = ("client", "num_samples", "mentor_metric", "mentee_metric", "mentor_train_loss",
       "mentee_train_loss", "train_time_s", "encode_time_s")
RANKVAL = ("train_s", "encode_s", "comm_s", "aggregate_s", "decode_s", "eval_s", "checksum",
           "rss_mb")


def clients_per_rank(num_clients: int, world_size: int) -> list[int]:
    """Static block map: client ranks 1..W-1 get contiguous, near-equal blocks of client ids."""
    blocks = np.array_split(np.arange(num_clients), world_size - 1)
    return [0] + [len(b) for b in blocks]


def client_ids_of(rank: int, counts: list[int]) -> list[int]:
    start = sum(counts[:rank])
    return list(range(start, start + counts[rank]))


def _injected_fault(rank: int) -> int:
    """Test hook: ``FEDKD_MPI_FAULT=RANK:ROUND`` makes that client rank raise in that round."""
    spec = os.environ.get("FEDKD_MPI_FAULT", "")
    if not spec:
        return -1
    r, rnd = (int(x) for x in spec.split(":"))
    return rnd - 1 if r == rank else -1


def _checksum(params: list[torch.Tensor]) -> int:
    crc = 0
    for p in params:
        crc = zlib.crc32(p.detach().cpu().contiguous().numpy().tobytes(), crc)
    return crc


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _broadcast_state(comm: MPI.Intracomm, model: torch.nn.Module) -> None:
    """Rank 0's parameters (all of them, frozen included) to every rank, as one float32 Bcast."""
    tensors = list(model.state_dict().values())
    flat = (torch.cat([t.reshape(-1).float() for t in tensors]).numpy()
            if comm.Get_rank() == 0 else np.empty(sum(t.numel() for t in tensors), np.float32))
    comm.Bcast(flat, root=0)
    pos = 0
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.from_numpy(flat[pos : pos + t.numel()]).view_as(t))
            pos += t.numel()


def count_trainable(cfg: Config, role: str, num_classes: int) -> list[TensorSpec]:
    """Specs of the tensors a model of ``role`` would communicate."""
    model = build_model(getattr(cfg.model, role), cfg.data.vocab_size, cfg.data.max_len,
                        num_classes, 0, cfg.model.freeze_embeddings)
    return [TensorSpec(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]


def dense_message_bytes(specs: list[TensorSpec]) -> int:
    return header_bytes(len(specs)) + 4 * sum(s.numel for s in specs)


@dataclass
class Context:
    cfg: Config
    comm: MPI.Intracomm
    device: torch.device
    alg: Algorithm
    transport: Transport
    counts: list[int]
    shared: torch.nn.Module | None
    params: list[torch.nn.Parameter]


def run(cfg: Config, comm: MPI.Intracomm, device: torch.device, fed: FederatedData,
        attrs: dict[str, object]) -> int:
    """Run every round. Returns 0; raises on any failure (the caller aborts the job)."""
    rank, size = comm.Get_rank(), comm.Get_size()
    alg = build_algorithm(cfg)
    counts = clients_per_rank(cfg.data.num_clients, size)
    transport = Transport(comm, counts, cfg.runtime.poll_interval_ms / 1000.0)
    m = cfg.model
    shared, params = None, []
    if alg.communicates:
        spec = alg.spec_of(alg.shared_role)
        shared = build_model(spec, cfg.data.vocab_size, cfg.data.max_len, fed.num_classes,
                             torch_seed(cfg.seed, "init"), m.freeze_embeddings)
        _broadcast_state(comm, shared)  # every replica starts from rank 0's bits
        shared.to(device)
        named = [(n, p) for n, p in shared.named_parameters() if p.requires_grad]
        alg.specs = [TensorSpec(n, tuple(p.shape)) for n, p in named]
        params = [p for _, p in named]
    ctx = Context(cfg, comm, device, alg, transport, counts, shared, params)
    if rank == 0:
        return _server(ctx, fed, attrs)
    _client(ctx, fed)
    return 0


# ---------------------------------------------------------------------------------------
# client ranks
# ---------------------------------------------------------------------------------------
def _make_clients(ctx: Context, fed: FederatedData) -> list[Client]:
    cfg, alg = ctx.cfg, ctx.alg
    out = []
    for cid in client_ids_of(ctx.comm.Get_rank(), ctx.counts):
        cl = Client(cid, fed.clients[cid])
        if alg.private_role is not None:
            cl.private = build_model(alg.spec_of(alg.private_role), cfg.data.vocab_size,
                                     cfg.data.max_len, fed.num_classes,
                                     torch_seed(cfg.seed, "mentor_init", cid),
                                     cfg.model.freeze_private_embeddings).to(ctx.device)
            lr = cfg.train.lr_mentor if alg.private_role == "mentor" else cfg.train.lr_mentee
            cl.opt_private = make_optimizer(trainable(cl.private), cfg.train.optimizer, lr)
        if ctx.shared is not None:
            cl.proj = alg.make_projection(torch_seed(cfg.seed, "wh_init", cid))
            extra = []
            if cl.proj is not None:
                cl.proj.to(ctx.device)
                extra = list(cl.proj.parameters())
            lr = cfg.train.lr_mentor if alg.shared_role == "mentor" else cfg.train.lr_mentee
            cl.opt_shared = make_optimizer(ctx.params + extra, cfg.train.optimizer, lr)
        out.append(cl)
    return out


def _client(ctx: Context, fed: FederatedData) -> None:
    cfg, alg = ctx.cfg, ctx.alg
    clients = _make_clients(ctx, fed)
    bs = cfg.train.eval_batch_size
    fault = _injected_fault(ctx.comm.Get_rank())
    for rnd in range(cfg.train.rounds):
        tv = dict.fromkeys(RANKVAL, 0.0)
        rows = np.full((len(clients), len(ROW)), np.nan)
        theta0 = [p.detach().clone() for p in ctx.params]
        msgs = []
        for i, cl in enumerate(clients):
            with torch.no_grad():
                for p, t0 in zip(ctx.params, theta0, strict=True):
                    p.copy_(t0)
            t = time.perf_counter()
            losses = local_train(alg, cl, ctx.shared, cfg, rnd, ctx.device)
            t_train = time.perf_counter() - t
            if rnd == fault:  # after local training: a failure in the middle of a round
                raise RuntimeError(f"injected fault (FEDKD_MPI_FAULT) on rank "
                                   f"{ctx.comm.Get_rank()} in round {rnd + 1}")
            t = time.perf_counter()
            row = dict(client=cl.cid, num_samples=cl.data.num_train, train_time_s=t_train,
                       mentor_train_loss=losses.get("mentor_loss", np.nan),
                       mentee_train_loss=losses.get("mentee_loss", np.nan))
            if cl.private is not None:
                row[f"{alg.private_role}_metric"] = accuracy(cl.private, cl.data.test_x,
                                                             cl.data.test_y, bs, ctx.device)
            tv["eval_s"] += time.perf_counter() - t
            if ctx.shared is not None:
                t = time.perf_counter()
                delta = [p.detach() - t0 for p, t0 in zip(ctx.params, theta0, strict=True)]
                enc = alg.client_encode(delta, rnd, cl.state)
                msgs.append(pack(cl.cid, rnd, enc, alg.wire_specs))
                row["encode_time_s"] = time.perf_counter() - t
                tv["encode_s"] += row["encode_time_s"]
            tv["train_s"] += t_train
            rows[i] = [row.get(k, np.nan) for k in ROW]
        if ctx.shared is not None:
            t = time.perf_counter()
            ctx.transport.gather_messages(msgs)
            buf = ctx.transport.broadcast(None)
            tv["comm_s"] = time.perf_counter() - t
            t = time.perf_counter()
            update = alg.client_decode(unpack(buf, alg.wire_specs, alg.wire_body_nbytes(),
                                           alg.wire_dtype).encoded, ctx.device)
            alg.apply_update(ctx.params, theta0, update, [cl.state for cl in clients])
            tv["decode_s"] = time.perf_counter() - t
            t = time.perf_counter()
            col = ROW.index(f"{alg.shared_role}_metric")
            for i, cl in enumerate(clients):
                rows[i, col] = accuracy(ctx.shared, cl.data.test_x, cl.data.test_y, bs,
                                        ctx.device)
            tv["eval_s"] += time.perf_counter() - t
            tv["checksum"] = _checksum(ctx.params)
        tv["rss_mb"] = _rss_mb()
        ctx.transport.gather_rows(rows, len(ROW))
        ctx.transport.gather_rank_values(np.array([tv[k] for k in RANKVAL]))


# ---------------------------------------------------------------------------------------
# rank 0
# ---------------------------------------------------------------------------------------
def _server(ctx: Context, fed: FederatedData, attrs: dict[str, object]) -> int:
    cfg, alg, comm = ctx.cfg, ctx.alg, ctx.comm
    n, size = cfg.data.num_clients, comm.Get_size()
    specs = alg.specs
    attrs = dict(attrs)
    attrs.update(
        header_bytes=header_bytes(len(alg.wire_specs)) if specs else 0,
        dense_bytes_mentee=dense_message_bytes(count_trainable(cfg, "mentee", fed.num_classes)),
        dense_bytes_mentor=dense_message_bytes(count_trainable(cfg, "mentor", fed.num_classes)),
        client_rank=np.repeat(np.arange(size), ctx.counts).astype(np.int64),
    )
    writer = RunWriter(cfg.output, attrs, n, size, [s.name for s in specs],
                       np.array([[s.rows, s.cols] for s in specs], dtype=np.int64))
    try:
        history = _server_loop(ctx, fed, writer)
    except BaseException:
        writer.close("failed")
        raise
    writer.close("completed")
    _print_summary(cfg, history, attrs, fed)
    return 0


def _server_loop(ctx: Context, fed: FederatedData, writer: RunWriter) -> list[dict]:
    cfg, alg = ctx.cfg, ctx.alg
    n, size, rounds = cfg.data.num_clients, ctx.comm.Get_size(), cfg.train.rounds
    nl = len(alg.specs)
    weights = (np.ones(n) if cfg.train.aggregation == "uniform"
               else fed.sizes.astype(np.float64))
    tty = sys.stderr.isatty() and cfg.runtime.progress
    bar = tqdm(total=rounds, desc=f"{cfg.algorithm}", unit="round", disable=not tty,
               file=sys.stderr)
    history = []
    for rnd in range(rounds):
        t_round = time.perf_counter()
        up = np.zeros(n, np.int64)
        down = np.zeros(n, np.int64)
        rank_up = np.full((n, nl), -1, np.int64)
        rank_down = np.full(nl, -1, np.int64)
        t_agg = t_dec = t_comm = 0.0
        threshold = alg.threshold(rnd)
        if ctx.shared is not None:
            msgs, st = ctx.transport.gather_messages([])
            t = time.perf_counter()
            parsed = [unpack(buf, alg.wire_specs, alg.wire_body_nbytes(), alg.wire_dtype)
                      for buf in msgs]
            for cid, msg in enumerate(parsed):
                if msg.client_id != cid or msg.round != rnd:
                    raise RuntimeError(f"message from client {msg.client_id} round "
                                       f"{msg.round + 1} where client {cid} round {rnd + 1} "
                                       "was expected")
                rank_up[cid] = msg.encoded.ranks[:nl]
            up[:] = [b.size for b in msgs]
            agg = alg.server_aggregate([m.encoded for m in parsed], weights, rnd)
            out = pack(-1, rnd, agg, alg.wire_specs)
            rank_down[:] = agg.ranks[:nl]
            t_agg = time.perf_counter() - t
            t = time.perf_counter()
            ctx.transport.broadcast(out)
            t_comm = st.transfer_s + time.perf_counter() - t
            down[:] = out.size
            t = time.perf_counter()
            update = alg.client_decode(agg, ctx.device)
            alg.apply_update(ctx.params, [p.detach().clone() for p in ctx.params], update, [])
            t_dec = time.perf_counter() - t
        rows = ctx.transport.gather_rows(np.zeros((0, len(ROW))), len(ROW))
        rankvals = ctx.transport.gather_rank_values(np.zeros(len(RANKVAL)))
        rv = {k: rankvals[:, i] for i, k in enumerate(RANKVAL)}
        rv["aggregate_s"][0], rv["decode_s"][0], rv["comm_s"][0] = t_agg, t_dec, t_comm
        rv["rss_mb"][0] = _rss_mb()
        if ctx.shared is not None:
            ref = _checksum(ctx.params)
            rv["checksum"][0] = ref
            bad = [r for r in range(1, size) if int(rv["checksum"][r]) != ref]
            if bad:
                raise RuntimeError(f"round {rnd + 1}: shared-model replicas on ranks {bad} "
                                   "differ from rank 0's (non-deterministic decode?)")
        col = {k: rows[:, i] for i, k in enumerate(ROW)}
        client_side = rv["encode_s"][1:] + rv["decode_s"][1:]
        rec = dict(
            round=rnd + 1,
            energy_threshold=np.nan if threshold is None else threshold,
            bytes_up=int(up.sum()), bytes_down=int(down.sum()),
            mentor_metric=float(np.mean(col["mentor_metric"])),
            mentee_metric=float(np.mean(col["mentee_metric"])),
            wall_time_s=time.perf_counter() - t_round,
            codec_time_s=t_agg + t_dec + float(client_side.max(initial=0.0)),
            comm_time_s=t_comm, server_time_s=t_agg + t_dec,
            train_time_s=float(rv["train_s"][1:].max(initial=0.0)),
        )
        clients = dict(bytes_up=up, bytes_down=down, mentor_metric=col["mentor_metric"],
                       mentee_metric=col["mentee_metric"],
                       mentor_train_loss=col["mentor_train_loss"],
                       mentee_train_loss=col["mentee_train_loss"],
                       num_samples=col["num_samples"].astype(np.int64),
                       train_time_s=col["train_time_s"], encode_time_s=col["encode_time_s"])
        writer.append(rec, clients, {k: rv[k] for k in ("train_s", "encode_s", "comm_s",
                                                       "aggregate_s", "decode_s", "eval_s")},
                      rv["rss_mb"], rank_up, rank_down, rv["checksum"].astype(np.int64))
        history.append(rec)
        line = (f"round {rnd + 1}/{rounds}  T={rec['energy_threshold']:.4f}  "
                f"mentor={rec['mentor_metric']:.4f}  mentee={rec['mentee_metric']:.4f}  "
                f"up={up.mean() / 1e6:.3f} MB/client  {rec['wall_time_s']:.1f}s")
        if tty:
            bar.set_postfix_str(line.split("  ", 1)[1])
            bar.update()
        else:
            print(line, flush=True)
    bar.close()
    return history


def _print_summary(cfg: Config, history: list[dict], attrs: dict, fed: FederatedData) -> None:
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
        ["mentor test accuracy (mean over clients)", _fmt(last["mentor_metric"])],
        ["mentee test accuracy (mean over clients)", _fmt(last["mentee_metric"])],
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


def fedkd_attrs(cfg: Config, comm: MPI.Intracomm, devices: list[str]) -> dict[str, object]:
    """Root attributes of the run file."""
    return dict(
        fedkd_mpi_version=__version__, config=cfg.to_yaml(), seed=cfg.seed,
        world_size=comm.Get_size(), num_clients=cfg.data.num_clients, algorithm=cfg.algorithm,
        metric_name="accuracy", mpi_library=MPI.Get_library_version().strip(),
        torch_version=torch.__version__, devices=list(devices),
        split_protocol=(f"{cfg.data.partition} partition over {cfg.data.num_clients} clients; "
                        f"per-client held-out test fraction {cfg.data.test_fraction}"),
        round_numbering="1-based: rounds/round = r + 1",
        created_unix=time.time(),
    )
