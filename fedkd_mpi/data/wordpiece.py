"""The pretrained model's own tokenizer (``tokenizer.json``, read offline with ``tokenizers``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def encode(texts: list[str], max_len: int, tokenizer_json: str | Path) -> np.ndarray:
    """``int64[n, max_len]``: [CLS] ... [SEP] token ids, truncated to ``max_len`` and
    right-padded to ``max_len`` with the tokenizer's pad id; the file's own padding and
    truncation settings (128 for MiniLM) are overridden."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    pad = (tok.padding or {}).get("pad_token", "[PAD]")
    pad_id = tok.token_to_id(pad)
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(length=max_len, pad_id=0 if pad_id is None else pad_id, pad_token=pad)
    out = np.zeros((len(texts), max_len), dtype=np.int64)
    for i, enc in enumerate(tok.encode_batch(list(texts))):
        out[i] = enc.ids
    return out
