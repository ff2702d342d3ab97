"""The ``mlp`` model family (fedkd_mpi/models/mlp.py): seeded builds, EncoderOutput shapes,
frozen ``embeddings``, the input width read from the dataset, and FedKD end to end under
mpiexec on a feature table written from real data (scikit-learn's digits when importable, else
Fashion-MNIST pooled to 7x7)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from fedkd_mpi.cli import main
from fedkd_mpi.config import load_config
from fedkd_mpi.models import build_for, family_of, probe
from fedkd_mpi.models.mlp import MLP, build_mlp

from ..conftest import TINY, run_job


def real_features() -> tuple[np.ndarray, np.ndarray, str]:
    """(features [n, d], integer labels, source) from a real data set installed here."""
    if importlib.util.find_spec("sklearn") is not None:
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.data.astype(np.float32), d.target.astype(np.int64), "sklearn digits"
    from fedkd_mpi.data import fashion_mnist

    c = fashion_mnist.load()
    idx = np.arange(0, 70_000, 35)  # 2,000 images
    x = c.images[idx, 0].reshape(-1, 7, 4, 7, 4).mean((2, 4)).reshape(len(idx), 49)
    return x.astype(np.float32) / 255.0, c.labels[idx], "fashion-mnist 7x7"


@pytest.fixture(scope="module")
def feature_csv(tmp_path_factory) -> tuple[Path, int, int]:
    x, y, _ = real_features()
    cols = [f"p{i}" for i in range(x.shape[1])]
    df = pd.DataFrame(x, columns=cols)
    df["label"] = y
    path = tmp_path_factory.mktemp("feat") / "features.csv.gz"
    df.to_csv(path, index=False)
    return path, x.shape[1], len(np.unique(y))


def _cfg(path: Path, d: int, *extra: str):
    cols = ",".join(f"p{i}" for i in range(d))
    return load_config(TINY, ["data.name=table", f"data.path={path}", "data.label_column=label",
                              f"data.feature_columns=[{cols}]", "model.kind=mlp", *extra])


def test_seeded_build_shapes_and_frozen_embeddings():
    a = build_mlp(12, 3, 32, 4, 0.1, seed=5, freeze_embeddings=True)
    state = torch.random.get_rng_state()
    b = build_mlp(12, 3, 32, 4, 0.1, seed=5, freeze_embeddings=True)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    c = build_mlp(12, 3, 32, 4, 0.1, seed=6, freeze_embeddings=False)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert all(not p.requires_grad for p in a.embeddings.parameters())
    assert all(p.requires_grad for p in c.embeddings.parameters())
    a.eval()
    out = a(torch.randn(5, 12, generator=torch.Generator().manual_seed(0)))
    assert out.logits.shape == (5, 4) and out.attentions == []
    assert [tuple(h.shape) for h in out.hidden_states] == [(5, 1, 32)] * 3


def test_family_reads_the_input_width_from_the_dataset(feature_csv):
    path, d, k = feature_csv
    cfg = _cfg(path, d, "model.mentor.layers=3", "model.mentor.hidden=64",
               "model.mentee.layers=1", "model.mentee.hidden=16")
    fam = family_of(cfg)
    assert fam.name == "mlp" and fam.input_kinds == ("features",)
    mentor, mentee = build_for(cfg, "mentor", k, 0, True), build_for(cfg, "mentee", k, 0, True)
    assert isinstance(mentor, MLP) and mentor.embeddings[1].in_features == d
    x = torch.zeros(2, d)
    assert probe(mentor, x).hidden_widths == [64] * 3
    assert probe(mentee, x).hidden_widths == [16] and probe(mentee, x).num_classes == k


def test_mlp_refuses_token_inputs(capsys):
    assert main(["validate", str(TINY), "model.kind=mlp"]) == 2
    assert capsys.readouterr().err.strip() == (
        "config error: 'model.kind': family 'mlp' takes features inputs; data.name "
        "'rotten_tomatoes' gives tokens")


def test_fedkd_on_a_feature_table_end_to_end(feature_csv, tmp_path):
    path, d, k = feature_csv
    cols = ", ".join(f"p{i}" for i in range(d))
    conf = tmp_path / "features.yaml"  # a relative data.path, resolved against this folder
    (tmp_path / path.name).symlink_to(path)
    conf.write_text(
        f"seed: 1\noutput: {tmp_path / 'mlp.h5'}\nalgorithm: fedkd\n"
        f"data: {{name: table, path: {path.name}, label_column: label, feature_columns: [{cols}],"
        " num_clients: 3, partition: dirichlet, max_samples: 900}\n"
        "model:\n  kind: mlp\n  mentor: {layers: 3, hidden: 64, heads: 4, ffn: 64}\n"
        "  mentee: {layers: 1, hidden: 16, heads: 4, ffn: 16}\n"
        "  freeze_embeddings: false\n  freeze_private_embeddings: false\n"
        "train: {rounds: 2, local_steps: 10, batch_size: 32, lr_mentor: 3.0e-3, "
        "lr_mentee: 3.0e-3}\n"
        "runtime: {progress: false}\n")
    res = run_job(3, "run", str(conf), timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    with h5py.File(tmp_path / "mlp.h5", "r") as f:
        assert f.attrs["status"] == "completed" and len(f.attrs["class_names"]) == k
        assert f.attrs["data_path"] == str((tmp_path / path.name).resolve())
        assert f.attrs["data_rows"] > 900 and (f["clients/bytes_up"][:] > 0).all()
        acc = f["rounds/mentor_metric"][-1]
        assert acc > 1.5 / k, acc  # learnt something in 2 rounds
        names = [n.decode() for n in f["layers/names"][:]]
        assert any(n.startswith("embeddings.") for n in names)  # trained when not frozen
