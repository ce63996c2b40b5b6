"""Running commands over a run directory, above the stages: a stage brought up to date (lock,
preflight, log, atomic swap, process state put back), the whole pipeline, sweeps and their
results, comparisons of run directories."""
