#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine, for the SLURM tests and for trying
# profiles/slurm before a real cluster: munge + MariaDB + slurmdbd + slurmctld + slurmd (Debian's
# Slurm 22.05), as root, without systemd. Adapted from a verified recipe; the traps it avoids are
# noted where they bite. Idempotent: does nothing if this script's cluster already answers.
#
#   apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd mariadb-server
#   sudo tests/slurm/cluster_up.sh        # stop with tests/slurm/cluster_down.sh
#
# FAKE_GPUS=2 (default; 0 for none) declares that many gres/gpu, each backed by a character device
# that is NOT a GPU (it is /dev/null's device number): SLURM schedules GPU requests on them and sets
# CUDA_VISIBLE_DEVICES, and nothing can compute on them. They exist only to test that GPU rules ask
# for and get GPU slots (two: a 2-process data_parallel job asks for one per process).
set -euo pipefail
B=${JOULEBENCH_SLURM_BASE:-/tmp/joulebench-slurm}
FAKE_GPUS=${FAKE_GPUS:-2}
WAIT_S=${WAIT_S:-60}
export SLURM_CONF=$B/etc/slurm.conf

die() { echo "cluster_up: $*" >&2; exit 1; }
# Every wait is bounded: a daemon that does not come up must fail the script, not hang it.
wait_for() { # $1 = what, $2 = log to show on failure, rest = command that succeeds when ready
  local what=$1 log=$2; shift 2
  local deadline=$((SECONDS + WAIT_S))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      echo "cluster_up: $what not ready after ${WAIT_S}s; last lines of $log:" >&2
      tail -n 20 "$log" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}

[ "$(id -u)" = 0 ] || die "run as root (the daemons and /etc/slurm/slurm.conf need it)"
for tool in munged slurmctld slurmd slurmdbd mariadbd sbatch; do
  command -v $tool >/dev/null || die "$tool not found; install: apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
done
# The job-step plugin strips every SLURM_* variable (SLURM_CONF too) before its inner `srun`, so
# the config must also sit at the compiled-in path. Never replace a real cluster's config there.
if [ -e /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" != "$SLURM_CONF" ]; then
  die "/etc/slurm/slurm.conf exists and is not ours; this machine already has a SLURM config"
fi
if [ -f $B/run/slurmctld.bgpid ] && timeout 5 sinfo -h >/dev/null 2>&1; then
  echo "cluster_up: already running (SLURM_CONF=$SLURM_CONF)"; exit 0
fi

HOST=$(hostname -s)
NCPU=$(nproc)
MEM=$(( $(free -m | awk '/^Mem:/{print $2}') * 8 / 10 ))
mkdir -p $B/{etc,run,log,munge,fakedev,state/munge,state/slurmctld,state/slurmd} /etc/slurm
chmod 700 $B/munge; chmod 755 $B/run

# ---- munge -----------------------------------------------------------------------------------
[ -f $B/munge/munge.key ] || mungekey --create --keyfile=$B/munge/munge.key
munged --num-threads=10 --socket=$B/run/munge.socket --key-file=$B/munge/munge.key \
  --pid-file=$B/run/munged.pid --log-file=$B/log/munged.log \
  --seed-file=$B/state/munge/munged.seed </dev/null >/dev/null 2>&1   # forks; PID in run/munged.pid
wait_for munge $B/log/munged.log bash -c "munge -n --socket=$B/run/munge.socket | unmunge --socket=$B/run/munge.socket"

# ---- slurm.conf ------------------------------------------------------------------------------
GRES_TYPES=""; GRES_NODE=""
if [ "$FAKE_GPUS" -gt 0 ]; then
  GRES_TYPES="GresTypes=gpu"; GRES_NODE="Gres=gpu:$FAKE_GPUS"
  # A count-only gres.conf leaves the node INVAL; a File= device per GPU is required.
  : > $B/etc/gres.conf
  for ((i = 0; i < FAKE_GPUS; i++)); do
    [ -e $B/fakedev/nvidia$i ] || mknod $B/fakedev/nvidia$i c 1 3
    echo "NodeName=$HOST Name=gpu File=$B/fakedev/nvidia$i" >> $B/etc/gres.conf
  done
fi
cat > $SLURM_CONF <<EOF
ClusterName=joulebench
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$B/run/munge.socket
StateSaveLocation=$B/state/slurmctld
SlurmdSpoolDir=$B/state/slurmd
SlurmctldPidFile=$B/run/slurmctld.pid
SlurmdPidFile=$B/run/slurmd.pid
SlurmctldLogFile=$B/log/slurmctld.log
SlurmdLogFile=$B/log/slurmd.log
ProctrackType=proctrack/linuxproc
# The executor plugin passes --cpu-bind=q, which task/none rejects.
TaskPlugin=task/affinity
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without it a job that gives no --mem takes the whole node.
DefMemPerCPU=256
# Without slurmdbd, sacct fails and the plugin loops forever on "No active jobs".
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
# Else sacctmgr looks for munge's default socket.
AccountingStoragePass=$B/run/munge.socket
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/filetxt
JobCompLoc=$B/log/jobcomp.txt
ReturnToService=2
MinJobAge=300
$GRES_TYPES
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$MEM $GRES_NODE State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
ln -sfn $SLURM_CONF /etc/slurm/slurm.conf

# ---- MariaDB + slurmdbd ----------------------------------------------------------------------
if [ ! -d $B/state/mysql/mysql ]; then
  mariadb-install-db --no-defaults --datadir=$B/state/mysql --user=root \
    --auth-root-authentication-method=socket --skip-test-db > $B/log/mariadb-install.log 2>&1
fi
mariadbd --no-defaults --datadir=$B/state/mysql --user=root --socket=$B/run/mysqld.sock \
  --pid-file=$B/run/mysqld.pid --bind-address=127.0.0.1 --port=3306 \
  --log-error=$B/log/mariadb.err --innodb-buffer-pool-size=64M >/dev/null 2>&1 &
echo $! > $B/run/mariadbd.bgpid
wait_for MariaDB $B/log/mariadb.err mariadb --no-defaults -S $B/run/mysqld.sock -uroot -e 'select 1'
mariadb --no-defaults -S $B/run/mysqld.sock -uroot -e "
  CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
cat > $B/etc/slurmdbd.conf <<EOF
AuthType=auth/munge
AuthInfo=socket=$B/run/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$B/run/slurmdbd.pid
LogFile=$B/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
EOF
chmod 600 $B/etc/slurmdbd.conf   # slurmdbd refuses a world-readable config
slurmdbd -D > $B/log/slurmdbd.stdout 2>&1 &   # reads slurmdbd.conf beside $SLURM_CONF
echo $! > $B/run/slurmdbd.bgpid
wait_for slurmdbd $B/log/slurmdbd.log timeout 5 sacctmgr -n list cluster
timeout 10 sacctmgr -i add cluster joulebench >/dev/null || true
timeout 10 sacctmgr -i add account jb_acct Description=joulebench Organization=joulebench >/dev/null || true
for user in root ${SUDO_USER:-}; do  # SUDO_USER: whoever ran this with sudo submits jobs too
  timeout 10 sacctmgr -i add user "$user" Account=jb_acct DefaultAccount=jb_acct >/dev/null || true
done

# ---- slurmctld + slurmd ----------------------------------------------------------------------
slurmctld -D > $B/log/slurmctld.stdout 2>&1 &
echo $! > $B/run/slurmctld.bgpid
slurmd -D > $B/log/slurmd.stdout 2>&1 &
echo $! > $B/run/slurmd.bgpid
wait_for "node idle" $B/log/slurmctld.log bash -c "sinfo -h -o %T | grep -qx idle"
timeout 30 srun hostname >/dev/null || die "srun hostname failed; see $B/log/slurmd.log"
echo "cluster_up: SLURM cluster up on $HOST (SLURM_CONF=$SLURM_CONF, account jb_acct, partition debug, fake gpus=$FAKE_GPUS)"
