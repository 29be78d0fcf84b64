"""hpc-launch: turn ML work into correct SLURM jobs on any cluster."""

from pathlib import Path

#: Repository root: cluster_profiles/, dotenv/ and sbatch_templates/ live here.
ROOT = Path(__file__).resolve().parent.parent
