#!/usr/bin/env bash
# SLURM CPU batch job: rank 0 = server, ranks 1..N-1 = clients, all inside one allocation.
#
#   sbatch jobs/slurm_cpu.sh CONFIG [key=value ...]
#   sbatch --ntasks=9 --time=12:00:00 jobs/slurm_cpu.sh configs/scratch.yaml output=runs/big.h5
#
# Walltime: --signal=B:USR1@120 sends USR1 to this script 120 s before the limit; the trap
# below forwards it to mpiexec (which forwards it to every rank), the run checkpoints at the
# next round boundary, marks the HDF5 file 'interrupted' and exits 3. With
# FEDKD_REQUEUE=1 (sbatch --export=ALL,FEDKD_REQUEUE=1 ...) the job then requeues itself;
# otherwise submit the same command again. Whenever a checkpoint of the output exists
# (runtime.checkpoint_dir, default <output>.ckpt), this script continues it with --resume,
# so re-submitting (or requeueing) is all that is needed; once the run is complete, a
# re-submission prints "nothing to do" and exits 0. Set runtime.checkpoint_every too, to
# survive node failures and not only walltime. TERM, HUP and INT reaching this script are
# forwarded the same way (mpiexec itself ignores HUP: it would die of it and orphan the run).
#
# MPI: the project's own MPICH (.venv/bin/mpiexec, from PyPI) launches the ranks on the
# allocation's nodes (Hydra detects SLURM and uses srun to place its proxies). To use the
# cluster's MPI with srun instead, see jobs/slurm_gpu.sh and docs/hpc.md.
#SBATCH --job-name=fedkd-mpi
#SBATCH --ntasks=4
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
[ $# -ge 1 ] || { echo "usage: sbatch $0 CONFIG [key=value ...]" >&2; exit 2; }
n=${SLURM_NTASKS:-4}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1} MKL_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
# one node: let Hydra fork the ranks itself (no srun step needed)
if [ "${SLURM_JOB_NUM_NODES:-1}" = 1 ]; then export HYDRA_LAUNCHER=${HYDRA_LAUNCHER:-fork}; fi

# continue from a checkpoint of this config's output, if there is one
cfg_args=()
for a in "$@"; do case $a in --*) ;; *) cfg_args+=("$a") ;; esac; done
state=$(.venv/bin/fedkd-mpi validate --resume-state "${cfg_args[@]}") || exit 2
if [ "$state" = complete ]; then
  echo "fedkd-mpi job ${SLURM_JOB_ID:-local}: the output of this config is complete; nothing to do"
  exit 0
fi
extra=()
[ "$state" = resume ] && extra=(--resume)
echo "fedkd-mpi job ${SLURM_JOB_ID:-local}: $n ranks, $state run: $*"

(trap '' HUP; exec .venv/bin/mpiexec -n "$n" .venv/bin/fedkd-mpi run "$@" "${extra[@]}") &
pid=$!
forward() { echo "fedkd-mpi job: signal received, asking the run to checkpoint"; kill -USR1 "$pid" 2>/dev/null; }
trap forward USR1 TERM HUP INT
rc=0
while true; do  # `wait` returns early (status > 128) when a trapped signal arrives
  wait "$pid"; rc=$?
  kill -0 "$pid" 2>/dev/null || break
done
echo "fedkd-mpi job: exit status $rc"
if [ "$rc" = 3 ] && [ "${FEDKD_REQUEUE:-0}" = 1 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
