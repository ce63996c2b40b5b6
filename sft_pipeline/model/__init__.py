"""The model and the machine it runs on: model references and loading, what the hardware runs
fast, the precision plan, building the prepared (LoRA, maybe NF4) model, generation, merging."""
