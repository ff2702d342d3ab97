"""Experiments from a script or a notebook: :class:`Config` and :func:`run` (docs/api.md).

>>> import fedkd_mpi
>>> cfg = fedkd_mpi.Config.load("configs/scratch.yaml", ["train.rounds=2"])  # doctest: +SKIP
>>> res = fedkd_mpi.run(cfg, ranks=4, overrides=["output=runs/r2.h5"])          # doctest: +SKIP
>>> res.status, res.summary.mb_per_client, res.load().rounds                     # doctest: +SKIP

``run`` starts ``mpiexec -n N python -m fedkd_mpi run`` of *this* environment (the ``mpiexec``
and ``python`` next to ``sys.executable``): the job is the same as from the command line,
with the same checks, output and HDF5 file. Nothing here imports mpi4py or torch
(``Config.validate`` imports torch for the model and codec probes).
"""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedkd_mpi.config import Config as Schema
from fedkd_mpi.config import ConfigError, apply_override, config_from_dict, load_config

#: input files: a relative path in a config file is taken from that file's folder
INPUT_PATHS = ("data.path", "data.test_path")
#: a packaged name or a folder: taken from the config file's folder when that folder exists
MAYBE_FOLDERS = ("model.pretrained", "data.tokenizer")
EXIT_BAD_INPUT, EXIT_INTERRUPTED = 2, 3


class RunError(RuntimeError):
    """A job that failed: ``str()`` is the failing rank's one line; ``returncode``, ``stderr``
    (everything the job wrote there) and ``path`` (the run file) say more."""

    def __init__(self, line: str, returncode: int = 1, stderr: str = "",
                 path: Path | None = None) -> None:
        super().__init__(line)
        self.returncode, self.stderr, self.path = returncode, stderr, path


def _get(tree: Mapping[str, Any], dotted: str, strict: bool = False) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if strict:
                raise KeyError(dotted)
            return None
        node = node[part]
    return node


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree[part]
    tree[last] = value


def _resolve_inputs(tree: dict[str, Any], base: Path, keys: Iterable[str] | None = None) -> None:
    """Relative input paths (``INPUT_PATHS``, and ``MAYBE_FOLDERS`` naming a folder under
    ``base``) made absolute against ``base``; only those under the dotted ``keys`` if given."""
    for key in INPUT_PATHS + MAYBE_FOLDERS:
        if keys is not None and not any(key == k or key.startswith(f"{k}.") for k in keys):
            continue
        v = _get(tree, key)
        if not isinstance(v, str) or not v or Path(v).is_absolute():
            continue
        if key in INPUT_PATHS or (base / v).is_dir():
            _set(tree, key, str((base / v).resolve()))


def _read_tree(path: Path) -> dict[str, Any]:
    """The raw mapping of a YAML config file; any problem is load_config's one-line error."""
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if isinstance(tree, dict):
            return Schema._moved_keys(tree)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError):
        pass
    load_config(path)  # raises the CLI's message for this file
    raise ConfigError(f"config error: cannot read '{path}'")


class Config:
    """A configuration to run: a YAML file plus ``key=value`` overrides, or a dict.

    Immutable: :meth:`override` returns a new Config. Relative input paths (``data.path``,
    ``data.test_path``, a ``model.pretrained`` folder) are taken from the config file's folder;
    ``output`` and the other written paths stay relative to the working directory, as with
    ``fedkd-mpi run``."""

    def __init__(self, tree: Mapping[str, Any] | None = None, path: str | Path | None = None,
                 overrides: Iterable[str] = ()) -> None:
        self._tree: dict[str, Any] = copy.deepcopy(dict(tree or {}))
        self.path = Path(path).resolve() if path is not None else None
        self.overrides = tuple(overrides)

    @classmethod
    def load(cls, path: str | Path, overrides: Iterable[str] = ()) -> Config:
        """A YAML config file (``configs/*.yaml``) and dotted overrides."""
        p = Path(path)
        tree = _read_tree(p)
        _resolve_inputs(tree, p.resolve().parent)
        return cls(tree, p).override(*overrides)

    @classmethod
    def from_dict(cls, tree: Mapping[str, Any]) -> Config:
        """Nested sections as in the YAML file (relative input paths: the working directory)."""
        tree = copy.deepcopy(dict(tree))
        _resolve_inputs(tree, Path.cwd())
        return cls(tree)

    @classmethod
    def build(cls, **sections: Any) -> Config:
        """``Config.build(data={"num_clients": 4}, train={"rounds": 2}, algorithm="fedavg")``."""
        return cls.from_dict(sections)

    def override(self, *items: str) -> Config:
        """A new Config with ``a.b=value`` overrides applied (values parsed as YAML)."""
        tree = copy.deepcopy(self._tree)
        for item in items:
            apply_override(tree, item)
            key = item.split("=", 1)[0].strip()
            _resolve_inputs(tree, Path.cwd(), [key])  # typed here: the working directory
        new = Config(tree, None, (*self.overrides, *items))
        new.path = self.path
        return new

    def to_dict(self) -> dict[str, Any]:
        """The raw sections (what was given, not the defaults)."""
        return copy.deepcopy(self._tree)

    def resolved(self) -> Schema:
        """The schema object (:class:`fedkd_mpi.config.Config`); ConfigError (one line)."""
        return config_from_dict(copy.deepcopy(self._tree))

    def __getitem__(self, dotted: str) -> Any:
        """A resolved value: ``cfg["train.rounds"]``, ``cfg["model.mentee"]``."""
        return _get(self.resolved().model_dump(mode="json"), dotted, strict=True)

    def validate(self) -> Config:
        """The checks of ``fedkd-mpi validate`` (schema, then data, models, codec, aggregator
        and observer probes); ConfigError with the one line; returns self."""
        from fedkd_mpi.runtime.preflight import preflight

        preflight(self.resolved())
        return self

    def to_yaml(self) -> str:
        """The resolved configuration, every key (as ``fedkd-mpi validate`` prints it)."""
        return self.resolved().to_yaml()

    def __repr__(self) -> str:
        src = str(self.path) if self.path else "dict"
        return f"Config({src!r}, overrides={list(self.overrides)!r})"


@dataclass
class RunResult:
    """What :func:`run` returns: the run file, its status and summary (RunSummary)."""

    path: Path
    status: str
    returncode: int
    summary: Any  # fedkd_mpi.analysis.RunSummary
    wall_s: float = 0.0

    def load(self) -> Any:
        """The run's tables (:func:`fedkd_mpi.analysis.load`): rounds, clients, layers, ..."""
        from fedkd_mpi.analysis import load

        return load(self.path)


def executables() -> tuple[Path, Path]:
    """(mpiexec, python) of this environment; RunError when no mpiexec sits next to python."""
    python = Path(sys.executable)
    mpiexec = python.parent / "mpiexec"
    if not mpiexec.is_file():
        raise RunError(f"no mpiexec next to {python} (looked for {mpiexec}); install fedkd_mpi's "
                       "requirements (the mpich wheel) in this environment")
    return mpiexec, python


def check_ranks(ranks: Any) -> int:
    """ValueError naming ``ranks`` unless it is an int >= 2 (the runtime needs a server and a
    client rank)."""
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 2:
        raise ValueError(f"ranks={ranks!r}: a run needs ranks >= 2 MPI processes (rank 0 = "
                         "server, ranks >= 1 = clients)")
    return ranks


def default_ranks(schema: Schema) -> int:
    """One rank per client plus the server, at most the CPU count + 1."""
    return min(schema.data.num_clients, os.cpu_count() or 1) + 1


def run_command(config_file: str | Path, ranks: int, overwrite: bool = False,
                resume: bool = False) -> list[str]:
    """``mpiexec -n RANKS python -m fedkd_mpi run CONFIG_FILE [--overwrite] [--resume]``."""
    check_ranks(ranks)
    mpiexec, python = executables()
    return [str(mpiexec), "-n", str(ranks), str(python), "-m", "fedkd_mpi", "run",
            str(config_file), *(["--overwrite"] if overwrite else []),
            *(["--resume"] if resume else [])]


def job_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "PYTHONUNBUFFERED": "1"}


_RANK_FAILED = re.compile(r"^fedkd-mpi: rank (\d+) failed:")


def failure_line(returncode: int, stderr: str, path: Path | None = None,
                 since: float = 0.0) -> str:
    """The failing rank's one line: exit 2: the one line printed; otherwise the run file's
    ``error`` (if written after ``since``, unix time), else the last exception line of the
    first failing rank's traceback."""
    lines = [ln.rstrip() for ln in stderr.splitlines()]
    nonempty = [ln for ln in lines if ln.strip()]
    if returncode == EXIT_BAD_INPUT and nonempty:
        return nonempty[-1]
    if path is not None and path.is_file() and path.stat().st_mtime >= since:
        from fedkd_mpi.analysis.reader import RunFileError, load

        try:
            run = load(path)
            if run.summary.status == "failed" and run.attrs.get("error"):
                return str(run.attrs["error"])
        except RunFileError:
            pass
    start = next((i for i, ln in enumerate(lines) if _RANK_FAILED.match(ln)), None)
    prefix = ""
    if start is not None:
        prefix = f"rank {_RANK_FAILED.match(lines[start])[1]}: "
    else:
        start = next((i - 1 for i, ln in enumerate(lines) if ln.startswith("Traceback")), None)
    if start is None:
        return nonempty[-1] if nonempty else f"the job exited with code {returncode}"
    exc, in_tb = None, False
    for ln in lines[start + 1:]:
        if ln.startswith(("fedkd-mpi:", "Abort(")) or _RANK_FAILED.match(ln):
            break
        if ln.startswith("Traceback"):
            in_tb = True
        elif in_tb and ln and not ln[0].isspace():
            exc, in_tb = ln, False
    return prefix + (exc or f"the job exited with code {returncode}")


def stop_job(procs: list[subprocess.Popen]) -> None:
    """SIGUSR1 to each ``mpiexec`` (forwarded to every rank: checkpoint at the end of the
    round, status interrupted, exit 3) and wait; a second interrupt kills their process
    groups (started with ``start_new_session``)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)
    try:
        for proc in procs:
            proc.wait()
    except KeyboardInterrupt:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        raise


def _pump(stream: Any, sink: list[str], echo: Any) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
        if echo is not None:
            echo.write(line)
            echo.flush()
    stream.close()


def run(config: Config | str | Path | Mapping[str, Any], ranks: int | None = None,
        overrides: Iterable[str] = (), overwrite: bool = False, resume: bool = False,
        quiet: bool = False) -> RunResult:
    """Run one job on ``ranks`` MPI processes (default: one per client plus the server, at
    most the CPU count + 1) and wait for it, printing rank 0's per-round lines as they come.

    Returns a :class:`RunResult` (status ``completed``, or ``interrupted`` after a signal);
    raises ConfigError for a config that fails the schema (nothing started), ValueError for
    ``ranks`` < 2 and :class:`RunError` with the failing rank's one line otherwise."""
    if not isinstance(config, Config):
        config = (Config.from_dict(config) if isinstance(config, Mapping)
                  else Config.load(config))
    config = config.override(*overrides)
    schema = config.resolved()
    ranks = default_ranks(schema) if ranks is None else ranks
    check_ranks(ranks)
    executables()
    out = Path(schema.output)
    echo = None if quiet else sys.stdout
    with tempfile.TemporaryDirectory(prefix="fedkd-mpi-") as tmp:
        yml = Path(tmp) / "config.yaml"
        yml.write_text(schema.to_yaml())
        cmd = run_command(yml, ranks, overwrite, resume)
        t0, started = time.perf_counter(), time.time() - 1.0
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                bufsize=1, env=job_env(), start_new_session=True)
        err: list[str] = []
        reader = threading.Thread(target=_pump, args=(proc.stderr, err, None), daemon=True)
        reader.start()
        try:
            _pump(proc.stdout, [], echo)
            rc = proc.wait()
        except KeyboardInterrupt:  # a notebook's interrupt: the job checkpoints and stops
            print("fedkd_mpi.run: interrupted; the job checkpoints at the end of the round "
                  "(interrupt again to kill it); continue with run(..., resume=True)",
                  file=sys.stderr, flush=True)
            stop_job([proc])
            raise
        reader.join(10)
    wall = time.perf_counter() - t0
    stderr = "".join(err)
    if rc not in (0, EXIT_INTERRUPTED):
        raise RunError(failure_line(rc, stderr, out, started), rc, stderr, out)
    from fedkd_mpi.analysis import load

    summary = load(out).summary
    return RunResult(out, summary.status, rc, summary, wall)
