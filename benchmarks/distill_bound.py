"""How much can a mentor learn from a teacher it only sees on its own inputs? (issue 3)

A FedKD mentor never sees other clients' data: what it learns from them reaches it as the
mentee's soft labels on its own 400 snippets. This probe replaces the mentee by the best teacher
the federation could ever carry, a model trained centrally on all clients' data, frozen, and
trains each client's mentor exactly as the ``local`` row does (same data, init, batches,
dropout seeds, lr, steps) plus FedKD's mentor distillation term (Eq. 3, ``loss_mode: paper``):
``CE + KL(sg(p_teacher) || p_mentor) / (CE_mentor + CE_teacher)``.

If even this oracle leaves the mentor short of centralized training, no mentee can close the gap
through local-input distillation alone. Single process, no MPI (nothing is communicated)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distill_bound.py --seed 0 [--teacher-layers 3]

``--teacher-layers 6``: the centralized mentor (the ``centralized`` row, reproduced: its accuracy
is printed next to the one in runs/paper/centralized_s<seed>.h5 when that file exists);
``3``/``2``: the first 3/2 layers trained centrally at the mentee lr (a perfect mentee carrier).
``--no-distill`` drops the KL term, which must reproduce the ``local`` row.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from fedkd_mpi.algorithms.base import Local
from fedkd_mpi.algorithms.losses import LossSwitches, fedkd_loss
from fedkd_mpi.config import load_config
from fedkd_mpi.data import load_federated
from fedkd_mpi.metrics import evaluate
from fedkd_mpi.models import build_for
from fedkd_mpi.runtime.client import Client, local_train, make_optimizer, trainable
from fedkd_mpi.seeding import torch_seed

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["accuracy", "f1"]


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
        return fedkd_loss(private, shared, y, [], None, "paper",
                          LossSwitches(hidden=False, attention=False))


def train_rounds(model: nn.Module, data, cfg, cid: int, lr: float,
                 teacher: nn.Module | None) -> None:
    """All rounds through the runtime's own ``local_train`` (same batches, dropout seeds)."""
    cl = Client(cid, data, private=model,
                opt_private=make_optimizer(trainable(model), cfg.train.optimizer, lr))
    shared = None if teacher is None else FrozenTeacher(teacher)
    for rnd in range(cfg.train.rounds):
        local_train(OracleDistill(cfg), cl, shared, cfg, rnd, torch.device("cpu"))


def recorded(key: str, seed: int) -> float | None:
    p = ROOT / "runs" / "paper" / f"{key}_s{seed}.h5"
    if not p.exists():
        return None
    with h5py.File(p, "r") as f:
        return float(f["rounds/mentor_accuracy"][-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--teacher-layers", type=int, default=6, choices=[2, 3, 6])
    ap.add_argument("--no-distill", action="store_true", help="CE only: reproduces `local`")
    ap.add_argument("--json", type=Path, help="append the result as one JSON line")
    a = ap.parse_args()
    torch.set_num_threads(1)
    dev = torch.device("cpu")
    t0 = time.time()
    cen = load_config(ROOT / "configs/paper/centralized.yaml", [f"seed={a.seed}"])
    loc = load_config(ROOT / "configs/paper/local.yaml", [f"seed={a.seed}"])
    teacher, t_acc = None, {}
    if not a.no_distill:
        fc = load_federated(cen.data, a.seed, [0])
        role = "mentor" if a.teacher_layers == 6 else "mentee"
        if role == "mentee":
            cen = load_config(ROOT / "configs/paper/centralized.yaml",
                              [f"seed={a.seed}", f"model.mentee.layers={a.teacher_layers}"])
        teacher = build_for(cen, role, fc.num_classes, torch_seed(a.seed, "mentor_init", 0),
                            cen.model.freeze_private_embeddings)
        lr = cen.train.lr_mentor if role == "mentor" else cen.train.lr_mentee
        train_rounds(teacher, fc.clients[0], cen, 0, lr, None)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        d = fc.clients[0]
        t_acc = evaluate(teacher, d.test_x, d.test_y, cen.train.eval_batch_size, dev, NAMES)
        print(f"teacher ({a.teacher_layers} layers, all 1,200 snippets): "
              f"acc {100 * t_acc['accuracy']:.2f}  (centralized run file: "
              f"{recorded('centralized', a.seed) if role == 'mentor' else '-'})", flush=True)
    fl = load_federated(loc.data, a.seed, list(range(loc.data.num_clients)))
    accs = []
    for cid, d in sorted(fl.clients.items()):
        m = build_for(loc, "mentor", fl.num_classes, torch_seed(a.seed, "mentor_init", cid),
                      loc.model.freeze_private_embeddings)
        train_rounds(m, d, loc, cid, loc.train.lr_mentor, teacher)
        r = evaluate(m, d.test_x, d.test_y, loc.train.eval_batch_size, dev, NAMES)
        accs.append(r)
        print(f"client {cid}: mentor acc {100 * r['accuracy']:.2f}", flush=True)
    mean = {k: float(np.mean([r[k] for r in accs])) for k in NAMES}
    res = dict(seed=a.seed, teacher_layers=None if a.no_distill else a.teacher_layers,
               teacher=t_acc, mentor_mean=mean, mentor=accs,
               local_run_file=recorded("local", a.seed),
               centralized_run_file=recorded("centralized", a.seed), wall_s=time.time() - t0)
    print(json.dumps(res))
    if a.json:
        with a.json.open("a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
