"""A hashing word tokenizer: no vocabulary to build or ship, identical on every rank."""

from __future__ import annotations

import re
import zlib

import numpy as np

PAD, CLS = 0, 1
_TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9]")


def tokenize(texts: list[str], max_len: int, vocab_size: int) -> np.ndarray:
    """Map texts to ``int64[n, max_len]``: [CLS] + crc32-hashed lowercase words, 0-padded."""
    out = np.zeros((len(texts), max_len), dtype=np.int64)
    for i, text in enumerate(texts):
        words = _TOKEN.findall(text.lower())[: max_len - 1]
        ids = [CLS] + [2 + zlib.crc32(w.encode()) % (vocab_size - 2) for w in words]
        out[i, : len(ids)] = ids
    return out
