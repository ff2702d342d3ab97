"""``data.name: table``: your own labelled file, read with pandas (docs/data.md).

``data.path``: CSV, TSV, JSONL or Parquet, each also ``.gz`` / ``.bz2`` (the format is the
suffix before the compression suffix); ``data.text_column`` (tokens) or
``data.feature_columns`` (float32 features); ``data.label_column`` (strings or integers; class
names sorted, integers numerically); optional ``data.group_column`` (natural partition) and
``data.test_path`` (official test split, ``test_idx``). Rows with a missing label, an empty
text or a missing/non-finite feature are dropped and counted; every problem is one DataError
line naming the file and the column. After ``load()``, ``provenance`` holds the run file's
root attributes ``data_path``, ``data_bytes``, ``data_sha256``, ``data_rows``,
``data_dropped_rows`` (and ``data_test_*``). :mod:`fedkd_mpi.data.hf_disk` reuses the column
handling (:func:`extract`, :func:`build_corpus`).
"""

from __future__ import annotations

from fedkd_mpi.config import DataConfig
from fedkd_mpi.data.base import Corpus, DataError, Dataset

#: the data-section keys a file dataset's content depends on (its cache key)
KEYS = {"name", "path", "test_path", "text_column", "feature_columns", "label_column",
        "group_column", "test_protocol"}


def _files():
    from fedkd_mpi.data import _files as io  # pandas: only when a table loads

    return io


class FileDataset(Dataset):
    """A dataset read from the files named by ``data.path`` (and columns of the data section):
    the inputs are texts or numeric features by the config, loads are cached per file state,
    and the files' provenance is kept for the run file. Subclasses give ``_load(key, stamp)``
    (cached) and ``_stamp()``."""

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        self.input_kind = "features" if cfg.feature_columns else "tokens"
        self.provenance: dict[str, object] = {}

    def load(self) -> Corpus:
        c = self.cfg
        if not c.path or not c.label_column:
            raise DataError(f"data error: data.name '{self.name}' needs data.path and "
                            "data.label_column")
        corpus, facts = self._read(c.model_dump_json(include=KEYS))
        _files().check_clients(c, corpus, facts["data_rows"], f"data error: data.path '{c.path}'")
        self.provenance = dict(facts)
        return corpus


class Table(FileDataset):
    """``table``: a labelled CSV/TSV/JSONL/Parquet file (``data.path``)."""

    name = "table"
    input_kind = "tokens"  # feature_columns: "features" (set per instance)
    def _read(self, key: str) -> tuple[Corpus, dict]:
        io = _files()
        return io._load(key, io._stamp(self.cfg.path, self.cfg.test_path))
