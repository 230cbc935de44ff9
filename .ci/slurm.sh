# Source this file (.ci/services.sh does): start a one-node Slurm cluster on loopback for tests/test_slurm.py.
#
#   source .ci/slurm.sh
#
# Debian's munge, slurmctld and slurmd (apt-get install slurm-wlm munge when missing and we are root),
# no systemd: the daemons are started directly, with their config, state, sockets and logs under one temp
# dir and free ports, so nothing clashes with a system Slurm. Exports SLURM_CONF (what sbatch, squeue and
# scancel read) and ABLATE_TEST_SLURM=1 once `sinfo` shows the node idle; stops everything on exit.
# When Slurm cannot start (not root, no packages, a daemon refuses), it says why and exports nothing:
# the Slurm test is then skipped with that reason (ABLATE_TEST_SLURM_SKIP).

_slurm_fail() {
  echo "slurm: $1; the Slurm test will be skipped" >&2
  export ABLATE_TEST_SLURM_SKIP="$1"
  return 0
}

_ablate_slurm_start() {
  local dir port_ctld port_d cpus
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "slurm: installing slurm-wlm and munge from Debian's packages" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; } || true
    fi
  fi
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null ||
    { _slurm_fail "slurmctld, slurmd or munged not installed (apt-get install slurm-wlm munge)"; return 0; }
  [ "$(id -u)" = 0 ] || { _slurm_fail "slurmd must run as root to start jobs as their user"; return 0; }

  dir=$(mktemp -d /tmp/ablate-slurm.XXXXXX)
  chmod 755 "$dir"
  mkdir -p "$dir/munge" "$dir/state" "$dir/spool"
  # munge: a fresh key of our own, its socket in $dir (Slurm is told where with AuthInfo)
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
  ABLATE_SLURM_STOP="for f in slurmd slurmctld munged; do kill \$(cat '$dir/'\$f.pid 2>/dev/null) 2>/dev/null; done; sleep 1; rm -rf '$dir'"
  trap 'eval "${ABLATE_SERVICES_STOP:-}"; eval "$ABLATE_SLURM_STOP"' EXIT
  munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/munge.seed" ||
    { cat "$dir/munged.log" >&2; _slurm_fail "munged did not start"; return 0; }

  port_ctld=$(_free_port)
  port_d=$(_free_port)
  cat >"$dir/slurm.conf" <<EOF
ClusterName=ablate
SlurmctldHost=localhost
SlurmctldPort=$port_ctld
SlurmdPort=$port_d
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=2
MinJobAge=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -i || { tail -20 "$dir/slurmctld.log" >&2; _slurm_fail "slurmctld did not start"; return 0; }
  slurmd -N localhost || { tail -20 "$dir/slurmd.log" >&2; _slurm_fail "slurmd did not start"; return 0; }
  for _ in $(seq 60); do
    sinfo -h -N -o '%t' 2>/dev/null | grep -qx idle && break
    sleep 1
  done
  if ! sinfo -h -N -o '%t' 2>/dev/null | grep -qx idle; then
    sinfo -N >&2 || true
    tail -20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2
    _slurm_fail "the node never came up idle"
    return 0
  fi
  export ABLATE_TEST_SLURM=1 ABLATE_SLURM_DIR="$dir"
  echo "slurm: one-node cluster up (SLURM_CONF=$SLURM_CONF, partition debug, 2 CPUs)" >&2
}

_ablate_slurm_start
