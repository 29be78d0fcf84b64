#!/usr/bin/env bash
# SkyPilot -> the local SLURM cluster, hermetic and loopback only (the tests' fixture; usable by hand).
#
#   scripts/skypilot_fixture.sh install   one-time, cached: the cloud venv (hpc-launch[cloud]) and the wheelhouse
#                                         SkyPilot's remote runtime is installed from, without an index
#   scripts/skypilot_fixture.sh up        fresh HOME, sshd on loopback, API server, `sky check slurm`
#   scripts/skypilot_fixture.sh env       the environment to run SkyPilot (or hpc-launch --backend skypilot) in:
#                                         eval "$(scripts/skypilot_fixture.sh env)"
#   scripts/skypilot_fixture.sh down      tear down the fixture's clusters, stop the API server and sshd
#   scripts/skypilot_fixture.sh jail-log  what the network jail refused (empty when all went well)
#
# Every SkyPilot process (API server, SDK, CLI, and the runtime on the "remote" nodes) runs under a network jail:
# a sitecustomize that refuses and logs every connect to a non-loopback address, with cloud metadata probes,
# usage collection and version checks off, catalogs pre-written and allowed_clouds: [slurm]. The "remote" is this
# machine: sshd on 127.0.0.1 with throwaway keys; nss_wrapper gives root a fixture home (SkyPilot's bootstrap
# writes ~root/...); the SLURM node names resolve to 127.0.0.1 (/etc/hosts); uv and Python 3.10 come from local files.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SKY_VERSION=0.14.1
CLOUD_VENV=${HPC_CLOUD_VENV:-/opt/hpc-launch/cloud-venv}
WHEELHOUSE=${HPC_SKY_WHEELHOUSE:-/opt/hpc-launch/sky-wheelhouse}
FX=${HPC_SKY_FIXTURE:-/tmp/hpc-sky-fixture}
SKY_HOME=$FX/home
SSHD_PORT=${HPC_SKY_SSHD_PORT:-2231}
API_PORT=${HPC_SKY_API_PORT:-28581}
SLURM_NAME=localslurm
NSSW=/usr/lib/x86_64-linux-gnu/libnss_wrapper.so
HOSTS_MARK="# SLURM nodes of the local cluster (scripts/skypilot_fixture.sh)"
quiet() { grep -v '^WARNING: Location' || true; }  # pip's noise about absent local indexes (pipefail keeps pip's status)
log() { printf '[skypilot-fixture %4ss] %s\n' "$SECONDS" "$*" >&2; }

python310() {  # SkyPilot's remote runtime wants Python 3.10; no download here, so a local one
  local p
  for p in "${HPC_PYTHON310:-}" /root/.pyenv/versions/3.10*/bin/python3.10 /usr/bin/python3.10; do
    [[ -n $p && -x $p ]] && "$p" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null \
      && { echo "$p"; return; }
  done
  echo "skypilot fixture: no python3.10 found (pyenv install 3.10 or apt-get install python3.10)" >&2
  return 1
}

install() {
  if [[ ! -x $CLOUD_VENV/bin/sky ]]; then
    log "cloud venv $CLOUD_VENV: hpc-launch[cloud,test]"
    python3 -m venv "$CLOUD_VENV"
    "$CLOUD_VENV/bin/pip" install -q -e "$ROOT[cloud,test]" uv 2>&1 | quiet
    [[ -x $CLOUD_VENV/bin/sky ]]
  fi
  if [[ ! -f $WHEELHOUSE/.complete ]]; then
    local py; py=$(python310)
    log "runtime wheelhouse $WHEELHOUSE (skypilot[slurm,remote]==$SKY_VERSION for $py)"
    mkdir -p "$WHEELHOUSE"
    "$py" -m pip download -q -d "$WHEELHOUSE" "skypilot[slurm,remote]==$SKY_VERSION" pip setuptools wheel \
      2>&1 | quiet
    local sdist  # sdist-only dependencies (python-hostlist): build their wheels once
    for sdist in "$WHEELHOUSE"/*.tar.gz; do
      [[ -e $sdist ]] || continue
      "$py" -m pip wheel -q --no-deps --use-pep517 -w "$WHEELHOUSE" "$sdist" 2>&1 | quiet
    done
    touch "$WHEELHOUSE/.complete"
  fi
}

env_lines() {  # the jailed SkyPilot environment, as export lines
  cat <<ENV
export HOME=$SKY_HOME
export PATH=$CLOUD_VENV/bin:\$PATH
export SKYPILOT_API_SERVER_LOCAL_PORT=$API_PORT
export SKYPILOT_DISABLE_USAGE_COLLECTION=1
export AWS_EC2_METADATA_DISABLED=true
export PYTHONPATH=$FX/netjail
export NETJAIL_LOG=$FX/logs/netjail.log
ENV
}

write_jail() {
  mkdir -p "$FX/netjail"
  cat > "$FX/netjail/sitecustomize.py" <<'PY'
"""Network jail of the SkyPilot fixture: connects to non-loopback addresses are refused and logged."""
import ipaddress
import os
import socket
import time
import traceback

_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def _outside(sock: socket.socket, address: object) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        return False
    host = str(address[0]).split("%")[0]
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: only if it resolves to loopback alone
        try:
            found = {info[4][0].split("%")[0] for info in socket.getaddrinfo(host, None)}
        except OSError:
            return True
        return not all(ipaddress.ip_address(a).is_loopback for a in found)


def _refuse(address: object) -> None:
    with open(os.environ.get("NETJAIL_LOG", "/tmp/netjail.log"), "a") as out:
        with open("/proc/self/cmdline", "rb") as cmd:
            argv = cmd.read().replace(b"\0", b" ").decode(errors="replace")[:300]
        out.write(f"{time.strftime('%H:%M:%S')} pid={os.getpid()} REFUSED {address} cmd={argv}\n"
                  + "".join(traceback.format_stack()[:-2]))


def connect(self: socket.socket, address: object) -> None:
    if _outside(self, address):
        _refuse(address)
        raise ConnectionRefusedError(111, f"network jail: {address} is not loopback")
    return _connect(self, address)


def connect_ex(self: socket.socket, address: object) -> int:
    if _outside(self, address):
        _refuse(address)
        return 111
    return _connect_ex(self, address)


socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
PY
}

prepare() {
  local py310; py310=$(python310)
  rm -rf "$SKY_HOME"
  mkdir -p "$FX"/{bin,shim,loginhome,logs,remote-tmp} "$SKY_HOME"/{.ssh,.slurm,.sky/catalogs/v8/common}
  chmod 700 "$SKY_HOME/.ssh"
  : > "$FX/logs/netjail.log"
  write_jail
  [[ -f $FX/hostkey ]] || ssh-keygen -q -t ed25519 -N '' -f "$FX/hostkey"
  ssh-keygen -q -t ed25519 -N '' -f "$SKY_HOME/.ssh/slurm_key"
  cp "$SKY_HOME/.ssh/slurm_key.pub" "$FX/authorized_keys"
  # nss_wrapper: root's home is the fixture's (SkyPilot's bootstrap writes ~root/.bashrc, .ssh, .sky_clusters).
  sed "s#^root:\([^:]*\):0:0:\([^:]*\):[^:]*:#root:\1:0:0:\2:$FX/loginhome:#" /etc/passwd > "$FX/passwd"
  cp /etc/group "$FX/group"
  # The SLURM node names resolve to 127.0.0.1 (the runtime resolves each node of the allocation). In /etc/hosts,
  # not nss_wrapper's hosts file: with that, getaddrinfo("127.0.0.1") fails and torch's rendezvous never connects.
  local nodes; nodes=$(sinfo -h -N -o %N | sort -u | tr '\n' ' ')
  grep -q "$HOSTS_MARK" /etc/hosts || echo "127.0.0.1 $nodes $HOSTS_MARK" >> /etc/hosts
  # Login shells: the curl shim and Python 3.10 first on PATH.
  printf 'export PATH="%s/shim:%s:$PATH"\n[ -f ~/.bashrc ] && . ~/.bashrc\n' "$FX" "$(dirname "$py310")" \
    > "$FX/loginhome/.profile"
  ln -sf "$CLOUD_VENV/bin/uv" "$FX/bin/uv"
  cat > "$FX/shim/curl" <<SHIM
#!/bin/bash
# The fixture has no internet: the uv installer is answered with the local uv, every other URL refused.
echo "\$(date +%T) curl \$*" >> $FX/logs/curl-shim.log
case "\$*" in
  *astral.sh/uv/install.sh*) echo 'mkdir -p "\$UV_INSTALL_DIR" && ln -sf $FX/bin/uv "\$UV_INSTALL_DIR/uv"' ;;
  *) echo "curl: no network in the SkyPilot fixture: \$*" >&2; exit 7 ;;
esac
SHIM
  chmod +x "$FX/shim/curl"
  local remote_env="LD_PRELOAD=$NSSW NSS_WRAPPER_PASSWD=$FX/passwd NSS_WRAPPER_GROUP=$FX/group"
  remote_env+=" UV_OFFLINE=1 UV_NO_INDEX=1 UV_FIND_LINKS=$WHEELHOUSE"
  remote_env+=" UV_PYTHON_DOWNLOADS=never SKYPILOT_DISABLE_USAGE_COLLECTION=1 AWS_EC2_METADATA_DISABLED=true"
  remote_env+=" PYTHONPATH=$FX/netjail NETJAIL_LOG=$FX/logs/netjail.log"
  cat > "$FX/sshd_config" <<CONF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $FX/hostkey
PidFile $FX/sshd.pid
AuthorizedKeysFile $FX/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxSessions 200
MaxStartups 200:30:400
Subsystem sftp internal-sftp
SetEnv $remote_env
CONF
  cat > "$SKY_HOME/.slurm/config" <<CONF
Host $SLURM_NAME
  HostName 127.0.0.1
  Port $SSHD_PORT
  User root
  IdentityFile $SKY_HOME/.ssh/slurm_key
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
CONF
  cat > "$SKY_HOME/.sky/config.yaml" <<CONF
allowed_clouds: [slurm]
slurm:
  cluster_configs:
    $SLURM_NAME:
      tmpdir: $FX/remote-tmp
CONF
  # No version check against the package index, no catalog download.
  echo "{\"release_version\": \"$SKY_VERSION\", \"cached_at\": 4102444800}" > "$SKY_HOME/.sky/version_cache.json"
  printf 'AcceleratorName,Clouds\nH100,"['"'"'Slurm'"'"']"\nA100,"['"'"'Slurm'"'"']"\n' \
    > "$SKY_HOME/.sky/catalogs/v8/common/accelerators.csv"
  printf 'GPU,MemoryGB,Manufacturer\nH100,80,NVIDIA\nA100,40,NVIDIA\n' > "$SKY_HOME/.sky/catalogs/v8/common/metadata.csv"
}

up() {
  [[ -x $CLOUD_VENV/bin/sky && -f $WHEELHOUSE/.complete ]] || install
  [[ -e $NSSW ]] || { echo "skypilot fixture: libnss-wrapper missing (apt-get install libnss-wrapper)" >&2; exit 1; }
  down 2>/dev/null || true
  prepare
  eval "$(env_lines)"
  # sshd first: the API server's ssh ControlMaster keeps the environment of the session it opened.
  mkdir -p /run/sshd
  env LD_PRELOAD=$NSSW NSS_WRAPPER_PASSWD="$FX/passwd" NSS_WRAPPER_GROUP="$FX/group" \
    setsid /usr/sbin/sshd -D -e -f "$FX/sshd_config" > "$FX/logs/sshd.log" 2>&1 < /dev/null &
  for _ in $(seq 50); do ss -ltn | grep -q "127.0.0.1:$SSHD_PORT " && break; sleep 0.1; done
  log "sky api start (port $API_PORT)"
  sky api start > "$FX/logs/api-start.log" 2>&1
  log "sky check slurm"
  sky check slurm > "$FX/logs/check.log" 2>&1 || true
  grep -q "$SLURM_NAME: .*enabled" "$FX/logs/check.log" \
    || { echo "skypilot fixture: Slurm infra not enabled; see $FX/logs/check.log" >&2; exit 1; }
  log "up: HOME=$SKY_HOME, infra slurm/$SLURM_NAME"
}

down() {
  [[ -d $SKY_HOME/.sky ]] || return 0
  eval "$(env_lines)"
  if ss -ltn | grep -q "127.0.0.1:$API_PORT "; then
    local clusters
    clusters=$(sky status --no-show-managed-jobs --no-show-services --no-show-pools 2>/dev/null \
      | awk '$2 ~ /^Slurm/ {print $1}' || true)
    for c in $clusters; do log "sky down $c"; sky down -y "$c" > /dev/null 2>&1 || true; done
    sky api stop > /dev/null 2>&1 || true
  fi
  [[ -f $FX/sshd.pid ]] && kill "$(cat "$FX/sshd.pid")" 2>/dev/null || true
  local hash socket  # ssh ControlMasters the API server left behind: ask each to exit
  hash=$(cat "$SKY_HOME/.sky/user_hash" 2>/dev/null || true)
  for socket in /tmp/sky_ssh_"$hash"/*/*; do
    [[ -n $hash && -S $socket ]] && ssh -o ControlPath="$socket" -O exit "$SLURM_NAME" 2>/dev/null || true
  done
}

jail_log() { cat "$FX/logs/netjail.log" 2>/dev/null || true; }

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) down ;;
  env) env_lines ;;
  jail-log) jail_log ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
