"""How much can a mentor learn from a teacher it only sees on its own inputs? (issue 3)

A FedKD mentor never sees other clients' data: what it learns from them reaches it as the
mentee's soft labels on its own 400 snippets. This probe puts a frozen, better-informed teacher
in the mentee's seat and trains each client's mentor exactly as the ``local`` row does (same
data, init, batches, dropout seeds, lr, steps, through the runtime's own ``local_train``) plus
FedKD's mentor distillation term (Eq. 3, ``loss_mode: paper``):
``CE + KL(sg(p_teacher) || p_mentor) / (CE_mentor + CE_teacher)``. It measures how much of a
teacher's knowledge that one channel moves into a mentor. Single process, no MPI::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distill_bound.py --seed 0 --teacher others

``--teacher all``: the ``centralized`` row's mentor, reproduced (its accuracy is printed next to
the one in runs/paper/centralized_s<seed>.h5 when that file exists); it has seen the client's own
snippets, so on them its soft labels are close to the hard labels. ``--teacher others``: for each
client, a mentor trained the same way on the other clients' snippets only, so its soft labels
carry nothing but the other clients' knowledge. ``--teacher none`` drops the KL term and must
reproduce the ``local`` row.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from paper_table import completed, h5_path, summarise  # benchmarks/paper_table.py
from torch import nn

from fedkd_mpi.algorithms.local import Local
from fedkd_mpi.algorithms.losses import LossSwitches, fedkd_loss
from fedkd_mpi.config import load_config
from fedkd_mpi.data import ClientData, load_federated
from fedkd_mpi.metrics import evaluate
from fedkd_mpi.models import build_for
from fedkd_mpi.runtime.client import Client, local_train, make_optimizer, trainable
from fedkd_mpi.seeding import torch_seed

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["accuracy", "f1"]
DEV = torch.device("cpu")
EQ3_ONLY = LossSwitches(hidden=False, attention=False)  # logits only: no layer pairs


class FrozenTeacher(nn.Module):
    """The oracle in the mentee's seat: eval mode and no gradient, whatever ``train()`` says."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "model", model.eval())  # unregistered: no trainable params

    def train(self, mode: bool = True) -> FrozenTeacher:
        return self

    def forward(self, x: torch.Tensor):
        with torch.no_grad():
            return self.model(x)


class OracleDistill(Local):
    """The ``local`` row's mentor loss plus FedKD's mentor term (Eq. 3) against the teacher."""

    def loss(self, private, shared, y, proj):
        if shared is None:
            return super().loss(private, shared, y, proj)
        return fedkd_loss(private, shared, y, [], None, "paper", EQ3_ONLY)


def train_rounds(model: nn.Module, data, cfg, cid: int, lr: float,
                 teacher: nn.Module | None) -> None:
    """All rounds through the runtime's own ``local_train`` (same batches, dropout seeds)."""
    alg = OracleDistill(cfg)
    cl = Client(cid, data, alg.new_state(cid), private=model,
                opt_private=make_optimizer(trainable(model), cfg.train.optimizer, lr))
    shared = None if teacher is None else FrozenTeacher(teacher)
    for rnd in range(cfg.train.rounds):
        local_train(alg, cl, shared, cfg, rnd, DEV)


def recorded(key: str, seed: int) -> float | None:
    """The paper_table run's mean mentor accuracy (None: not run)."""
    path = h5_path(key, seed)
    return summarise(path)["mentor_accuracy"] if completed(path) else None


def make_teacher(cfg, data: ClientData, num_classes: int, seed: int, key: int):
    """A mentor trained on ``data`` like a ``local`` client, and its held-out metrics."""
    t = build_for(cfg, "mentor", num_classes, torch_seed(seed, "mentor_init", key),
                  cfg.model.freeze_private_embeddings)
    train_rounds(t, data, cfg, key, cfg.train.lr_mentor, None)
    return t, evaluate(t, data.test_x, data.test_y, cfg.train.eval_batch_size, DEV, NAMES)


def table(path: Path) -> str:
    """Markdown summary of a results file: one row per teacher kind, latest line per seed."""
    rows: dict[str, dict[int, dict]] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        name = "none (CE only: reproduces `local`)" if r["teacher"] == "none" else r["teacher"]
        rows.setdefault(name, {})[r["seed"]] = r

    def ms(v: list[float]) -> str:
        return f"{np.mean(v):.1f} ± {np.std(v, ddof=1):.1f}" if len(v) > 1 else f"{v[0]:.1f}"

    out = ["| teacher | seeds | teacher acc | mentor acc | minus local (by seed) "
           "| minus centralized (by seed) |", "|---|---|---|---|---|---|"]
    for name, by_seed in rows.items():
        rs = [by_seed[s] for s in sorted(by_seed)]
        acc = [100 * r["mentor_mean"]["accuracy"] for r in rs]
        tch = [100 * np.mean([t["accuracy"] for t in r["teacher_metrics"] if t]) for r in rs
               if any(r["teacher_metrics"])]
        dl = [a - 100 * r["local_run_file"] for a, r in zip(acc, rs, strict=True)]
        dc = [a - 100 * r["centralized_run_file"] for a, r in zip(acc, rs, strict=True)]
        cell = [f"{np.mean(d):+.1f} ({', '.join(f'{x:+.1f}' for x in d)})" for d in (dl, dc)]
        out.append(f"| {name} | {len(rs)} | {ms(tch) if tch else '–'} | {ms(acc)} "
                   f"| {cell[0]} | {cell[1]} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--teacher", choices=["all", "others", "none"], default="all",
                    help="all: the centralized run's model (all 1,200 snippets); others: for "
                    "each client, one trained on the other clients' snippets only; none: CE "
                    "only, which reproduces the `local` row")
    ap.add_argument("--json", type=Path, help="append the result as one JSON line")
    ap.add_argument("--table", type=Path, help="print the summary of a --json file and exit")
    a = ap.parse_args()
    if a.table:
        print(table(a.table))
        return
    torch.set_num_threads(1)
    t0 = time.time()
    cen = load_config(ROOT / "configs/paper/centralized.yaml", [f"seed={a.seed}"])
    loc = load_config(ROOT / "configs/paper/local.yaml", [f"seed={a.seed}"])
    fl = load_federated(loc.data, a.seed, list(range(loc.data.num_clients)))
    teachers: dict[int, tuple[nn.Module, dict]] = {}
    if a.teacher == "all":
        fc = load_federated(cen.data, a.seed, [0])
        t = make_teacher(cen, fc.clients[0], fc.num_classes, a.seed, 0)
        teachers = {c: t for c in fl.clients}
        print(f"teacher on all snippets: acc {100 * t[1]['accuracy']:.2f} (centralized run "
              f"file: {recorded('centralized', a.seed)})", flush=True)
    accs, t_accs = [], []
    for cid, d in sorted(fl.clients.items()):
        if a.teacher == "others":
            rest = [fl.clients[c] for c in sorted(fl.clients) if c != cid]
            union = ClientData(cid, torch.cat([r.train_x for r in rest]),
                               torch.cat([r.train_y for r in rest]), d.test_x, d.test_y)
            teachers[cid] = make_teacher(loc, union, fl.num_classes, a.seed, 100 + cid)
            print(f"client {cid}: teacher on the other clients' {union.num_train} snippets: "
                  f"acc {100 * teachers[cid][1]['accuracy']:.2f}", flush=True)
        teacher = teachers[cid][0] if teachers else None
        m = build_for(loc, "mentor", fl.num_classes, torch_seed(a.seed, "mentor_init", cid),
                      loc.model.freeze_private_embeddings)
        train_rounds(m, d, loc, cid, loc.train.lr_mentor, teacher)
        r = evaluate(m, d.test_x, d.test_y, loc.train.eval_batch_size, DEV, NAMES)
        accs.append(r)
        t_accs.append(teachers[cid][1] if teachers else {})
        print(f"client {cid}: mentor acc {100 * r['accuracy']:.2f}", flush=True)
    mean = {k: float(np.mean([r[k] for r in accs])) for k in NAMES}
    res = dict(seed=a.seed, teacher=a.teacher, teacher_metrics=t_accs, mentor_mean=mean,
               mentor=accs,
               local_run_file=recorded("local", a.seed),
               centralized_run_file=recorded("centralized", a.seed), wall_s=time.time() - t0)
    print(json.dumps(res))
    if a.json:
        with a.json.open("a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
