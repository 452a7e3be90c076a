"""The launch layer: from Hydra overrides to runs. Composition and pre-flight checks, run directories, sweeps (run
names, thread budgets, stopping, the summary), SLURM, and the Hydra task function that hands a run to the run layer."""
