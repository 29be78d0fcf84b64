#!/usr/bin/env bash
# local_slurm.sh - a small but realistic SLURM cluster on this one host, for integration tests.
#
# Usage: scripts/local_slurm.sh up [--replace] | down [--purge] | status | -h
#   up          install missing Debian packages, write the configs, start munged, MariaDB, slurmdbd,
#               slurmctld and one `slurmd -N <node>` per fake node, wait until every node is idle.
#               Idempotent: a re-run starts nothing; a changed config restarts only what it affects.
#     --replace stop Slurm daemons that this script did not start, instead of refusing to run.
#   down        cancel all jobs and stop only the daemons that `up` started.
#     --purge   also drop the accounting DB and the slurmctld/slurmd state (job ids restart at 1).
#   status      show the daemons and sinfo; exit 0 if the cluster is up and every node usable.
#
# Cluster: partition gpu = gpu1..N (fake GPUs, Gres=gpu:h100:4, MaxTime 12:00:00), partition cpu =
# cpu1..M (default, MaxTime 1-00:00:00); each node CPUs=4 RealMemory=16384 (SkyPilot asks 16 GB per GPU).
# Accounting is enforced: account testacct (users root..., their default), QOS normal (default) and
# debug (MaxWall 00:30:00, DenyOnLimit), so a bad --account/--qos or too-long --time is rejected at submit.
# Settings (environment), with defaults:
#   LOCAL_SLURM_GPU_NODES=2 LOCAL_SLURM_CPU_NODES=1 LOCAL_SLURM_GPUS_PER_NODE=4
#   LOCAL_SLURM_GPU_TYPE=h100 (the GRES type: typed GRES as real sites have; `--gres=gpu:N` takes any)
#   LOCAL_SLURM_NODE_CPUS=4 LOCAL_SLURM_NODE_MEM_MB=16384 LOCAL_SLURM_USERS=root
#   LOCAL_SLURM_MAX_ARRAY_SIZE=1001 (MaxArraySize; the split-array test runs with 10, then restores the default)
#   LOCAL_SLURM_PORT=6817 (slurmctld; slurmdbd +2, node i +4+i)  LOCAL_SLURM_SMOKE=1 (srun smoke
#   test after a (re)start; 0 disables it)
# Logs: /var/log/slurm/*.log and /var/log/local-slurm/ (apt, daemon stdout/stderr). Run as root.
set -Eeuo pipefail
export LC_ALL=C DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

GPU_NODES=${LOCAL_SLURM_GPU_NODES:-2}  CPU_NODES=${LOCAL_SLURM_CPU_NODES:-1}
GPUS=${LOCAL_SLURM_GPUS_PER_NODE:-4}   NODE_CPUS=${LOCAL_SLURM_NODE_CPUS:-4}  GPU_TYPE=${LOCAL_SLURM_GPU_TYPE:-h100}
NODE_MEM=${LOCAL_SLURM_NODE_MEM_MB:-16384} USERS=${LOCAL_SLURM_USERS:-root} SMOKE=${LOCAL_SLURM_SMOKE:-1}
PORT=${LOCAL_SLURM_PORT:-6817} CLUSTER=local ACCOUNT=testacct DB=slurm_acct_db MAX_ARRAY=${LOCAL_SLURM_MAX_ARRAY_SIZE:-1001}
RUN=/run/local-slurm LOG=/var/log/local-slurm SLOG=/var/log/slurm ETC=/etc/slurm LIB=/var/lib/slurm
GPUDIR=/var/lib/local-slurm/gpus MYCNF=/etc/mysql/mariadb.conf.d/90-local-slurm.cnf
PKGS=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)
NODES=()
for ((i = 1; i <= GPU_NODES; i++)); do NODES+=("gpu$i"); done
for ((i = 1; i <= CPU_NODES; i++)); do NODES+=("cpu$i"); done
HOST=$(uname -n); HOST=${HOST%%.*}
CTLD_PORT=$PORT DBD_PORT=$((PORT + 2)) NODE_PORT0=$((PORT + 4))
T0=${EPOCHREALTIME/./} STARTED="" OWN_POLICY=0

# ---------------------------------------------------------------- helpers
log() { local t=$(( ${EPOCHREALTIME/./} - T0 )); printf '[local-slurm %3d.%02ds] %s\n' $((t / 1000000)) $((t / 10000 % 100)) "$*"; }
die() { # die MSG [LOGFILE...]: one ERROR line, then the tail of each relevant log
  printf 'ERROR: %s\n' "$1" >&2; shift
  local f; for f; do [[ -s $f ]] && { echo "--- last 25 lines of $f:"; tail -n 25 "$f"; } >&2; done
  exit 1
}
# only the main shell reports: a failure inside $(...) shows up as the caller's exit status
trap 'rc=$?; ((BASHPID == $$)) && die "command failed (exit $rc) at line $LINENO: $BASH_COMMAND"' ERR
trap '(( OWN_POLICY )) && rm -f /usr/sbin/policy-rc.d; true' EXIT
# alive PID [NAME]: the process exists and is no zombie (PID 1 here reaps slowly, so a stopped
# daemon lingers as state Z for seconds); read instead of $(<...) because this runs in /proc scans
alive() {
  local s; read -r s 2>/dev/null <"/proc/$1/stat" || return 1
  [[ ${s##*) } != [ZX]* && ( -z ${2:-} || $s == *" ($2) "* ) ]]
}
# procs REGEX: "pid name" of every live process whose name matches REGEX
procs() {
  local d s
  for d in /proc/[0-9]*; do
    read -r s 2>/dev/null <"$d/stat" || continue
    [[ $s =~ ^([0-9]+)\ \(($1)\)\ [^ZX] ]] && echo "${BASH_REMATCH[1]} ${BASH_REMATCH[2]}"
  done; return 0
}
# ourpid NAME COMM: pid recorded in $RUN/NAME.pid by us, if that process still runs as COMM
ourpid() { local p; read -r p 2>/dev/null <"$RUN/$1.pid" && [[ $p =~ ^[0-9]+$ ]] && alive "$p" "$2" && echo "$p"; }
wait_until() { local i; for ((i = 0; i < $1 * 20; i++)); do eval "$2" >/dev/null 2>&1 && return 0; sleep 0.05; done; return 1; }
stop_pid() { # stop_pid PID COMM: SIGTERM, then SIGKILL after 15 s
  kill -TERM "$1" 2>/dev/null || true
  wait_until 15 "! alive $1 $2" && return 0
  kill -KILL "$1" 2>/dev/null || true; wait_until 5 "! alive $1 $2" || die "cannot stop $2 (pid $1)"
}
stop_ours() { local p; p=$(ourpid "$1" "$2") && { log "stopping $1 (pid $p)"; stop_pid "$p" "$2"; }; rm -f "$RUN/$1.pid" "$RUN/$1.cfg"; }
listening() { # listening PORT: an IPv4 socket listens on PORT (Slurm 22.05 uses IPv4 unless told
  local hex; printf -v hex ':%04X' "$1"  # otherwise); read from /proc, so no connection is made
  awk -v h="$hex" '$4 == "0A" && substr($2, length($2) - 4) == h { f = 1 } END { exit !f }' /proc/net/tcp
}
munge_ok() { munge -n </dev/null | unmunge >/dev/null; }
sql() { mariadb --protocol=socket -uroot -NB "$@" </dev/null; }
sam() { # sacctmgr -i ARGS, where "Nothing modified/new added" is fine (idempotent)
  local out; out=$(sacctmgr -i "$@" 2>&1) && return 0
  [[ $out == *Nothing* ]] || die "sacctmgr $* failed: $out" "$SLOG/slurmdbd.log"
}
put() { # put FILE MODE OWNER CONTENT: rewrite FILE only when CONTENT differs (keeps a foreign original)
  local cur=""; [[ -f $1 ]] && { IFS= read -r -d '' cur <"$1" || true; }
  if [[ $cur != "$4"$'\n' ]]; then
    [[ -f $1 && $cur != *local_slurm.sh* && ! -e $1.orig ]] && cp -p "$1" "$1.orig"
    printf '%s\n' "$4" >"$1.new"; mv -f "$1.new" "$1"; log "wrote $1"
  fi
  chmod "$2" "$1"; chown "$3" "$1"
}

# launch NAME COMM PIDSRC LOGFILE READY CMD...: start CMD in its own session (without fd 9, our
# lock), wait until READY succeeds and record the pid (read from PIDSRC, or the child if "-").
# Fails fast, with the log tails, if the daemon dies during startup.
launch() {
  local name=$1 comm=$2 src=$3 logf=$4 ready=$5 pid="" i; shift 5
  eval "$ready" >/dev/null 2>&1 && die "$name: something else already answers '$ready' (port in use?)"
  log "starting $name"
  [[ $src == - ]] || rm -f "$src"
  setsid "$@" </dev/null >>"$LOG/$name.out" 2>&1 9>&- &
  local child=$!
  for ((i = 0; ; i++)); do
    eval "$ready" >/dev/null 2>&1 && break
    if [[ $src == - ]]; then pid=$child; elif [[ -z $pid && -s $src ]]; then read -r pid <"$src" || true; fi
    if [[ -n $pid ]]; then alive "$pid" || die "$name exited during startup" "$logf" "$LOG/$name.out"
    elif [[ -n $child ]] && ! alive $child; then  # a self-daemonizing launcher returned
      wait $child || die "$name failed to start (exit $?)" "$logf" "$LOG/$name.out"; child=""
    fi
    ((i < 1200)) || die "$name not ready after 60 s ($ready)" "$logf" "$LOG/$name.out"
    sleep 0.05
  done
  [[ $src == - ]] && pid=$child || read -r pid <"$src"
  alive "$pid" "$comm" || die "$name: no live $comm process after start" "$logf" "$LOG/$name.out"
  echo "$pid" >"$RUN/$name.pid"; STARTED+=" $name"
}
# ensure NAME COMM CFGHASH PIDSRC LOGFILE READY CMD...: keep our daemon if it runs with this
# config, restart it if its config changed, start it if it is not running
ensure() {
  local name=$1 comm=$2 hash=$3 pid cur=""; shift 3
  if pid=$(ourpid "$name" "$comm"); then
    read -r cur 2>/dev/null <"$RUN/$name.cfg" || true
    [[ $cur == "$hash" ]] && return 0
    log "$name: configuration changed, restarting"; stop_pid "$pid" "$comm"
  fi
  launch "$name" "$comm" "$@"; echo "$hash" >"$RUN/$name.cfg"
}
lock() { mkdir -p "$RUN" "$LOG"; exec 9>"$RUN/lock"; flock -w 300 9 || die "another local_slurm.sh holds $RUN/lock"; }

# ---------------------------------------------------------------- up
install_packages() {
  local have missing=() p
  have=" $(dpkg-query -W -f='${Package}:${db:Status-Status} ' "${PKGS[@]}" 2>/dev/null || true) "
  for p in "${PKGS[@]}"; do [[ $have == *" $p:installed "* ]] || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  log "installing ${missing[*]} (log: $LOG/apt.log)"
  # keep the maintainer scripts from starting services: we start the daemons ourselves
  [[ -e /usr/sbin/policy-rc.d ]] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; OWN_POLICY=1; }
  local apt=(apt-get -y -q --no-install-recommends -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300
             -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  # apt-get update only when there are no package lists yet, or when the install fails (stale lists)
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null || ! "${apt[@]}" install "${missing[@]}" >>"$LOG/apt.log" 2>&1; then
    log "apt-get update"
    apt-get -q update >>"$LOG/apt.log" 2>&1 || die "apt-get update failed" "$LOG/apt.log"
    "${apt[@]}" install "${missing[@]}" >>"$LOG/apt.log" 2>&1 || die "apt-get install failed" "$LOG/apt.log"
  fi
  ((OWN_POLICY)) && rm -f /usr/sbin/policy-rc.d; OWN_POLICY=0
  # the packages enable their units: at boot systemd would start Slurm daemons that fight ours
  if [[ -d /run/systemd/system ]]; then systemctl disable --quiet slurmctld slurmd slurmdbd 2>/dev/null || true; fi
}

check_foreign() { # Slurm daemons we did not start (in our filesystem view) would fight over ports and state
  local ours=" " f pid comm foreign=()
  for f in "$RUN"/slurm*.pid; do f=${f##*/}; f=${f%.pid}; ours+="$(ourpid "$f" "${f%%-*}" || true) "; done
  while read -r pid comm; do
    [[ $ours == *" $pid "* || ! /proc/$pid/root -ef / ]] || foreign+=("$pid($comm)")
  done < <(procs 'slurmctld|slurmd|slurmdbd')
  ((${#foreign[@]})) || return 0
  ((REPLACE)) || die "Slurm daemons not started by this script are running: ${foreign[*]}. Stop them, or run 'up --replace'."
  log "--replace: stopping ${foreign[*]}"
  [[ ${foreign[*]} != *"(slurmctld)"* ]] || cancel_jobs  # the foreign controller's jobs
  for f in "${foreign[@]}"; do comm=${f#*(}; stop_pid "${f%%(*}" "${comm%)}"; done
}

write_configs() {
  local i=0 n g nodes="" gres="" gpu_list="" cpu_list="" warned=0
  install -d -o slurm -g slurm "$SLOG" "$LIB/slurmctld"; install -d "$LIB/slurmd" "$ETC" "$GPUDIR"
  for n in "${NODES[@]}"; do
    install -d "$LIB/slurmd/$n"
    nodes+="NodeName=$n NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((NODE_PORT0 + i)) CPUs=$NODE_CPUS RealMemory=$NODE_MEM"
    if [[ $n == gpu* ]]; then
      # Slurm sets CUDA_VISIBLE_DEVICES only for gres files that are device nodes: use NVIDIA's
      # major 195 (no driver behind them; nothing opens them). Plain files if mknod is not allowed.
      install -d "$GPUDIR/$n"
      for ((g = 0; g < GPUS; g++)); do
        [[ -c $GPUDIR/$n/nvidia$g ]] || mknod -m 0666 "$GPUDIR/$n/nvidia$g" c 195 $((i * GPUS + g)) 2>/dev/null || {
          touch "$GPUDIR/$n/nvidia$g"
          ((warned++)) || log "WARNING: mknod not permitted: fake GPUs are plain files, jobs get no CUDA_VISIBLE_DEVICES"; }
      done
      nodes+=" Gres=gpu:$GPU_TYPE:$GPUS"; gpu_list+=${gpu_list:+,}$n
      gres+=$'\n'"NodeName=$n Name=gpu Type=$GPU_TYPE File=$GPUDIR/$n/nvidia[0-$((GPUS - 1))]"
    else cpu_list+=${cpu_list:+,}$n; fi
    nodes+=$'\n'; i=$((i + 1))
  done
  put "$ETC/slurm.conf" 0644 root:root "# generated by scripts/local_slurm.sh - edit the script, not this file
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=slurm
AuthType=auth/munge
AuthInfo=cred_expire=10                 # a requeued job may restart after cred_expire+1 s (default 120)
StateSaveLocation=$LIB/slurmctld
SlurmctldPidFile=$RUN/slurmctld.pid     # pidfiles in $RUN tell our daemons from foreign ones
SlurmctldLogFile=$SLOG/slurmctld.log
SlurmdSpoolDir=$LIB/slurmd/%n           # %n: several slurmd on one host (multiple-slurmd build)
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmdLogFile=$SLOG/slurmd-%n.log
SlurmdParameters=config_overrides       # fake nodes declare more CPUs/memory than the host has
ProctrackType=proctrack/linuxproc       # no systemd/cgroup delegation here
TaskPlugin=task/none                    # no CPU binding: the declared CPUs do not exist
ReturnToService=2
MailProg=/bin/true                      # no MTA
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0 # start batch jobs at once, not up to 3 s later
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000                       # else a job without --mem takes the whole node
EnforcePartLimits=ALL                   # reject a too-long --time at submit instead of pending
MaxJobCount=50000                       # 10,000-task arrays fit (benchmarks/bench_status.py) beside other jobs
MaxArraySize=$MAX_ARRAY                 # SLURM's default 1001: bigger datagen launches split into several arrays
GresTypes=gpu
PriorityType=priority/multifactor
PriorityWeightQOS=10000
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStorageEnforce=associations,limits,qos
AccountingStorageTRES=gres/gpu,gres/gpu:$GPU_TYPE
AccountingStoreFlags=job_comment,job_script
JobAcctGatherType=jobacct_gather/linux
${nodes}${gpu_list:+PartitionName=gpu Nodes=$gpu_list MaxTime=12:00:00 State=UP
}${cpu_list:+PartitionName=cpu Nodes=$cpu_list MaxTime=1-00:00:00 State=UP Default=YES}"
  put "$ETC/gres.conf" 0644 root:root "# generated by scripts/local_slurm.sh: fake GPUs (char devices 195:N, no driver)
AutoDetect=off$gres"
  # slurmdbd logs in to MariaDB as the Unix user slurm over the socket (unix_socket auth): no password
  put "$ETC/slurmdbd.conf" 0600 slurm:slurm "# generated by scripts/local_slurm.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=slurm
PidFile=$RUN/slurmdbd.pid
LogFile=$SLOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StorageLoc=$DB"
  # socket only; the innodb values are slurmdbd's recommended minimums (else it logs an error)
  put "$MYCNF" 0644 root:root "# generated by scripts/local_slurm.sh: MariaDB for the local slurmdbd
[mysqld]
skip-networking
innodb_buffer_pool_size=512M
innodb_log_file_size=64M
innodb_lock_wait_timeout=900
innodb_flush_log_at_trx_commit=2"
  # without systemd (containers, this VM) slurmd's cgroup/v2 plugin must not ask systemd over dbus
  # for its scope; on cgroup v1 hosts the option is ignored
  [[ -d /run/systemd/system ]] || put "$ETC/cgroup.conf" 0644 root:root "# generated by scripts/local_slurm.sh
IgnoreSystemd=yes"
  SLURM_CFG=$(cat "$ETC"/{slurm,gres,cgroup}.conf 2>/dev/null | cksum)
}

start_base() { # munged and MariaDB: reuse working ones that we did not start
  if ! munge_ok 2>/dev/null; then
    [[ -s /etc/munge/munge.key ]] || { mungekey -c -k /etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; }
    install -d -o munge -g munge /run/munge
    launch munged munged /run/munge/munged.pid /var/log/munge/munged.log munge_ok \
      setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged
  fi
  local cfg; cfg=$(cksum <"$MYCNF")
  if ourpid mariadbd mariadbd >/dev/null || ! sql -e 'SELECT 1' >/dev/null 2>&1; then
    [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql --skip-test-db \
      --auth-root-authentication-method=socket >>"$LOG/mariadbd.out" 2>&1 || die "mariadb-install-db failed" "$LOG/mariadbd.out"
    install -d -o mysql -g mysql /run/mysqld
    ensure mariadbd mariadbd "$cfg" - "$LOG/mariadbd.out" "sql -e 'SELECT 1'" /usr/sbin/mariadbd --user=mysql
  fi
}

start_accounting() {
  ourpid slurmdbd slurmdbd >/dev/null || sql -e "CREATE DATABASE IF NOT EXISTS $DB;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED VIA unix_socket;
    GRANT ALL ON $DB.* TO 'slurm'@'localhost'" || die "cannot create the accounting database in MariaDB"
  ensure slurmdbd slurmdbd "$(cksum <"$ETC/slurmdbd.conf")" "$RUN/slurmdbd.pid" "$SLOG/slurmdbd.log" "listening $DBD_PORT" slurmdbd
  # sacctmgr costs 0.1-0.4 s per call on loopback, so the objects are checked only when the marker
  # (removed by `down --purge`, lost on reboot) does not match the wanted settings
  local debug="MaxWall=00:30:00 Flags=DenyOnLimit Priority=100" have="" q u pids=()
  local want="$CLUSTER $ACCOUNT $USERS $debug"
  read -r have 2>/dev/null <"$RUN/accounting.ok" || true
  [[ $have == "$want" ]] && return 0
  log "checking cluster $CLUSTER, QOS debug, account $ACCOUNT, users $USERS (sacctmgr)"
  local -A out=([assoc]=cluster,account,user [qos]=name,maxwall,flags,priority [user]=user,defaultaccount)
  for q in "${!out[@]}"; do sacctmgr -nP show "$q" format="${out[$q]}" >"$RUN/$q.txt" 2>&1 & pids+=($!); done
  for q in "${pids[@]}"; do wait "$q" || die "sacctmgr show failed: $(cat "$RUN"/*.txt)" "$SLOG/slurmdbd.log"; done
  for q in "${!out[@]}"; do out[$q]=$'\n'$(<"$RUN/$q.txt")$'\n'; rm -f "$RUN/$q.txt"; done
  local assoc=${out[assoc]}
  [[ $assoc == *$'\n'"$CLUSTER|"* ]] || sam add cluster "$CLUSTER"
  if [[ ${out[qos]} != *$'\n'debug\|* ]]; then sam add qos debug $debug
  elif [[ ${out[qos]} != *$'\n''debug|00:30:00|DenyOnLimit|100'$'\n'* ]]; then sam modify qos debug set $debug; fi
  [[ $assoc == *$'\n'"$CLUSTER|$ACCOUNT|"$'\n'* ]] || sam add account "$ACCOUNT" Cluster="$CLUSTER" QOS=normal,debug DefaultQOS=normal
  for u in $USERS; do
    [[ $assoc == *$'\n'"$CLUSTER|$ACCOUNT|$u"$'\n'* ]] || sam add user "$u" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" QOS=normal,debug DefaultQOS=normal
    [[ ${out[user]} == *$'\n'"$u|$ACCOUNT"$'\n'* ]] || sam modify user "$u" set DefaultAccount="$ACCOUNT"
  done
  echo "$want" >"$RUN/accounting.ok"
}

start_slurm() {
  local f n pid cur i
  # stop our slurmds whose node is gone or whose config changed first: ports follow node order
  for f in "$RUN"/slurmd-*.pid; do
    [[ -e $f ]] || continue
    n=${f#"$RUN"/slurmd-}; n=${n%.pid}; cur=""; read -r cur 2>/dev/null <"$RUN/slurmd-$n.cfg" || true
    [[ " ${NODES[*]} " == *" $n "* && $cur == "$SLURM_CFG" ]] && continue
    pid=$(ourpid "slurmd-$n" slurmd) && { log "stopping slurmd -N $n (node removed or config changed)"; stop_pid "$pid" slurmd; }
    rm -f "$f" "$RUN/slurmd-$n.cfg"
  done
  ensure slurmctld slurmctld "$SLURM_CFG" "$RUN/slurmctld.pid" "$SLOG/slurmctld.log" "listening $CTLD_PORT" slurmctld
  for i in "${!NODES[@]}"; do
    n=${NODES[i]}
    ensure "slurmd-$n" slurmd "$SLURM_CFG" "$RUN/slurmd-$n.pid" "$SLOG/slurmd-$n.log" "listening $((NODE_PORT0 + i))" slurmd -N "$n"
  done
}

nodes_ok() { # every configured node is usable (idle/mixed/allocated/completing, not drained or down)
  local st; st=$(timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null) || return 1
  awk -v want="${NODES[*]}" '$2 ~ /^(idle|mixed|allocated|completing)$/ { ok[$1] = 1 }
    END { n = split(want, w, " "); for (i = 1; i <= n; i++) if (!ok[w[i]]) exit 1 }' <<<"$st"
}

wait_nodes() {
  wait_until 3 nodes_ok && return 0
  local bad; bad=$(sinfo -h -N -t drain,down,fail -o %N 2>/dev/null | sort -u | paste -sd, -) || true
  if [[ -n $bad ]]; then  # e.g. drained by an earlier run: resume them once
    log "resuming $bad: $(sinfo -h -N -t drain,down,fail -o '%N %E' | sort -u | paste -sd';' -)"
    scontrol update NodeName="$bad" State=RESUME || true
  fi
  wait_until 30 nodes_ok || die "nodes not usable: $(sinfo -h -N -o '%N=%T(%E)' | paste -sd' ' -)" \
    "$SLOG/slurmctld.log" "$SLOG/slurmd-${NODES[0]}.log"
}

smoke_test() {
  local out n=$((GPU_NODES < 2 ? GPU_NODES : 2))
  # on a busy cluster the test would only wait for resources (other people's jobs survive restarts)
  [[ -z $(squeue -h -o %A 2>/dev/null) ]] || { log "smoke test skipped: jobs are queued"; return 0; }
  if ((n)); then
    out=$(timeout 60 srun -p gpu -N$n --gres=gpu:1 -t 1 bash -c 'echo "$SLURMD_NODENAME:${CUDA_VISIBLE_DEVICES:-none}"' 2>&1) \
      || die "smoke test srun -p gpu -N$n --gres=gpu:1 failed: $out" "$SLOG/slurmctld.log"
    log "smoke test: srun -p gpu -N$n --gres=gpu:1 -> $(sort <<<"$out" | paste -sd' ' -) (node:CUDA_VISIBLE_DEVICES)"
  fi
  if ((CPU_NODES)); then
    out=$(timeout 60 srun -p cpu -N1 -t 1 printenv SLURMD_NODENAME 2>&1) || die "smoke test srun -p cpu failed: $out" "$SLOG/slurmctld.log"
    log "smoke test: srun -p cpu -> $out"
  fi
}

cmd_up() {
  local v; for v in GPU_NODES CPU_NODES GPUS NODE_CPUS NODE_MEM PORT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number (got '${!v}')"; done
  ((GPUS > 0 && NODE_CPUS > 0 && ${#NODES[@]} > 0)) || die "need at least one node, one GPU per gpu node and one CPU"
  [[ $GPU_TYPE =~ ^[a-z0-9_-]+$ ]] || die "LOCAL_SLURM_GPU_TYPE must be a lower-case GRES type such as h100 (got '$GPU_TYPE')"
  [[ $MAX_ARRAY =~ ^[1-9][0-9]*$ ]] || die "LOCAL_SLURM_MAX_ARRAY_SIZE must be a whole number of at least 1 (got '$MAX_ARRAY')"
  lock
  install_packages
  # slurmctld must resolve its own name, and slurmdbd's DbdHost is localhost
  getent hosts localhost >/dev/null || { echo "127.0.0.1 localhost" >>/etc/hosts; log "added '127.0.0.1 localhost' to /etc/hosts"; }
  getent hosts "$HOST" >/dev/null || { echo "127.0.1.1 $HOST" >>/etc/hosts; log "added '127.0.1.1 $HOST' to /etc/hosts"; }
  check_foreign
  write_configs
  start_base
  start_accounting
  start_slurm
  wait_nodes
  [[ -n $STARTED && $SMOKE != 0 ]] && smoke_test
  log "cluster '$CLUSTER' is up (started:${STARTED:- nothing})"
  sinfo -o '%10P %.5a %.11l %.4D %.6t %12G %N'
}

# ---------------------------------------------------------------- down
cancel_jobs() { # cancel every job; SIGKILL job processes still alive after 2 s instead of waiting KillWait (30 s)
  local jobs
  jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | paste -sd' ' -) || return 0
  [[ -n $jobs ]] || return 0
  log "cancelling jobs: $jobs"
  timeout 20 scancel $jobs 2>/dev/null || true
  wait_until 2 '[[ -z $(procs slurmstepd) ]]' || kill_descendants $(procs slurmstepd | cut -d' ' -f1)
  wait_until 20 '[[ -z $(timeout 5 squeue -h -o %A) ]]' || log "WARNING: jobs still listed: $(squeue -h -o '%A %T' | paste -sd' ' -)"
}
kill_descendants() { # SIGKILL every descendant of the given pids (the job processes under slurmstepd)
  local -A kids=(); local d s ppid pid queue=("$@") victims=()
  for d in /proc/[0-9]*; do
    read -r s 2>/dev/null <"$d/stat" || continue
    read -r _ ppid _ <<<"${s##*) }"; kids[$ppid]+=" ${d#/proc/}"
  done
  while ((${#queue[@]})); do
    pid=${queue[0]}; queue=("${queue[@]:1}")
    for d in ${kids[$pid]:-}; do victims+=("$d"); queue+=("$d"); done
  done
  ((${#victims[@]})) && { log "killing leftover job processes: ${victims[*]}"; kill -KILL "${victims[@]}" 2>/dev/null; }; return 0
}

cmd_down() {
  [[ -d $RUN ]] || { log "nothing to stop"; return 0; }
  lock
  ourpid slurmctld slurmctld >/dev/null && cancel_jobs
  local f
  for f in "$RUN"/slurmd-*.pid; do [[ -e $f ]] && stop_ours "$(basename "$f" .pid)" slurmd; done
  stop_ours slurmctld slurmctld
  stop_ours slurmdbd slurmdbd
  if ((PURGE)); then
    sql -e 'SELECT 1' >/dev/null 2>&1 || start_base  # dropping the database needs MariaDB
    log "purge: dropping database $DB and slurmctld/slurmd state"
    sql -e "DROP DATABASE IF EXISTS $DB" || die "cannot drop $DB"
    find "$LIB/slurmctld" "$LIB/slurmd" -mindepth 1 -delete 2>/dev/null || true
    rm -f "$RUN/accounting.ok"
  fi
  stop_ours mariadbd mariadbd
  stop_ours munged munged
  local left; left=$(procs 'slurmctld|slurmd|slurmdbd|slurmstepd|mariadbd|munged' | paste -sd' ' -)
  [[ -z $left ]] || log "left running (not started by this script): $left"
  log "down"
}

# ---------------------------------------------------------------- status
cmd_status() {
  local name comm pid rc=0 i
  for name in munged mariadbd slurmdbd slurmctld "${NODES[@]/#/slurmd-}"; do
    comm=${name%%-*}
    if pid=$(ourpid "$name" "$comm"); then printf '%-12s running (pid %s)\n' "$name" "$pid"
    elif [[ -n $(procs "$comm") ]]; then printf '%-12s not started by this script; running: %s\n' "$name" "$(procs "$comm" | cut -d' ' -f1 | paste -sd' ' -)"
    else printf '%-12s not running\n' "$name"; [[ $comm != slurm* ]] || rc=1; fi
  done
  if command -v sinfo >/dev/null && timeout 5 scontrol ping >/dev/null 2>&1; then
    sinfo -o '%10P %.5a %.11l %.4D %.6t %12G %N'
    nodes_ok || { echo "some nodes are not usable"; rc=1; }
  else echo "slurmctld does not answer"; rc=1; fi
  exit $rc  # (not return: a failing function would trip the ERR trap)
}

# ---------------------------------------------------------------- main
usage() { sed -n '2,/^set -E/{/^set -E/d; s/^# \{0,1\}//; p}' "$0"; }
REPLACE=0 PURGE=0 CMD=${1:-}
(($#)) && shift
for a; do
  case $CMD/$a in up/--replace) REPLACE=1 ;; down/--purge) PURGE=1 ;; *) usage >&2; die "unknown argument '$a' for '$CMD'" ;; esac
done
case $CMD in
  -h|--help|help) usage ;;
  up|down) [[ $EUID -eq 0 ]] || die "must run as root"; "cmd_$CMD" ;;
  status) cmd_status ;;
  *) usage >&2; exit 2 ;;
esac
