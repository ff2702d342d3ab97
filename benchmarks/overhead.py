"""Round cost against the bare compute, and start-up against the whole job.

For each config (default: the default job, configs/default.yaml, and the from-scratch
configs/scratch.yaml), in this one process with one torch thread:

* **train**: one client's local round through the package (``runtime.client.local_train``,
  the models built by ``runtime.client_loop.new_client``) against a bare PyTorch loop doing the
  same steps: the same models (same initial bits), the same batches (same permutation), the same
  FedKD loss function and Adam, without the package's bookkeeping. After each pair the weights of
  both are compared bit for bit (``same bits``: the two did the same computation);
* **eval**: the package's held-out evaluation (``runtime.context.metric_cols``: every metric of
  the task, mentor and mentee) against a bare ``torch.no_grad`` loop of ``model(x).logits.argmax``
  over the same batches; predictions compared;
* **start-up**: the real job (``mpiexec -n 4 fedkd-mpi run CONFIG``): wall time from launch to
  exit against the sum of its rounds' wall times (rank 0's ``rounds/wall_time_s``); the rest is
  start-up (imports, data load and tokenisation, model builds on every rank) plus teardown.
  ``--phases`` adds what one client rank's start-up steps cost in a fresh process.

Paths alternate within each repetition; medians over ``--reps`` are printed with the ratios.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overhead.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overhead.py --configs configs/scratch.yaml \
        --reps 5
    .venv/bin/python benchmarks/overhead.py --device cuda --skip-job   # one GPU (synchronised)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def build(config: str, overrides: list[str], device: str = "cpu"):
    """The package's objects for client 0 of ``config``: config, data, algorithm, the shared
    model's initial state, and a factory of fresh clients (as a client rank builds them), on
    ``device``."""
    import torch

    from fedkd_mpi.algorithms import build_algorithm
    from fedkd_mpi.config import load_config
    from fedkd_mpi.data import load_federated
    from fedkd_mpi.models import build_for, probe
    from fedkd_mpi.runtime.client_loop import new_client
    from fedkd_mpi.seeding import torch_seed
    from fedkd_mpi.tensors import TensorSpec

    cfg = load_config(config, overrides)
    if cfg.algorithm != "fedkd":
        sys.exit(f"{config}: algorithm {cfg.algorithm!r}; this benchmark's bare loop is FedKD's")
    fed = load_federated(cfg.data, cfg.seed, [0])
    alg = build_algorithm(cfg)
    shared = build_for(cfg, alg.shared_role, fed.num_classes, torch_seed(cfg.seed, "init"),
                       cfg.model.freeze_embeddings).to(device)
    named = [(n, p) for n, p in shared.named_parameters() if p.requires_grad]
    x = fed.clients[0].train_x[:2]
    mentor = build_for(cfg, alg.private_role, fed.num_classes, 0,
                       cfg.model.freeze_private_embeddings)
    alg.bind([TensorSpec(n, tuple(p.shape)) for n, p in named],
             {"mentor": probe(mentor, x), "mentee": probe(shared, x)})
    init = {k: v.clone() for k, v in shared.state_dict().items()}
    ctx = SimpleNamespace(cfg=cfg, alg=alg, device=torch.device(device), shared=shared,
                          params=[p for _, p in named])

    def fresh():
        shared.load_state_dict(init)
        return new_client(ctx, fed, 0)

    return cfg, fed, alg, shared, fresh


def package_train(cfg, alg, client, shared, device: str = "cpu") -> None:
    import torch

    from fedkd_mpi.runtime.client import local_train

    local_train(alg, client, shared, cfg, 0, torch.device(device))


def bare_train(cfg, alg, client, shared, device: str = "cpu") -> None:
    """The same local round written directly: batches, forward, FedKD loss, backward, Adam."""
    import torch

    from fedkd_mpi.algorithms.losses import fedkd_loss
    from fedkd_mpi.seeding import torch_seed

    seed = torch_seed(cfg.seed, "train", 0, client.cid)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = client.data.train_x, client.data.train_y
    n, bs = len(y_all), cfg.train.batch_size
    per_epoch = -(-n // bs)
    mentor, proj = client.private, client.proj
    for m in (mentor, shared, proj):
        if m is not None:
            m.train()
    opts = (client.opt_private, client.opt_shared)
    perm = torch.randperm(n, generator=gen)
    tc = cfg.train
    steps = tc.local_steps if tc.local_steps is not None else tc.local_epochs * per_epoch
    for step in range(steps):
        j = step % per_epoch
        if j == 0 and step > 0:
            perm = torch.randperm(n, generator=gen)
        idx = perm[j * bs : (j + 1) * bs]
        x, y = x_all[idx].to(device), y_all[idx].to(device)
        total, _ = fedkd_loss(mentor(x), shared(x), y, alg.pairs, proj, cfg.fedkd.loss_mode,
                              alg.switches)
        for o in opts:
            o.zero_grad(set_to_none=True)
        total.backward()
        for o in opts:
            o.step()


def package_eval(cfg, fed, alg, client, shared, device: str = "cpu") -> list:
    import torch

    from fedkd_mpi.runtime.context import metric_cols

    return [metric_cols(cfg, fed, role, model, client.data, torch.device(device))
            for role, model in (("mentor", client.private), (alg.shared_role, shared))]


def bare_eval(cfg, client, shared, device: str = "cpu") -> list:
    import torch

    x, batch = client.data.test_x, cfg.train.eval_batch_size
    preds = []
    with torch.no_grad():
        for model in (client.private, shared):
            model.eval()
            preds.append(torch.cat([model(x[i : i + batch].to(device)).logits.argmax(-1).cpu()
                                    for i in range(0, len(x), batch)]))
    return preds


def same_bits(a, b) -> bool:
    import torch

    return all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def weights(client, shared) -> list:
    mods = [m for m in (client.private, shared, client.proj) if m is not None]
    return [p.detach().clone() for m in mods for p in m.parameters()]


def compute(config: str, overrides: list[str], reps: int, device: str = "cpu") -> dict:
    """Median seconds of package vs bare train and eval for one config (on CUDA the clock is
    read after a device synchronisation)."""
    import torch

    torch.set_num_threads(1)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    cfg, fed, alg, shared, fresh = build(config, overrides, device)
    t = {k: [] for k in ("train_pkg", "train_bare", "eval_pkg", "eval_bare")}
    identical = True
    for rep in range(reps):
        order = ("pkg", "bare") if rep % 2 == 0 else ("bare", "pkg")
        after = {}
        for side in order:
            client = fresh()
            sync()
            s = time.perf_counter()
            (package_train if side == "pkg" else bare_train)(cfg, alg, client, shared, device)
            sync()
            t[f"train_{side}"].append(time.perf_counter() - s)
            after[side] = weights(client, shared)
            s = time.perf_counter()
            if side == "pkg":
                package_eval(cfg, fed, alg, client, shared, device)
            else:
                bare_eval(cfg, client, shared, device)
            sync()
            t[f"eval_{side}"].append(time.perf_counter() - s)
        identical &= same_bits(after["pkg"], after["bare"])
    med = {k: statistics.median(v) for k, v in t.items()}
    tc, n = cfg.train, fed.clients[0].num_train
    steps = tc.local_steps or tc.local_epochs * -(-n // tc.batch_size)
    return dict(config=config, device=device, steps=steps,
                test=len(fed.clients[0].test_y), identical=identical, **med,
                spread={k: (min(v), max(v)) for k, v in t.items()})


def job(config: str, overrides: list[str], ranks: int) -> dict:
    """The real job: wall time from launch to exit, and its rounds' wall times."""
    import h5py

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.h5"
        cmd = [str(BIN / "mpiexec"), "-n", str(ranks), str(BIN / "fedkd-mpi"), "run", config,
               f"output={out}", "runtime.progress=false", "--overwrite", *overrides]
        s = time.perf_counter()
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - s
        if res.returncode != 0:
            sys.exit(f"job failed ({res.returncode}):\n{res.stderr[-2000:]}")
        with h5py.File(out, "r") as f:
            rounds = [float(x) for x in f["rounds/wall_time_s"][()]]
            train = [float(x) for x in f["timing/train_s"][()].max(axis=1)]
            ev = [float(x) for x in f["timing/eval_s"][()].max(axis=1)]
    return dict(wall=wall, rounds=rounds, train=train, eval=ev, rest=wall - sum(rounds))


PHASES = """
import time, sys, json
t0 = time.perf_counter(); out = {}
def lap(k):
    global t0
    t = time.perf_counter(); out[k] = t - t0; t0 = t
import torch; torch.set_num_threads(1); lap("import torch")
import fedkd_mpi.runtime.job; lap("import the runtime")
from fedkd_mpi.config import load_config
from fedkd_mpi.data import load_federated
from fedkd_mpi.models import build_for
cfg = load_config(sys.argv[1], sys.argv[2:])
fed = load_federated(cfg.data, cfg.seed, [0]); lap("data load + tokenisation")
build_for(cfg, "mentor", fed.num_classes, 0, True); lap("build the mentor (+ its library)")
build_for(cfg, "mentee", fed.num_classes, 0, True); lap("build the mentee")
print(json.dumps(out))
"""


def phases(config: str, overrides: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    s = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", PHASES, config, *overrides], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    total = time.perf_counter() - s
    return {**json.loads(res.stdout.strip().splitlines()[-1]), "process total": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="configs/default.yaml,configs/scratch.yaml")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--device", default="cpu", help="torch device of the round (cpu, cuda)")
    ap.add_argument("--skip-job", action="store_true", help="no start-up measurement")
    ap.add_argument("--phases", action="store_true", help="start-up steps of one rank")
    ap.add_argument("overrides", nargs="*", help="key=value for every config")
    a = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs", flush=True)
    for config in a.configs.split(","):
        r = compute(config, a.overrides, a.reps, a.device)
        where = "" if a.device == "cpu" else f" on {a.device}"
        print(f"\n## {config}{where}: one client's round, {r['steps']} local steps, {r['test']} "
              f"held-out examples, median of {a.reps} (min-max)")
        for what in ("train", "eval"):
            pkg, bare = r[f"{what}_pkg"], r[f"{what}_bare"]
            lo, hi = r["spread"][f"{what}_pkg"]
            blo, bhi = r["spread"][f"{what}_bare"]
            print(f"{what:5s}  package {pkg:7.3f} s ({lo:.3f}-{hi:.3f})   bare {bare:7.3f} s "
                  f"({blo:.3f}-{bhi:.3f})   ratio {pkg / bare:.3f}x")
        both = (r["train_pkg"] + r["eval_pkg"]) / (r["train_bare"] + r["eval_bare"])
        print(f"train + eval ratio {both:.3f}x; same bits after training: {r['identical']}")
        if a.phases:
            ph = phases(config, a.overrides)
            print("one rank's start-up steps, fresh process: " + ", ".join(
                f"{k} {v:.2f} s" for k, v in ph.items()))
        if not a.skip_job:
            j = job(config, a.overrides, a.ranks)
            share = j["rest"] / j["wall"]
            print(f"job, mpiexec -n {a.ranks}: {j['wall']:.1f} s wall; rounds "
                  + " + ".join(f"{x:.1f}" for x in j["rounds"])
                  + f" s; start-up + teardown {j['rest']:.1f} s = {100 * share:.1f} % of the job")
            print("  slowest rank per round: train " + ", ".join(f"{x:.1f}" for x in j["train"])
                  + " s; eval " + ", ".join(f"{x:.1f}" for x in j["eval"]) + " s")


if __name__ == "__main__":
    main()
