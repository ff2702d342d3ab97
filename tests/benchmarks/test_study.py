"""benchmarks/study.py: settings chosen on the validation split before any row runs, the rows
run with the choice, completed files skipped on rerun, paired tables from the files."""

from __future__ import annotations

import re
import subprocess
import sys

import h5py
import yaml

from ..conftest import ROOT, TINY


def _val(path) -> float:
    with h5py.File(path, "r") as f:
        return float(f["clients/val_mentor_metric"][-1].mean())


def test_study_tunes_on_validation_runs_rows_and_resumes(tmp_path):
    study = tmp_path / "mini.yaml"
    study.write_text(
        f"base: {TINY}\n"
        "overrides: [train.rounds=1, data.val_fraction=0.25]\n"
        "ranks: 2\nseeds: [0]\n"
        "variants: {v: []}\n"
        "tune: {row: fedkd, rows: [fedkd], model: mentor, seed: 0, candidates: ["
        "{name: lr-low, overrides: [train.lr_mentor=0.0001]}, "
        "{name: lr-high, overrides: [train.lr_mentor=0.01]}]}\n"
        "rows:\n"
        "  - {name: local, models: [mentor], overrides: [algorithm=local, local.model=mentor]}\n"
        "  - {name: fedkd, models: [mentor, mentee], overrides: [algorithm=fedkd]}\n"
        "pairs: [[fedkd, mentor, local, mentor]]\n")
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "study.py"), str(study), "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    scores = {c: _val(out / "tune" / f"{c}-s0.h5") for c in ("lr-low", "lr-high")}
    assert scores["lr-low"] != scores["lr-high"]
    best = max(scores, key=scores.get)
    chosen = yaml.safe_load((out / "chosen.yaml").read_text())
    assert chosen["chosen"] == best and chosen["scored_on"].startswith("val_mentor_metric")
    lr = {"lr-low": 0.0001, "lr-high": 0.01}[best]
    with h5py.File(out / "v" / "fedkd-s0.h5", "r") as f:  # the tuned row ran with the choice
        assert yaml.safe_load(f.attrs["config"])["train"]["lr_mentor"] == lr
    with h5py.File(out / "v" / "local-s0.h5", "r") as f:  # an untuned row did not
        assert yaml.safe_load(f.attrs["config"])["train"]["lr_mentor"] not in (0.0001, 0.01)
        local = f["clients/mentor_metric"][-1]
    with h5py.File(out / "v" / "fedkd-s0.h5", "r") as f:
        d = float((f["clients/mentor_metric"][-1] - local).mean())
    row = rf"fedkd mentor − local mentor +\| 1 +\| {re.escape(f'{d:+.4f}')} "
    assert re.search(row, (out / "tables.md").read_text())
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0 and "done, skipped" in res.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")} == mtimes
