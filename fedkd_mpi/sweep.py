"""``fedkd-mpi sweep CONFIG key=a,b seed=0,1,2 [key=value ...] --out DIR``: a grid of runs.

Every key given with comma-separated values spans one axis of a Cartesian grid (``[1,2]`` or
``{a: 1, b: 2}`` stay one YAML value); a key with one value is a fixed override. Each grid
point is one ``mpiexec -n RANKS python -m fedkd_mpi run`` job of this environment, named from
its grid values (``algorithm=fedavg__seed=1``), and everything is written under ``--out``:

    OUT/<name>.h5            the run file (checkpoints: OUT/<name>.h5.ckpt)
    OUT/logs/<name>.yaml     the configuration it ran (input paths absolute)
    OUT/logs/<name>.log      its stdout and stderr
    OUT/tensorboard/<name>/  when the config sets runtime.tensorboard
    OUT/sweep.csv, sweep.md  the summary, one row per run

Rerunning the same command skips completed runs; ``--resume`` continues interrupted ones from
their checkpoint, ``--overwrite`` reruns failed (or killed) ones. The summary's MB to target
is :func:`fedkd_mpi.analysis.compare.mb_to_target`, as in ``fedkd-mpi compare``.

Orchestration lives here, beside the API it uses (``fedkd_mpi.api``), not in
``fedkd_mpi.analysis``, which only reads run files and never starts MPI.
"""

from __future__ import annotations

import argparse
import itertools
import math
import re
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # the runner is imported on use: building fedkd-mpi's parser stays cheap
    from fedkd_mpi.api import Config


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sweep", help="a grid of runs (key=a,b ...) through mpiexec, resumable, "
                       "with a summary table")
    s.add_argument("config", help="YAML file; relative input paths are taken from its folder")
    s.add_argument("items", nargs=argparse.REMAINDER, metavar="key=a,b | key=value",
                   help="grid axes (comma-separated values) and fixed overrides")
    add_options(s)


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="folder for everything the sweep writes (required)")
    p.add_argument("--ranks", type=int, default=None,
                   help="MPI processes per run (default: clients + 1, at most CPUs + 1)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    p.add_argument("--resume", action="store_true",
                   help="continue interrupted runs from their checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="rerun failed or killed runs (and interrupted ones without --resume)")
    p.add_argument("--target", type=float, default=None,
                   help="also report the MB per client needed to reach this metric value")
    p.add_argument("--metric", default="auto", help="as in compare: auto, mentor, mentee, NAME")
    p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")


def split_values(raw: str) -> list[str]:
    """Split on commas outside brackets, braces and quotes: ``a,b`` -> 2, ``[1,2]`` -> 1."""
    out, depth, quote, cur = [], 0, "", ""
    for ch in raw:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        cur += ch
    return [*out, cur]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]+", "-", text).strip("-") or "_"


@dataclass
class Job:
    """One run of a sweep (or of a benchmark suite)."""

    label: str  # printed: 'algorithm=fedavg seed=1'
    name: str  # file stem: 'algorithm=fedavg__seed=1'
    config: Config
    out: Path
    ranks: int
    values: dict[str, str] = field(default_factory=dict)

    @property
    def h5(self) -> Path:
        return self.out / f"{self.name}.h5"

    @property
    def log(self) -> Path:
        return self.out / "logs" / f"{self.name}.log"

    @property
    def yaml(self) -> Path:
        return self.out / "logs" / f"{self.name}.yaml"

    def final_config(self) -> Config:
        """Everything the run writes under ``out``: output, checkpoints, TensorBoard."""
        items = [f"output={self.h5}", "runtime.checkpoint_dir=null"]
        if self.config.resolved().runtime.tensorboard:
            items.append(f"runtime.tensorboard={self.out / 'tensorboard' / self.name}")
        return self.config.override(*items)


def grid_jobs(config: str | Path, items: list[str], out: Path,
              ranks: int | None) -> tuple[list[str], list[Job]]:
    """(grid keys, one Job per grid point); ConfigError (one line) for a bad item or config."""
    from fedkd_mpi.api import Config, check_ranks, default_ranks
    from fedkd_mpi.config import ConfigError

    parsed: list[tuple[str, list[str]]] = []
    for item in items:
        if "=" not in item or item.startswith("-"):
            raise ConfigError(f"sweep error: {item!r} is not key=value or key=a,b,...")
        key, raw = (x.strip() for x in item.split("=", 1))
        if key == "output":
            raise ConfigError("sweep error: 'output' is set by the sweep (--out DIR/<name>.h5)")
        if key in (k for k, _ in parsed):
            raise ConfigError(f"sweep error: key '{key}' given twice")
        parsed.append((key, split_values(raw)))
    keys = [k for k, v in parsed if len(v) > 1]
    base = Config.load(config)
    jobs, names = [], set()
    for combo in itertools.product(*(v for _, v in parsed)):
        chosen = dict(zip([k for k, _ in parsed], combo, strict=True))
        cfg = base.override(*(f"{k}={v}" for k, v in chosen.items()))
        values = {k: chosen[k] for k in keys}
        label = " ".join(f"{k}={v}" for k, v in values.items()) or "run"
        name = "__".join(_safe(f"{k}={v}") for k, v in values.items()) or "run"
        if name in names or len(name) > 150:
            import hashlib

            name = f"{name[:140]}-{hashlib.sha1(label.encode()).hexdigest()[:8]}"
        names.add(name)
        schema = cfg.resolved()  # one-line schema errors before anything starts
        n = default_ranks(schema) if ranks is None else ranks
        jobs.append(Job(label, name, cfg, out, check_ranks(n), values))
    return keys, jobs


def file_state(h5: Path) -> tuple[str, str]:
    """(state, detail): new | completed | resumable | interrupted | failed | running |
    unreadable, with the file's error or round count."""
    if not h5.exists():
        return "new", ""
    from fedkd_mpi.analysis.reader import RunFileError, load
    from fedkd_mpi.config import CHECKPOINT_MANIFEST

    try:
        run = load(h5)  # the reader's status: attrs, or the in-place status of newer formats
    except RunFileError as exc:
        return "unreadable", str(exc)
    status = run.summary.status
    detail = (str(run.attrs.get("error") or "") if status == "failed" else "") \
        or f"{run.summary.rounds_completed} rounds"
    if status == "interrupted" and (Path(f"{h5}.ckpt") / CHECKPOINT_MANIFEST).is_file():
        return "resumable", detail
    return status, detail


def plan(job: Job, resume: bool, overwrite: bool) -> tuple[str, str]:
    """(action, note): skip | run | resume | overwrite | blocked."""
    state, detail = file_state(job.h5)
    if state == "new":
        return "run", ""
    if state == "completed":
        return "skip", "done, skipped"
    if state == "resumable" and resume:
        return "resume", ""
    if overwrite:
        return "overwrite", ""
    hint = "--resume" if state == "resumable" else "--overwrite"
    return "blocked", f"{state} ({detail}); rerun with {hint}"


def _start(job: Job, action: str) -> subprocess.Popen:
    from fedkd_mpi.api import job_env, run_command

    job.log.parent.mkdir(parents=True, exist_ok=True)
    job.yaml.write_text(job.final_config().to_yaml())
    cmd = run_command(job.yaml, job.ranks, overwrite=action == "overwrite",
                      resume=action == "resume")
    with job.log.open("a" if action == "resume" else "w") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()  # own session: a Ctrl-C reaches the sweep, which asks runs to checkpoint
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=job_env(),
                                start_new_session=True)


def execute(jobs: list[Job], parallel: int = 1, resume: bool = False, overwrite: bool = False,
            dry_run: bool = False, stream: TextIO = sys.stdout) -> dict[str, str]:
    """Run the jobs (``parallel`` at once), one progress line each; name -> final state."""
    n = len(jobs)
    state: dict[str, str] = {}
    todo: deque[tuple[int, Job, str]] = deque()

    def say(i: int, job: Job, text: str) -> None:
        print(f"[{i}/{n}] {job.label}: {text}", file=stream, flush=True)

    for i, job in enumerate(jobs, 1):
        action, note = plan(job, resume, overwrite)
        if action in ("skip", "blocked"):
            state[job.name] = "completed" if action == "skip" else "blocked"
            say(i, job, note)
        elif dry_run:
            say(i, job, f"would {action}: {job.h5}")
        else:
            todo.append((i, job, action))
    running: dict[int, tuple[Job, str, subprocess.Popen, float]] = {}
    try:
        while todo or running:
            while todo and len(running) < max(1, parallel):
                i, job, action = todo.popleft()
                running[i] = (job, action, _start(job, action), time.perf_counter())
            time.sleep(0.2)
            for i, (job, action, proc, t0) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[i]
                state[job.name] = _report(i, job, action, rc, time.perf_counter() - t0, say)
    except KeyboardInterrupt:
        from fedkd_mpi.api import stop_job

        print(f"sweep: interrupted; {len(running)} running run(s) asked to checkpoint at the end "
              "of the round (interrupt again to kill them); continue with the same command and "
              "--resume", file=stream, flush=True)
        stop_job([proc for _, _, proc, _ in running.values()])
        for i, (job, action, proc, t0) in running.items():
            state[job.name] = _report(i, job, action, proc.returncode,
                                      time.perf_counter() - t0, say)
        raise
    return state


def _report(i: int, job: Job, action: str, rc: int, wall: float, say: Any) -> str:
    state, _ = file_state(job.h5)
    how = " (resumed)" if action == "resume" else ""
    if rc == 0 and state == "completed":
        say(i, job, f"completed in {wall:.1f} s{how}")
        return "completed"
    if rc == 3:
        say(i, job, f"interrupted after {wall:.1f} s; continue with --resume")
        return "interrupted"
    from fedkd_mpi.api import failure_line

    text = job.log.read_text(errors="replace") if job.log.is_file() else ""
    line = failure_line(rc, text, job.h5, time.time() - wall - 1.0)
    say(i, job, f"failed (exit {rc}) in {wall:.1f} s: {line}; log {job.log}")
    return "failed"


def summary(jobs: list[Job], keys: list[str], target: float | None,
            metric: str = "auto") -> tuple[Any, str]:
    """(one row per run with a readable run file, markdown text)."""
    import pandas as pd

    from fedkd_mpi.analysis.compare import MetricSpec, run_row
    from fedkd_mpi.analysis.reader import RunFileError, load

    spec, rows, name = MetricSpec.parse(metric), [], "metric"
    for job in jobs:
        try:
            run = load(job.h5)
        except RunFileError:
            continue
        name = run.summary.metric_name
        row = run_row(run, spec, target)
        rows.append({"run": job.name, **job.values, **row})
    table = pd.DataFrame(rows)
    if not len(table):
        return table, "(no run file yet)"

    def f4(v: float) -> str:
        return "–" if not math.isfinite(v) else f"{v:.4f}"

    shown = pd.DataFrame({**{k: table[k] for k in keys},
                          "status": table["status"], "rounds": table["rounds"],
                          f"final mentor {name}": table["final_mentor"].map(f4),
                          f"final mentee {name}": table["final_mentee"].map(f4),
                          "MB / client (up+down)": table["mb_per_client"].map(f4),
                          "× vs mentor FedAvg": table["reduction_vs_mentor_fedavg"].map(
                              lambda v: "–" if not math.isfinite(v) else f"{v:.1f}")})
    if target is not None:
        what = f"{spec.model} {name}" if spec.model else name
        shown[f"MB / client to {what} ≥ {target:g}"] = [
            "not reached" if not math.isfinite(mb) else f"{mb:.4f} (round {r:.0f})"
            for mb, r in zip(table["mb_to_target"], table["round_to_target"], strict=True)]
    if not keys:
        shown.insert(0, "run", table["run"])
    return table, shown.to_markdown(index=False, disable_numparse=True)


def main(args: argparse.Namespace) -> int:
    from fedkd_mpi.config import ConfigError

    p = argparse.ArgumentParser(prog="fedkd-mpi sweep CONFIG")
    p.add_argument("items", nargs="*")
    add_options(p)
    args = p.parse_intermixed_args(args.items, namespace=argparse.Namespace(
        **{k: v for k, v in vars(args).items() if k != "items"}))
    if args.out is None:
        print("fedkd-mpi sweep: --out DIR is required", file=sys.stderr)
        return 2
    out = args.out.resolve()
    try:
        keys, jobs = grid_jobs(args.config, args.items, out, args.ranks)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except ValueError as exc:  # --ranks
        print(f"sweep error: --ranks: {exc}", file=sys.stderr)
        return 2
    axes = " x ".join(f"{len({j.values[k] for j in jobs})} {k}" for k in keys)
    print(f"sweep: {len(jobs)} run{'s' if len(jobs) > 1 else ''}{f' ({axes})' if axes else ''}, "
          f"{jobs[0].ranks} ranks each, {args.jobs} at once -> {out}", flush=True)
    try:
        state = execute(jobs, args.jobs, args.resume, args.overwrite, args.dry_run)
    except KeyboardInterrupt:
        return 130
    if args.dry_run:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    table, text = summary(jobs, keys, args.target, args.metric)
    (out / "sweep.md").write_text(text + "\n")
    table.to_csv(out / "sweep.csv", index=False)
    bad = [n for n, s in state.items() if s != "completed"]
    group = ",".join(k for k in keys if k != "seed") or "algorithm"
    fold = (f"; fold the seeds with: fedkd-mpi compare {out}/*.h5 --group-by {group}"
            if "seed" in keys else "")
    print(f"\n{text}\n\nwrote {out / 'sweep.md'}, {out / 'sweep.csv'}{fold}"
          + (f"\n{len(bad)} of {len(jobs)} runs not completed" if bad else ""), flush=True)
    return 1 if bad else 0
