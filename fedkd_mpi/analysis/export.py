"""``fedkd-mpi export RUN.h5 --to csv|parquet``: one file per tidy table, written by pandas."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from fedkd_mpi.analysis.reader import Run


def summary_table(run: Run) -> pd.DataFrame:
    """The run summary as one row (dicts flattened: final_<model>_<metric>, time_<phase>_s)."""
    d = dataclasses.asdict(run.summary)
    final = d.pop("final")
    times = d.pop("time_per_round_s")
    d["metric_names"] = ",".join(d["metric_names"])
    d.update({f"final_{k}": v for k, v in final.items()})
    d.update({f"time_{k}_s": v for k, v in times.items()})
    d["mb_per_client"] = run.summary.mb_per_client
    return pd.DataFrame([d])


def export(run: Run, to: str, out: Path) -> list[Path]:
    """Write rounds, clients, layers, timing and summary tables as ``<stem>_<table>.<ext>``."""
    out.mkdir(parents=True, exist_ok=True)
    tables = {**run.tables, "summary": summary_table(run)}
    written = []
    for name, df in tables.items():
        path = out / f"{run.path.stem}_{name}.{to}"
        if to == "csv":
            df.to_csv(path, index=False)
        elif to == "parquet":
            df.to_parquet(path, index=False)
        else:
            raise ValueError(f"--to must be csv or parquet, not {to!r}")
        written.append(path)
    return written
