"""The example plug-in package (examples/plugin/) installed as a user would, outside the project
environment: ``pip install --target`` into a temporary folder, found through ``PYTHONPATH``
(the entry points live in its dist-info). Validate, refuse, and run FedKD on it under mpiexec.

Nothing here imports the plug-in in the pytest process (its classes would register in the
process-wide registries of the other tests); code that needs it runs in a subprocess.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from fedkd_mpi.comm.wire import header_bytes

from ..conftest import BIN, ROOT, run_job

PLUGIN_SRC = ROOT / "examples" / "plugin"
CONFIG = PLUGIN_SRC / "fedkd_digits.yaml"
HERE = "tests.plugins.test_example_plugin"
#: the mentor's last-round test accuracy must exceed this; measured 0.93 / 0.956 / 0.933 on
#: seeds 0 / 1 / 2 with the shipped config (mentee: 0.81 / 0.85 / 0.86)
MIN_MENTOR_ACCURACY = 0.8


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> str:
    """The plug-in installed into a fresh folder (offline; never into the project venv)."""
    base = tmp_path_factory.mktemp("plugin")
    src, dest = base / "src", base / "site"
    # build from a copy, so that setuptools' build/ and egg-info never land in the repository
    shutil.copytree(PLUGIN_SRC, src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    res = subprocess.run(
        [str(BIN / "pip"), "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(dest), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, f"pip install of the plug-in failed:\n{res.stdout}{res.stderr}"
    assert list(dest.glob("fedkd_mpi_example_plugin-*.dist-info/entry_points.txt"))
    return str(dest)


def _validate(*overrides: str, pythonpath: str = "") -> subprocess.CompletedProcess:
    """``fedkd-mpi validate`` of the example config (cwd=ROOT)."""
    return run_job(1, "validate", str(CONFIG), *overrides, launcher=False, timeout=120,
                   env={"PYTHONPATH": pythonpath})


def _one_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_validate_finds_every_plugin_through_entry_points(target):
    res = _validate(pythonpath=target)
    assert res.returncode == 0, res.stderr
    assert "kind: example_mlp" in res.stdout and "codec: sign" in res.stdout


@pytest.mark.parametrize(("overrides", "field", "what"), [
    ((), "data.name", "unknown dataset 'digits'"),
    (("data.name=rotten_tomatoes",), "model.kind", "unknown model 'example_mlp'"),
    (("data.name=rotten_tomatoes", "model.kind=tiny", "fedkd.codec=svd"), "train.aggregation",
     "unknown aggregator 'clipped_mean'"),
])
def test_without_the_plugin_each_name_is_refused_in_one_line(overrides, field, what):
    """Not installed: refused before anything runs. Preflight resolves the names in the
    order of the config's sections; the first unknown one is reported."""
    line = _one_line(_validate(*overrides))
    assert f"'{field}'" in line and what in line, line


def __getattr__(attr: str):
    """``BadSign``, built on first access: it subclasses the plug-in's codec, importable only
    in the subprocesses that get PYTHONPATH=target (``fedkd.codec=...:BadSign``)."""
    if attr != "BadSign":
        raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
    from fedkd_plugin_example.codec import SignCodec

    class BadSign(SignCodec):
        """The sign codec with a body size rule that under-declares by one byte."""

        name = "bad_sign"

        def body_nbytes(self, meta):
            return super().body_nbytes(meta) - 1

    globals()["BadSign"] = BadSign
    return BadSign


def test_a_codec_that_misdeclares_its_size_is_refused(target):
    # the console script puts its own folder on sys.path, not the cwd: ROOT for ``tests``
    line = _one_line(_validate(f"fedkd.codec={HERE}:BadSign",
                               pythonpath=os.pathsep.join([target, str(ROOT)])))
    assert "'fedkd.codec'" in line and "body_nbytes" in line, line


def test_plugin_settings_are_validated(target):
    line = _one_line(_validate("plugins.clipped_mean.max_norm=-1", pythonpath=target))
    assert "'plugins.clipped_mean.max_norm'" in line, line
    line = _one_line(_validate("plugins.clipped_mean.max_nrom=2", pythonpath=target))
    assert "plugins.clipped_mean.max_nrom" in line, line


def check_units() -> None:
    """The codec's and the aggregator's arithmetic (run in a subprocess with the plug-in)."""
    import torch
    from fedkd_plugin_example.aggregator import ClippedMean
    from fedkd_plugin_example.codec import SignCodec, SignState

    from fedkd_mpi.comm.wire import pack, unpack
    from fedkd_mpi.config import load_config
    from fedkd_mpi.tensors import TensorSpec

    specs = [TensorSpec("w", (5, 7)), TensorSpec("b", (9,)), TensorSpec("v", (1, 1))]
    codec = SignCodec(SignCodec.settings_from(load_config(None)), specs, 0, 3)
    gen = torch.Generator().manual_seed(0)
    ups = [[torch.randn(s.shape, generator=gen) for s in specs] for _ in range(2)]
    state = codec.new_state(4)
    assert isinstance(state, SignState) and state.residual is None
    enc = codec.encode(ups[0], 0, state)
    assert enc.body.dtype == np.uint8 and enc.meta.tolist() == [35, 9, 1]
    assert enc.body.nbytes == codec.body_nbytes(enc.meta) == (4 + 5) + (4 + 2) + (4 + 1)
    msg = unpack(pack(4, 0, enc, specs), specs, codec.body_nbytes, codec.wire_dtype)
    out = codec.decode(msg.encoded)
    for u, d, r in zip(ups[0], out, state.residual, strict=True):
        scale = u.abs().mean()
        assert torch.allclose(d, torch.where(u >= 0, scale, -scale))
        assert torch.allclose(d + r, u, atol=1e-6)  # error feedback keeps what was not sent
    before = [r.clone() for r in state.residual]
    codec.encode(ups[1], 1, state)  # the next message compresses update + residual
    for u, r0, r1 in zip(ups[1], before, state.residual, strict=True):
        x = u + r0
        assert torch.allclose(r1, x - torch.where(x >= 0, x.abs().mean(), -x.abs().mean()),
                              atol=1e-6)
    for bad in ([35, 9, 2], [35, 8, 1]):
        try:
            codec.body_nbytes(np.array(bad))
        except ValueError:
            pass
        else:
            raise AssertionError(f"meta {bad} accepted")

    cfg = load_config(None, ["train.aggregation=clipped_mean", "plugins.clipped_mean.max_norm=2"])
    agg = ClippedMean(cfg)
    assert agg.settings.max_norm == 2.0 and agg.weights(np.array([1, 2])) is None
    small = [torch.full((2, 2), 0.25), torch.zeros(3)]  # norm 0.5: kept
    big = [torch.zeros(2, 2), torch.full((3,), 10.0)]  # norm 17.32: clipped to 2
    mean = agg.aggregate([small, big], np.array([10, 1000]))  # sizes are ignored
    assert all(t.dtype == torch.float32 for t in mean)
    assert torch.allclose(mean[0], small[0] / 2)
    assert torch.allclose(mean[1], big[1] * (2 / math.sqrt(300)) / 2)


def test_codec_and_aggregator_arithmetic(target):
    res = subprocess.run([str(BIN / "python"), "-c", f"import {HERE} as t; t.check_units()"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([target, str(ROOT)])})
    assert res.returncode == 0, res.stderr


def test_fedkd_runs_end_to_end_on_the_plugin(target, tmp_path):
    out = tmp_path / "digits.h5"
    res = run_job(3, "run", str(CONFIG), f"output={out}", timeout=300,
                  env={"PYTHONPATH": target})
    assert res.returncode == 0, res.stdout + res.stderr
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "completed"
        assert f.attrs["dataset"] == "digits"
        assert [str(c) for c in f.attrs["class_names"]] == [str(i) for i in range(10)]
        num_clients = int(f.attrs["num_clients"])
        assert num_clients == 3
        shapes = f["layers/shape"][:]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["layers/names"][:]]
        # the plug-in's mentee (not another family's): input layer, 1 hidden layer, classifier
        assert names == ["embeddings.0.weight", "embeddings.0.bias", "layers.0.0.weight",
                         "layers.0.0.bias", "classifier.weight", "classifier.bias"]
        assert shapes.tolist() == [[32, 64], [32, 1], [32, 32], [32, 1], [10, 32], [10, 1]]
        per_client = header_bytes(len(shapes)) + sum(4 + math.ceil(int(r) * int(c) / 8)
                                                     for r, c in shapes)
        assert (f["clients/bytes_up"][:] == per_client).all()
        assert (f["clients/bytes_down"][:] == per_client).all()
        assert f["rounds/bytes_up"][:].tolist() == [per_client * num_clients] * 3
        mentor = f["rounds/mentor_metric"][:]
        assert mentor[-1] > MIN_MENTOR_ACCURACY, mentor
        assert np.isfinite(f["rounds/mentee_metric"][:]).all()
