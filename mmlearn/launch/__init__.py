"""Launching runs: sweeps, local subprocesses, Slurm jobs, result tables."""
