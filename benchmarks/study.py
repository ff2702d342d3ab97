"""Does FedKD's mentor gain from federation? One resumable command per study file.

    .venv/bin/python benchmarks/study.py fmnist            # configs/studies/fmnist.yaml
    .venv/bin/python benchmarks/study.py fmnist --tables   # tables + figures from the files
    .venv/bin/python benchmarks/study.py fmnist --dry-run  # the jobs, nothing run

A study file names a base config with common overrides, seeds, *variants* (e.g. Dirichlet 0.1
and 0.5), *rows* (local-only, FedAvg of the mentor, FedAvg of the mentee, centralized, FedKD,
FedKD without mutual distillation, ...) and optionally a *tune* stage: candidate settings of
the tuned rows, each run on ``tune.seed`` of the first variant and scored on the **validation**
split (``val_<model>_metric``, mean over clients, last round). The best candidate is written
to ``<out>/chosen.yaml`` before any row runs and applied to every row listed in ``tune.rows``;
the test data never enters the choice. Every (variant, row, seed) is one ``mpiexec`` job of
the sweep runner (fedkd_mpi/sweep.py) writing ``<out>/<variant>/<row>-s<seed>.h5``;
a completed file is skipped and any other rerun from scratch, so rerunning the command
resumes the study. Tables and figures
(benchmarks/study_tables.py) are built from the run files only.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from fedkd_mpi.analysis.reader import load
from fedkd_mpi.analysis.spread import spread
from fedkd_mpi.api import Config
from fedkd_mpi.sweep import Job, execute, file_state

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    name: str
    overrides: list[str]
    models: list[str]  # the models this row is scored on (mentor and/or mentee)
    paired: bool = True  # same clients as the others (centralized: no, one client)
    ranks: int | None = None  # MPI ranks of this row's jobs (default: the study's)


@dataclass
class Study:
    name: str
    base: str
    overrides: list[str]
    ranks: int
    seeds: list[int]
    variants: dict[str, list[str]]
    rows: dict[str, Row]
    variant_rows: dict[str, list[str]]  # variant -> the rows it runs (default: all)
    out: Path
    tune: dict = field(default_factory=dict)
    pairs: list[list[str]] = field(default_factory=list)  # [row, model, base row, base model]
    text: str = ""  # the study file's own description
    split: str = "test"  # the split of the paired tables: test, or val for design probes


def load_study(name: str, out: str | None = None) -> Study:
    """``name``: a study under configs/studies or a path to a study file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else (
        ROOT / "configs" / "studies" / f"{name}.yaml")
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted((ROOT / "configs/studies").glob("*.yaml")))
        sys.exit(f"study error: {path} not found (studies: {known})")
    d = yaml.safe_load(path.read_text())
    rows = {r["name"]: Row(r["name"], [str(x) for x in r.get("overrides", [])],
                           list(r.get("models", ["mentor"])), bool(r.get("paired", True)),
                           r.get("ranks"))
            for r in d["rows"]}
    variants, only = {}, {}
    for k, v in d["variants"].items():  # a list of overrides, or {overrides: [...], rows: [...]}
        variants[k] = [str(x) for x in (v.get("overrides", []) if isinstance(v, dict) else v)]
        only[k] = list(v.get("rows", rows)) if isinstance(v, dict) else list(rows)
        if set(only[k]) - set(rows):
            sys.exit(f"study error: variant {k} names rows that are not in 'rows'")
    for pair in d.get("pairs", []):
        if pair[0] not in rows or pair[2] not in rows:
            sys.exit(f"study error: pair {pair} names a row that is not in 'rows'")
    return Study(path.stem, d["base"], [str(x) for x in d.get("overrides", [])],
                 int(d.get("ranks", 3)), [int(s) for s in d.get("seeds", [0])],
                 variants, rows, only,
                 Path(out) if out else ROOT / "runs" / "studies" / path.stem,
                 d.get("tune") or {}, [list(p) for p in d.get("pairs", [])],
                 str(d.get("description", "")), str(d.get("split", "test")))


def _base(s: Study) -> Path:
    return Path(s.base) if Path(s.base).is_absolute() else ROOT / s.base


def h5(s: Study, variant: str, row: str, seed: int) -> Path:
    return s.out / variant / f"{row}-s{seed}.h5"


# ---- tuning on the validation split ------------------------------------------------------
def tune_jobs(s: Study) -> list[Job]:
    if not s.tune:
        return []
    variant = next(iter(s.variants))
    seed = int(s.tune.get("seed", s.seeds[0]))
    row = s.rows[s.tune["row"]]
    return [Job(f"tune {cand['name']} ({variant}, seed {seed})", f"{cand['name']}-s{seed}",
                Config.load(_base(s), [*s.overrides, *s.variants[variant], *row.overrides,
                                       *map(str, cand["overrides"]), f"seed={seed}"]),
                (s.out / "tune").resolve(), s.ranks)
            for cand in s.tune["candidates"]]


def val_score(path: Path, model: str) -> float:
    """Mean over clients of ``model``'s validation metric at the last evaluated round."""
    sp = spread(load(path), model, "val")
    return math.nan if sp is None else sp.mean


def choose(s: Study) -> list[str]:
    """The tuned overrides: the candidate with the best validation score (written to
    ``<out>/chosen.yaml`` with every candidate's score); [] without a tune stage."""
    if not s.tune:
        return []
    model = s.tune.get("model", "mentor")
    scores = {}
    for job, cand in zip(tune_jobs(s), s.tune["candidates"], strict=True):
        if file_state(job.h5)[0] != "completed":
            sys.exit(f"study error: tuning run {job.h5} did not complete; rerun the command")
        scores[cand["name"]] = val_score(job.h5, model)
    best = max(scores, key=lambda k: -math.inf if math.isnan(scores[k]) else scores[k])
    chosen = next(c for c in s.tune["candidates"] if c["name"] == best)
    (s.out / "chosen.yaml").write_text(yaml.safe_dump({
        "chosen": best, "overrides": [str(x) for x in chosen["overrides"]],
        "scored_on": f"val_{model}_metric, mean over clients, last round",
        "scores": {k: round(v, 6) for k, v in scores.items()}}, sort_keys=False))
    return [str(x) for x in chosen["overrides"]]


# ---- the rows ----------------------------------------------------------------------------
def row_jobs(s: Study, tuned: list[str]) -> list[Job]:
    jobs = []
    tuned_rows = set(s.tune.get("rows", [])) if s.tune else set()
    for seed in s.seeds:  # seed by seed: a study cut short still has whole seeds
        for variant, vo in s.variants.items():
            for row in (s.rows[r] for r in s.variant_rows[variant]):
                extra = tuned if row.name in tuned_rows else []
                cfg = Config.load(_base(s), [*s.overrides, *vo, *row.overrides, *extra,
                                             f"seed={seed}"])
                jobs.append(Job(f"{variant} {row.name} seed {seed}", f"{row.name}-s{seed}",
                                cfg, (s.out / variant).resolve(), row.ranks or s.ranks))
    return jobs


def run_study(s: Study, dry: bool) -> int:
    """Tuning first (when the study has it), then every row; returns the failures."""
    failed = 0
    tj = tune_jobs(s)
    if tj:
        state = execute(tj, overwrite=True, dry_run=dry)
        failed += sum(v != "completed" for v in state.values())
        if failed:
            return failed + len(row_jobs(s, []))
    tuned = choose(s) if tj and not dry else []
    if dry and tj:
        print("study: the tuned rows get the candidate chosen on the validation split",
              flush=True)
    if tuned:
        print(f"study: tuned on the validation split -> {' '.join(tuned)} "
              f"({s.out / 'chosen.yaml'})", flush=True)
    state = execute(row_jobs(s, tuned), overwrite=True, dry_run=dry)
    return failed + sum(v != "completed" for v in state.values())


def completed(s: Study, variant: str, row: str) -> list[Path]:
    return [p for p in (h5(s, variant, row, sd) for sd in s.seeds)
            if file_state(p)[0] == "completed"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("name", help="study name (configs/studies/<name>.yaml) or a study file")
    ap.add_argument("--out", help="folder of the run files (default runs/studies/<study>)")
    ap.add_argument("--tables", action="store_true", help="only build tables and figures")
    ap.add_argument("--dry-run", action="store_true", help="print the jobs, run nothing")
    args = ap.parse_args(argv)
    s = load_study(args.name, args.out)
    failed = 0 if args.tables else run_study(s, args.dry_run)
    if args.dry_run:
        return 0
    import study_tables

    text = study_tables.build(s)
    (s.out / "tables.md").write_text(text + "\n")
    print(text)
    if failed:
        print(f"{failed} run(s) failed: rerun the same command to retry them", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    np.seterr(all="ignore")
    sys.exit(main())
