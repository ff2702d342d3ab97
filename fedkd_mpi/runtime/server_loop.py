"""Rank 0: each round, gather the uploads, check them, aggregate, broadcast one download,
apply it to its own replica, check every replica agrees and append the round to the HDF5
file."""

from __future__ import annotations

import sys
import time

import numpy as np
from tqdm import tqdm

from fedkd_mpi.comm.wire import SKIP, Message, WireError, pack, pack_skip, unpack
from fedkd_mpi.data import FederatedData
from fedkd_mpi.metrics import metric_names
from fedkd_mpi.runtime.checkpoint import EXIT_INTERRUPTED, checkpoint_dir, drop_checkpoint
from fedkd_mpi.runtime.context import (
    RANKVAL,
    Context,
    checksum,
    nanmean,
    record_fields,
    round_boundary,
    rss_mb,
)
from fedkd_mpi.runtime.faults import describe, inject_fault, nonfinite_body, nonfinite_stop
from fedkd_mpi.runtime.observers import Observers
from fedkd_mpi.runtime.sampling import round_participants
from fedkd_mpi.runtime.summary import print_summary, writer_for
from fedkd_mpi.storage.h5 import RunWriter
from fedkd_mpi.storage.lease import lost as lost_lease


def server_main(ctx: Context, fed: FederatedData, attrs: dict[str, object]) -> int:
    """Rank 0's whole run: the writer, every round, the final status and the summary.

    The status is written in place in the SWMR file (never by reopening it), so readers
    holding the file cannot make the end fail. A new run removes a checkpoint left in its
    checkpoint directory (it belonged to the file just replaced); a completed run removes its
    own (there is nothing left to resume)."""
    observers = Observers(ctx.cfg)
    writer = writer_for(ctx, fed, attrs)
    ctx.ckpt.run_id, ctx.ckpt.recorder = writer.run_id, writer.record_checkpoint
    if ctx.start == 0:
        drop_checkpoint(ctx.cfg)
    try:
        done, code = _loop(ctx, fed, writer, observers)
    except BaseException as exc:
        writer.close("failed", describe(exc), strict=False)
        if not lost_lease():  # the checkpoint directory is another job's now: leave it
            ctx.ckpt.discard_incomplete()  # a checkpoint that failed half-way: no partials
        raise
    finally:
        observers.close()
    if code:
        writer.close("interrupted")
        print(f"fedkd-mpi: stopped by {ctx.stop.name or 'a signal'} after round {done}; "
              f"checkpoint in {checkpoint_dir(ctx.cfg)}; continue with: fedkd-mpi run CONFIG "
              "... --resume", flush=True)
        return code
    writer.close("completed")
    drop_checkpoint(ctx.cfg)
    return 0 if print_summary(ctx.cfg) else 1


def _check_uploads(ctx: Context, rnd: int, part: np.ndarray, parsed: list[Message],
                   skipped: np.ndarray, rank_up: np.ndarray) -> None:
    """Every participant's message is its own, of this round, and finite (or skipped)."""
    nl = len(ctx.alg.specs)
    for cid, msg in zip(part.tolist(), parsed, strict=True):
        if msg.client_id != cid or msg.round != rnd:
            raise RuntimeError(f"message from client {msg.client_id} round {msg.round + 1} "
                               f"where client {cid} round {rnd + 1} was expected")
        if not msg.skip and nonfinite_body(msg.encoded.body):
            what = f"client {cid}, round {rnd + 1}: non-finite values in its update"
            if ctx.cfg.runtime.nonfinite == "stop":
                raise nonfinite_stop(what)
            msg.flags |= SKIP
        if msg.skip:  # runtime.nonfinite=skip: never averaged in
            skipped[cid] = 1
            continue
        rank_up[cid] = msg.encoded.meta[:nl]


def _exchange(ctx: Context, fed: FederatedData, rnd: int, mask: np.ndarray) -> dict:
    """Gather, aggregate, broadcast, apply: the communication part of one round."""
    alg, codec, n = ctx.alg, ctx.alg.codec, ctx.cfg.data.num_clients
    nl = len(alg.specs)
    out = dict(up=np.zeros(n, np.int64), down=np.zeros(n, np.int64),
               rank_up=np.full((n, nl), -1, np.int64), rank_down=np.full(nl, -1, np.int64),
               skipped=np.zeros(n, np.int8), t_agg=0.0, t_dec=0.0, t_comm=0.0)
    if ctx.shared is None or codec is None:
        return out
    msgs, st = ctx.transport.gather_messages([])
    t = time.perf_counter()
    part = np.flatnonzero(mask)  # sampled clients; the others sent 0 bytes
    if any(msgs[c].size for c in np.flatnonzero(~mask)):
        raise RuntimeError(f"round {rnd + 1}: a client that was not sampled sent bytes")
    parsed = []
    for c in part:
        try:
            parsed.append(unpack(msgs[c], alg.wire_specs, codec.body_nbytes, codec.wire_dtype))
        except WireError as exc:  # which client, which codec: the one line says it
            raise WireError(f"round {rnd + 1}: the upload of client {c} does not parse with "
                            f"codec '{alg.codec_name}': {exc}") from None
    inject_fault(0, rnd)  # test hook FEDKD_MPI_FAULT=0:ROUND (rank 0 mid-round)
    _check_uploads(ctx, rnd, part, parsed, out["skipped"], out["rank_up"])
    out["up"][:] = [b.size for b in msgs]
    keep = [m.encoded for m in parsed if not m.skip]
    agg = None
    if keep:
        used = mask & (out["skipped"] == 0)
        agg = alg.server_aggregate(keep, ctx.aggregator, fed.sizes[used], rnd)
        down = pack(-1, rnd, agg, alg.wire_specs)
        out["rank_down"][:] = agg.meta[:nl]
    else:  # every participant skipped: a SKIP broadcast, the model stays
        down = pack_skip(-1, rnd)
    out["t_agg"] = time.perf_counter() - t
    t = time.perf_counter()
    ctx.transport.broadcast(down)
    out["t_comm"] = st.transfer_s + time.perf_counter() - t
    out["down"][mask] = down.size  # counted for the clients that take part
    t = time.perf_counter()
    if agg is not None:
        update = alg.client_decode(agg, ctx.device)
        alg.apply_update(ctx.params, [p.detach().clone() for p in ctx.params], update, [])
    out["t_dec"] = time.perf_counter() - t
    return out


def _loop(ctx: Context, fed: FederatedData, writer: RunWriter,
          observers: Observers) -> tuple[int, int]:
    """Rounds ``ctx.start`` .. R-1 on rank 0; returns (rounds done, exit code: 0 or
    EXIT_INTERRUPTED)."""
    cfg, alg = ctx.cfg, ctx.alg
    n, size, rounds = cfg.data.num_clients, ctx.comm.Get_size(), cfg.train.rounds
    tty = sys.stderr.isatty() and cfg.runtime.progress
    bar = tqdm(total=rounds, initial=ctx.start, desc=f"{cfg.algorithm}", unit="round",
               disable=not tty, file=sys.stderr)
    names = metric_names(cfg.data.metric, fed.num_classes)
    extra = record_fields(cfg, alg, names)  # the same every round
    for rnd in range(ctx.start, rounds):
        mask = round_participants(cfg.train, n, cfg.seed, rnd)
        t_round = time.perf_counter()
        threshold = alg.energy_threshold(rnd)
        ex = _exchange(ctx, fed, rnd, mask)
        rows = ctx.transport.gather_rows(np.zeros((0, len(ctx.row))), len(ctx.row))
        rankvals = ctx.transport.gather_rank_values(np.zeros(len(RANKVAL)))
        rv = {k: rankvals[:, i] for i, k in enumerate(RANKVAL)}
        rv["aggregate_s"][0], rv["decode_s"][0], rv["comm_s"][0] = (ex["t_agg"], ex["t_dec"],
                                                                   ex["t_comm"])
        rv["rss_mb"][0] = rss_mb()
        rv["round_s"][0] = time.perf_counter() - t_round
        if ctx.shared is not None:
            ref = checksum(ctx.params)
            rv["checksum"][0] = ref
            bad = [r for r in range(1, size) if int(rv["checksum"][r]) != ref]
            if bad:
                raise RuntimeError(f"round {rnd + 1}: shared-model replicas on ranks {bad} "
                                   "differ from rank 0's (non-deterministic decode?)")
        col = {k: rows[:, i] for i, k in enumerate(ctx.row)}
        client_side = rv["encode_s"][1:] + rv["decode_s"][1:]
        t_server = ex["t_agg"] + ex["t_dec"]
        up, down = ex["up"], ex["down"]
        rec = dict(
            round=rnd + 1,
            energy_threshold=np.nan if threshold is None else threshold,
            bytes_up=int(up.sum()), bytes_down=int(down.sum()),
            mentor_metric=nanmean(col["mentor_metric"]),
            mentee_metric=nanmean(col["mentee_metric"]),
            wall_time_s=time.perf_counter() - t_round,
            codec_time_s=t_server + float(client_side.max(initial=0.0)),
            comm_time_s=ex["t_comm"], server_time_s=t_server,
            train_time_s=float(rv["train_s"][1:].max(initial=0.0)),
        )
        for name in extra:
            rec[name] = nanmean(col[name])
        clients = dict(bytes_up=up, bytes_down=down, mentor_metric=col["mentor_metric"],
                       mentee_metric=col["mentee_metric"],
                       mentor_train_loss=col["mentor_train_loss"],
                       mentee_train_loss=col["mentee_train_loss"],
                       num_samples=col["num_samples"].astype(np.int64),
                       train_time_s=col["train_time_s"], encode_time_s=col["encode_time_s"],
                       participated=mask.astype(np.int64), **{k: col[k] for k in ctx.row[8:]})
        clients["skipped"] = ex["skipped"] | (np.nan_to_num(col["skipped"]) > 0).astype(np.int8)
        writer.append(rec, clients, {k: rv[k] for k in ("train_s", "encode_s", "comm_s",
                                                       "aggregate_s", "decode_s", "eval_s",
                                                       "round_s")},
                      rv["rss_mb"], ex["rank_up"], ex["rank_down"],
                      rv["checksum"].astype(np.int64))
        observers.round_done(rec, clients, {"rank_up": ex["rank_up"],
                                            "rank_down": ex["rank_down"],
                                            "names": [sp.name for sp in alg.specs]})
        line = "  ".join([f"round {rnd + 1}/{rounds}", *(
            f"{k}={rec[c]:.4f}" for k, c in (("T", "energy_threshold"), ("mentor",
                                                "mentor_metric"), ("mentee", "mentee_metric"))
            if np.isfinite(rec[c])),  # no T without SVD; metrics only in evaluated rounds
            f"up={up.mean() / 1e6:.3f} MB/client", f"{rec['wall_time_s']:.1f}s"])
        if tty:
            bar.set_postfix_str(line.split("  ", 1)[1])
            bar.update()
        else:
            print(line, flush=True)
        taken = lost_lease()
        if taken:  # never two jobs writing one output: this one stops, failed
            raise RuntimeError(f"{taken}; this run stops after round {rnd + 1}")
        if round_boundary(ctx, rnd, None):
            bar.close()
            return rnd + 1, EXIT_INTERRUPTED
        if ctx.ckpt.last_round == rnd + 1:  # a checkpoint took time after the append
            writer.heartbeat()
    bar.close()
    return rounds, 0
