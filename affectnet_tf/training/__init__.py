"""Training: the run configuration, the fit and worker loops, distribution, the run folder and its backups."""
