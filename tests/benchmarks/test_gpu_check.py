"""benchmarks/gpu_check.sh, checked without a GPU: its fastest dry-run subset writes the JSON the
GPU run will write, the run-file comparison says what matches, and without CUDA the real mode
refuses with one line (exit 2)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ..conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FEDKD_PYTHON": sys.executable, "FEDKD_GPU_CHECK_TMP": str(tmp_path)}
    env.pop("FEDKD_GPU_CHECK_CPU", None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def test_dry_run_subset_writes_the_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    res = _run(tmp_path, str(out), "--dry-run-cpu", "--steps", "env,refuse")
    assert res.returncode == 0, res.stdout + res.stderr
    rec = json.loads(out.read_text())
    assert rec["mode"] == "dry-run-cpu" and list(rec["steps"]) == ["env", "refuse"]
    env = rec["steps"]["env"]
    assert env["ok"] and env["status"] == "ok" and env["seconds"] > 0
    assert env["torch"] == torch.__version__ and env["cuda_available"] is False
    assert not env["mpi_library"].startswith("unavailable")
    assert set(env["package_sets"]) >= {"use_deterministic_algorithms", "CUBLAS_WORKSPACE_CONFIG"}
    ref = rec["steps"]["refuse"]  # runtime.device=cuda without CUDA: exit 2, one line
    assert ref["ok"] and ref["rc"] == 2 and ref["stderr_lines"] == 1, ref
    assert "CUDA is not available" in ref["line"]
    assert "gpu_check (dry-run-cpu" in res.stdout and "refuse" in res.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_the_real_mode_exits_2_with_one_line(tmp_path):
    out = tmp_path / "gpu_check.json"
    res = _run(tmp_path, str(out))
    lines = [x for x in (res.stdout + res.stderr).splitlines() if x.strip()]
    assert res.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("gpu_check: no CUDA GPU") and not out.exists()


def _write(path: Path, metric: list[float], ranks: list[int]) -> Path:
    with h5py.File(path, "w") as f:
        f["partition/num_train"] = np.array([400, 400, 400])
        f["clients/num_samples"] = np.full((2, 3), 400)
        f["rounds/round"] = np.array([1, 2])
        f["rounds/energy_threshold"] = np.array([0.4, 0.7])
        f["rounds/mentee_metric"] = np.array(metric)
        f["rounds/wall_time_s"] = np.array([1.0, 9.0])
        f["layers/rank_down"] = np.array([ranks])
    return path


def test_compare_separates_what_must_match_from_what_may_differ(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check_runs",
                                                  ROOT / "benchmarks" / "gpu_check_runs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    a = _write(tmp_path / "a.h5", [0.5, 0.6], [3, 4])
    d = mod.diff_runs(a, _write(tmp_path / "b.h5", [0.5, 0.625], [3, 5]))
    assert d["same_expected"] == {"partition/num_train": True, "clients/num_samples": True,
                                  "rounds/round": True, "rounds/energy_threshold": True}
    assert d["max_abs_metric_diff"] == pytest.approx(0.025)
    assert "rounds/wall_time_s" not in d["max_abs_diff"]
    assert d["equal_not_required"] == {"layers/rank_down": False}
    assert mod.read_run(a)["rounds"]["mentee_metric"] == [0.5, 0.6]
