"""The six stages end to end on the tiny model (the bundled model's run is in tests/e2e)."""

import pytest
from helpers import adapter_changed as _adapter_changed

from sft_pipeline.orchestration.pipeline import update_stage, update_stages
from sft_pipeline.rundir.files import read_json
from sft_pipeline.stages import ORDER, open_run_directory


def test_all_stages_on_the_tiny_model(recipe_factory):
    from transformers import AutoModelForCausalLM

    recipe = recipe_factory(train={"eval_strategy": "epoch", "save_strategy": "epoch", "max_steps": 3})
    run = update_stages(recipe)
    assert all(run.stage_state(s) == "complete" for s in ORDER)
    assert _adapter_changed(run.path)
    metrics = read_json(run.path / "train" / "metrics.json")
    from sft_pipeline.model.hardware import detect
    from sft_pipeline.model.precision import plan

    assert metrics["steps"] == 3 and metrics["precision"] == plan(recipe, detect()).compute  # both: test_precision.py
    verify = read_json(run.path / "merge" / "verify.json")
    assert verify["passed"] and verify["max_abs_logit_gap"] <= verify["tolerance"]
    assert verify["max_relative_weight_gap"] < 1e-6  # merged W == W0 + (alpha/r) B A
    merged = AutoModelForCausalLM.from_pretrained(run.path / "merge" / "model")
    assert merged.num_parameters() > 0 and not hasattr(merged, "peft_config")
    assert (run.path / "merge" / "model" / "model.safetensors").is_file()
    # a second run is a no-op
    mtime = (run.path / "manifest.json").stat().st_mtime_ns
    update_stages(recipe)
    assert (run.path / "manifest.json").stat().st_mtime_ns == mtime


def test_qlora_merge_into_dequantized_base_matches_training(recipe_factory, tmp_path):
    """The adapter learned against NF4-dequantized weights: merging into those reproduces the
    trained model; merging into the originals drifts, and we record by how much. One training:
    merge.base is merge's key alone, so the second merge takes the same adapter."""
    gaps, trains = {}, []
    for base in ("dequantized", "original"):
        recipe = recipe_factory(model={"quantization": "nf4"}, merge={"base": base, "tolerance": 1e-3},
                                train={"max_steps": 2, "learning_rate": 1e-2})
        run = update_stages(recipe, until="merge")
        gaps[base] = read_json(run.path / "merge" / "verify.json")["max_abs_logit_gap"]
        trains.append(run.stage_record("train"))
    assert trains[0] == trains[1]  # the same record, times included: not trained again
    assert gaps["dequantized"] < 1e-3
    assert gaps["original"] > 10 * gaps["dequantized"]


def test_stages_leave_the_process_as_they_found_it(recipe_factory, monkeypatch):
    """train installs a SIGTERM handler and sets WANDB_*/TENSORBOARD_LOGGING_DIR; in one `run`,
    merge must get the default SIGTERM (a stop during merge is a crash, not 'saving a checkpoint')
    and none of train's environment. The same run shows train's trackers at work: TensorBoard's
    event files, and W&B's `auto` with no API key writing an offline run."""
    import os
    import signal

    from sft_pipeline.stages import merge

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for key in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "TENSORBOARD_LOGGING_DIR"):
        monkeypatch.delenv(key, raising=False)
    before = signal.getsignal(signal.SIGTERM)
    seen = {}
    real_merge = merge.produce

    def spy(run, out):
        seen["sigterm"] = signal.getsignal(signal.SIGTERM)
        seen["env"] = {k for k in os.environ if k.startswith("WANDB_") or k == "TENSORBOARD_LOGGING_DIR"}
        return real_merge(run, out)

    monkeypatch.setattr(merge, "produce", spy)
    run = update_stages(recipe_factory(tracking={"wandb": "auto", "tensorboard": True}))
    assert list((run.path / "train" / "wandb").glob("offline-run-*"))  # train did set W&B up, offline
    assert list((run.path / "train" / "tensorboard").rglob("events.out.tfevents.*"))
    assert seen == {"sigterm": before, "env": set()}
    assert signal.getsignal(signal.SIGTERM) is before


def test_run_checks_what_its_stages_read_once_and_a_stage_alone_is_still_checked(recipe_factory, monkeypatch, tmp_path):
    """update_stages runs preflight once, on every stage it will run, before the first starts (not
    again per stage); update_stage on its own checks its stage, so its refusals stay."""
    from sft_pipeline.config import RecipeError
    from sft_pipeline.orchestration import preflight

    checked: list[list[str]] = []
    real = preflight.check

    def counting(recipe, stages, *args, **kwargs):
        checked.append(list(stages))
        return real(recipe, stages, *args, **kwargs)

    monkeypatch.setattr(preflight, "check", counting)
    run = update_stages(recipe_factory(), until="pack")
    assert checked == [["load", "template", "pack"]]
    assert all(run.stage_state(s) == "complete" for s in ("load", "template", "pack"))

    checked.clear()
    update_stages(recipe_factory(), until="pack")  # all up to date: nothing of theirs is read again
    assert checked == [[]]

    checked.clear()
    assert update_stage(run, "pack", force=True)
    assert checked == [["pack"]]

    gone = recipe_factory(data={"source": str(tmp_path / "gone.jsonl")}, run_dir=str(tmp_path / "other"))
    with pytest.raises(RecipeError, match=r"^data\.source: .*gone\.jsonl: no such file or folder$"):
        update_stage(open_run_directory(gone.resolved_run_dir(), gone), "load")
    assert not (tmp_path / "other" / "load").exists()
