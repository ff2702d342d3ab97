#!/usr/bin/env bash
# SLURM GPU batch job, launched with srun: one task per GPU plus the server task.
#
#   sbatch jobs/slurm_gpu.sh CONFIG [key=value ...]
#
# Default layout: one node, 4 GPUs, 5 tasks = server (rank 0, CPU) + 4 client ranks; client
# rank i of a node takes GPU (i mod GPUs-on-node), found from an MPI shared-memory split
# (runtime.device: auto). More client ranks than GPUs on a node: set runtime.ranks_per_gpu.
# Do NOT bind GPUs per task (--gpus-per-task / --gpu-bind): every task must see the node's
# GPUs so that the run can pick one; the batch line below requests GPUs per node.
#
# Several nodes, exactly one task per GPU plus the server: a heterogeneous job, e.g.
#   #SBATCH --nodes=1 --ntasks=1 --cpus-per-task=4          (component 0: the server)
#   #SBATCH hetjob
#   #SBATCH --nodes=4 --ntasks-per-node=4 --gpus-per-node=4 --cpus-per-task=8
#   srun --het-group=0,1 --mpi=pmix .venv/bin/fedkd-mpi run ...
#
# MPI: srun starts the ranks itself, so mpi4py must be built against the cluster's MPI (the
# PyPI MPICH wheel in .venv talks PMI only to its own mpiexec):
#   module load openmpi   # or the site's MPI with PMIx/PMI2 support
#   .venv/bin/pip install --force-reinstall --no-binary mpi4py mpi4py
#   .venv/bin/pip uninstall -y mpich
# and pick the plugin the site supports: srun --mpi=list.
# Alternatively keep the PyPI MPICH and replace the srun line by
#   .venv/bin/mpiexec -n "$SLURM_NTASKS" .venv/bin/fedkd-mpi run "$@" "${extra[@]}"
# (Hydra places its proxies with srun itself), as jobs/slurm_cpu.sh does.
#
# Walltime: --signal=USR1@120 sends USR1 to every task 120 s before the limit; the run
# checkpoints at the next round boundary, marks the HDF5 file 'interrupted' and exits 3.
# Submit the same command again (or requeue: FEDKD_REQUEUE=1) and it continues from the
# checkpoint (--resume is added automatically when one exists; once the run is complete, a
# re-submission prints "nothing to do" and exits 0). runtime.checkpoint_dir
# (default <output>.ckpt) must be on a filesystem all nodes see; runtime.spill_dir should be
# node-local (default: $TMPDIR).
#SBATCH --job-name=fedkd-mpi-gpu
#SBATCH --nodes=1
#SBATCH --ntasks=5
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=4
#SBATCH --time=04:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
[ $# -ge 1 ] || { echo "usage: sbatch $0 CONFIG [key=value ...]" >&2; exit 2; }
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1} MKL_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
cfg_args=()
for a in "$@"; do case $a in --*) ;; *) cfg_args+=("$a") ;; esac; done
state=$(.venv/bin/fedkd-mpi validate --resume-state "${cfg_args[@]}") || exit 2
if [ "$state" = complete ]; then
  echo "fedkd-mpi job ${SLURM_JOB_ID:-local}: the output of this config is complete; nothing to do"
  exit 0
fi
extra=()
[ "$state" = resume ] && extra=(--resume)
echo "fedkd-mpi job ${SLURM_JOB_ID:-local}: ${SLURM_NTASKS:-?} tasks, $state run: $*"
srun --mpi="${FEDKD_SRUN_MPI:-pmix}" --kill-on-bad-exit=1 \
  .venv/bin/fedkd-mpi run "$@" "${extra[@]}"
rc=$?
echo "fedkd-mpi job: exit status $rc"
if [ "$rc" = 3 ] && [ "${FEDKD_REQUEUE:-0}" = 1 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
