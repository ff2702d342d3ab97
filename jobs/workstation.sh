#!/usr/bin/env bash
# Workstation launcher: jobs/workstation.sh NRANKS CONFIG [key=value ...] [--overwrite]
# Rank 0 is the server, ranks 1..N-1 host the clients. Uses the project's own MPICH
# (.venv/bin/mpiexec): a launcher from another MPI would start N independent 1-rank worlds.
# Ctrl-C, a closed terminal (HUP) or TERM ask the run to stop at the next round boundary
# (checkpoint, status interrupted, exit status 3; continue with --resume); mpiexec itself
# ignores HUP, which would kill it and orphan the ranks. SIGKILL stops at once.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 NRANKS CONFIG [key=value ...] [--overwrite]" >&2; exit 2; }
n=$1; shift
scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
(trap '' HUP; exec .venv/bin/mpiexec -n "$n" .venv/bin/fedkd-mpi run "$@") &
pid=$!
trap 'kill -USR1 "$pid" 2>/dev/null' INT TERM HUP
rc=0
while true; do  # `wait` returns early (status > 128) when a trapped signal arrives
  wait "$pid" && rc=0 || rc=$?
  kill -0 "$pid" 2>/dev/null || break
done
exit "$rc"
