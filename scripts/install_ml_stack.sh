#!/usr/bin/env bash
# Install the lean CPU ML stack (torch, HF libs, DeepSpeed, LLaMA-Factory, lm-eval) into a virtualenv.
#
# Usage: scripts/install_ml_stack.sh VENV_DIR
#
# Creates VENV_DIR with the `python3` on PATH if it does not exist. Idempotent: if the stack
# already imports at the pinned versions, exits after one quick check. Never installs
# torchvision (its local build is CUDA-only and breaks transformers' imports).
set -euo pipefail

# Pins (see the ML payload notes): LLaMA-Factory 0.9.5 caps these; torch is always named so
# pip keeps the CPU build instead of pulling a CUDA torch plus nvidia-* wheels.
TORCH_VERSION=2.13.0
TRANSFORMERS_VERSION=5.6.0
DATASETS_VERSION=4.0.0
ACCELERATE_VERSION=1.11.0
PEFT_VERSION=0.18.1
TRL_VERSION=0.24.0
TORCHDATA_VERSION=0.11.0
DEEPSPEED_VERSION=0.19.8
LLAMAFACTORY_VERSION=0.9.5
TORCHAUDIO_VERSION=2.11.0
# lm-evaluation-harness: core install only (no [hf] extra: torch/transformers/accelerate/peft
# are pinned above; no [vllm] extra: GPU-only, installed on the cluster side if wanted).
LM_EVAL_VERSION=0.4.13

log() { printf '[install_ml_stack] %s\n' "$*"; }
die() { printf '[install_ml_stack] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ $# -ne 1 || "$1" == -h || "$1" == --help ]]; then
    echo "usage: $0 VENV_DIR" >&2
    exit 2
fi
VENV_DIR=$1
START=$SECONDS
finish() { log "$1 (elapsed $((SECONDS - START)) s)"; }

if [[ ! -x "$VENV_DIR/bin/python" ]]; then
    command -v python3 >/dev/null || die "python3 not found on PATH; cannot create $VENV_DIR"
    log "creating virtualenv $VENV_DIR with $(command -v python3) ($(python3 -V 2>&1))"
    python3 -m venv "$VENV_DIR" || die "python3 -m venv $VENV_DIR failed"
fi
PY="$VENV_DIR/bin/python"

# One import of everything a text SFT job needs, with version checks. Exit 0 = ready.
check_stack() {
    "$PY" - <<EOF
import importlib.util, sys
import torch, torchaudio, transformers, datasets, accelerate, peft, trl, deepspeed
import llamafactory, llamafactory.data.mm_plugin  # mm_plugin imports torchaudio unconditionally
import lm_eval, lm_eval.models.huggingface  # the hf backend lm_eval --model hf uses
want = {"torch": "$TORCH_VERSION", "transformers": "$TRANSFORMERS_VERSION",
        "datasets": "$DATASETS_VERSION", "accelerate": "$ACCELERATE_VERSION",
        "peft": "$PEFT_VERSION", "trl": "$TRL_VERSION", "deepspeed": "$DEEPSPEED_VERSION",
        "llamafactory": "$LLAMAFACTORY_VERSION", "lm_eval": "$LM_EVAL_VERSION"}
bad = [f"{m}=={sys.modules[m].__version__} (want {v})" for m, v in want.items()
       if sys.modules[m].__version__.split("+")[0] != v]
if torch.version.cuda is not None:
    bad.append(f"torch is a CUDA build ({torch.__version__})")
if importlib.util.find_spec("torchvision") is not None:
    bad.append("torchvision is installed (CUDA-only build here; breaks transformers)")
if bad:
    sys.exit("mismatch: " + "; ".join(bad))
print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"deepspeed {deepspeed.__version__}, llamafactory {llamafactory.__version__}, "
      f"lm_eval {lm_eval.__version__}")
EOF
}

log "checking $VENV_DIR for an existing stack"
CHECK_ERR=$(mktemp)
trap 'rm -f "$CHECK_ERR"' EXIT
if CHECK_OUT=$(check_stack 2>"$CHECK_ERR"); then
    log "found $(tail -n 1 <<<"$CHECK_OUT")"
    finish "stack already installed; nothing to do"
    exit 0
fi
log "not ready ($(tail -n 1 "$CHECK_ERR")); installing"

PIP=("$PY" -m pip install --no-input --progress-bar off)

log "step 1/3: torch==$TORCH_VERSION (CPU), HF libraries, deepspeed==$DEEPSPEED_VERSION, lm-eval==$LM_EVAL_VERSION"
DS_BUILD_OPS=0 "${PIP[@]}" \
    "torch==$TORCH_VERSION" \
    "transformers==$TRANSFORMERS_VERSION" \
    "datasets==$DATASETS_VERSION" \
    "accelerate==$ACCELERATE_VERSION" \
    "peft==$PEFT_VERSION" \
    "trl==$TRL_VERSION" \
    "torchdata==$TORCHDATA_VERSION" \
    "deepspeed==$DEEPSPEED_VERSION" \
    "lm-eval==$LM_EVAL_VERSION" \
    omegaconf pyyaml \
    || die "pip install of torch/HF/deepspeed/lm-eval failed"

log "step 2/3: llamafactory==$LLAMAFACTORY_VERSION and torchaudio==$TORCHAUDIO_VERSION (--no-deps)"
"${PIP[@]}" --no-deps "llamafactory==$LLAMAFACTORY_VERSION" "torchaudio==$TORCHAUDIO_VERSION" \
    || die "pip install --no-deps llamafactory/torchaudio failed"

log "step 3/3: removing torchaudio's CUDA-only extension libraries (pure-Python import suffices)"
TA_DIR=$("$PY" -c 'import importlib.util as u; print(u.find_spec("torchaudio").submodule_search_locations[0])') \
    || die "cannot locate the torchaudio package"
rm -fv "$TA_DIR"/lib/*.so

if "$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torchvision") is None)'; then
    log "torchvision found (pulled in by something); uninstalling it"
    "$PY" -m pip uninstall -y torchvision
fi

log "verifying the installed stack"
check_stack || die "stack installed but the import/version check failed (see above)"
finish "done: $VENV_DIR ($(du -sh "$VENV_DIR" | cut -f1))"
