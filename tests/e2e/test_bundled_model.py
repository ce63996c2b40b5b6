"""The bundled SmolLM2-135M through every stage, then export: the demo recipe (what `make demo`
runs), shortened to two steps on 16 records. One run serves both tests: the six stages take most
of the time, and export only reads merge/model."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import adapter_changed

from sft_pipeline.orchestration.pipeline import update_stage, update_stages
from sft_pipeline.rundir.directory import RunDirectory
from sft_pipeline.rundir.files import read_json

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml"


@pytest.fixture(scope="module")
def bundled_run(tmp_path_factory) -> RunDirectory:
    from sft_pipeline.config import load_recipe

    recipe = load_recipe(DEMO, [
        f"run_dir={tmp_path_factory.mktemp('bundled') / 'run'}", "train.max_steps=2", "train.eval_strategy=no",
        "train.save_strategy=no", "data.max_records=16", "pack.seq_length=256", "tracking.tensorboard=false",
        "train.learning_rate=1e-4",  # two steps at the demo's 1e-3 can scramble a 135M model
        "export.verify_prompts=4"])
    return update_stages(recipe)


def test_bundled_model_end_to_end(bundled_run):
    """All six stages; the merged model loads and answers."""
    from sft_pipeline.model.generate import generate, prompt_text
    from sft_pipeline.model.loader import load_model, load_tokenizer

    run_dir = bundled_run
    assert adapter_changed(run_dir.path)
    assert read_json(run_dir.path / "merge" / "verify.json")["passed"]
    model = load_model(str(run_dir.path / "merge" / "model"))
    tok = load_tokenizer(str(run_dir.path / "merge" / "model"))
    settings = run_dir.recipe.generate.model_copy(update={"max_new_tokens": 12, "batch_size": 1})
    answer = generate(model, tok, [prompt_text(run_dir.recipe, "What is the capital of France?", tok)], settings)[0]
    assert "Paris" in answer


def test_bundled_model_export_end_to_end(bundled_run):
    """Export after the short train: every file answers, F16's greedy tokens equal transformers'
    for 20 tokens of every eval prompt used (or differ only at near-ties)."""
    run_dir = bundled_run
    assert update_stage(run_dir, "export")
    verify = read_json(run_dir.path / "export" / "verify.json")
    f16 = verify["files"]["F16"]
    assert f16["real_disagreements"] == 0
    assert verify["f16_greedy_equal"] or all(d["near_tie"] for d in f16["disagreements"])
    for name in ("F16", "Q8_0", "Q4_K_M"):
        assert all(row["answer"].strip() for row in verify["files"][name]["prompts"]), name
    assert verify["files"]["Q8_0"]["agreement_rate"] > 0.8
