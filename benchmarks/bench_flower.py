"""FedAvg rounds per second: this package under mpiexec vs Flower's simulation engine (Ray).

One invocation measures up to two workloads (``--workloads quickstart,many``), each side by
side, the sides alternating for ``--reps`` repetitions:

``quickstart``
    The from-scratch config's data (Rotten Tomatoes, IID, ``--clients`` clients, same split
    and seed), its mentee model (same initial weights, frozen embeddings, only trainable
    tensors travel), plain SGD, ``--steps`` local steps of batch 32 per round, ``--rounds``
    rounds, every client evaluating the new global model on its held-out split each round.
    Ours: ``mpiexec -n clients+1`` (one rank per client + the server).
``many``
    Many small clients, where framework costs dominate: ``--many-clients`` clients (200)
    sharing ``--many-samples`` snippets (7,500: 37-38 each, of which 30 train and 7-8 are
    held out), ``--many-sampled`` (20) clients sampled per round by the package's own
    sampler (``train.sample_count``) and the very same 20 on the Flower side, 1 local epoch
    of batch ``--many-batch`` per sampled client, ``--many-rounds`` rounds. Evaluation: our
    client ranks evaluate the global model on *every* hosted client's held-out split (there
    is no "sampled clients only" mode), so both sides evaluate all clients, by default after
    the last round only (``train.eval_every=R``; ``--many-eval every``: each round).
    Ours: ``mpiexec -n --many-ranks`` (4: 3 client ranks hosting ~67 clients each).

Both sides train through the package's own ``local_train`` (per-(seed, round, client) batch
order and dropout) and evaluate with its own ``metrics.evaluate``; FedAvg is weighted by
training examples; SGD is stateless, so Flower's ephemeral ClientApps train exactly like our
persistent clients. Flower runs in its own venv (.venv-flower, created by
benchmarks/setup_flower.sh, never committed) with one CPU per ClientApp actor
(``--flower-cpus`` actors). Each Flower message names the client it is for (``cid`` in its
config): the strategy sends round r's messages for our sampled clients to the supernodes of
the same index, so both sides train the same clients; a supernode acts as the client named.

Printed per workload: whole job (start-up included) and steady-state rounds/s (median over
rounds 2..R) per side and their ratios, the final accuracy of both sides (mean over clients,
as our run file's ``rounds/mentee_metric``) and how many clients' accuracies agree, then
where the time goes: ours from the run file's ``/timing/*`` [round, rank] datasets and the
job's wall time minus its rounds; Flower's from stamps in the strategy (send/receive of each
phase) and the time spent inside the ClientApp's train/evaluate functions.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_flower.py --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLOWER_PY = ROOT / ".venv-flower" / "bin" / "python"
WORKLOADS = ("quickstart", "many")


def workload(a: argparse.Namespace, name: str) -> dict:
    """Everything both sides need to run workload ``name`` (JSON-serialisable)."""
    common = ["algorithm=fedavg", "fedavg.model=mentee", "train.optimizer=sgd",
              f"train.lr_mentee={a.lr}", "train.aggregation=weighted", "data.partition=iid",
              "data.test_protocol=per_client"]
    if name == "quickstart":
        clients, rounds, ranks, eval_last = a.clients, a.rounds, a.clients + 1, False
        ov = [f"data.num_clients={clients}", f"train.local_steps={a.steps}",
              f"train.rounds={rounds}", "train.batch_size=32", "train.eval_every=1"]
        desc = (f"{clients} IID clients, {rounds} rounds, {a.steps} local SGD steps of batch "
                f"32 (lr {a.lr}), every client evaluating each round")
    elif name == "many":
        clients, rounds, ranks = a.many_clients, a.many_rounds, a.many_ranks
        eval_last = a.many_eval == "last"
        ov = [f"data.num_clients={clients}", f"data.max_samples={a.many_samples}",
              f"train.sample_count={a.many_sampled}", "train.local_epochs=1",
              f"train.batch_size={a.many_batch}", f"train.rounds={rounds}",
              f"train.eval_every={rounds if eval_last else 1}"]
        desc = (f"{clients} IID clients sharing {a.many_samples} snippets, {a.many_sampled} "
                f"sampled per round, {rounds} rounds, 1 local epoch of batch {a.many_batch} "
                f"(lr {a.lr}), all {clients} clients evaluating "
                + ("after the last round only" if eval_last else "each round"))
    else:
        raise SystemExit(f"unknown workload {name!r} (known: {', '.join(WORKLOADS)})")
    return dict(name=name, config=str(ROOT / a.config), overrides=common + ov, clients=clients,
                rounds=rounds, ranks=ranks, eval_last=eval_last, desc=desc,
                flower_cpus=a.flower_cpus)


# ------------------------------------------------------------------------------------------
# our side and the driver (runs in .venv)
# ------------------------------------------------------------------------------------------
def ours_job(w: dict, rep: int) -> dict:
    import h5py

    out = ROOT / "runs" / f"bench_flower_{w['name']}_{rep}.h5"
    bin_ = Path(sys.executable).parent
    cmd = [str(bin_ / "mpiexec"), "-n", str(w["ranks"]), str(bin_ / "fedkd-mpi"), "run",
           os.path.relpath(w["config"], ROOT), f"output={os.path.relpath(out, ROOT)}",
           "--overwrite", "runtime.progress=false", *w["overrides"]]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    total = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"fedkd-mpi failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    with h5py.File(out, "r") as f:
        rounds = f["rounds/wall_time_s"][()]
        acc = float(f["rounds/mentee_metric"][-1])
        per_client = f["clients/mentee_metric"][-1]
        timing = {k: f[f"timing/{k}"][()].tolist() for k in f["timing"]}
    return dict(total_s=total, round_s=rounds.tolist(), final_accuracy=acc,
                client_accuracy={i: float(v) for i, v in enumerate(per_client)
                                 if np.isfinite(v)},
                timing=timing, cmd=" ".join(cmd))


def flower_subprocess(a: argparse.Namespace, w: dict) -> dict:
    if not FLOWER_PY.exists():
        subprocess.run([str(ROOT / "benchmarks" / "setup_flower.sh")], check=True)
    cmd = [str(FLOWER_PY), str(ROOT / "benchmarks" / "flower_side.py"), json.dumps(w)]
    # On a loaded machine Ray's raylet can give up waiting for its (Python) metrics agent to
    # start ("Timed out waiting for file .../metrics_agent_port_..."): wait longer, retry once.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0",
           "RAY_agent_register_timeout_ms": "600000", "RAY_raylet_start_wait_time_s": "600"}
    err = {}
    for _ in range(2):
        try:
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env,
                                 timeout=a.flower_timeout)
        except subprocess.TimeoutExpired as exc:
            err = dict(error=f"timed out after {a.flower_timeout} s:\n"
                       f"{(exc.stderr or b'')[-3000:]!r}", returncode=-1)
            continue
        lines = [x for x in res.stdout.splitlines() if x.startswith("FLOWER_RESULT ")]
        if res.returncode == 0 and lines:
            r = json.loads(lines[-1][len("FLOWER_RESULT "):])
            r["client_accuracy"] = {int(k): v for k, v in r.get("client_accuracy", {}).items()}
            return r
        err = dict(error=(res.stderr or res.stdout)[-3000:], returncode=res.returncode)
    return err


def steady(round_s: list[float]) -> float:
    """Median seconds per round over rounds 2..R (round 1 if there is only one)."""
    r = np.asarray(round_s, float)
    return float(np.median(r[1:] if len(r) > 1 else r))


def agreement(o: dict, f: dict) -> str:
    """How many clients' final accuracies agree between the sides."""
    co, cf = o["client_accuracy"], f.get("client_accuracy", {})
    common = sorted(set(co) & set(cf))
    if not common:
        return "no per-client accuracies to compare"
    d = np.abs(np.array([co[c] - cf[c] for c in common]))
    return (f"{int((d < 1e-9).sum())}/{len(common)} clients' accuracies identical "
            f"(max |diff| {d.max():.2g}; ours {len(co)}, flower {len(cf)} clients)")


def med(v) -> str:
    v = np.asarray(v, float)
    return f"{np.median(v):.3f} [{v.min():.3f}-{v.max():.3f}]"


def report(w: dict, rows: dict[str, list[dict]]) -> None:
    R = w["rounds"]
    o0 = rows["fedkd_mpi"][0]
    print(f"\n=== workload {w['name']}: {w['desc']}\n    ours: {o0['cmd']}\n    flower: "
          f"run_simulation, {w['clients']} supernodes, {w['flower_cpus']} CPUs, 1 CPU per "
          f"ClientApp actor")
    vals = {}
    print(f"  {'':34s} {'fedkd_mpi':>25s} {'flower':>25s} {'ratio ours/flower':>25s}")
    for key, label in (("total_s", "whole job, rounds/s"), ("round_s", "steady state, rounds/s")):
        for side, rs in rows.items():
            vals[side] = np.array([R / r["total_s"] if key == "total_s" else
                                   1.0 / steady(r["round_s"]) for r in rs])
        ratio = vals["fedkd_mpi"] / vals["flower"]
        print(f"  {label:34s} {med(vals['fedkd_mpi']):>25s} {med(vals['flower']):>25s} "
              f"{med(ratio):>25s}")
    for key, label in (("total_s", "whole job, s"), ("round_s", "steady state, s/round")):
        cells = [med([r[key] if key == "total_s" else steady(r[key]) for r in rs])
                 for rs in rows.values()]
        print(f"  {label:34s} {cells[0]:>25s} {cells[1]:>25s}")
    accs = [", ".join(f"{r.get('final_accuracy', float('nan')):.6f}" for r in rs)
            for rs in rows.values()]
    print(f"  {'final accuracy (per rep)':34s} {accs[0]:>25s} {accs[1]:>25s}")
    for i, (o, f) in enumerate(zip(rows["fedkd_mpi"], rows["flower"], strict=True)):
        print(f"  rep {i + 1}: {agreement(o, f)}")
    breakdown(w, rows)


def breakdown(w: dict, rows: dict[str, list[dict]]) -> None:
    """Where the time goes, per side: medians over repetitions of per-job figures. "Per round":
    median over rounds 2..R, without the last round when only that one evaluates (printed
    apart)."""
    R, last = w["rounds"], w["eval_last"] and w["rounds"] > 2
    mid = list(range(1, R - 1 if last else R)) or [0]

    def m(xs) -> float:
        return float(np.median(np.asarray(xs, float)))

    def agg(jobs: list[dict]) -> dict[str, float]:
        return {k: m([j[k] for j in jobs]) for k in jobs[0]}

    span = f"rounds {mid[0] + 1}..{mid[-1] + 1}" if len(mid) > 1 else f"round {mid[0] + 1}"
    # ours: /timing/* [round, rank]; rank 0 is the server, 1.. the client ranks
    jobs = []
    for r in rows["fedkd_mpi"]:
        t = {k: np.asarray(v, float) for k, v in r["timing"].items()}
        rs, c = np.asarray(r["round_s"], float), slice(1, None)
        busy = sum(t[k][:, c] for k in ("train_s", "eval_s", "encode_s", "decode_s"))
        jobs.append(dict(
            job=r["total_s"], startup=r["total_s"] - rs.sum(), r1=rs[0], round=m(rs[mid]),
            train=m(t["train_s"][mid, c].mean(1)), train_max=m(t["train_s"][mid, c].max(1)),
            eval=m(t["eval_s"][mid, c].mean(1)),
            codec=m((t["encode_s"] + t["decode_s"])[mid, c].mean(1)),
            comm=m(t["comm_s"][mid, c].mean(1)),
            other=m((t["round_s"][:, c] - busy - t["comm_s"][:, c])[mid].mean(1)),
            agg=m((t["aggregate_s"] + t["decode_s"])[mid, 0]), s_comm=m(t["comm_s"][mid, 0]),
            last=rs[-1], last_eval=t["eval_s"][-1, c].max()))
    o = agg(jobs)
    print(f"  where the time goes, fedkd_mpi (medians over reps; per round: {span}):\n"
          f"    job {o['job']:.2f} s = start-up + teardown {o['startup']:.2f} s (wall time minus "
          f"the rounds) + round 1 {o['r1']:.2f} s + later rounds ({o['round']:.3f} s/round)\n"
          f"    per round, mean of {w['ranks'] - 1} client ranks: train {o['train']:.3f} s "
          f"(slowest rank {o['train_max']:.3f}), eval {o['eval']:.3f}, encode+decode "
          f"{o['codec']:.4f}, comm incl. waiting {o['comm']:.3f}, other {o['other']:.4f}; "
          f"server rank: aggregate+decode {o['agg']:.4f}, comm incl. waiting {o['s_comm']:.3f}")
    if last:
        print(f"    last round, all {w['clients']} clients evaluating: {o['last']:.3f} s, "
              f"eval {o['last_eval']:.3f} s on the slowest client rank")

    # flower: strategy stamps (ServerApp process) and ClientApp function times (actors)
    def fsum(replies: list[dict], key: str) -> float:
        return float(sum(x[key] for x in replies))

    def parts(replies: list[dict]) -> dict[str, float]:
        s = {k: fsum(replies, k) for k in ("t-fn", "t-setup", "t-load", "t-work")}
        s["t-other"] = s["t-fn"] - s["t-setup"] - s["t-load"] - s["t-work"]
        return s

    jobs = []
    for r in rows["flower"]:
        st = {k: np.asarray(v, float) for k, v in r["stamps"].items()}
        rs = np.asarray(r["round_s"], float)
        tr, ev = r["fn"]["train"], r["fn"]["eval"]
        tp = [parts(tr[i]) for i in mid]
        ep = [parts(ev[i]) for i in mid]
        lp = parts(ev[-1])
        jobs.append(dict(
            job=r["total_s"], first=st["train_send"][0], r1=rs[0], round=m(rs[mid]),
            nodes=st["nodes"][0] - st["train_send"][0],
            tail=r["total_s"] - st["end"][-1],
            setup=sum(fsum(x, "t-setup") for x in tr + ev),
            actors=len({x["pid"] for rr in tr + ev for x in rr}),
            cold=sum(x["cold"] for rr in tr + ev for x in rr),
            train_ph=m((st["train_recv"] - st["train_send"])[mid]),
            ntrain=m([len(tr[i]) for i in mid]),
            **{f"tr{k}": m([p[k] for p in tp]) for k in tp[0]},
            eval_ph=m((st["eval_recv"] - st["eval_send"])[mid]),
            neval=m([len(ev[i]) for i in mid]),
            **{f"ev{k}": m([p[k] for p in ep]) for k in ep[0]},
            last=rs[-1], last_ph=st["eval_recv"][-1] - st["eval_send"][-1], nlast=len(ev[-1]),
            **{f"la{k}": lp[k] for k in lp}))
    f = agg(jobs)
    cpus = w["flower_cpus"]
    print(f"  where the time goes, flower (medians over reps; per round: {span}):\n"
          f"    job {f['job']:.2f} s = Ray + simulation start-up until round 1's first message "
          f"{f['first']:.2f} s + round 1 {f['r1']:.2f} s (incl. {f['nodes']:.2f} s until all "
          f"{w['clients']} supernodes were registered, the start of {f['actors']:.0f} "
          f"actor processes; set-up of config/data/model in them {f['setup']:.2f} s summed, "
          f"{f['cold']:.0f} cold) + later rounds "
          f"({f['round']:.3f} s/round) + shutdown {f['tail']:.2f} s\n"
          f"    per round: train phase (send -> all replies) {f['train_ph']:.3f} s for "
          f"{f['ntrain']:.0f} clients; ClientApp train fn {f['trt-fn']:.3f} s summed over "
          f"clients (= {f['trt-fn'] / cpus:.3f} s per actor if spread over {cpus}): load "
          f"arrays {f['trt-load']:.3f}, local_train {f['trt-work']:.3f}, reply + rest "
          f"{f['trt-other']:.3f}")
    if f["neval"]:
        print(f"    evaluate phase {f['eval_ph']:.3f} s for {f['neval']:.0f} clients; evaluate "
              f"fn {f['evt-fn']:.3f} s summed: load arrays {f['evt-load']:.3f}, evaluate "
              f"{f['evt-work']:.3f}, rest {f['evt-other']:.3f}")
    else:
        print(f"    evaluate phase without messages {f['eval_ph']:.4f} s")
    if last:
        print(f"    last round, all {f['nlast']:.0f} clients evaluating: {f['last']:.3f} s; "
              f"evaluate phase {f['last_ph']:.3f} s, evaluate fn {f['lat-fn']:.3f} s summed: "
              f"load arrays {f['lat-load']:.3f}, evaluate {f['lat-work']:.3f}, rest "
              f"{f['lat-other']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", default="quickstart,many",
                    help="comma-separated, of: " + ", ".join(WORKLOADS))
    ap.add_argument("--config", default="configs/scratch.yaml")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (both workloads)")
    g = ap.add_argument_group("quickstart workload")
    g.add_argument("--clients", type=int, default=3)
    g.add_argument("--rounds", type=int, default=5)
    g.add_argument("--steps", type=int, default=20)
    g = ap.add_argument_group("many workload")
    g.add_argument("--many-clients", type=int, default=200)
    g.add_argument("--many-samples", type=int, default=7500,
                   help="data.max_samples: 7500 / 200 clients = 30 training + 7-8 held out")
    g.add_argument("--many-sampled", type=int, default=20, help="train.sample_count")
    g.add_argument("--many-rounds", type=int, default=10)
    g.add_argument("--many-batch", type=int, default=10, help="1 epoch of 30 = 3 steps")
    g.add_argument("--many-ranks", type=int, default=4, help="mpiexec -n (server + clients)")
    g.add_argument("--many-eval", choices=("last", "every"), default="last",
                   help="all clients evaluate after the last round only, or every round")
    ap.add_argument("--flower-cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--flower-timeout", type=float, default=1800.0)
    a = ap.parse_args()
    names = [x.strip() for x in a.workloads.split(",") if x.strip()]
    specs = [workload(a, x) for x in names]
    print(f"config {a.config}, {a.reps} repetition(s), sides alternating; flower "
          f"{FLOWER_PY.relative_to(ROOT)}", flush=True)
    results = {}
    for w in specs:
        rows: dict[str, list[dict]] = {"fedkd_mpi": [], "flower": []}
        for rep in range(a.reps):  # sides alternate: ours first in even repetitions
            for side in (("fedkd_mpi", "flower") if rep % 2 == 0 else ("flower", "fedkd_mpi")):
                rows[side].append(ours_job(w, rep) if side == "fedkd_mpi"
                                  else flower_subprocess(a, w))
            if "error" in rows["flower"][-1]:
                print("Flower simulation failed:\n" + rows["flower"][-1]["error"])
                sys.exit(1)
            o, f = rows["fedkd_mpi"][-1], rows["flower"][-1]
            print(f"[{w['name']}] rep {rep + 1}: fedkd_mpi total {o['total_s']:.2f} s, round "
                  f"{steady(o['round_s']):.3f} s, acc {o['final_accuracy']:.6f} | flower "
                  f"total {f['total_s']:.2f} s, round {steady(f['round_s']):.3f} s, acc "
                  f"{f.get('final_accuracy', float('nan')):.6f}", flush=True)
        results[w["name"]] = rows
        report(w, rows)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
