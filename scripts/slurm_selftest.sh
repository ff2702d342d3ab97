#!/usr/bin/env bash
# Prove jobs/slurm_cpu.sh under a REAL single-node SLURM on this machine (needs root).
#
#   scripts/slurm_selftest.sh            # install (if missing), start, test, stop
#
# 1. installs Debian's slurmctld, slurmd, slurm-client and munge when missing (apt-get);
# 2. writes a minimal slurm.conf into a temporary directory (one node "vm" with 4 CPUs as
#    declared, no cgroups: proctrack/linuxproc, task/none, select/cons_tres), starts munged,
#    slurmctld and slurmd (their pids are recorded; only those processes are stopped);
# 3. sbatch --wait jobs/slurm_cpu.sh on tests/tiny.yaml: checks exit 0, HDF5 status
#    'completed' and all rounds;
# 4. walltime signal: submits a longer run, once it has written a round sends the batch shell
#    USR1 (scancel --batch --signal=USR1, what --signal=B:USR1@120 does at walltime), checks
#    exit 3, status 'interrupted' and a checkpoint, submits the same command again and checks
#    that it resumed (--resume chosen by the script) and completed;
# 5. stops the daemons and removes the temporary directory.
# Prints the wall time of the whole self-test at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
t0=$(date +%s)
[ "$(id -u)" = 0 ] || { echo "slurm_selftest: needs root (apt-get, munge, slurm daemons)" >&2; exit 2; }
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  echo "== installing slurm-wlm + munge (apt-get) =="
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
fi
[ -x .venv/bin/fedkd-mpi ] || scripts/setup.sh

W=$(mktemp -d /tmp/fedkd-slurm.XXXXXX)
chmod 755 "$W"
host=$(hostname -s)
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for f in "$W"/slurmctld.pid "$W"/slurmd.pid "$W"/munged.pid; do
    [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null
  done
  sleep 1
  rm -rf "$W"
}
trap cleanup EXIT

# -- munge: a private key and socket in $W (leaves any system munged alone) --------------------
mkdir -p "$W/munge"
dd if=/dev/urandom of="$W/munge/munge.key" bs=1 count=1024 status=none
chown -R munge:munge "$W/munge"
chmod 700 "$W/munge"
chmod 400 "$W/munge/munge.key"
sock="$W/munge/munge.socket"
runuser -u munge -- /usr/sbin/munged --key-file="$W/munge/munge.key" --socket="$sock" \
  --pid-file="$W/munge/munged.pid" --log-file="$W/munge/munged.log" \
  --seed-file="$W/munge/munged.seed" --force
cp "$W/munge/munged.pid" "$W/munged.pid"

# -- slurm ---------------------------------------------------------------------------------
mkdir -p "$W/state" "$W/spool"
cat > "$W/slurm.conf" <<CONF
ClusterName=fedkdtest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=$W/state
SlurmdSpoolDir=$W/spool
SlurmctldPidFile=$W/slurmctld.pid
SlurmdPidFile=$W/slurmd.pid
SlurmctldLogFile=$W/slurmctld.log
SlurmdLogFile=$W/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
MinJobAge=600
NodeName=$host CPUs=4 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
export SLURM_CONF="$W/slurm.conf"
/usr/sbin/slurmctld -i
/usr/sbin/slurmd
for _ in $(seq 60); do
  sinfo -h -o %T 2>/dev/null | grep -qx idle && break
  sleep 1
done
sinfo
sinfo -h -o %T | grep -qx idle || { echo "slurm_selftest: node never became idle" >&2;
  tail -20 "$W/slurmctld.log" "$W/slurmd.log" >&2; exit 1; }

h5check() {  # FILE STATUS ROUNDS [RESUMED]
  .venv/bin/python - "$@" <<'PY'
import sys
import h5py
path, status, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
with h5py.File(path, "r") as f:
    got = (f.attrs["status"], list(f["rounds/round"][:]))
    resumed = [int(x) for x in f.attrs.get("resumed_from_round", [])]
print(f"  {path}: status={got[0]} rounds={len(got[1])} resumed_from_round={resumed}")
assert got[0] == status, got
assert got[1] == list(range(1, rounds + 1)), got
if len(sys.argv) > 4:
    assert resumed and resumed[-1] >= 1, resumed
PY
}

echo "== 1. sbatch --wait jobs/slurm_cpu.sh tests/tiny.yaml =="
out1="$W/jobs/tiny.h5"
mkdir -p "$W/jobs"
sbatch --wait --chdir="$ROOT" --output="$W/jobs/%j.out" --ntasks=3 \
  jobs/slurm_cpu.sh tests/tiny.yaml "output=$out1" || { cat "$W"/jobs/*.out; exit 1; }
cat "$W"/jobs/*.out | tail -3
h5check "$out1" completed 3

echo "== 2. walltime signal -> checkpoint, exit 3; resubmit -> resume =="
out2="$W/jobs/sig.h5"
args=(tests/tiny.yaml "output=$out2" train.rounds=12)
job=$(sbatch --parsable --chdir="$ROOT" --output="$W/jobs/sig-%j.out" --ntasks=3 \
  jobs/slurm_cpu.sh "${args[@]}")
for _ in $(seq 240); do  # until the run has written a round
  n=$(.venv/bin/python -c "
import sys
from fedkd_mpi.storage.h5 import open_live
try:
    f = open_live('$out2'); print(len(f['rounds/round'])); f.close()
except Exception:
    print(0)" 2>/dev/null)
  [ "${n:-0}" -ge 1 ] && break
  sleep 0.5
done
scancel --batch --signal=USR1 "$job"
for _ in $(seq 240); do
  squeue -h -j "$job" 2>/dev/null | grep -q . || break
  sleep 0.5
done
cat "$W"/jobs/sig-"$job".out | grep -E "signal|stopped|exit status"
scontrol show job "$job" | grep -o "ExitCode=[0-9:]*" | head -1 | grep -q "ExitCode=3:0" \
  || { echo "slurm_selftest: expected exit code 3" >&2; scontrol show job "$job" >&2; exit 1; }
.venv/bin/python -c "
import h5py; f = h5py.File('$out2', 'r'); assert f.attrs['status'] == 'interrupted', f.attrs['status']
print('  interrupted after round', len(f['rounds/round']))"
[ -f "$out2.ckpt/manifest.json" ]
sbatch --wait --chdir="$ROOT" --output="$W/jobs/res-%j.out" --ntasks=3 \
  jobs/slurm_cpu.sh "${args[@]}" || { cat "$W"/jobs/res-*.out; exit 1; }
grep -q "resume run" "$W"/jobs/res-*.out
h5check "$out2" completed 12 resumed

echo "slurm_selftest: OK in $(( $(date +%s) - t0 )) s"
