"""FedAvg rounds per second: this package under mpiexec vs Flower's simulation engine (Ray).

The same workload on both sides: the quickstart's data (Rotten Tomatoes, IID, ``--clients``
clients, same split and seed), the quickstart's mentee model (same initial weights, frozen
embeddings, only trainable tensors travel), plain SGD (stateless, so Flower's ephemeral
ClientApps train exactly like our persistent clients), ``--steps`` local steps of batch 32 per
round through the package's own ``local_train``, FedAvg weighted by training examples, and
every client evaluating the new global model on its held-out split each round. Flower runs
in its own venv (.venv-flower, created by benchmarks/setup_flower.sh, never committed) with one
CPU per client actor; ours runs ``mpiexec -n clients+1`` (one rank per client + a server).
Sides alternate for ``--reps`` repetitions; printed: total wall time of each job (start-up
included), steady-state seconds per round (median over rounds 2..R), and the ratios.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_flower.py
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


def overrides(a: argparse.Namespace) -> list[str]:
    return ["algorithm=fedavg", "fedavg.model=mentee", f"data.num_clients={a.clients}",
            "train.optimizer=sgd", f"train.lr_mentee={a.lr}", f"train.local_steps={a.steps}",
            f"train.rounds={a.rounds}", "train.aggregation=weighted", "train.batch_size=32"]


# ------------------------------------------------------------------------------------------
# Flower side (runs inside .venv-flower)
# ------------------------------------------------------------------------------------------
def flower_job(a: argparse.Namespace) -> dict:
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    spec = dict(config=str(ROOT / a.config), overrides=overrides(a))

    def setup(cid: int):
        """Per actor process and client: config, data, model, optimizer (cached)."""
        cache = setup.__dict__.setdefault("cache", {})
        if cid not in cache:
            from fedkd_mpi.algorithms import build_algorithm
            from fedkd_mpi.config import load_config
            from fedkd_mpi.data import load_federated
            from fedkd_mpi.models import build_for
            from fedkd_mpi.runtime.client import Client, make_optimizer, trainable
            from fedkd_mpi.seeding import torch_seed

            torch.set_num_threads(1)
            cfg = load_config(spec["config"], spec["overrides"])
            fed = load_federated(cfg.data, cfg.seed, [cid])
            model = build_for(cfg, "mentee", fed.num_classes, torch_seed(cfg.seed, "init"),
                              cfg.model.freeze_embeddings)
            alg = build_algorithm(cfg)
            cl = Client(cid, fed.clients[cid], alg.new_state(cid))
            cl.opt_shared = make_optimizer(trainable(model), "sgd", cfg.train.lr_mentee)
            cache[cid] = (cfg, alg, model, cl)
        return cache[cid]

    def load(model, msg):
        state = msg.content["arrays"].to_torch_state_dict()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in state:
                    p.copy_(state[n])

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        from fedkd_mpi.runtime.client import local_train

        cid = int(context.node_config["partition-id"])
        cfg, alg, model, cl = setup(cid)
        load(model, msg)
        rnd = int(msg.content["config"]["server-round"]) - 1
        local_train(alg, cl, model, cfg, rnd, torch.device("cpu"))
        arrays = ArrayRecord({n: p.detach() for n, p in model.named_parameters()
                              if p.requires_grad})
        metrics = MetricRecord({"num-examples": int(cl.data.num_train)})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        from fedkd_mpi.runtime.client import accuracy

        cid = int(context.node_config["partition-id"])
        cfg, _, model, cl = setup(cid)
        load(model, msg)
        acc = accuracy(model, cl.data.test_x, cl.data.test_y, cfg.train.eval_batch_size,
                       torch.device("cpu"))
        metrics = MetricRecord({"accuracy": acc, "num-examples": len(cl.data.test_y)})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    stamps: list[float] = []
    out: dict = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        from fedkd_mpi.config import load_config
        from fedkd_mpi.data import load_federated
        from fedkd_mpi.models import build_for
        from fedkd_mpi.seeding import torch_seed

        cfg = load_config(spec["config"], spec["overrides"])
        fed = load_federated(cfg.data, cfg.seed, [])
        model = build_for(cfg, "mentee", fed.num_classes, torch_seed(cfg.seed, "init"),
                          cfg.model.freeze_embeddings)
        init = ArrayRecord({n: p.detach() for n, p in model.named_parameters()
                            if p.requires_grad})
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0,
                          min_train_nodes=a.clients, min_evaluate_nodes=a.clients,
                          min_available_nodes=a.clients)

        def stamp(rnd: int, arrays: ArrayRecord) -> None:
            stamps.append(time.perf_counter())

        res = strategy.start(grid=grid, initial_arrays=init, num_rounds=a.rounds,
                             evaluate_fn=stamp)
        acc = res.evaluate_metrics_clientapp.get(a.rounds, {})
        out["final_accuracy"] = float(acc.get("accuracy", float("nan")))

    t0 = time.perf_counter()
    run_simulation(server_app=server, client_app=client, num_supernodes=a.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": a.flower_cpus,
                                                 "include_dashboard": False}})
    total = time.perf_counter() - t0
    per_round = np.diff(stamps) if len(stamps) > 1 else np.array([np.nan])
    return dict(total_s=total, round_s=per_round.tolist(), **out)


# ------------------------------------------------------------------------------------------
# our side and the driver (runs in .venv)
# ------------------------------------------------------------------------------------------
def ours_job(a: argparse.Namespace, rep: int) -> dict:
    import h5py

    out = ROOT / "runs" / f"bench_flower_ours_{rep}.h5"
    bin_ = Path(sys.executable).parent
    cmd = [str(bin_ / "mpiexec"), "-n", str(a.clients + 1), str(bin_ / "fedkd-mpi"), "run",
           a.config, f"output={out}", "--overwrite", "runtime.progress=false", *overrides(a)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    total = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"fedkd-mpi failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    with h5py.File(out, "r") as f:
        rounds = f["rounds/wall_time_s"][()]
        acc = float(f["rounds/mentee_metric"][-1])
    return dict(total_s=total, round_s=rounds.tolist(), final_accuracy=acc, cmd=" ".join(cmd))


def flower_subprocess(a: argparse.Namespace) -> dict:
    if not FLOWER_PY.exists():
        subprocess.run([str(ROOT / "benchmarks" / "setup_flower.sh")], check=True)
    cmd = [str(FLOWER_PY), __file__, "--worker", *sys.argv[1:]]
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
            return json.loads(lines[-1][len("FLOWER_RESULT "):])
        err = dict(error=(res.stderr or res.stdout)[-3000:], returncode=res.returncode)
    return err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--flower-cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--flower-timeout", type=float, default=1200.0)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print("FLOWER_RESULT " + json.dumps(flower_job(a)), flush=True)
        return
    rows: dict[str, list[dict]] = {"fedkd_mpi": [], "flower": []}
    for rep in range(a.reps):
        rows["fedkd_mpi"].append(ours_job(a, rep))
        rows["flower"].append(flower_subprocess(a))
        if "error" in rows["flower"][-1]:
            print("Flower simulation failed:\n" + rows["flower"][-1]["error"])
            sys.exit(1)
        o, f = rows["fedkd_mpi"][-1], rows["flower"][-1]
        print(f"rep {rep + 1}: fedkd_mpi total {o['total_s']:.2f} s, round "
              f"{np.median(o['round_s'][1:]):.3f} s, acc {o['final_accuracy']:.4f} | flower "
              f"total {f['total_s']:.2f} s, round {np.median(f['round_s'][1:]):.3f} s, "
              f"acc {f.get('final_accuracy', float('nan')):.4f}", flush=True)
    print(f"\nworkload: {a.clients} clients, {a.rounds} rounds, {a.steps} local SGD steps "
          f"(batch 32, lr {a.lr}), quickstart mentee + data; our command: "
          f"{rows['fedkd_mpi'][0]['cmd']}")
    for key, label in (("total_s", "whole job (start-up included)"),
                       ("round_s", "steady state (median s/round, rounds 2..R)")):
        vals = {}
        for side, rs in rows.items():
            if key == "total_s":
                v = np.array([a.rounds / r["total_s"] for r in rs])
            else:
                v = np.array([1.0 / np.median(r["round_s"][1:]) for r in rs])
            vals[side] = v
            print(f"  {label:45s} {side:9s} rounds/s median {np.median(v):.3f} "
                  f"[{v.min():.3f}-{v.max():.3f}]")
        ratio = vals["fedkd_mpi"] / vals["flower"]
        print(f"  {label:45s} ratio fedkd_mpi/flower median {np.median(ratio):.2f}x "
              f"[{ratio.min():.2f}-{ratio.max():.2f}] (per repetition)")


if __name__ == "__main__":
    main()
