"""Scripts that run inside SLURM jobs: copied into the experiment directory, stdlib-only at import."""
