"""How commands run: the run directory (manifest, fingerprints, atomic stage output, the writer
lock), the pipeline that runs a stage inside them, checks before any work, stage logs, and what a
failed write or a leaked signal handler would otherwise cost."""
