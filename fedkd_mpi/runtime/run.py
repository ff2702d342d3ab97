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
import shutil
import signal
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI
from tqdm import tqdm

from fedkd_mpi import __version__
from fedkd_mpi.algorithms import Algorithm, build_algorithm
from fedkd_mpi.codecs.svd import TensorSpec
from fedkd_mpi.comm.mpi import Transport
from fedkd_mpi.comm.wire import SKIP, header_bytes, pack, pack_skip, unpack
from fedkd_mpi.config import Config
from fedkd_mpi.data import FederatedData
from fedkd_mpi.metrics import METRICS, evaluate, metric_names
from fedkd_mpi.models import build_for
from fedkd_mpi.runtime.checkpoint import (
    EXIT_INTERRUPTED,
    Checkpointer,
    StopFlag,
    agree,
    checkpoint_dir,
    client_file,
)
from fedkd_mpi.runtime.client import (
    Client,
    NonFiniteError,
    local_train,
    make_optimizer,
    trainable,
)
from fedkd_mpi.runtime.faults import (
    ClientSnapshot,
    describe,
    inject_fault,
    injected_nan,
    nonfinite_body,
    nonfinite_stop,
    nonfinite_tensors,
    poison,
)
from fedkd_mpi.runtime.residency import (
    ClientStore,
    available_memory_bytes,
    budget_error,
    per_client_bytes,
)
from fedkd_mpi.runtime.sampling import aggregation_weights, round_participants
from fedkd_mpi.seeding import torch_seed
from fedkd_mpi.storage.h5 import RunWriter, open_live

ROW = ("client", "num_samples", "mentor_metric", "mentee_metric", "mentor_train_loss",
       "mentee_train_loss", "train_time_s", "encode_time_s",
       *(f"{role}_{m}" for m in METRICS for role in ("mentor", "mentee")),
       "skipped")  # 1: update dropped (runtime.nonfinite=skip)
RANKVAL = ("train_s", "encode_s", "comm_s", "aggregate_s", "decode_s", "eval_s", "checksum",
           "rss_mb", "round_s")


def clients_per_rank(num_clients: int, world_size: int) -> list[int]:
    """Static block map: client ranks 1..W-1 get contiguous, near-equal blocks of client ids."""
    blocks = np.array_split(np.arange(num_clients), world_size - 1)
    return [0] + [len(b) for b in blocks]


def client_ids_of(rank: int, counts: list[int]) -> list[int]:
    start = sum(counts[:rank])
    return list(range(start, start + counts[rank]))


def _injected_signal(rank: int) -> int:
    """Test hook: ``FEDKD_MPI_SIGNAL=RANK:ROUND`` makes that rank send itself SIGUSR1 at the
    start of that round (1-based), as a scheduler would."""
    spec = os.environ.get("FEDKD_MPI_SIGNAL", "")
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
    model = build_for(cfg, role, num_classes, 0, cfg.model.freeze_embeddings)
    return [TensorSpec(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]


def memory_budget_error(cfg: Config, rank: int, hosted: int, num_classes: int,
                        node_ranks: int) -> str:
    """Start-up check of a client rank: '' when ``runtime.resident_clients`` clients' private
    state (estimated from the model sizes) fits this rank's share of the node's memory, and
    the spilled rest fits the spill directory; else a one-line error."""
    alg = build_algorithm(cfg)
    private = None
    if alg.private_role is not None:
        private = build_for(cfg, alg.private_role, num_classes, 0,
                            cfg.model.freeze_private_embeddings)
    proj = alg.make_projection(0) if alg.shared_role is not None else None
    shared = (sum(s.numel for s in count_trainable(cfg, alg.shared_role, num_classes))
              if alg.shared_role is not None else 0)
    each = per_client_bytes(private, proj, shared, cfg.train.optimizer)
    spill = Path(cfg.runtime.spill_dir or tempfile.gettempdir())
    while not spill.exists():
        spill = spill.parent
    return budget_error(each, hosted, cfg.runtime.resident_clients, node_ranks,
                        available_memory_bytes(), shutil.disk_usage(spill).free, rank)


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
    ckpt: Checkpointer | None = None
    stop: StopFlag | None = None
    start: int = 0  # rounds already done (resume)
    ckdir: Path | None = None  # checkpoint round directory to resume from


def run(cfg: Config, comm: MPI.Intracomm, device: torch.device, fed: FederatedData,
        attrs: dict[str, object], resume: bool = False) -> int:
    """Run every round (from the last checkpoint with ``resume``).

    Returns 0, or :data:`EXIT_INTERRUPTED` on every rank when a signal stopped the run at a
    round boundary after a checkpoint; raises on any failure (the caller aborts the job).
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    alg = build_algorithm(cfg)
    counts = clients_per_rank(cfg.data.num_clients, size)
    transport = Transport(comm, counts, cfg.runtime.poll_interval_ms / 1000.0)
    m = cfg.model
    shared, params = None, []
    if alg.communicates:
        shared = build_for(cfg, alg.shared_role, fed.num_classes, torch_seed(cfg.seed, "init"),
                           m.freeze_embeddings)
    ckpt = Checkpointer(cfg, comm, transport.poll_s)
    start, ckdir = 0, None
    if resume:
        start, ckdir, server = ckpt.load()
        if server is not None:  # rank 0: the shared model and the server's algorithm state
            if shared is not None:
                shared.load_state_dict(server["shared"])
            alg.server_state.clear()
            alg.server_state.update(server["server_state"])
    if shared is not None:
        _broadcast_state(comm, shared)  # every replica starts from rank 0's bits
        shared.to(device)
        named = [(n, p) for n, p in shared.named_parameters() if p.requires_grad]
        alg.specs = [TensorSpec(n, tuple(p.shape)) for n, p in named]
        params = [p for _, p in named]
    stop = StopFlag().install()
    ctx = Context(cfg, comm, device, alg, transport, counts, shared, params, ckpt, stop, start,
                  ckdir)
    try:
        if rank == 0:
            return _server(ctx, fed, attrs)
        return _client(ctx, fed)
    finally:
        stop.restore()


# ---------------------------------------------------------------------------------------
# client ranks
# ---------------------------------------------------------------------------------------
def _new_client(ctx: Context, fed: FederatedData, cid: int) -> Client:
    """Client ``cid`` with its seeded initial private state (the same whenever it is built)."""
    cfg, alg = ctx.cfg, ctx.alg
    cl = Client(cid, fed.clients[cid])
    if alg.private_role is not None:
        cl.private = build_for(cfg, alg.private_role, fed.num_classes,
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
    return cl


def _client(ctx: Context, fed: FederatedData) -> int:
    """A client rank: its clients in a :class:`ClientStore` (spilled beyond
    ``runtime.resident_clients``), restored from the checkpoint on resume."""
    cfg, rank = ctx.cfg, ctx.comm.Get_rank()
    cids = client_ids_of(rank, ctx.counts)
    store = ClientStore(cids, lambda cid: _new_client(ctx, fed, cid),
                        cfg.runtime.resident_clients, cfg.runtime.spill_dir, rank, ctx.device)
    try:
        if ctx.ckdir is not None:
            for cid in cids:
                store.adopt(cid, client_file(ctx.ckdir, cid))
        return _client_rounds(ctx, fed, store)
    finally:
        store.close()


def _client_rounds(ctx: Context, fed: FederatedData, store: ClientStore) -> int:
    cfg, alg = ctx.cfg, ctx.alg
    cids = store.cids
    sig_round = _injected_signal(ctx.comm.Get_rank())
    for rnd in range(ctx.start, cfg.train.rounds):
        if rnd == sig_round:
            os.kill(os.getpid(), signal.SIGUSR1)
        mask = round_participants(cfg.train, cfg.data.num_clients, cfg.seed, rnd)
        tv = dict.fromkeys(RANKVAL, 0.0)
        t_round = time.perf_counter()
        rows = np.full((len(cids), len(ROW)), np.nan)
        theta0 = [p.detach().clone() for p in ctx.params]
        msgs = []
        for i, cid in enumerate(cids):
            if not mask[cid]:  # not sampled: no training, nothing sent (a 0-byte slot)
                rows[i, ROW.index("client")] = cid
                rows[i, ROW.index("num_samples")] = fed.clients[cid].num_train
                if ctx.shared is not None:
                    msgs.append(np.zeros(0, np.uint8))
                continue
            cl = snap = None  # drop the previous client first: at most resident_clients live
            cl = store.get(cid)
            with torch.no_grad():
                for p, t0 in zip(ctx.params, theta0, strict=True):
                    p.copy_(t0)
            # runtime.nonfinite=skip: restore this state if the loss or update is NaN/Inf
            snap = ClientSnapshot.take(cl) if cfg.runtime.nonfinite == "skip" else None
            nan_at = injected_nan(cid, rnd)  # test hook FEDKD_MPI_NAN
            if nan_at == "loss":
                poison(trainable(cl.private) if cl.private is not None else ctx.params)
            bad, losses = None, {}
            t = time.perf_counter()
            try:
                losses = local_train(alg, cl, ctx.shared, cfg, rnd, ctx.device)
            except NonFiniteError as exc:
                bad = str(exc)
            t_train = time.perf_counter() - t
            inject_fault(ctx.comm.Get_rank(), rnd)  # test hook FEDKD_MPI_FAULT (mid-round)
            row = dict(client=cl.cid, num_samples=cl.data.num_train, train_time_s=t_train,
                       mentor_train_loss=losses.get("mentor_loss", np.nan),
                       mentee_train_loss=losses.get("mentee_loss", np.nan), skipped=0)
            if ctx.shared is not None and bad is None:
                t = time.perf_counter()
                delta = [p.detach() - t0 for p, t0 in zip(ctx.params, theta0, strict=True)]
                if nan_at == "update":
                    poison(delta)
                what = nonfinite_tensors(delta, [s.name for s in alg.specs])
                if what is None:
                    enc = alg.client_encode(delta, rnd, cl.state)
                    if nonfinite_body(enc.body):
                        what = f"non-finite values in the encoded update ({enc.body.dtype})"
                    else:
                        msgs.append(pack(cl.cid, rnd, enc, alg.wire_specs))
                if what is not None:
                    bad = f"client {cid}, round {rnd + 1}: {what}"
                row["encode_time_s"] = time.perf_counter() - t
                tv["encode_s"] += row["encode_time_s"]
            if bad is not None:
                if snap is None:
                    raise nonfinite_stop(bad)
                snap.restore(cl)  # the NaN must not persist in the private state
                row.update(skipped=1, mentor_train_loss=np.nan, mentee_train_loss=np.nan)
                if ctx.shared is not None:
                    msgs.append(pack_skip(cid, rnd))
                print(f"fedkd-mpi: rank {ctx.comm.Get_rank()}: {bad}; update skipped "
                      "(runtime.nonfinite=skip)", file=sys.stderr, flush=True)
            t = time.perf_counter()
            if cl.private is not None and _evaluates(cfg, rnd):
                row.update(_metric_cols(cfg, fed, alg.private_role, cl.private, cl.data,
                                        ctx.device))
            tv["eval_s"] += time.perf_counter() - t
            tv["train_s"] += t_train
            rows[i] = [row.get(k, np.nan) for k in ROW]
        if ctx.shared is not None:
            t = time.perf_counter()
            ctx.transport.gather_messages(msgs)
            buf = ctx.transport.broadcast(None)
            tv["comm_s"] = time.perf_counter() - t
            t = time.perf_counter()
            down_msg = unpack(buf, alg.wire_specs, alg.wire_body_nbytes(), alg.wire_dtype)
            if down_msg.skip:  # no client update this round: the shared model stays
                with torch.no_grad():
                    for p, t0 in zip(ctx.params, theta0, strict=True):
                        p.copy_(t0)
            else:
                update = alg.client_decode(down_msg.encoded, ctx.device)
                alg.apply_update(ctx.params, theta0, update, store.states())
            tv["decode_s"] = time.perf_counter() - t
            t = time.perf_counter()
            seen: dict[int, dict[str, float]] = {}  # global test protocol: one test set
            for i, cid in enumerate(cids):  # the shared model, on every hosted client's data
                if not _evaluates(cfg, rnd):
                    break
                d = fed.clients[cid]
                if id(d.test_x) not in seen:
                    seen[id(d.test_x)] = _metric_cols(cfg, fed, alg.shared_role, ctx.shared, d,
                                                      ctx.device)
                for k, v in seen[id(d.test_x)].items():
                    rows[i, ROW.index(k)] = v
            tv["eval_s"] += time.perf_counter() - t
            tv["checksum"] = _checksum(ctx.params)
        tv["rss_mb"] = _rss_mb()
        tv["round_s"] = time.perf_counter() - t_round  # before the end-of-round telemetry
        ctx.transport.gather_rows(rows, len(ROW))
        ctx.transport.gather_rank_values(np.array([tv[k] for k in RANKVAL]))
        if _round_boundary(ctx, rnd, store):
            return EXIT_INTERRUPTED
    return 0


def _round_boundary(ctx: Context, rnd: int, store: ClientStore | None) -> bool:
    """Collective, after round ``rnd``: checkpoint when due or when any rank got SIGTERM /
    SIGUSR1. True (on every rank) when the run must stop now."""
    cfg, done = ctx.cfg, rnd + 1
    assert ctx.ckpt is not None and ctx.stop is not None
    if done >= cfg.train.rounds:  # the last round: finish normally
        return False
    stop = agree(ctx.comm, ctx.stop.signum != 0, ctx.transport.poll_s)
    every = cfg.runtime.checkpoint_every
    if stop or (every > 0 and done % every == 0):
        server = None
        if ctx.comm.Get_rank() == 0:
            server = {"server_state": dict(ctx.alg.server_state)}
            if ctx.shared is not None:
                server["shared"] = ctx.shared.state_dict()
        ctx.ckpt.save(done, store, server)
    return stop


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
    else:
        static = {"partition/num_train": fed.sizes.astype(np.int64)}
        if fed.label_hist is not None:
            static["partition/label_hist"] = fed.label_hist.astype(np.int64)
        writer = RunWriter(cfg.output, attrs, n, size, [s.name for s in specs],
                           np.array([[s.rows, s.cols] for s in specs], dtype=np.int64),
                           extra_fields=extra, static=static)
    try:
        history, code = _server_loop(ctx, fed, writer)
    except BaseException as exc:
        writer.close("failed", {"error": describe(exc)})
        raise
    if code:
        writer.close("interrupted")
        print(f"fedkd-mpi: stopped by a signal after round {len(history)}; checkpoint in "
              f"{checkpoint_dir(cfg)}; continue with: fedkd-mpi run CONFIG ... --resume",
              flush=True)
        return code
    writer.close("completed")
    _print_summary(cfg, history, attrs, fed)
    return 0


def _server_loop(ctx: Context, fed: FederatedData,
                 writer: RunWriter) -> tuple[list[dict], int]:
    """Rounds ``ctx.start`` .. R-1 on rank 0; returns (per-round records of all rounds, exit
    code: 0 or EXIT_INTERRUPTED)."""
    cfg, alg = ctx.cfg, ctx.alg
    n, size, rounds = cfg.data.num_clients, ctx.comm.Get_size(), cfg.train.rounds
    nl = len(alg.specs)
    tty = sys.stderr.isatty() and cfg.runtime.progress
    bar = tqdm(total=rounds, initial=ctx.start, desc=f"{cfg.algorithm}", unit="round",
               disable=not tty, file=sys.stderr)
    history = writer.records()  # rounds already in the file (resume)
    for rnd in range(ctx.start, rounds):
        mask = round_participants(cfg.train, n, cfg.seed, rnd)
        t_round = time.perf_counter()
        up = np.zeros(n, np.int64)
        down = np.zeros(n, np.int64)
        rank_up = np.full((n, nl), -1, np.int64)
        rank_down = np.full(nl, -1, np.int64)
        skipped = np.zeros(n, np.int8)  # runtime.nonfinite=skip
        t_agg = t_dec = t_comm = 0.0
        threshold = alg.threshold(rnd)
        if ctx.shared is not None:
            msgs, st = ctx.transport.gather_messages([])
            t = time.perf_counter()
            part = np.flatnonzero(mask)  # sampled clients; the others sent 0 bytes
            if any(msgs[c].size for c in np.flatnonzero(~mask)):
                raise RuntimeError(f"round {rnd + 1}: a client that was not sampled sent bytes")
            parsed = [unpack(msgs[c], alg.wire_specs, alg.wire_body_nbytes(), alg.wire_dtype)
                      for c in part]
            inject_fault(0, rnd)  # test hook FEDKD_MPI_FAULT=0:ROUND (rank 0 mid-round)
            for cid, msg in zip(part.tolist(), parsed, strict=True):
                if msg.client_id != cid or msg.round != rnd:
                    raise RuntimeError(f"message from client {msg.client_id} round "
                                       f"{msg.round + 1} where client {cid} round {rnd + 1} "
                                       "was expected")
                if not msg.skip and nonfinite_body(msg.encoded.body):
                    what = f"client {cid}, round {rnd + 1}: non-finite values in its update"
                    if cfg.runtime.nonfinite == "stop":
                        raise nonfinite_stop(what)
                    msg.flags |= SKIP
                if msg.skip:  # runtime.nonfinite=skip: never averaged in
                    skipped[cid] = 1
                    continue
                rank_up[cid] = msg.encoded.ranks[:nl]
            up[:] = [b.size for b in msgs]
            keep = [m.encoded for m in parsed if not m.skip]
            agg = None
            if keep:
                weights = aggregation_weights(cfg.train.aggregation, fed.sizes,
                                              mask & (skipped == 0))
                agg = alg.server_aggregate(keep, weights, rnd)
                out = pack(-1, rnd, agg, alg.wire_specs)
                rank_down[:] = agg.ranks[:nl]
            else:  # every participant skipped: a SKIP broadcast, the model stays
                out = pack_skip(-1, rnd)
            t_agg = time.perf_counter() - t
            t = time.perf_counter()
            ctx.transport.broadcast(out)
            t_comm = st.transfer_s + time.perf_counter() - t
            down[mask] = out.size  # counted for the clients that take part
            t = time.perf_counter()
            if agg is not None:
                update = alg.client_decode(agg, ctx.device)
                alg.apply_update(ctx.params, [p.detach().clone() for p in ctx.params], update,
                                 [])
            t_dec = time.perf_counter() - t
        rows = ctx.transport.gather_rows(np.zeros((0, len(ROW))), len(ROW))
        rankvals = ctx.transport.gather_rank_values(np.zeros(len(RANKVAL)))
        rv = {k: rankvals[:, i] for i, k in enumerate(RANKVAL)}
        rv["aggregate_s"][0], rv["decode_s"][0], rv["comm_s"][0] = t_agg, t_dec, t_comm
        rv["rss_mb"][0] = _rss_mb()
        rv["round_s"][0] = time.perf_counter() - t_round
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
            mentor_metric=_nanmean(col["mentor_metric"]),
            mentee_metric=_nanmean(col["mentee_metric"]),
            wall_time_s=time.perf_counter() - t_round,
            codec_time_s=t_agg + t_dec + float(client_side.max(initial=0.0)),
            comm_time_s=t_comm, server_time_s=t_agg + t_dec,
            train_time_s=float(rv["train_s"][1:].max(initial=0.0)),
        )
        for name in metric_names(cfg.data.metric, fed.num_classes):
            for role in ("mentor", "mentee"):
                rec[f"{role}_{name}"] = float(np.mean(col[f"{role}_{name}"]))
        clients = dict(bytes_up=up, bytes_down=down, mentor_metric=col["mentor_metric"],
                       mentee_metric=col["mentee_metric"],
                       mentor_train_loss=col["mentor_train_loss"],
                       mentee_train_loss=col["mentee_train_loss"],
                       num_samples=col["num_samples"].astype(np.int64),
                       train_time_s=col["train_time_s"], encode_time_s=col["encode_time_s"],
                       participated=mask.astype(np.int64), **{k: col[k] for k in ROW[8:]})
        clients["skipped"] = skipped | (np.nan_to_num(col["skipped"]) > 0).astype(np.int8)
        writer.append(rec, clients, {k: rv[k] for k in ("train_s", "encode_s", "comm_s",
                                                       "aggregate_s", "decode_s", "eval_s",
                                                       "round_s")},
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
        if _round_boundary(ctx, rnd, None):
            bar.close()
            return history, EXIT_INTERRUPTED
    bar.close()
    return history, 0


def _nanmean(x: np.ndarray) -> float:
    """Mean over the finite entries (clients that were not sampled are NaN); NaN if none."""
    x = np.asarray(x, np.float64)
    ok = ~np.isnan(x)
    return float(x[ok].mean()) if ok.any() else float("nan")


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


def _evaluates(cfg: Config, rnd: int) -> bool:
    """Held-out evaluation after round ``rnd`` (every train.eval_every rounds and the last)."""
    return (rnd + 1) % cfg.train.eval_every == 0 or rnd + 1 == cfg.train.rounds


def _metric_cols(cfg: Config, fed: FederatedData, role: str, model: torch.nn.Module, data,
                 device: torch.device) -> dict[str, float]:
    """``<role>_metric`` (the headline, data.metric) and ``<role>_<name>`` for every metric of
    the task, of ``model`` on the client's held-out data."""
    names = metric_names(cfg.data.metric, fed.num_classes)
    res = evaluate(model, data.test_x, data.test_y, cfg.train.eval_batch_size, device, names)
    return {f"{role}_metric": res[names[0]], **{f"{role}_{k}": v for k, v in res.items()}}


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


def fedkd_attrs(cfg: Config, comm: MPI.Intracomm, devices: list[str]) -> dict[str, object]:
    """Root attributes of the run file."""
    return dict(
        fedkd_mpi_version=__version__, config=cfg.to_yaml(), seed=cfg.seed,
        world_size=comm.Get_size(), num_clients=cfg.data.num_clients, algorithm=cfg.algorithm,
        metric_name=cfg.data.metric, mpi_library=MPI.Get_library_version().strip(),
        torch_version=torch.__version__, devices=list(devices),
        split_protocol=split_protocol(cfg.data),
        round_numbering="1-based: rounds/round = r + 1",
        created_unix=time.time(),
    )
