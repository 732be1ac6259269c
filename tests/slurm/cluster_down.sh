#!/usr/bin/env bash
# Stop only the daemons that cluster_up.sh started (by their recorded PIDs), then wipe their state.
# KEEP_STATE=1 keeps the accounting database and job state for inspection.
set -uo pipefail
B=${JOULEBENCH_SLURM_BASE:-/tmp/joulebench-slurm}
stop() { # $1 = pid file
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1"); kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}
stop $B/run/slurmd.bgpid
stop $B/run/slurmctld.bgpid
stop $B/run/slurmdbd.bgpid
stop $B/run/mariadbd.bgpid
stop $B/run/munged.pid
[ "$(readlink /etc/slurm/slurm.conf)" = "$B/etc/slurm.conf" ] && rm -f /etc/slurm/slurm.conf
if [ "${KEEP_STATE:-0}" != 1 ]; then rm -rf $B/state $B/run $B/log $B/fakedev $B/etc; fi
echo "cluster_down: stopped"
