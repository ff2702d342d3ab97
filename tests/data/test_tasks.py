"""Real tasks (Rotten Tomatoes, BBC News, Fashion-MNIST), their partitions and held-out protocol,
the metrics, the CNN mentor/mentee, and one CNN job under mpiexec."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from fedkd_mpi.algorithms.losses import fedkd_loss
from fedkd_mpi.config import ConfigError, TransformerSpec, load_config
from fedkd_mpi.data import bbc_news, fashion_mnist, load_federated, rotten_tomatoes
from fedkd_mpi.metrics import accuracy, f1, macro_f1, metric_names
from fedkd_mpi.models import layer_map
from fedkd_mpi.models.cnn import build_cnn

from ..conftest import run_job


def test_metrics_against_hand_counts():
    y = np.array([1, 1, 1, 0, 0, 2])
    p = np.array([1, 0, 1, 1, 0, 2])
    assert accuracy(y, p) == pytest.approx(4 / 6)
    # class 1: tp 2, fp 1, fn 1 -> 4/6; class 0: tp 1, fp 1, fn 1 -> 2/4; class 2: 1
    assert f1(y, p) == pytest.approx(4 / 6)
    assert macro_f1(y, p) == pytest.approx((4 / 6 + 0.5 + 1.0) / 3)
    assert f1(np.zeros(4), np.zeros(4)) == 0.0  # no positives anywhere
    assert f1(np.array([1, 0]), np.array([0, 0])) == 0.0
    assert metric_names("f1", 2) == ["f1", "accuracy", "macro_f1"]
    assert metric_names("accuracy", 5) == ["accuracy", "macro_f1"]


def test_bbc_news_and_fashion_mnist_load_from_packages():
    b = bbc_news.load()
    assert len(b.texts) == 2225 and len(b.class_names) == 5
    assert np.bincount(b.labels).tolist() == [510, 386, 417, 511, 401]
    f = fashion_mnist.load()
    assert f.images.shape == (70_000, 1, 28, 28) and f.images.dtype == np.uint8
    assert len(f.test_idx) == 10_000 and np.bincount(f.labels).tolist() == [7000] * 10


def _fed(overrides, ids=(0, 1, 2), seed=0):
    cfg = load_config(None, list(overrides))
    return load_federated(cfg.data, seed, list(ids))


def _train_sets(fed):
    return [set(map(tuple, c.train_x.reshape(len(c.train_x), -1).tolist()))
            for c in fed.clients.values()]


def test_natural_by_movie_partition_is_deterministic_and_keeps_movies_whole():
    ov = ["data.partition=natural", "data.max_samples=900", "data.max_len=8"]
    a, b, c = _fed(ov), _fed(ov), _fed(ov, seed=1)
    for x, y in zip(a.clients.values(), b.clients.values(), strict=True):
        assert torch.equal(x.train_x, y.train_x) and torch.equal(x.test_y, y.test_y)
    assert not all(torch.equal(x.train_x, y.train_x)
                   for x, y in zip(a.clients.values(), c.clients.values(), strict=True))
    # reproduce the partition and check no movie is split between clients
    corpus = rotten_tomatoes.load()
    from fedkd_mpi.data import partition
    from fedkd_mpi.seeding import rng
    idx = np.sort(rng(0, "subsample").choice(len(corpus.labels), 900, replace=False))
    parts = partition.split("natural", corpus.labels[idx], corpus.groups[idx], 3, 0)
    movies = [set(corpus.groups[idx[p]]) for p in parts]
    assert not (movies[0] & movies[1]) and not (movies[0] & movies[2])
    assert a.sizes.sum() == 900 - sum(len(cl.test_y) for cl in a.clients.values())


def test_dirichlet_topic_partition_is_deterministic_and_skewed():
    ov = ["data.name=bbc_news", "data.partition=dirichlet", "data.dirichlet_alpha=0.3",
          "data.max_len=8"]
    a, b, c = _fed(ov), _fed(ov), _fed(ov, seed=1)
    assert np.array_equal(a.label_hist, b.label_hist)
    assert not np.array_equal(a.label_hist, c.label_hist)
    share = a.label_hist / a.label_hist.sum(1, keepdims=True)
    assert share.max() > 0.4  # far from the IID 0.2 per topic
    iid = _fed(["data.name=bbc_news", "data.max_len=8"])
    assert (iid.label_hist / iid.label_hist.sum(1, keepdims=True)).max() < 0.3


def test_global_protocol_same_held_out_set_for_any_number_of_clients():
    ov = ["data.test_protocol=global", "data.test_samples=50", "data.max_samples=300",
          "data.max_len=8"]
    fed3 = _fed([*ov, "data.num_clients=3"])
    fed1 = _fed([*ov, "data.num_clients=1"], ids=(0,))
    tests = [c.test_x for c in fed3.clients.values()] + [fed1.clients[0].test_x]
    assert all(torch.equal(t, tests[0]) for t in tests) and len(tests[0]) == 50
    # the centralized client's training set is the union of the three clients' sets
    union = set().union(*_train_sets(fed3))
    assert union == _train_sets(fed1)[0] and fed3.sizes.sum() == fed1.sizes.sum() == 300
    held = set(map(tuple, tests[0].tolist()))
    assert not (held & union) or len(held & union) < 3  # only duplicate snippets may collide


def test_task_and_model_must_fit():
    from fedkd_mpi.runtime.preflight import preflight  # what validate runs

    with pytest.raises(ConfigError, match=r"family 'tiny' takes tokens inputs; data\.name "
                       r"'fashion_mnist' gives images"):
        preflight(load_config(None, ["data.name=fashion_mnist"]))
    with pytest.raises(ConfigError, match="needs a binary task"):
        preflight(load_config(None, ["data.name=bbc_news", "data.metric=f1"]))
    with pytest.raises(ConfigError, match="cannot feed a pretrained model"):
        load_config(None, ["model.kind=hf", "model.mentor.layers=6", "data.tokenizer=hash"])
    assert load_config(None, []).data.tokenizer == "hash"


def test_cnn_features_and_fedkd_loss_without_attentions():
    t = build_cnn(TransformerSpec(layers=4, hidden=32, heads=1, ffn=8), 10, 0, False)
    s = build_cnn(TransformerSpec(layers=2, hidden=16, heads=1, ffn=8), 10, 1, False)
    x = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    ot, os_ = t(x), s(x)
    assert ot.logits.shape == (5, 10) and ot.attentions == [] and os_.attentions == []
    assert [h.shape for h in os_.hidden_states] == [(5, 49, 16)] * 2
    wh = torch.nn.ModuleList(torch.nn.Linear(16, 32, bias=False) for _ in range(2))
    total, parts = fedkd_loss(ot, os_, torch.arange(5), layer_map(4, 2), wh)
    total.backward()
    assert parts["attention"] == 0.0 and parts["hidden"] > 0
    assert all(p.grad is not None for p in s.parameters())


def test_cnn_fashion_mnist_job_under_mpiexec(tmp_path):
    out = tmp_path / "fm.h5"
    res = run_job(3, "run", "configs/paper/image_fedkd.yaml", f"output={out}",
                  "train.rounds=1", "train.local_steps=2", "data.num_clients=2",
                  "data.max_samples=200", "data.test_samples=100", timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "completed" and f.attrs["metric_name"] == "accuracy"
        assert list(f.attrs["metric_names"]) == ["accuracy", "macro_f1"]
        v = f["clients/mentor_macro_f1"][:]
        assert v.shape == (1, 2) and ((v >= 0) & (v <= 1)).all()
        assert (f["clients/bytes_up"][:] > 0).all()
        names = [n.decode() for n in f["layers/names"][:]]
        assert any(n.startswith("embeddings.") for n in names)  # cnn config trains its stem
