"""The bad-input catalogue (docs/errors.md): one test per row.

Every row must give exactly one line on stderr, exit code 2, before any training, and leave
every existing file untouched. Config rows go through ``fedkd-mpi validate`` (the same loader
``run`` uses on rank 0), called in-process (``cli.main``) to keep the suite fast; one row also
as a subprocess. Launch rows are real ``mpiexec`` jobs that stop at start-up.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fedkd_mpi.cli import main
from fedkd_mpi.runtime.devices import NodeInfo, choose_device

from ..conftest import FEDKD, ROOT, TINY, run_job

N = 2  # ranks for launch rows: enough for a server and a client, as cheap as possible


def _one_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, f"rc={res.returncode}\n{res.stdout}\n{res.stderr}"
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr and "training" not in res.stdout
    return lines[0]


@pytest.fixture
def validate(capsys):
    """``fedkd-mpi validate ARGS`` in-process: returns its one stderr line (exit code 2)."""

    def _run(*args: str) -> str:
        code = main(["validate", *args])
        cap = capsys.readouterr()
        return _one_line(subprocess.CompletedProcess([], code, cap.out, cap.err))

    return _run


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# (row id, overrides, full-line regex)
CONFIG_ROWS = [
    ("unknown-key", ["nosuchkey=1"],
     r"config error: unknown key 'nosuchkey' \(valid keys here: seed, output, algorithm, .*\)"),
    ("unknown-nested-key", ["train.epochs=3"],
     r"config error: unknown key 'train\.epochs' \(valid keys here: rounds, local_epochs, .*\)"),
    ("wrong-type", ["train.rounds=abc"],
     r"config error: 'train\.rounds': Input should be a valid integer, unable to parse string "
     r"as an integer \(got 'abc'\)"),
    ("t-start-above-t-end", ["svd.t_start=0.99", "svd.t_end=0.9"],
     r"config error: 'svd': t_start \(0\.99\) must be <= t_end \(0\.9\)"),
    ("T-above-1", ["svd.t_end=1.5"],
     r"config error: 'svd\.t_end': Input should be less than or equal to 1 \(got 1\.5\)"),
    ("T-zero", ["svd.t_start=0"],
     r"config error: 'svd\.t_start': Input should be greater than 0 \(got 0\)"),
    ("zero-rounds", ["train.rounds=0"],
     r"config error: 'train\.rounds': Input should be greater than or equal to 1 \(got 0\)"),
    ("negative-rounds", ["train.rounds=-3"],
     r"config error: 'train\.rounds': Input should be greater than or equal to 1 \(got -3\)"),
    ("lr-zero", ["train.lr_mentor=0"],
     r"config error: 'train\.lr_mentor': Input should be greater than 0 \(got 0\)"),
    ("lr-negative", ["train.lr_mentee=-0.001"],
     r"config error: 'train\.lr_mentee': Input should be greater than 0 \(got -0\.001\)"),
    ("fraction-above-1", ["train.sample_fraction=1.5"],
     r"config error: 'train\.sample_fraction': Input should be less than or equal to 1 "
     r"\(got 1\.5\)"),
    ("fraction-zero", ["data.test_fraction=0"],
     r"config error: 'data\.test_fraction': Input should be greater than 0 \(got 0\)"),
    ("unknown-algorithm", ["algorithm=fedsgd"],
     r"config error: 'algorithm': unknown algorithm 'fedsgd' \(valid: fedavg, fedkd, .*, or "
     r"module:attribute\)"),
    ("unknown-codec", ["fedkd.codec=zip"],
     r"config error: 'fedkd\.codec': unknown codec 'zip' \(valid: dense, fedpaq, .*, or "
     r"module:attribute\)"),
    ("unknown-aggregator", ["train.aggregation=krum"],
     r"config error: 'train\.aggregation': unknown aggregator 'krum' \(valid: .*median, .*\)"),
    ("plugin-not-importable", ["data.name=no_such_pkg.data:Corpus"],
     r"config error: 'data\.name': cannot import 'no_such_pkg\.data' \(ModuleNotFoundError: "
     r"No module named 'no_such_pkg'\)"),
    ("plugin-wrong-type", ["fedkd.codec=json:dumps"],
     r"config error: 'fedkd\.codec': json:dumps is a function, not a subclass of "
     r"fedkd_mpi\.codecs\.base\.Codec"),
    ("alias-codec-conflict", ["algorithm=topk", "fedavg.codec=svd"],
     r"config error: 'fedavg\.codec': algorithm 'topk' is fedavg with codec topk; for codec svd "
     r"use algorithm=fedavg fedavg\.codec=svd"),
    ("f1-needs-binary", ["data.name=bbc_news", "data.metric=f1"],
     r"config error: 'data\.metric': f1 \(of the positive class\) needs a binary task; "
     r"data\.name 'bbc_news' has 5 classes \(use accuracy or macro_f1\)"),
    ("nonfinite-policy", ["runtime.nonfinite=maybe"],
     r"config error: 'runtime\.nonfinite': Input should be 'stop' or 'skip' \(got 'maybe'\)"),
    ("mentee-deeper", ["model.mentee.layers=9"],
     r"config error: 'model': mentee\.layers \(9\) must be <= mentor\.layers \(2\)"),
    ("heads-divide-hidden", ["model.mentor.heads=3"],
     r"config error: 'model\.mentor': hidden \(32\) must be divisible by heads \(3\)"),
    ("ranks-per-gpu-zero", ["runtime.ranks_per_gpu=0"],
     r"config error: 'runtime\.ranks_per_gpu': Input should be greater than or equal to 1 "
     r"\(got 0\)"),
    ("override-not-key-value", ["train.rounds"],
     r"config error: override 'train\.rounds' is not of the form key=value"),
    ("task-model-mismatch", ["data.name=fashion_mnist"],
     r"config error: 'model\.kind': family 'tiny' takes tokens inputs; data\.name "
     r"'fashion_mnist' gives images"),
    ("pretrained-missing", ["model.kind=hf", "model.pretrained=/nonexistent/minilm"],
     r"config error: 'model\.pretrained' '/nonexistent/minilm' is neither a packaged "
     r"model \(.*\) nor an existing folder"),
]


@pytest.mark.parametrize("overrides, pattern", [r[1:] for r in CONFIG_ROWS],
                         ids=[r[0] for r in CONFIG_ROWS])
def test_config_rows(validate, overrides, pattern):
    assert re.fullmatch(pattern, validate(str(TINY), *overrides))


def test_config_row_as_a_subprocess():
    res = subprocess.run([str(FEDKD), "validate", str(TINY), "train.rounds=0"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert _one_line(res).startswith("config error: 'train.rounds'")


def test_pretrained_folder_malformed(validate, tmp_path):
    bad = tmp_path / "model"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    line = validate(str(TINY), "model.kind=hf", f"model.pretrained={bad}")
    assert line == (f"config error: 'model.pretrained' '{bad}': {bad}/config.json is "
                    "missing or not valid JSON (JSONDecodeError)")
    (bad / "config.json").write_text('{"model_type": "bert", "num_hidden_layers": 6, '
                                     '"hidden_size": 384, "num_attention_heads": 12}')
    (bad / "model.safetensors").write_bytes(b"junk")
    line = validate(str(TINY), "model.kind=hf", f"model.pretrained={bad}")
    assert line.startswith(f"config error: 'model.pretrained' '{bad}': "
                           "model.safetensors is not a readable safetensors file")


def test_config_file_rows(validate, tmp_path):
    missing = tmp_path / "nope.yaml"
    assert validate(str(missing)) == f"config error: file '{missing}' not found"
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  rounds: [1, 2\n")
    assert validate(str(bad)) == f"config error: '{bad}' is not valid YAML at line 3"
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    assert validate(str(lst)) == f"config error: '{lst}' must hold a mapping of keys"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00rounds")
    assert validate(str(binary)) == f"config error: cannot read '{binary}' (not UTF-8 text)"


# ---------------------------------------------------------------------------------------
# launch rows: real mpiexec jobs that must stop before any work
# ---------------------------------------------------------------------------------------
def _launch(tmp_path: Path, *overrides: str, n: int = N, env: dict | None = None,
            output: Path | str | None = None, flags: tuple[str, ...] = ()) -> str:
    out = output if output is not None else tmp_path / "run.h5"
    res = run_job(n, "run", str(TINY), f"output={out}", *overrides, *flags, env=env,
                  timeout=120)
    line = _one_line(res)
    assert "round 1/" not in res.stdout
    return line


def test_device_cuda_without_cuda(tmp_path):
    line = _launch(tmp_path, "runtime.device=cuda")
    assert re.fullmatch(r"config error: 'runtime\.device' is 'cuda' but CUDA is not available "
                        r"on rank 1 \(.+\) \(valid: auto, cpu\)", line)
    assert not (tmp_path / "run.h5").exists()


def test_server_device_cuda_without_cuda(tmp_path):
    line = _launch(tmp_path, "runtime.server_device=cuda")
    assert re.fullmatch(r"config error: 'runtime\.server_device' is 'cuda' but CUDA is not "
                        r"available on rank 0 \(.+\) \(valid: cpu\)", line)


def test_more_ranks_per_node_than_gpus():
    """No GPU on CI: the decision function of every rank, with a fake GPU count."""
    info = NodeInfo("node7", node_ranks=5, node_clients=4, client_index=3)
    _dev, err = choose_device(4, info, 2, "auto", "cpu", 1)
    assert err == ("config error: 4 client ranks on node node7 but 2 GPU(s) and "
                   "'runtime.ranks_per_gpu' is 1; start at most 2 client ranks per node or set "
                   "runtime.ranks_per_gpu=2 (or runtime.device=cpu)")
    assert choose_device(4, info, 2, "auto", "cpu", 2) == ("cuda:1", "")


def test_data_missing(tmp_path):
    line = _launch(tmp_path, "data.name=fashion_mnist", "model.kind=cnn",
                   env={"FEDKD_FASHION_MNIST_DIR": str(tmp_path / "nodata")})
    assert line.startswith(f"data error: data.name 'fashion_mnist': cannot read "
                           f"'{tmp_path}/nodata/train-images-idx3-ubyte.gz' ([Errno 2] No such")


def test_data_unreadable(tmp_path):
    d = tmp_path / "fm"
    d.mkdir()
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (d / f).write_bytes(b"junk")
    line = _launch(tmp_path, "data.name=fashion_mnist", "model.kind=cnn",
                   env={"FEDKD_FASHION_MNIST_DIR": str(d)})
    assert line.startswith(f"data error: data.name 'fashion_mnist': cannot read "
                           f"'{d}/train-images-idx3-ubyte.gz' (Not a gzipped file")


def test_output_directory_unwritable(tmp_path):
    line = _launch(tmp_path, output="/sys/fedkd-mpi-test.h5")  # sysfs: no file creation
    assert re.fullmatch(r"config error: 'output' directory /sys is not writable \(.+\)", line)


def test_output_parent_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("keep")
    line = _launch(tmp_path, output=f / "run.h5")
    assert line == f"config error: 'output' ({f}/run.h5): {f} is not a directory"
    assert f.read_text() == "keep"


def test_output_is_a_directory(tmp_path):
    line = _launch(tmp_path, output=tmp_path)
    assert line == f"config error: 'output' ({tmp_path}) is a directory; give a file path"


def test_overwrite_with_a_later_error_keeps_the_old_file(tmp_path):
    """A client without training data, found on the client ranks after rank 0's checks: with
    --overwrite the file is replaced only once the job really starts, so last week's results
    stay."""
    out = tmp_path / "old.h5"
    out.write_bytes(b"last week's results")
    line = _launch(tmp_path, "data.num_clients=700", output=out, flags=("--overwrite",))
    assert line == ("data error: client 0 has no training data; lower data.num_clients (700) "
                    "or data.test_fraction (0.2)")
    assert out.read_bytes() == b"last week's results"


# -- --resume rows -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory) -> Path:
    """A 2-round run stopped by a signal after round 1, checkpointed (``<output>.ckpt``);
    a completed run removes its checkpoint."""
    d = tmp_path_factory.mktemp("ckpt")
    out = d / "run.h5"
    res = run_job(N, "run", str(TINY), f"output={out}", "train.rounds=2",
                  env={"FEDKD_MPI_SIGNAL": "1:1"}, timeout=180)
    assert res.returncode == 3, res.stderr
    assert (d / "run.h5.ckpt" / "manifest.json").is_file()
    return out


def _copy_run(src: Path, dst_dir: Path) -> Path:
    out = dst_dir / src.name
    shutil.copy(src, out)
    shutil.copytree(f"{src}.ckpt", f"{out}.ckpt")
    return out


def test_resume_without_output(tmp_path):
    out = tmp_path / "never.h5"
    line = _launch(tmp_path, output=out, flags=("--resume",))
    assert line == (f"resume error: 'output' file {out} does not exist; run without --resume "
                    "to start a new run")


def test_resume_without_checkpoint(tmp_path):
    out = tmp_path / "old.h5"
    out.write_bytes(b"results")
    line = _launch(tmp_path, output=out, flags=("--resume",))
    assert line.startswith(f"resume error: no complete checkpoint in {out}.ckpt")
    assert out.read_bytes() == b"results"


def test_resume_from_a_different_config(tmp_path, checkpointed):
    out = _copy_run(checkpointed, tmp_path)
    before = _digest(out)
    line = _launch(tmp_path, "train.rounds=2", "seed=5", output=out, flags=("--resume",))
    assert line == (f"resume error: the checkpoint in {out}.ckpt is from a different config "
                    "(seed=3 in the checkpoint, 5 now); resume with the original config")
    assert _digest(out) == before


def test_resume_with_another_world_size(tmp_path, checkpointed):
    out = _copy_run(checkpointed, tmp_path)
    line = _launch(tmp_path, "train.rounds=2", n=3, output=out, flags=("--resume",))
    assert line == (f"resume error: the checkpoint in {out}.ckpt was written by 2 ranks; "
                    "resume with mpiexec -n 2 (got 3)")


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_resume_from_a_corrupt_checkpoint(tmp_path, checkpointed, damage):
    out = _copy_run(checkpointed, tmp_path)
    before = _digest(out)
    victim = Path(f"{out}.ckpt") / "round_000001" / "client_0000002.pt"
    data = victim.read_bytes()
    if damage == "flip":  # one byte inside the stored tensor data: caught by the zip CRC
        pos = data.index(b"data/0") + 200
        victim.write_bytes(data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1 :])
    else:
        victim.unlink()
    line = _launch(tmp_path, "train.rounds=2", output=out, flags=("--resume",))
    if damage == "delete":
        assert line == (f"resume error: checkpoint file {victim} is missing; the checkpoint in "
                        f"{out}.ckpt is incomplete (start a new run, or restore the file)")
    else:
        assert line.startswith(f"resume error: checkpoint file {victim} is corrupt (")
        assert line.endswith("); restore it or start a new run")
    assert _digest(out) == before
