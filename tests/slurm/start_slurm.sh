#!/usr/bin/env bash
# scalediff: start a single-node SLURM "cluster" on a Debian 12 host (root, no systemd needed),
# used by tests/test_slurm.py (pytest -m slurm) and CI to run the SLURM profiles against a real
# scheduler. Project copy of the team's reference recipe; nothing here reads files outside the repo.
# Idempotent: re-running skips what is already installed/running (and restarts slurmctld/slurmd
# only when the generated slurm.conf/gres.conf changed).
#
#   SLURM_ACCOUNTING=dbd   (default) slurmdbd + local MariaDB -> `sacct` works, which is what the
#                          snakemake-executor-plugin-slurm status checks use by default.
#   SLURM_ACCOUNTING=none  no accounting; `sacct` fails with "Slurm accounting storage is
#                          disabled" and the plugin's status checks then HANG FOREVER unless the
#                          profile sets `slurm-status-command: squeue` (pitfall, see
#                          profiles/slurm-cluster/config.yaml).
#   SLURM_FAKE_GPUS=N      (default 1) number of fake GPUs the node advertises (gres gpu:N).
#                          N=1 uses File=/dev/null; N>1 uses empty files under
#                          /var/lib/slurm/fake-gpu/ (used to demonstrate multi-GPU behaviour).
#
# Partitions: cpu (default) and gpu, both on the single node. Needs root and apt access the first
# time (slurm-wlm, munge, slurmdbd, mariadb-server from Debian; ~20 s from scratch when cached).
# Stop with tests/slurm/stop_slurm.sh.
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "[start_slurm] must run as root" >&2; exit 1; }
ACCT="${SLURM_ACCOUNTING:-dbd}"
NGPU="${SLURM_FAKE_GPUS:-1}"
case "$ACCT" in dbd|none) ;; *) echo "[start_slurm] SLURM_ACCOUNTING must be dbd or none" >&2; exit 1 ;; esac
case "$NGPU" in ''|*[!0-9]*|0) echo "[start_slurm] SLURM_FAKE_GPUS must be a positive integer" >&2; exit 1 ;; esac
NODE="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB="$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) * 85 / 100 ))"
CONF=/etc/slurm
log() { echo "[start_slurm] $*"; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() { # wait_for <seconds> <cmd...>
  local t=$1; shift
  for _ in $(seq 1 "$t"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  log "timeout waiting for: $*"; return 1
}

# ---------------------------------------------------------------- install
PKGS="slurm-wlm munge"
[ "$ACCT" = dbd ] && PKGS="$PKGS slurmdbd mariadb-server"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  log "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 install -y $missing \
    || { apt-get -o DPkg::Lock::Timeout=300 update && apt-get -o DPkg::Lock::Timeout=300 install -y $missing; }
fi

# the node name must resolve locally
getent hosts "$NODE" >/dev/null || echo "127.0.0.1 $NODE" >> /etc/hosts

# ---------------------------------------------------------------- munge
[ -s /etc/munge/munge.key ] || { mungekey --create --force 2>/dev/null || create-munge-key -f; }
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged
  wait_for 20 sh -c 'munge -n | unmunge'
fi

# ---------------------------------------------------------------- config
install -d -o slurm -g slurm /var/lib/slurm/slurmctld /var/log/slurm
install -d /var/lib/slurm/slurmd
if [ "$ACCT" = dbd ]; then
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu"
else
  ACCT_LINES="AccountingStorageType=accounting_storage/none"
fi
cat > "$CONF/slurm.conf.new" <<EOF
ClusterName=ci
SlurmctldHost=$NODE
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
MinJobAge=300
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/lib/slurm/slurmd
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$ACCT_LINES
GresTypes=gpu
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:$NGPU State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
EOF
if [ "$NGPU" = 1 ]; then
  GPU_FILES=/dev/null
else
  install -d /var/lib/slurm/fake-gpu
  # character devices (copies of /dev/null's numbers): slurmd skips regular files when it sets
  # CUDA_VISIBLE_DEVICES, which then stays empty
  for i in $(seq 0 $((NGPU - 1))); do
    dev="/var/lib/slurm/fake-gpu/nvidia$i"
    [ -c "$dev" ] || { rm -f "$dev"; mknod -m 666 "$dev" c 1 3; }
  done
  GPU_FILES="/var/lib/slurm/fake-gpu/nvidia[0-$((NGPU - 1))]"
fi
cat > "$CONF/gres.conf.new" <<EOF
AutoDetect=off
NodeName=$NODE Name=gpu File=$GPU_FILES
EOF
changed=0
cmp -s "$CONF/slurm.conf.new" "$CONF/slurm.conf" || changed=1
cmp -s "$CONF/gres.conf.new" "$CONF/gres.conf" 2>/dev/null || changed=1
mv "$CONF/slurm.conf.new" "$CONF/slurm.conf"
mv "$CONF/gres.conf.new" "$CONF/gres.conf"

# ---------------------------------------------------------------- mariadb + slurmdbd
if [ "$ACCT" = dbd ]; then
  install -d -o mysql -g mysql /run/mysqld
  if ! mysqladmin ping >/dev/null 2>&1; then
    log "starting mariadbd"
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
    setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 \
      --pid-file=/run/mysqld/mysqld.pid >/var/log/slurm/mariadb.log 2>&1 < /dev/null &
    wait_for 60 mysqladmin ping
  fi
  mysql -u root <<'EOF'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
  cat > "$CONF/slurmdbd.conf" <<'EOF'
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpass
StorageLoc=slurm_acct_db
EOF
  chown slurm:slurm "$CONF/slurmdbd.conf"; chmod 600 "$CONF/slurmdbd.conf"
  if ! alive /run/slurmdbd.pid; then
    log "starting slurmdbd"
    /usr/sbin/slurmdbd
    wait_for 60 sacctmgr -n list cluster
  fi
fi

# ---------------------------------------------------------------- slurmctld + slurmd
if alive /run/slurmctld.pid && [ "$changed" = 1 ]; then
  log "slurm.conf changed: restarting daemons"
  for f in /run/slurmd.pid /run/slurmctld.pid; do
    if alive "$f"; then p=$(cat "$f"); kill "$p"; wait_for 30 sh -c "! kill -0 $p"; fi
  done
fi
if ! alive /run/slurmctld.pid; then log "starting slurmctld"; /usr/sbin/slurmctld; fi
wait_for 60 scontrol ping
if ! alive /run/slurmd.pid; then log "starting slurmd"; /usr/sbin/slurmd; fi

# ---------------------------------------------------------------- wait until idle
state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -1; }
for i in $(seq 1 90); do
  s="$(state)"
  case "$s" in
    idle|mixed|allocated) break ;;
    down*|drain*|drained*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 1
done
s="$(state)"
case "$s" in idle|mixed|allocated) ;; *) log "node not ready (state=$s)"; exit 1 ;; esac
if [ "$ACCT" = dbd ]; then wait_for 30 sacct -n -X -j 1; fi   # sacct answers (rc 0)
sinfo
log "SLURM ready (accounting=$ACCT, node=$NODE, cpus=$CPUS, mem=${MEM_MB}MB, gres=gpu:$NGPU)"
