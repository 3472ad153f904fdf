#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for CI and for trying the job files:
#   scripts/slurm-local.sh start   # munge key, slurm.conf, munged, slurmctld, slurmd
#   scripts/slurm-local.sh stop    # stops all three, removes the state directory
# Needs root and Debian's slurm-wlm and munge (scripts/install-deps.sh --slurm installs them).
# The node advertises 2 CPUs whatever the machine has: fewer than the CPU smoke job's 4 ranks, so
# the check proves that job runs on a small node (it overcommits) instead of pending forever.
set -euo pipefail
STATE=${SLURM_LOCAL_STATE:-/tmp/ringbench-slurm}
CONF_DIR=/etc/slurm
NODE=$(hostname -s)
CPUS=2

start() {
    [ "$(id -u)" -eq 0 ] || { echo "slurm-local.sh: must run as root (it starts munged, slurmctld and slurmd)" >&2; exit 1; }
    mkdir -p "$STATE"/{ctld,d,log} /etc/munge /run/munge /var/lib/munge /var/log/munge "$CONF_DIR"
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge /var/lib/munge /var/log/munge
    chmod 0400 /etc/munge/munge.key
    chmod 0755 /run/munge
    pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 1 50); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.1; done
    [ -S /run/munge/munge.socket.2 ] || { echo "slurm-local.sh: munged did not start" >&2; exit 1; }
    cat > "$CONF_DIR/slurm.conf" <<CONF
# Written by scripts/slurm-local.sh: a one-node cluster on $NODE.
ClusterName=ringbench-ci
SlurmctldHost=$NODE(127.0.0.1)
# Job ids from the clock: results/<job id>/ of an earlier cluster in the same checkout stay unique.
FirstJobId=$(( $(date +%s) % 50000000 + 1000 ))
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=pmix
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmdParameters=config_overrides
KillWait=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=4000 State=UNKNOWN
PartitionName=ci Nodes=$NODE Default=YES MaxTime=30 State=UP OverSubscribe=NO
CONF
    # Debian's cgroup.conf is not needed with proctrack/linuxproc and task/none.
    /usr/sbin/slurmctld
    /usr/sbin/slurmd
    for _ in $(seq 1 60); do
        if sinfo -h -o "%t" 2>/dev/null | grep -qE "^(idle|mix|alloc)"; then
            sinfo
            return 0
        fi
        sleep 1
    done
    echo "slurm-local.sh: the node did not become idle; logs follow" >&2
    tail -n 30 "$STATE"/log/*.log >&2 || true
    exit 1
}

stop() {
    for daemon in slurmd slurmctld munged; do
        pkill -x "$daemon" 2>/dev/null || true
    done
    # Wait until they are gone, so that a following start does not find them dying.
    running() { pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || pgrep -x munged >/dev/null; }
    for _ in $(seq 1 100); do
        running || break
        sleep 0.1
    done
    for daemon in slurmd slurmctld munged; do
        pkill -9 -x "$daemon" 2>/dev/null || true
    done
    rm -rf "$STATE"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
