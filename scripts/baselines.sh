#!/usr/bin/env bash
# The accuracy baselines of the default job (configs/default.yaml), each its own run with the
# same data, rounds, steps and seed: FedAvg of the 6-layer mentor (dense float32 updates), FedAvg
# of the 2-layer mentee, and local-only training of the mentor (nothing communicated); then one
# table with the default FedKD run (runs/default.h5, made by scripts/quickstart.sh if missing).
# Curves of all four: fedkd-mpi compare runs/default*.h5 --group-by algorithm,fedavg.model
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
.venv/bin/python - <<'PY'
"""One table: the final held-out metrics of each run (mean over clients) and its bytes."""
from tabulate import tabulate

from fedkd_mpi.analysis import load

runs = [("FedKD (mentor home, mentee sent as SVD factors)", "runs/default.h5"),
        ("FedAvg of the mentor (dense)", "runs/default_fedavg_mentor.h5"),
        ("FedAvg of the mentee (dense)", "runs/default_fedavg_mentee.h5"),
        ("local only (mentor, nothing sent)", "runs/default_local_mentor.h5")]
rows = []
for label, path in runs:
    s = load(path).summary
    f = {k: ("" if v != v else f"{v:.4f}") for k, v in s.final.items()}
    mb = s.mb_up_per_client + s.mb_down_per_client
    red = s.reduction_vs_mentor_fedavg
    rows.append([label, f["mentor_accuracy"], f["mentor_f1"], f["mentee_accuracy"],
                 f["mentee_f1"], f"{mb:.2f}", "" if red != red else f"{red:.1f}x"])
print(tabulate(rows, headers=["run", "mentor acc", "mentor F1", "mentee acc", "mentee F1",
                              "MB/client", "vs FedAvg mentor"], disable_numparse=True))
print(f"majority class of the held-out data: {load(runs[0][1]).summary.majority_rate:.4f}")
PY
