#!/usr/bin/env bash
# Workstation launcher: jobs/workstation.sh NRANKS CONFIG [key=value ...] [--overwrite]
# Rank 0 is the server, ranks 1..N-1 host the clients. Uses the project's own MPICH
# (.venv/bin/mpiexec): a launcher from another MPI would start N independent 1-rank worlds.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 NRANKS CONFIG [key=value ...] [--overwrite]" >&2; exit 2; }
n=$1; shift
scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
exec .venv/bin/mpiexec -n "$n" .venv/bin/fedkd-mpi run "$@"
