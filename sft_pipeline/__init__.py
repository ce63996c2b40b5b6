"""sft-pipeline: staged supervised fine-tuning (TRL's SFTTrainer with LoRA, QLoRA or full
fine-tuning) driven by YAML recipes. The layers, top to bottom: cli.py (and train_worker.py, the
entry point of one training process); orchestration/, chat/, serving/, publish/, report/; stages/
(one module per stage and the registry); training/; data/ and model/; rundir/ (the run
directory); config.py, errors.py, progress.py. Each imports only the layers below it
(tests/codebase/test_layers.py), and docs/architecture.md says what each holds."""
