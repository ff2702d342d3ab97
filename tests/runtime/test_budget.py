"""Checks before allocations (runtime/budget.py): values within their caps whose product is
huge are refused from the config alone, before any model or tensor is built (one line, exit 2,
quickly, nothing written), and the estimate is the real size of the models it stands for."""

from __future__ import annotations

import io
import os
import resource
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fedkd_mpi.algorithms import build_algorithm
from fedkd_mpi.config import load_config
from fedkd_mpi.data import check_data
from fedkd_mpi.data.federated import _features
from fedkd_mpi.models import family_of
from fedkd_mpi.runtime.budget import check_budget, estimate
from fedkd_mpi.runtime.residency import available_memory_bytes

from ..conftest import FEDKD, MPIEXEC, ROOT, TINY

#: the measured breakage: each value within its cap, a 4.2 G-parameter mentor together
HUGE = ("data.vocab_size=1000000", "model.mentor.hidden=4096")
HUGE_LINE = ("config error: 'model.mentor.hidden'/'data.vocab_size': the mentor would hold "
             "4.2 G parameters (15.8 GiB for weights, ~63.3 GiB with gradients and Adam state "
             "per client); a client rank would need ~")
AS_LIMIT = 3_000_000_000  # address space: torch imports, the 16 GB mentor cannot be built


def _limited(*cmd: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    """``cmd`` under RLIMIT_AS (inherited by mpiexec's ranks): any attempt to build the huge
    model fails there, so our line proves the check came first. (result, seconds)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPIEXEC_TIMEOUT": str(int(timeout))}
    t = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30, env=env,
                         cwd=ROOT, preexec_fn=limit)
    return res, time.monotonic() - t


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.fixture
def huge_cannot_fit() -> None:
    avail = available_memory_bytes()
    if avail is None or avail > 60 * 2**30:
        pytest.skip("this machine's memory could hold the 63 GiB mentor: nothing to refuse")


def test_validate_refuses_a_huge_model_before_building(tmp_path, huge_cannot_fit):
    out = tmp_path / "v.h5"
    res, took = _limited(str(FEDKD), "validate", str(TINY), *HUGE, f"output={out}")
    assert res.returncode == 2, res.stderr
    (line,) = _lines(res.stderr)
    assert line.startswith(HUGE_LINE), line
    assert "more than the " in line and "(validate: one client rank holding one client)" in \
        line and line.endswith("; lower model.mentor.hidden or data.vocab_size")
    assert res.stdout == "" and not out.exists()
    assert took < 60  # torch's import and the data check (seconds); the check: milliseconds


def test_run_refuses_a_huge_model_before_building(tmp_path, huge_cannot_fit):
    out = tmp_path / "run.h5"
    res, took = _limited(str(MPIEXEC), "-n", "3", str(FEDKD), "run", str(TINY), *HUGE,
                         f"output={out}")
    assert res.returncode == 2, res.stderr
    (line,) = _lines(res.stderr)  # printed once, by rank 0
    assert line.startswith(HUGE_LINE), line
    assert "more than its share of this node's available memory" in line
    assert "MPI_LOCALNRANKS puts 3 ranks on this node" in line or \
        "all 3 ranks assumed on one node" in line
    assert "round" not in res.stdout and not out.exists()
    assert not Path(f"{out}.ckpt").exists()
    assert took < 120


# ---------------------------------------------------------------------------------------
# disk: a checkpoint or the spilled clients that cannot fit (a small tmpfs)
# ---------------------------------------------------------------------------------------


def _validate(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(FEDKD), "validate", str(TINY), *overrides], capture_output=True,
                          text=True, timeout=180, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_checkpoint_and_spill_disks_too_small_are_refused_at_validate(tmp_path, small_fs):
    fs = small_fs("200k")  # tiny: one checkpoint ~1.5 MiB, one client state ~500 KiB
    out = f"output={tmp_path / 'v.h5'}"
    ck, sp = fs / "ckpt", fs / "spill"
    res = _validate(out, "runtime.checkpoint_every=1", f"runtime.checkpoint_dir={ck}")
    assert res.returncode == 2
    (line,) = _lines(res.stderr)
    assert line.startswith(f"config error: 'runtime.checkpoint_dir' {ck}: not enough free "
                           "space for one checkpoint: 200.0 KiB free, about 1.5 MiB needed "
                           "(3 clients' private state at ~"), line
    assert line.endswith("point runtime.checkpoint_dir at a larger file system (or set "
                         "runtime.checkpoint_every=0: checkpoints on SIGTERM/SIGUSR1 only)")
    res = _validate(out, "runtime.resident_clients=1", f"runtime.spill_dir={sp}")
    assert res.returncode == 2
    (line,) = _lines(res.stderr)
    assert line.startswith(f"config error: 'runtime.spill_dir' {sp}: not enough free space "
                           "for the spilled clients: 200.0 KiB free, about "), line
    assert "(at least one client's private state, ~" in line
    assert line.endswith("or raise runtime.resident_clients")
    assert list(fs.iterdir()) == []  # nothing written
    # no periodic checkpoint (only on a signal) and no spilling: nothing to refuse
    res = _validate(out, f"runtime.checkpoint_dir={ck}", f"runtime.spill_dir={sp}")
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------------------------------
# the estimate is the real thing
# ---------------------------------------------------------------------------------------
def _inputs(path: Path | str, *overrides: str):
    """What preflight hands the estimator: config, family, algorithm, classes, an input."""
    cfg = load_config(str(path), list(overrides))
    family, alg = family_of(cfg), build_algorithm(cfg)
    family.check()
    corpus = check_data(cfg.data, cfg.seed)
    x = _features(corpus, np.arange(2), cfg.data)
    return cfg, family, alg, len(corpus.class_names), x


def _built(cfg, family, alg, classes: int, role: str) -> torch.nn.Module:
    freeze = (cfg.model.freeze_embeddings if role == alg.shared_role
              else cfg.model.freeze_private_embeddings)
    return family.build(role, classes, 0, freeze)


@pytest.mark.parametrize("path", [TINY, ROOT / "configs" / "scratch.yaml",
                                  ROOT / "configs" / "default.yaml",
                                  ROOT / "configs" / "paper" / "image_fedkd.yaml"],
                         ids=lambda p: p.stem)
def test_estimate_is_the_parameter_count_of_the_built_models(path):
    cfg, family, alg, classes, x = _inputs(path)
    t = time.perf_counter()
    budget = estimate(cfg, family, alg, classes, x)
    took = time.perf_counter() - t
    assert budget is not None
    for role, size in ((alg.private_role, budget.private), (alg.shared_role, budget.shared)):
        model = _built(cfg, family, alg, classes, role)
        params = list(model.parameters())
        real = sum(p.numel() for p in params)
        assert abs(size.params - real) <= 0.02 * real, (role, size.params, real)
        assert abs(size.trainable - sum(p.numel() for p in params if p.requires_grad)) <= \
            0.02 * real
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        assert abs(size.state_bytes - weights) <= 0.02 * weights
    assert took < 1.0


def test_estimated_client_file_is_the_size_torch_save_writes():
    """A tiny client's private state after one Adam step (mentor, W^h, both optimizers'
    moments), as a spill or checkpoint file writes it."""
    cfg, family, alg, classes, x = _inputs(TINY)
    budget = estimate(cfg, family, alg, classes, x)
    mentor, mentee = (_built(cfg, family, alg, classes, r) for r in ("mentor", "mentee"))
    proj = torch.nn.Linear(cfg.model.mentee.hidden, cfg.model.mentor.hidden, bias=False)
    opts = [torch.optim.Adam([p for p in m.parameters() if p.requires_grad])
            for m in (mentor, torch.nn.ModuleList([mentee, proj]))]
    ids = x.long()
    loss = mentor(ids).logits.sum() + mentee(ids).logits.sum() + proj.weight.sum()
    loss.backward()
    for o in opts:
        o.step()
    buf = io.BytesIO()
    torch.save({"private": mentor.state_dict(), "proj": proj.state_dict(),
                "opt_private": opts[0].state_dict(), "opt_shared": opts[1].state_dict()}, buf)
    real = buf.getbuffer().nbytes
    assert abs(budget.client_file_bytes - real) <= 0.1 * real, (budget.client_file_bytes, real)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml"))
                         + sorted((ROOT / "configs" / "paper").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_configs_pass_the_check_quickly(path, tmp_path):
    cfg, family, alg, classes, x = _inputs(path, f"output={tmp_path / 'r.h5'}")
    t = time.perf_counter()
    check_budget(cfg, family, alg, classes, x)  # raises when refused
    assert time.perf_counter() - t < 1.0
