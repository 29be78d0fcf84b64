"""hpc-launch: turn ML work into correct SLURM jobs on any cluster."""

from pathlib import Path

__version__ = "0.2.0"

#: The directory that holds the package (the repository root in a checkout): `{hpc_root}` in profile commands.
ROOT = Path(__file__).resolve().parent.parent


def data_dir(name: str) -> Path:
    """A folder of package data (cluster_profiles, dotenv, ...), inside the installed package."""
    return Path(__file__).resolve().parent / name
