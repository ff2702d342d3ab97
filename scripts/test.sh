#!/usr/bin/env bash
# Set up (if needed) and run every test: lint, the MPI suites under mpiexec -n 3 and -n 4
# (pytest-mpi; a skipped MPI test fails the run), then the serial suite, which also starts
# real mpiexec jobs. The last line is pytest's "N passed" summary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPIEXEC_TIMEOUT=600
export FEDKD_REQUIRE_NODES=1  # tests/nodes: fake nodes (namespaces) must be made, never skipped
.venv/bin/ruff check fedkd_mpi tests benchmarks
for n in 3 4; do
  echo "== MPI tests under mpiexec -n $n =="
  .venv/bin/mpiexec -n "$n" .venv/bin/python tests/mpi_pytest.py -v -p no:randomly tests/mpi
done
echo "== serial tests (incl. end-to-end mpiexec jobs) =="
exec .venv/bin/python -m pytest -v tests --ignore=tests/mpi "$@"
