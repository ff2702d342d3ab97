"""Client ranks: each round, train every hosted (sampled) client from the global shared model,
encode its update, gather all messages to rank 0 in one collective, receive the one download,
apply it, evaluate."""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np
import torch

from fedkd_mpi.comm.wire import pack, pack_skip, unpack
from fedkd_mpi.data import FederatedData
from fedkd_mpi.runtime.checkpoint import EXIT_INTERRUPTED, client_file
from fedkd_mpi.runtime.client import Client, NonFiniteError, make_optimizer, trainable
from fedkd_mpi.runtime.context import (
    RANKVAL,
    Context,
    checksum,
    evaluates,
    metric_cols,
    round_boundary,
    rss_mb,
)
from fedkd_mpi.runtime.faults import (
    ClientSnapshot,
    inject_fault,
    injected_nan,
    nonfinite_body,
    nonfinite_stop,
    nonfinite_tensors,
    poison,
)
from fedkd_mpi.runtime.residency import ClientStore
from fedkd_mpi.runtime.sampling import round_participants
from fedkd_mpi.seeding import torch_seed


def _injected_signal(rank: int) -> int:
    """Test hook: ``FEDKD_MPI_SIGNAL=RANK:ROUND`` makes that rank send itself SIGUSR1 at the
    start of that round (1-based), as a scheduler would."""
    spec = os.environ.get("FEDKD_MPI_SIGNAL", "")
    if not spec:
        return -1
    r, rnd = (int(x) for x in spec.split(":"))
    return rnd - 1 if r == rank else -1


def new_client(ctx: Context, fed: FederatedData, cid: int) -> Client:
    """Client ``cid`` with its seeded initial private state (the same whenever it is built)."""
    from fedkd_mpi.models import build_for

    cfg, alg = ctx.cfg, ctx.alg
    cl = Client(cid, fed.clients[cid], alg.new_state(cid))
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


def client_main(ctx: Context, fed: FederatedData) -> int:
    """A client rank: its clients in a :class:`ClientStore` (spilled beyond
    ``runtime.resident_clients``), restored from the checkpoint on resume."""
    cfg, rank = ctx.cfg, ctx.comm.Get_rank()
    cids = ctx.placement.clients_of(rank)
    store = ClientStore(cids, lambda cid: new_client(ctx, fed, cid),
                        cfg.runtime.resident_clients, cfg.runtime.spill_dir, rank, ctx.device)
    try:
        if ctx.ckdir is not None:
            for cid in cids:
                store.adopt(cid, client_file(ctx.ckdir, cid))
        return _rounds(ctx, fed, store)
    finally:
        store.close()


def _train_one(ctx: Context, fed: FederatedData, store: ClientStore, cid: int, rnd: int,
               theta0: list[torch.Tensor], msgs: list[np.ndarray],
               tv: dict[str, float]) -> list[float]:
    """Train, encode and evaluate client ``cid`` in round ``rnd``; returns its row (ctx.row)."""
    cfg, alg = ctx.cfg, ctx.alg
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
        losses = alg.local_round(cl, ctx.shared, rnd, ctx.device)
    except NonFiniteError as exc:
        bad = str(exc)
    t_train = time.perf_counter() - t
    inject_fault(ctx.comm.Get_rank(), rnd)  # test hook FEDKD_MPI_FAULT (mid-round)
    row = dict(client=cl.cid, num_samples=cl.data.num_train, train_time_s=t_train,
               mentor_train_loss=losses.get("mentor_loss", np.nan),
               mentee_train_loss=losses.get("mentee_loss", np.nan), skipped=0,
               **{f"loss_{p}": losses.get(p, np.nan) for p in alg.loss_parts})
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
        row.update(skipped=1, mentor_train_loss=np.nan, mentee_train_loss=np.nan,
                   **{f"loss_{p}": np.nan for p in alg.loss_parts})
        if ctx.shared is not None:
            msgs.append(pack_skip(cid, rnd))
        print(f"fedkd-mpi: rank {ctx.comm.Get_rank()}: {bad}; update skipped "
              "(runtime.nonfinite=skip)", file=sys.stderr, flush=True)
    t = time.perf_counter()
    if cl.private is not None and evaluates(cfg, rnd):
        for split in ("test", "val"):
            row.update(metric_cols(cfg, fed, alg.private_role, cl.private, cl.data, ctx.device,
                                   split))
    tv["eval_s"] += time.perf_counter() - t
    tv["train_s"] += t_train
    return [row.get(k, np.nan) for k in ctx.row]


def _rounds(ctx: Context, fed: FederatedData, store: ClientStore) -> int:
    cfg, alg = ctx.cfg, ctx.alg
    cids = store.cids
    sig_round = _injected_signal(ctx.comm.Get_rank())
    codec = alg.codec
    for rnd in range(ctx.start, cfg.train.rounds):
        if rnd == sig_round:
            os.kill(os.getpid(), signal.SIGUSR1)
        mask = round_participants(cfg.train, cfg.data.num_clients, cfg.seed, rnd)
        tv = dict.fromkeys(RANKVAL, 0.0)
        t_round = time.perf_counter()
        rows = np.full((len(cids), len(ctx.row)), np.nan)
        theta0 = [p.detach().clone() for p in ctx.params]
        msgs: list[np.ndarray] = []
        for i, cid in enumerate(cids):
            if not mask[cid]:  # not sampled: no training, nothing sent (a 0-byte slot)
                rows[i, ctx.row.index("client")] = cid
                rows[i, ctx.row.index("num_samples")] = fed.clients[cid].num_train
                if ctx.shared is not None:
                    msgs.append(np.zeros(0, np.uint8))
                continue
            rows[i] = _train_one(ctx, fed, store, cid, rnd, theta0, msgs, tv)
        if ctx.shared is not None and codec is not None:
            t = time.perf_counter()
            ctx.transport.gather_messages(msgs)
            buf = ctx.transport.broadcast(None)
            tv["comm_s"] = time.perf_counter() - t
            t = time.perf_counter()
            down = unpack(buf, alg.wire_specs, codec.body_nbytes, codec.wire_dtype)
            if down.skip:  # no client update this round: the shared model stays
                with torch.no_grad():
                    for p, t0 in zip(ctx.params, theta0, strict=True):
                        p.copy_(t0)
            else:
                update = alg.client_decode(down.encoded, ctx.device)
                alg.apply_update(ctx.params, theta0, update, store.states())
            tv["decode_s"] = time.perf_counter() - t
            t = time.perf_counter()
            seen: dict[int, dict[str, float]] = {}  # global test protocol: one test set
            for i, cid in enumerate(cids):  # the shared model, on every hosted client's data
                if not evaluates(cfg, rnd):
                    break
                d = fed.clients[cid]
                if id(d.test_x) not in seen:
                    seen[id(d.test_x)] = metric_cols(cfg, fed, alg.shared_role, ctx.shared, d,
                                                     ctx.device)
                cols = {**seen[id(d.test_x)], **metric_cols(cfg, fed, alg.shared_role,
                                                            ctx.shared, d, ctx.device, "val")}
                for k, v in cols.items():
                    rows[i, ctx.row.index(k)] = v
            tv["eval_s"] += time.perf_counter() - t
            tv["checksum"] = checksum(ctx.params)
        tv["rss_mb"] = rss_mb()
        tv["round_s"] = time.perf_counter() - t_round  # before the end-of-round telemetry
        ctx.transport.gather_rows(rows, len(ctx.row))
        ctx.transport.gather_rank_values(np.array([tv[k] for k in RANKVAL]))
        if round_boundary(ctx, rnd, store):
            return EXIT_INTERRUPTED
    return 0
