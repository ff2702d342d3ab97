#!/usr/bin/env bash
# The accuracy baselines of the default job (configs/default.yaml), each its own run with the
# same data, rounds, steps and seed: FedAvg of the 6-layer mentor (dense float32 updates), FedAvg
# of the 2-layer mentee, and local-only training of the mentor (nothing communicated); then one
# table with the default FedKD run (runs/default.h5, made by scripts/quickstart.sh if missing).
# ~2 minutes per run on a 2-core machine. Extra arguments: key=value overrides for every run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
run() {  # $1 = output name, then overrides
  local out=runs/default_$1.h5; shift
  .venv/bin/mpiexec -n 4 .venv/bin/fedkd-mpi run configs/default.yaml output="$out" --overwrite "$@"
}
[ -f runs/default.h5 ] || scripts/quickstart.sh "$@"
run fedavg_mentor algorithm=fedavg fedavg.model=mentor "$@"
run fedavg_mentee algorithm=fedavg fedavg.model=mentee "$@"
run local_mentor algorithm=local local.model=mentor "$@"
.venv/bin/fedkd-mpi compare runs/default.h5 runs/default_fedavg_mentor.h5 \
  runs/default_fedavg_mentee.h5 runs/default_local_mentor.h5 --group-by algorithm,fedavg.model \
  --out runs/default_baselines
