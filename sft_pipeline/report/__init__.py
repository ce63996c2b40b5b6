"""`sft-pipeline report R`: a run's curves as PNG files and one self-contained HTML page (the
plots inlined, the stage table, before/after metrics and answers) under <run dir>/report/."""
