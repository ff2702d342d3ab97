"""The rank-0 HDF5 writer (schema in docs/hdf5.md).

Every group, dataset and attribute is created up front; then the file switches to SWMR mode
and each round only appends along the first (unlimited) axis and flushes, so a reader can
follow a live run and a killed run leaves every completed round readable. The final
``status`` is written after closing the SWMR session, by reopening the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from fedkd_mpi.storage.schema import (
    CLIENT_FIELDS,
    FORMAT_VERSION,
    ROUND_FIELDS,
    TIMING_PHASES,
    dtype_of,
)


class RunWriter:
    """Creates the run file and appends one row per completed round."""

    def __init__(self, path: str | Path, attrs: Mapping[str, object], num_clients: int,
                 world_size: int, layer_names: list[str], layer_shapes: np.ndarray,
                 static: Mapping[str, np.ndarray] | None = None,
                 extra_fields: tuple[str, ...] = ()) -> None:
        """``static``: extra fixed datasets by path (e.g. ``partition/label_hist``).
        ``extra_fields``: more float64 ``rounds/<name>`` and ``clients/<name>`` datasets
        (secondary metrics such as ``mentor_f1``), appended like the fixed ones."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        n, w, nl = num_clients, world_size, len(layer_names)
        f = h5py.File(self.path, "w", libver="latest")
        for k, v in attrs.items():
            try:
                f.attrs[k] = _attr(v)
            except TypeError as exc:
                raise TypeError(f"attribute {k!r}: {exc}") from None
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["status"] = "running"
        for name in ROUND_FIELDS:
            f.create_dataset(f"rounds/{name}", (0,), maxshape=(None,), dtype=dtype_of(name),
                             chunks=(256,))
        for name in CLIENT_FIELDS:
            f.create_dataset(f"clients/{name}", (0, n), maxshape=(None, n), dtype=dtype_of(name),
                             chunks=(16, n))
        for name in TIMING_PHASES:
            f.create_dataset(f"timing/{name}", (0, w), maxshape=(None, w), dtype=np.float64,
                             chunks=(16, w))
        f.create_dataset("memory/rss_mb", (0, w), maxshape=(None, w), dtype=np.float64,
                         chunks=(16, w))
        f.create_dataset("replicas/checksum", (0, w), maxshape=(None, w), dtype=np.int64,
                         chunks=(16, w))
        f.create_dataset("layers/names", data=np.array(layer_names, dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("layers/shape", data=np.asarray(layer_shapes, np.int64).reshape(nl, 2))
        f.create_dataset("layers/rank_up", (0, n, nl), maxshape=(None, n, None), dtype=np.int64,
                         chunks=(4, n, max(nl, 1)))
        f.create_dataset("layers/rank_down", (0, nl), maxshape=(None, None), dtype=np.int64,
                         chunks=(16, max(nl, 1)))
        for name in extra_fields:
            f.create_dataset(f"rounds/{name}", (0,), maxshape=(None,), dtype=np.float64,
                             chunks=(256,))
            f.create_dataset(f"clients/{name}", (0, n), maxshape=(None, n), dtype=np.float64,
                             chunks=(16, n))
        for name, value in (static or {}).items():
            f.create_dataset(name, data=np.asarray(value))
        f.swmr_mode = True
        self.f: h5py.File | None = f
        self.rows = 0

    @classmethod
    def resume(cls, path: str | Path, rows: int,
               attrs: Mapping[str, object] | None = None) -> RunWriter:
        """Continue an existing run file after its first ``rows`` rounds (checkpoint resume).

        The file (possibly left by a killed SWMR writer, which HDF5 refuses to reopen for
        writing) is copied into a fresh file with every per-round dataset (unlimited first
        axis) truncated to ``rows``; ``attrs`` are set, status becomes ``running``, the copy
        atomically replaces the original and the writer continues in SWMR mode.
        """
        path = Path(path)
        tmp = path.with_name(path.name + ".resume-tmp")
        with open_live(path) as src, h5py.File(tmp, "w", libver="latest") as dst:
            for k in src.attrs:
                dst.attrs.create(k, src.attrs[k], dtype=src.attrs.get_id(k).dtype)
            for k in src:
                src.copy(src[k], dst, name=k)
            short: list[str] = []

            def _truncate(name: str, obj: object) -> None:
                if isinstance(obj, h5py.Dataset) and obj.maxshape and obj.maxshape[0] is None:
                    if obj.shape[0] < rows:
                        short.append(name)
                    obj.resize(rows, axis=0)

            dst.visititems(_truncate)
            if short:
                raise ValueError(f"{path}: datasets {short} have fewer than {rows} rounds")
            for k, v in (attrs or {}).items():
                dst.attrs[k] = _attr(v)
            dst.attrs["status"] = "running"
            if "error" in dst.attrs:  # the failure that ended the previous attempt
                del dst.attrs["error"]
        tmp.replace(path)
        self = cls.__new__(cls)
        self.path = path
        f = h5py.File(path, "r+", libver="latest")
        f.swmr_mode = True
        self.f = f
        self.rows = rows
        return self

    def records(self) -> list[dict[str, float]]:
        """The ``rounds/`` rows written so far, one dict per round (e.g. after resume)."""
        assert self.f is not None, "writer closed"
        cols = {k: self.f[f"rounds/{k}"][: self.rows] for k in self.f["rounds"]}
        return [{k: v[i].item() for k, v in cols.items()} for i in range(self.rows)]

    def append(self, rounds: Mapping[str, float], clients: Mapping[str, np.ndarray],
               timing: Mapping[str, np.ndarray], rss_mb: np.ndarray, rank_up: np.ndarray,
               rank_down: np.ndarray, checksum: np.ndarray) -> None:
        """Append one completed round and flush."""
        f = self.f
        assert f is not None, "writer closed"
        i = self.rows
        for name in ROUND_FIELDS:
            _put(f[f"rounds/{name}"], i, rounds[name])
        for name in CLIENT_FIELDS:
            _put(f[f"clients/{name}"], i, clients[name])
        for group, values, fixed in (("rounds", rounds, ROUND_FIELDS),
                                     ("clients", clients, CLIENT_FIELDS)):
            for name in values:  # extra_fields (secondary metrics)
                if name not in fixed and f"{group}/{name}" in f:
                    _put(f[f"{group}/{name}"], i, values[name])
        for name in TIMING_PHASES:
            _put(f[f"timing/{name}"], i, timing[name])
        _put(f["memory/rss_mb"], i, rss_mb)
        _put(f["layers/rank_up"], i, rank_up)
        _put(f["layers/rank_down"], i, rank_down)
        _put(f["replicas/checksum"], i, checksum)
        self.rows += 1
        f.flush()

    def close(self, status: str, extra: Mapping[str, object] | None = None) -> None:
        """Close the SWMR session and record the final status (and any extra attributes)."""
        if self.f is not None:
            self.f.close()
            self.f = None
        with h5py.File(self.path, "r+") as f:
            f.attrs["status"] = status
            for k, v in (extra or {}).items():
                f.attrs[k] = v


def _attr(value: object) -> object:
    """Strings (and lists of them) as HDF5 variable-length UTF-8."""
    if isinstance(value, str):
        return str(value)  # plain str: subclasses (e.g. TorchVersion) confuse h5py
    if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.dtype.kind
                                             in "OU"):
        items = list(value)
        if all(isinstance(x, str) for x in items):
            return np.array(items, dtype=h5py.string_dtype())
    return value


def _put(ds: h5py.Dataset, i: int, value: object) -> None:
    ds.resize(i + 1, axis=0)
    ds[i] = value


def open_live(path: str | Path) -> h5py.File:
    """Open a run file for reading, following a live writer when it is in SWMR mode."""
    try:
        return h5py.File(path, "r", libver="latest", swmr=True)
    except OSError:
        return h5py.File(path, "r")
