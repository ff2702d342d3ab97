"""Read a run file (docs/hdf5.md) into tidy pandas tables.

``load(path)`` opens the file with :func:`fedkd_mpi.storage.h5.open_live` (an SWMR reader where
a writer holds it), so it works on a finished run, a run that is still being written and a run
whose job was killed, and says in one line (:class:`RunFileError`, in bounded time) when the
file is damaged (truncated, corrupted) or not a run file.
Every per-round dataset is cut to the number of rounds that *all* of them hold: a live writer
appends dataset by dataset, and a reader can land between two appends.

Datasets are discovered, not listed: any 1-D ``rounds/*``, 2-D ``clients/*`` [round, client]
and ``timing/*`` / ``memory/*`` [round, rank] dataset becomes a column, so additive format
changes (format_version 2, extra metrics, participation masks) show up without code changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import yaml

from fedkd_mpi.analysis.layers import layer_table
from fedkd_mpi.analysis.status import status_note
from fedkd_mpi.storage.h5 import open_live, run_state
from fedkd_mpi.storage.liveness import WriterVerdict, judge_writer
from fedkd_mpi.storage.reading import UnreadableRunFile, read_error
from fedkd_mpi.storage.schema import FORMAT_VERSION, RANK_GROUPS

SUPPORTED_VERSIONS = tuple(range(1, FORMAT_VERSION + 1))
MODELS = ("mentor", "mentee")


class RunFileError(ValueError):
    """A path that is not a readable fedkd_mpi run file of a supported format version."""


@dataclass
class RunSummary:
    """Run-level facts and totals (per client: summed over rounds, divided by the clients)."""

    path: str
    format_version: int
    status: str  # the file's status attribute
    status_note: str  # human reading: 'completed', 'killed: 2 of 5 rounds kept; ...', ...
    complete: bool
    algorithm: str
    seed: int | None
    num_clients: int
    world_size: int | None
    rounds_completed: int
    rounds_planned: int | None
    metric_name: str
    metric_names: list[str]
    final: dict[str, float]  # 'mentor_<name>' / 'mentee_<name>' -> metric after the last round
    majority_rate: float  # accuracy of always answering the test data's most frequent class
    mb_up_per_client: float
    mb_down_per_client: float
    dense_mb_mentee_per_client: float  # the same messages, had each carried the mentee dense
    dense_mb_mentor_per_client: float  # ... the mentor dense (FedAvg on the mentor)
    reduction_vs_mentor_fedavg: float
    reduction_vs_dense_mentee: float
    time_per_round_s: dict[str, float]  # mean seconds per round by phase

    @property
    def mb_per_client(self) -> float:
        return self.mb_up_per_client + self.mb_down_per_client


@dataclass
class Run:
    """One run file: the tidy tables, the resolved config and a :class:`RunSummary`."""

    path: Path
    attrs: dict[str, Any]
    config: dict[str, Any]
    rounds: pd.DataFrame  # one row per round
    clients: pd.DataFrame  # one row per (round, client)
    layers: pd.DataFrame  # one row per (round, layer)
    timing: pd.DataFrame  # one row per (round, rank)
    summary: RunSummary = field(repr=False)
    #: the fixed ``partition/*`` arrays (num_train, label_hist, test_label_hist, ...)
    partition: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        return {"rounds": self.rounds, "clients": self.clients, "layers": self.layers,
                "timing": self.timing}

    def config_value(self, dotted: str) -> Any:
        """A value of the resolved config by dotted key (``model.mentee.layers``)."""
        return config_get(self.config, dotted)

    def metric_column(self, model: str, name: str | None = None) -> str:
        """The ``rounds``/``clients`` column of a model's metric (headline when name is None)."""
        name = name or self.summary.metric_name
        return f"{model}_metric" if name == self.summary.metric_name else f"{model}_{name}"


def config_get(tree: dict[str, Any], dotted: str) -> Any:
    """Look up ``a.b.c`` in nested dicts; KeyError naming the missing part."""
    node: Any = tree
    for i, part in enumerate(dotted.split(".")):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(".".join(dotted.split(".")[: i + 1]))
        node = node[part]
    return node


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_attr(v) for v in value.tolist()] if value.dtype.kind in "OSU" else value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise RunFileError(f"{path}: no such file")
    if path.is_dir():
        raise RunFileError(f"{path}: is a directory, not a fedkd_mpi run file")
    try:
        return open_live(path)
    except UnreadableRunFile as exc:
        raise RunFileError(str(exc)) from None
    except OSError as exc:
        raise RunFileError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _check_version(path: Path, f: h5py.File) -> int:
    if "format_version" not in f.attrs:
        raise RunFileError(f"{path}: not a fedkd_mpi run file (HDF5 without a 'format_version' "
                           "attribute)")
    raw = _attr(f.attrs["format_version"])
    try:
        version = int(raw)
    except (TypeError, ValueError):
        version = None
    if version not in SUPPORTED_VERSIONS:
        raise RunFileError(f"{path}: format_version {raw!r} is not supported (this fedkd_mpi "
                           f"reads {', '.join(map(str, SUPPORTED_VERSIONS))})")
    return version


def _datasets(group: h5py.Group | None, ndim: int) -> dict[str, h5py.Dataset]:
    if group is None:
        return {}
    return {k: v for k, v in group.items() if isinstance(v, h5py.Dataset) and v.ndim == ndim}


def load(path: str | Path) -> Run:
    """Load a run file into tidy tables; :class:`RunFileError` (one line) when it cannot."""
    path = Path(path)
    f = _open(path)
    try:
        version = _check_version(path, f)
        return _read(path, f, version)
    except RunFileError:
        raise
    except (KeyError, ValueError, OSError, RuntimeError, TypeError, IndexError) as exc:
        raise RunFileError(read_error(path, exc)) from None
    finally:
        f.close()


def _read(path: Path, f: h5py.File, version: int) -> Run:
    attrs = {k: _attr(v) for k, v in f.attrs.items()}
    state = run_state(f)  # format 3: the run/ datasets, written in place, win over the attrs
    attrs["status"] = state["status"]
    if state["error"]:
        attrs["error"] = state["error"]
    elif attrs.get("status") != "failed":
        attrs.pop("error", None)
    verdict = judge_writer(f, path) if attrs["status"] == "running" else None
    try:
        config = yaml.safe_load(attrs.get("config", "")) or {}
    except yaml.YAMLError:
        config = {}
    if not isinstance(config, dict):
        config = {}
    rounds_ds = _datasets(f.get("rounds"), 1)
    client_ds = _datasets(f.get("clients"), 2)
    rank_ds = {k: v for g in RANK_GROUPS for k, v in _datasets(f.get(g), 2).items()}
    layers = f.get("layers")
    per_round = [*rounds_ds.values(), *client_ds.values(), *rank_ds.values()]
    if layers is not None:
        per_round += [layers[k] for k in ("rank_up", "rank_down") if k in layers]
    if "round" not in rounds_ds:
        raise RunFileError(f"{path}: not a fedkd_mpi run file (no 'rounds/round' dataset)")
    n = min((d.shape[0] for d in per_round), default=0)

    rounds = pd.DataFrame({k: d[:n] for k, d in sorted(rounds_ds.items())})
    rounds.insert(0, "round", rounds.pop("round"))
    num_clients = int(attrs.get("num_clients", client_ds["bytes_up"].shape[1]
                                if "bytes_up" in client_ds else 0))
    nc = max(num_clients, 1)
    for d in ("up", "down"):
        if f"bytes_{d}" in rounds:
            rounds[f"cum_mb_{d}_per_client"] = rounds[f"bytes_{d}"].cumsum() / nc / 1e6
    if "cum_mb_up_per_client" in rounds and "cum_mb_down_per_client" in rounds:
        rounds["cum_mb_per_client"] = (rounds["cum_mb_up_per_client"]
                                       + rounds["cum_mb_down_per_client"])
    round_no = rounds["round"].to_numpy()

    clients = _long(client_ds, n, round_no, "client")
    if "client_rank" in attrs and len(clients):
        cr = np.asarray(attrs["client_rank"])
        clients.insert(2, "rank", cr[clients["client"].to_numpy()])
    timing = _long(rank_ds, n, round_no, "rank")
    if len(timing):
        timing.insert(2, "role", np.where(timing["rank"] == 0, "server", "client"))
    sent = None  # clients whose upload was sent and used: -1 also marks the others
    if "participated" in client_ds:
        sent = np.asarray(client_ds["participated"][:n]) > 0
        if "skipped" in client_ds:
            sent &= np.asarray(client_ds["skipped"][:n]) == 0
    layer_df = layer_table(layers, n, round_no, sent)
    if "energy_threshold" in rounds and len(layer_df):
        layer_df["energy_threshold"] = np.repeat(rounds["energy_threshold"].to_numpy(),
                                                 len(layer_df) // max(n, 1))
    _add_phase_times(rounds, timing)
    summary = _summary(path, version, attrs, config, rounds, clients, n, num_clients, verdict,
                       _majority_rate(f.get("partition")))
    part = f.get("partition")
    partition = {k: np.asarray(v[()]) for k, v in part.items()
                 if isinstance(v, h5py.Dataset)} if part is not None else {}
    return Run(path=path, attrs=attrs, config=config, rounds=rounds, clients=clients,
               layers=layer_df, timing=timing, summary=summary, partition=partition)


def _long(ds: dict[str, h5py.Dataset], n: int, round_no: np.ndarray, key: str) -> pd.DataFrame:
    """[round, X] datasets as one long table with columns round, X, <dataset>..."""
    if not ds:
        return pd.DataFrame({"round": np.zeros(0, np.int64), key: np.zeros(0, np.int64)})
    width = min(d.shape[1] for d in ds.values())
    cols: dict[str, np.ndarray] = {"round": np.repeat(round_no, width),
                                   key: np.tile(np.arange(width), n)}
    for k, d in sorted(ds.items()):
        cols[k] = np.asarray(d[:n, :width]).reshape(-1)
    return pd.DataFrame(cols)


PHASES = ("train", "encode", "comm", "server", "decode", "eval", "other")
PHASE_LABELS = {"train": "local training", "encode": "encode (clients)",
                "comm": "communication", "server": "server (decode+average+re-encode)",
                "decode": "decode (clients)", "eval": "evaluation", "other": "other"}


def _add_phase_times(rounds: pd.DataFrame, timing: pd.DataFrame) -> None:
    """Per-round critical-path split: ``phase_<name>_s`` columns summing to ``wall_time_s``.

    Client phases are the slowest client rank's; communication and server are rank 0's
    (``rounds/comm_time_s``, ``rounds/server_time_s``); ``other`` is what is left of the wall
    time (waiting, bookkeeping, HDF5 writes)."""
    if not len(rounds):
        for p in PHASES:
            rounds[f"phase_{p}_s"] = pd.Series(dtype=np.float64)
        return
    clients = timing[timing["rank"] > 0] if len(timing) else timing

    def slowest(col: str) -> np.ndarray:
        if col not in clients or not len(clients):
            return np.zeros(len(rounds))
        m = clients.groupby("round")[col].max()
        return m.reindex(rounds["round"]).fillna(0.0).to_numpy()

    def col(name: str, fallback: np.ndarray) -> np.ndarray:
        return rounds[name].to_numpy(np.float64) if name in rounds else fallback

    train = col("train_time_s", slowest("train_s"))
    parts = {"train": train, "encode": slowest("encode_s"),
             "comm": col("comm_time_s", np.zeros(len(rounds))),
             "server": col("server_time_s", np.zeros(len(rounds))),
             "decode": slowest("decode_s"), "eval": slowest("eval_s")}
    wall = col("wall_time_s", sum(parts.values()))
    parts["other"] = np.maximum(wall - sum(parts.values()), 0.0)
    for p in PHASES:
        rounds[f"phase_{p}_s"] = parts[p]


def _metric_names(attrs: dict[str, Any], rounds: pd.DataFrame) -> list[str]:
    head = str(attrs.get("metric_name", "metric"))
    names = [head]
    listed = attrs.get("metric_names")
    if isinstance(listed, str):
        listed = [listed]
    for name in list(listed or []):
        if name not in names:
            names.append(str(name))
    # discovered: rounds/{mentor,mentee}_<name> that are not losses or the headline column
    for c in rounds.columns:
        for m in MODELS:
            if c.startswith(f"{m}_") and c != f"{m}_metric":
                name = c[len(m) + 1:]
                if "loss" not in name and name not in names:
                    names.append(name)
    return names


def _majority_rate(g: h5py.Group | None) -> float:
    """Mean over clients of the share of their held-out data's most frequent class (the
    accuracy of a constant answer); NaN for files without ``partition/test_label_hist``."""
    if g is None or "test_label_hist" not in g:
        return math.nan
    h = np.asarray(g["test_label_hist"][:], np.float64)
    total = h.sum(axis=1)
    ok = total > 0
    return float((h.max(axis=1)[ok] / total[ok]).mean()) if ok.any() else math.nan


def _summary(path: Path, version: int, attrs: dict[str, Any], config: dict[str, Any],
             rounds: pd.DataFrame, clients: pd.DataFrame, n: int,
             num_clients: int, verdict: WriterVerdict | None = None,
             majority_rate: float = math.nan) -> RunSummary:
    try:
        planned = int(config_get(config, "train.rounds"))
    except (KeyError, TypeError, ValueError):
        planned = None
    status = str(attrs.get("status", "unknown"))
    note, complete = status_note(path, status, rounds, planned, verdict,
                                  str(attrs["error"]) if attrs.get("error") else None)
    names = _metric_names(attrs, rounds)
    final: dict[str, float] = {}
    for m in MODELS:
        for i, name in enumerate(names):
            colname = f"{m}_metric" if i == 0 else f"{m}_{name}"
            final[f"{m}_{name}"] = (float(rounds[colname].iloc[-1])
                                    if n and colname in rounds else math.nan)
    nc = max(num_clients, 1)
    up = float(rounds["bytes_up"].sum()) / nc / 1e6 if "bytes_up" in rounds else math.nan
    down = float(rounds["bytes_down"].sum()) / nc / 1e6 if "bytes_down" in rounds else math.nan
    msgs = _messages_per_client(clients, n, num_clients)
    dense_mentee = msgs * float(attrs.get("dense_bytes_mentee", math.nan)) / 1e6
    dense_mentor = msgs * float(attrs.get("dense_bytes_mentor", math.nan)) / 1e6
    total = up + down

    def ratio(ref: float) -> float:
        return ref / total if total > 0 else math.nan

    phases = {p: float(rounds[f"phase_{p}_s"].mean()) if n else math.nan for p in PHASES}
    phases["wall"] = float(rounds["wall_time_s"].mean()) if n and "wall_time_s" in rounds \
        else math.nan
    seed = attrs.get("seed", config.get("seed"))
    world = attrs.get("world_size")
    return RunSummary(
        path=str(path), format_version=version, status=status, status_note=note,
        complete=complete, algorithm=str(attrs.get("algorithm", config.get("algorithm", "?"))),
        seed=int(seed) if seed is not None else None, num_clients=num_clients,
        world_size=int(world) if world is not None else None, rounds_completed=n,
        rounds_planned=planned, metric_name=names[0], metric_names=names, final=final,
        majority_rate=majority_rate,
        mb_up_per_client=up, mb_down_per_client=down, dense_mb_mentee_per_client=dense_mentee,
        dense_mb_mentor_per_client=dense_mentor, reduction_vs_mentor_fedavg=ratio(dense_mentor),
        reduction_vs_dense_mentee=ratio(dense_mentee), time_per_round_s=phases)


def _messages_per_client(clients: pd.DataFrame, n: int, num_clients: int) -> float:
    """Messages per client (uploads + downloads, averaged over clients) actually sent.

    A dense reference (FedAvg) would send the same messages at the dense size. With every client
    in every round this is 2 per round, the run's own end-of-run summary rule; a client that
    sends and receives nothing in a round (not sampled) counts for nothing."""
    if "bytes_up" not in clients or "bytes_down" not in clients:
        return 2.0 * n
    sent = int((clients["bytes_up"] > 0).sum() + (clients["bytes_down"] > 0).sum())
    return sent / max(num_clients, 1)
