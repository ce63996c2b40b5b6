"""Publishing a finished run to the Hugging Face Hub: what goes up (stage.py), the model card
that describes it (card.py) and the upload itself (upload.py). It reads run directories and
imports no stage module: a run is published from its files, as a later job on another box would."""
