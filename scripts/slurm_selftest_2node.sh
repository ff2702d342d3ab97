#!/usr/bin/env bash
# Prove jobs/slurm_cpu.sh under a REAL 2-node SLURM made of two fake nodes on this machine
# (needs root, unshare/nsenter/ip).
#
#   scripts/slurm_selftest_2node.sh      # install (if missing), build nodes, test, tear down
#
# 1. installs Debian's slurmctld, slurmd, slurm-client and munge when missing (apt-get);
# 2. builds two fake nodes, snode0 (10.79.0.10) and snode1 (10.79.0.11): each is its own
#    network namespace (netns fks-snodeN, a veth fksvNn plugged into the bridge fksbr0, whose
#    host side is 10.79.0.1/24) plus its own UTS (hostname), IPC and mount namespace, in which
#    /tmp and /dev/shm are private tmpfs mounts, /sys is the netns's own sysfs (UCX finds its
#    network devices in /sys/class/net; the cgroup mounts are kept for slurmd) and /etc/hosts names both nodes; everything
#    else (/work/main, the venv, /var/tmp) is shared. One munged (key and socket under a
#    /var/tmp directory every node sees), slurmctld on snode0, one slurmd per node
#    (slurmd -N snodeN, NodeAddr=its IP), cons_tres, 2 CPUs per node, no cgroups;
# 3. reference: sbatch --wait -N 2 --ntasks-per-node=2 jobs/slurm_cpu.sh tests/tiny.yaml
#    (train.rounds=R): exit 0, HDF5 'completed', all R rounds, and the run file's `devices`
#    attribute puts ranks on both snode0 and snode1 (Hydra's mpiexec in the batch step on
#    snode0 starts its proxy on snode1 with srun: the slurm launcher);
# 4. walltime signal across the 2 nodes: the same config to another output; after its first
#    round the batch shell gets USR1 (scancel --batch --signal=USR1, what --signal=B:USR1@120
#    does at walltime): exit code 3, status 'interrupted', a checkpoint; the same command is
#    submitted again: the script chooses --resume, the run completes, and the resumed file is
#    identical to the reference of step 3 (scripts/h5_identical.py: all but timings);
# 5. a trap tears down everything it started (jobs, daemons, munged, the processes left in
#    the fake nodes, namespaces, veths, bridge) and removes its directory, also on failure.
# Prints the wall time of the whole self-test at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
t0=$(date +%s)
ROUNDS=${FKS_ROUNDS:-8}
[ "$(id -u)" = 0 ] || { echo "slurm_selftest_2node: needs root (apt-get, namespaces, munge, slurm)" >&2; exit 2; }
for c in unshare nsenter ip; do
  command -v $c >/dev/null || { echo "slurm_selftest_2node: needs $c" >&2; exit 2; }
done
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  echo "== installing slurm-wlm + munge (apt-get) =="
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
fi
[ -x .venv/bin/fedkd-mpi ] || scripts/setup.sh

NODES=(snode0 snode1)
IPS=(10.79.0.10 10.79.0.11)
BR=fksbr0
BRIP=10.79.0.1
for i in 0 1; do
  if ip link show "$BR" >/dev/null 2>&1 || ip link show "fksv${i}h" >/dev/null 2>&1 \
      || [ -e "/run/netns/fks-${NODES[$i]}" ]; then
    echo "slurm_selftest_2node: $BR, fksv${i}h or netns fks-${NODES[$i]} already exists" \
      "(another run of this script, or one that was SIGKILLed: remove them with" \
      "'ip link del $BR; ip link del fksv${i}h; ip netns del fks-${NODES[$i]}')" >&2
    exit 2
  fi
done

W=$(mktemp -d /var/tmp/fks-slurm.XXXXXX)  # shared by every node (not /tmp: node-private)
chmod 755 "$W"
holders=()   # one process per fake node keeps its UTS/IPC/mount namespaces alive
made_br=0
made_ns=()
cleanup() {
  set +e
  trap - EXIT INT TERM
  if [ -s "$W/slurmctld.pid" ]; then  # our private cluster: every job in it is ours
    for j in $(squeue -h -o %i 2>/dev/null); do scancel "$j" 2>/dev/null; done
  fi
  for f in "$W"/slurmd-*.pid "$W"/slurmctld.pid "$W"/munge/munged.pid; do
    [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null
  done
  sleep 1
  # whatever still runs inside a fake node was started by this script (slurmstepd, ranks)
  for ns in "${made_ns[@]}"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  done
  for p in "${holders[@]}"; do kill -9 "$p" 2>/dev/null; done
  for i in 0 1; do ip link del "fksv${i}h" 2>/dev/null; done
  for ns in "${made_ns[@]}"; do ip netns del "$ns" 2>/dev/null; done
  [ "$made_br" = 1 ] && ip link del "$BR" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -- the fake nodes ------------------------------------------------------------------------
cat > "$W/hosts" <<HOSTS
127.0.0.1 localhost
${IPS[0]} ${NODES[0]}
${IPS[1]} ${NODES[1]}
$BRIP fks-host
HOSTS
ip link add "$BR" type bridge
made_br=1
ip addr add "$BRIP/24" dev "$BR"
ip link set "$BR" up
for i in 0 1; do
  n=${NODES[$i]} ns=fks-${NODES[$i]}
  ip netns add "$ns"
  made_ns+=("$ns")
  ip link add "fksv${i}h" type veth peer name "fksv${i}n"
  ip link set "fksv${i}h" master "$BR" up
  ip link set "fksv${i}n" netns "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "${IPS[$i]}/24" dev "fksv${i}n"
  ip -n "$ns" link set "fksv${i}n" up
  # nsenter and unshare exec (no fork): $! is the holder itself
  nsenter --net="/run/netns/$ns" unshare --uts --ipc --mount --propagation private -- \
    bash -c "set -e; hostname $n; mount -t tmpfs -o mode=1777,size=2g fks-tmp /tmp
             mount -t tmpfs -o mode=1777,size=2g fks-shm /dev/shm; mount --bind $W/hosts /etc/hosts
             mkdir /tmp/.fks-cg; mount --rbind /sys/fs/cgroup /tmp/.fks-cg
             umount -l /sys; mount -t sysfs fks-sys /sys
             mount --move /tmp/.fks-cg /sys/fs/cgroup; rmdir /tmp/.fks-cg
             touch $W/$n.ready; exec sleep infinity" </dev/null >"$W/$n.holder.log" 2>&1 &
  holders+=($!)
  disown $!
done
for _ in $(seq 50); do [ -e "$W/${NODES[0]}.ready" ] && [ -e "$W/${NODES[1]}.ready" ] && break; sleep 0.1; done
for i in 0 1; do
  [ -e "$W/${NODES[$i]}.ready" ] || { echo "slurm_selftest_2node: node ${NODES[$i]} not set up" >&2;
    cat "$W/${NODES[$i]}.holder.log" >&2; exit 1; }
done
on() {  # NODE_INDEX CMD...: run CMD inside that fake node
  local i=$1; shift
  nsenter -t "${holders[$i]}" --net --uts --ipc --mount -- "$@"
}
echo "fake nodes: $(on 0 hostname) ${IPS[0]}, $(on 1 hostname) ${IPS[1]} on $BR ($BRIP)"

# -- munge: one munged, key and socket on a path every node sees ----------------------------
mkdir -p "$W/munge"
dd if=/dev/urandom of="$W/munge/munge.key" bs=1 count=1024 status=none
chown -R munge:munge "$W/munge"
chmod 700 "$W/munge"
chmod 400 "$W/munge/munge.key"
sock="$W/munge/munge.socket"
runuser -u munge -- /usr/sbin/munged --key-file="$W/munge/munge.key" --socket="$sock" \
  --pid-file="$W/munge/munged.pid" --log-file="$W/munge/munged.log" \
  --seed-file="$W/munge/munged.seed" --force

# -- slurm: slurmctld on snode0, one slurmd per node ---------------------------------------
mkdir -p "$W/state" "$W/jobs"
for n in "${NODES[@]}"; do mkdir -p "$W/spool-$n"; done
cat > "$W/slurm.conf" <<CONF
ClusterName=fksfedkd
SlurmctldHost=${NODES[0]}(${IPS[0]})
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
SlurmdSpoolDir=$W/spool-%n
SlurmctldPidFile=$W/slurmctld.pid
SlurmdPidFile=$W/slurmd-%n.pid
SlurmctldLogFile=$W/slurmctld.log
SlurmdLogFile=$W/slurmd-%n.log
SlurmctldPort=16917
SlurmdPort=16918
MinJobAge=600
NodeName=${NODES[0]} NodeAddr=${IPS[0]} CPUs=2 RealMemory=2000 State=UNKNOWN
NodeName=${NODES[1]} NodeAddr=${IPS[1]} CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=fks Nodes=${NODES[0]},${NODES[1]} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
export SLURM_CONF="$W/slurm.conf"
on 0 env SLURM_CONF="$SLURM_CONF" /usr/sbin/slurmctld -i \
  || { echo "slurm_selftest_2node: slurmctld failed" >&2; tail -n 20 "$W/slurmctld.log" >&2; exit 1; }
for i in 0 1; do
  on "$i" env SLURM_CONF="$SLURM_CONF" /usr/sbin/slurmd -N "${NODES[$i]}" || {
    echo "slurm_selftest_2node: slurmd on ${NODES[$i]} failed" >&2
    tail -n 20 "$W/slurmd-${NODES[$i]}.log" >&2; exit 1; }
done
for _ in $(seq 60); do
  [ "$(sinfo -h -N -o '%N %T' 2>/dev/null | grep -c ' idle$')" = 2 ] && break
  sleep 1
done
sinfo -N
[ "$(sinfo -h -N -o '%N %T' | grep -c ' idle$')" = 2 ] || { echo "slurm_selftest_2node: nodes never became idle" >&2;
  tail -n 20 "$W"/slurmctld.log "$W"/slurmd-*.log >&2; exit 1; }

h5check() {  # FILE STATUS ROUNDS [RESUMED]
  .venv/bin/python - "$@" <<'PY'
import sys
import h5py
path, status, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
with h5py.File(path, "r") as f:
    got = (f.attrs["status"], list(f["rounds/round"][:]))
    resumed = [int(x) for x in f.attrs.get("resumed_from_round", [])]
    devices = [d.decode() if isinstance(d, bytes) else str(d) for d in f.attrs["devices"]]
print(f"  {path}: status={got[0]} rounds={len(got[1])} resumed_from_round={resumed}")
print("  devices:", "; ".join(devices))
assert got[0] == status, got
assert got[1] == list(range(1, rounds + 1)), got
hosts = {d.split(" on ", 1)[1].rsplit(":", 1)[0] for d in devices}
assert hosts == {"snode0", "snode1"}, f"ranks ran on {sorted(hosts)}, not on snode0 and snode1"
if len(sys.argv) > 4:
    assert resumed and resumed[-1] >= 1, resumed
PY
}
sub=(--chdir="$ROOT" --nodes=2 --ntasks-per-node=2 --ntasks=4)

echo "== 1. sbatch --wait -N 2 --ntasks-per-node=2 jobs/slurm_cpu.sh tests/tiny.yaml train.rounds=$ROUNDS =="
out1="$W/jobs/ref.h5"
args1=(tests/tiny.yaml "output=$out1" "train.rounds=$ROUNDS")
jid=$(sbatch --parsable --wait "${sub[@]}" --output="$W/jobs/ref-%j.out" jobs/slurm_cpu.sh "${args1[@]}") \
  || { cat "$W"/jobs/ref-*.out; tail -n 20 "$W"/slurmd-*.log; exit 1; }
tail -n 3 "$W/jobs/ref-$jid.out"
h5check "$out1" completed "$ROUNDS"
# the batch step runs mpiexec on snode0; Hydra's srun step placed its proxy on snode1
grep -h "launch task StepId=$jid.0 " "$W/slurmd-${NODES[1]}.log" | sed 's/^/  snode1 slurmd: /' | grep . \
  || { echo "slurm_selftest_2node: no srun step of job $jid on ${NODES[1]}" >&2; exit 1; }
echo "  step 1 done at $(( $(date +%s) - t0 )) s"

echo "== 2. walltime signal on 2 nodes -> checkpoint, exit 3; resubmit -> resume =="
out2="$W/jobs/sig.h5"
args2=(tests/tiny.yaml "output=$out2" "train.rounds=$ROUNDS")
job=$(sbatch --parsable "${sub[@]}" --output="$W/jobs/sig-%j.out" jobs/slurm_cpu.sh "${args2[@]}")
.venv/bin/python - "$out2" "$job" <<'PY'  # until the run has written a round (one process)
import subprocess, sys, time
from fedkd_mpi.storage.h5 import open_live
path, job = sys.argv[1], sys.argv[2]
for i in range(1200):
    try:
        with open_live(path) as f:
            if len(f["rounds/round"]) >= 1:
                break
    except Exception:
        pass
    if i % 20 == 19 and not subprocess.run(["squeue", "-h", "-j", job], capture_output=True,
                                            text=True).stdout.strip():
        break  # the job ended (the checks below say how)
    time.sleep(0.1)
PY
scancel --batch --signal=USR1 "$job"
for _ in $(seq 480); do
  squeue -h -j "$job" 2>/dev/null | grep -q . || break
  sleep 0.5
done
grep -E "signal|stopped|exit status" "$W/jobs/sig-$job.out"
scontrol show job "$job" | grep -o "ExitCode=[0-9:]*" | head -1 | grep -q "ExitCode=3:0" \
  || { echo "slurm_selftest_2node: expected exit code 3" >&2; scontrol show job "$job" >&2;
       cat "$W/jobs/sig-$job.out" >&2; exit 1; }
.venv/bin/python -c "
import h5py; f = h5py.File('$out2', 'r'); assert f.attrs['status'] == 'interrupted', f.attrs['status']
print('  interrupted after round', len(f['rounds/round']))"
[ -f "$out2.ckpt/manifest.json" ] || { echo "slurm_selftest_2node: no checkpoint" >&2; exit 1; }
sbatch --wait "${sub[@]}" --output="$W/jobs/res-%j.out" jobs/slurm_cpu.sh "${args2[@]}" \
  || { cat "$W"/jobs/res-*.out; exit 1; }
grep -q "resume run" "$W"/jobs/res-*.out
h5check "$out2" completed "$ROUNDS" resumed
echo "== 3. resumed 2-node file == uninterrupted 2-node file (scripts/h5_identical.py) =="
.venv/bin/python scripts/h5_identical.py --new-attrs resumed_from_round "$out1" "$out2"

echo "slurm_selftest_2node: OK in $(( $(date +%s) - t0 )) s"
