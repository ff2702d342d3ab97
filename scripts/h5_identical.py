#!/usr/bin/env python3
"""Compare two run files bit for bit: every dataset and attribute except wall-clock fields.

Usage: h5_identical.py [--new-attrs a,b] A.h5 B.h5 [A2.h5 B2.h5 ...]
Excluded (they measure time, memory or the host, or name the job, never results): timing/,
memory/, the *_time_s datasets, run/heartbeat_unix, and the attributes created_unix, devices,
config, fedkd_mpi_version, writer, run_id (random per run) and lease_takeovers.
``--new-attrs``: root attributes that B may add (a format extension), ignored when A lacks them;
a name with a '/' is a dataset B may add (e.g. run/status, run/error of format 3).
Exit 0 when every pair matches, 1 otherwise (each difference printed).
"""

from __future__ import annotations

import sys

import h5py
import numpy as np

SKIP_GROUPS = ("timing/", "memory/")
SKIP_ATTRS = {"created_unix", "devices", "config", "fedkd_mpi_version", "mpi_library",
              "torch_version", "resumed_unix", "heartbeat_unix", "writer", "run_id",
              "lease_takeovers"}
SKIP_DATASETS = {"run/heartbeat_unix"}


def _items(f: h5py.File) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and not name.startswith(SKIP_GROUPS) \
                and not name.endswith("_time_s") and name not in SKIP_DATASETS:
            out[name] = obj[()]

    f.visititems(visit)
    return out


def _same(x: object, y: object) -> bool:
    """Bitwise for numbers; by value for strings (object arrays hold pointers)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind in "OSU" or y.dtype.kind in "OSU":
        return x.shape == y.shape and x.tolist() == y.tolist()
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def compare(a: str, b: str, new_attrs: set[str]) -> list[str]:
    diffs = []
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        da, db = _items(fa), _items(fb)
        for k in sorted(set(da) | set(db)):
            if k not in da and k in new_attrs:
                continue
            if k not in da or k not in db:
                diffs.append(f"{k}: only in {'B' if k not in da else 'A'}")
            elif not _same(da[k], db[k]):
                diffs.append(f"{k}: values differ")
        for k in sorted(set(fa.attrs) | set(fb.attrs)):
            if k in SKIP_ATTRS or (k in new_attrs and k not in fa.attrs):
                continue
            va, vb = fa.attrs.get(k), fb.attrs.get(k)
            if va is None or vb is None:
                diffs.append(f"attr {k}: only in {'B' if va is None else 'A'}")
            elif not _same(va, vb):
                diffs.append(f"attr {k}: {va!r} != {vb!r}")
    return diffs


def main(argv: list[str]) -> int:
    new: set[str] = set()
    if argv[:1] == ["--new-attrs"]:
        new, argv = set(argv[1].split(",")), argv[2:]
    if len(argv) < 2 or len(argv) % 2:
        print(__doc__, file=sys.stderr)
        return 2
    bad = 0
    for a, b in zip(argv[::2], argv[1::2], strict=True):
        d = compare(a, b, new)
        print(f"{'IDENTICAL' if not d else 'DIFFERENT'}  {a}  {b}")
        for line in d:
            print(f"    {line}")
        bad += bool(d)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
