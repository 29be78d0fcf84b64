#!/usr/bin/env python3
"""Register a trained model in the team's Supabase model registry: a thin wrapper of `python -m hpc.registry`.

  python scripts/manual_db_push.py --run_summary EXPERIMENT/run_summary.json [--dry_run]
  python scripts/manual_db_push.py --hf-model-id org/name --base-model Qwen/Qwen3-8B --dataset-name org/ds \
      --training-type SFT --wandb-run entity/project/run_id [--agent-name A] [--dry_run]

See `--help` and hpc/registry.py. Works from any directory (the repository root is put on sys.path).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpc.registry import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
