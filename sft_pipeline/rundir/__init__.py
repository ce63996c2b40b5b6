"""The run directory, the lowest layer every other one may use: the manifest, each stage's
fingerprint (from the declarations it is given), atomic stage output, the artifacts a stage
declares and the one accessor that reads them, atomic file writes and the writer lock. It knows
no stage by name: the registry (stages/__init__.py) hands it the declarations."""
