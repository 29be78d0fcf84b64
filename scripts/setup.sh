#!/usr/bin/env bash
# Set up hpc-launch on a fresh Debian/Ubuntu machine as root, idempotently:
#   1. Debian packages the launcher and the local payload need (python3-venv, g++ for DeepSpeed's JIT op)
#   2. a virtualenv at $HPC_VENV (default /opt/hpc-launch/venv) with hpc-launch and pytest
#   3. the CPU ML stack (torch, LLaMA-Factory, DeepSpeed) and the tiny local model in build/tiny
#   4. SkyPilot's cloud venv and runtime wheelhouse, cached (scripts/skypilot_fixture.sh install)
#   5. the local SLURM cluster (scripts/local_slurm.sh up)
# Usage: scripts/setup.sh            (everything)
#        scripts/setup.sh --no-ml    (skip step 3: enough for the unit tests)
set -euo pipefail
cd "$(dirname "$0")/.."
HPC_VENV=${HPC_VENV:-/opt/hpc-launch/venv}
WITH_ML=1
for arg in "$@"; do
  case $arg in
    --no-ml) WITH_ML=0 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done
log() { printf '[setup %4ss] %s\n' "$SECONDS" "$*"; }

# g++: DeepSpeed's JIT op; openssh-server, proxychains4: the --tunnel test; postgresql: the registry test;
# libnss-wrapper, rsync: the SkyPilot fixture (scripts/skypilot_fixture.sh).
packages=(python3 python3-venv python3-pip g++ git procps openssh-client openssh-server proxychains4 postgresql
          libnss-wrapper rsync)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done
if (( ${#missing[@]} )); then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The tests start their own sshd and PostgreSQL on loopback: keep the packages from starting system ones.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get -q update >/dev/null
  apt-get -y -q install --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x $HPC_VENV/bin/python ]]; then
  log "creating virtualenv $HPC_VENV"
  mkdir -p "$(dirname "$HPC_VENV")"
  python3 -m venv "$HPC_VENV"
fi
log "installing hpc-launch (editable) with its test and registry extras into $HPC_VENV"
"$HPC_VENV/bin/pip" install -q -e ".[test,registry]"
# Wheels of the runtime and [test] dependencies: the packaging test installs the built package into a fresh
# venv from here, without an index.
# .complete holds the requirements it was filled for: a changed list fills it again.
WHEELHOUSE=${HPC_WHEELHOUSE:-$(dirname "$HPC_VENV")/wheelhouse}
WHEEL_REQUIREMENTS=("jinja2>=3.1" "python-dotenv>=1.0" "pyyaml>=6.0" "huggingface_hub>=1.0" "pytest>=8"
                    "psycopg[binary]>=3.1" "hypothesis>=6" setuptools)
if [[ $(cat "$WHEELHOUSE/.complete" 2>/dev/null) != "${WHEEL_REQUIREMENTS[*]}" ]]; then
  log "wheelhouse $WHEELHOUSE"
  "$HPC_VENV/bin/pip" download -q -d "$WHEELHOUSE" "${WHEEL_REQUIREMENTS[@]}"
  printf '%s' "${WHEEL_REQUIREMENTS[*]}" > "$WHEELHOUSE/.complete"
fi

if (( WITH_ML )); then
  log "ML stack"
  bash scripts/install_ml_stack.sh "$HPC_VENV"
  [[ -f build/tiny/model/config.json ]] || "$HPC_VENV/bin/python" examples/make_tiny_model.py --out build/tiny
fi

log "SkyPilot: cloud venv and runtime wheelhouse (cached)"
bash scripts/skypilot_fixture.sh install

log "local SLURM cluster"
bash scripts/local_slurm.sh up
log "done: activate with 'source $HPC_VENV/bin/activate'"
