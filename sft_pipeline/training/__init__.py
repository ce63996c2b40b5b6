"""The pieces the train stage assembles around TRL's SFTTrainer: SFTConfig arguments, callbacks,
the trainer subclass and its loss, attention for packed rows, collation, dropout, checkpoints,
the memory estimate and plan, and the metrics a run records."""
