"""sft-pipeline push: the model card (its metadata survives a save and load), the staged folder,
and the upload to a local stub of the Hub (tests/stub_hub.py): what arrives is what was staged,
and the token travels in the Authorization header only, written nowhere."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from helpers import lima_rows, write_jsonl
from stub_hub import StubHub
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A run of the tiny model through merge and evaluate, with a report: everything a card shows."""
    from sft_pipeline.config import recipe_from_dict
    from sft_pipeline.orchestration.pipeline import update_stage
    from sft_pipeline.report.write import write_report
    from sft_pipeline.stages import open_run_directory

    root = tmp_path_factory.mktemp("push")
    write_jsonl(root / "data" / "train.jsonl", lima_rows(12, multi_every=4))
    write_jsonl(root / "data" / "test.jsonl", lima_rows(4))
    recipe = recipe_from_dict({
        "name": "t", "run_dir": str(root / "run"), "data": {"source": str(root / "data")},
        "model": {"ref": str(tiny_model_dir)}, "pack": {"seq_length": 64}, "lora": {"r": 4, "lora_alpha": 8},
        "train": {"max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1,
                  "eval_strategy": "no", "save_strategy": "no"},
        "tracking": {"wandb": "off", "tensorboard": False}, "generate": {"max_new_tokens": 4, "batch_size": 4},
        "evaluate": {"max_prompts": 2, "pairs": 1}})
    run = open_run_directory(recipe.resolved_run_dir(), recipe)
    for stage in ("load", "template", "pack", "prepare", "train", "merge", "evaluate"):
        update_stage(run, stage)
    write_report(run)
    return run.path


def _facts(**changes):
    from sft_pipeline.publish.card import RunFacts

    facts = RunFacts(
        name="demo", method="lora", model_ref="bundled:smollm2-135m-instruct", data_source="hf:tatsu-lab/alpaca",
        eval_source=None, recipe_yaml="name: demo\nlora:\n  r: 16\n",
        load_stats={"train": {"source": "hf:tatsu-lab/alpaca", "split": "train", "read": 10, "kept": 8,
                              "dropped": {"empty": 2}}},
        train_metrics={"steps": 14, "precision": "fp32", "train_runtime_s": 60.0, "tokens_per_second": 100.0,
                       "final_train_loss": 1.5},
        evaluation={"before": {"loss": {"eval": 2.0}, "perplexity": {"eval": 7.39}, "style_share": 0.0,
                               "harness": {"lima_house_style": {"word_perplexity": 30.0}}},
                    "after": {"loss": {"eval": 1.0}, "perplexity": {"eval": 2.72}, "style_share": 0.75,
                              "harness": {"lima_house_style": {"word_perplexity": 12.5}}}},
        eval_split="test", wandb={"run_id": "ab12cd34", "project": "sft-pipeline", "url": None})
    for key, value in changes.items():
        setattr(facts, key, value)
    return facts


def test_card_metadata_round_trip(tmp_path):
    """What the card's YAML says is what ModelCard.load reads back from the saved README.md, and
    it says the things the Hub indexes: the base's Hub id, the Hub dataset, the library, the
    licence, tags and evaluate's "after" figures as model-index results."""
    from huggingface_hub import ModelCard

    from sft_pipeline.publish.card import build_card

    card = build_card(_facts(), "adapter", "me/demo-lora", ["README.md", "adapter_model.safetensors"],
                      ["plots/loss.png"])
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.to_dict() == card.data.to_dict()
    data = loaded.data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and data.license == "apache-2.0"
    assert data.datasets == ["tatsu-lab/alpaca"] and data.library_name == "peft"
    assert {"sft", "trl", "lora"} <= set(data.tags)
    results = {(r.metric_name, r.dataset_split): r.metric_value for r in data.eval_results}
    assert results == {("eval loss", "eval"): 1.0, ("eval perplexity", "eval"): 2.72,
                       ("house style share", "test"): 0.75, ("lima_house_style word_perplexity", None): 12.5}
    body = loaded.text
    assert "![loss](plots/loss.png)" in body and "r: 16" in body and "ab12cd34" in body
    assert "| train | `hf:tatsu-lab/alpaca` (train) | 10 | 8 | empty: 2 |" in body
    assert "| lm-eval lima_house_style: word_perplexity | 30.0000 | 12.5000 |" in body


def test_card_for_a_merged_gguf_and_a_local_base():
    """merged: library transformers; gguf: the gguf tag; a local base and local data: nothing the
    Hub would link to, so no base_model or datasets; an online W&B run: its URL."""
    from sft_pipeline.publish.card import build_card

    merged = build_card(_facts(model_ref="/models/mine", data_source="data/train.jsonl"), "merged", "me/m", [], []).data
    assert merged.library_name == "transformers" and merged.base_model is None and merged.datasets is None
    gguf = build_card(_facts(wandb={"run_id": "x", "project": "p", "url": "https://wandb.ai/me/p/runs/x"}),
                      "gguf", "me/g", [], [])
    assert "gguf" in gguf.data.tags and gguf.data.library_name is None
    assert "W&B run: https://wandb.ai/me/p/runs/x" in gguf.text


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_push_uploads_the_staged_folder_and_the_token_only_in_the_header(trained_run, monkeypatch):
    from huggingface_hub import ModelCard, constants

    from sft_pipeline.cli import app

    token = "hf_" + secrets.token_hex(16)
    adapter_before = _files(trained_run / "train" / "adapter")  # PEFT's own README.md among them
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the stub serves the plain-HTTP path
    with StubHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", token)
        result = runner.invoke(app, ["push", str(trained_run), "--repo", "me/tiny-lora"])
    assert result.exit_code == 0, result.output
    staged = trained_run / "push" / "adapter"
    assert hub.seen.unknown == []
    assert [c["name"] for c in hub.seen.created] == ["tiny-lora"] and hub.seen.created[0]["organization"] == "me"
    (commit,) = hub.seen.commits
    assert commit["repo"] == "me/tiny-lora" and commit["others"] == []
    assert commit["files"] == _files(staged)  # every staged file, byte for byte, and nothing else
    assert {"README.md", "adapter_model.safetensors", "adapter_config.json"} <= set(commit["files"])
    assert any(name.startswith("plots/") and name.endswith(".png") for name in commit["files"])
    card = ModelCard(commit["files"]["README.md"].decode())
    assert card.data.library_name == "peft" and card.data.eval_results  # evaluate's figures went up
    # the token: in every request's Authorization header, in no body, and in no file of the run
    assert hub.seen.requests and all(r["authorization"] == f"Bearer {token}" for r in hub.seen.requests)
    assert not any(token.encode() in r["body"] for r in hub.seen.requests)
    leaks = [str(p) for p in trained_run.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert leaks == []
    record = json.loads((trained_run / "push" / "adapter.json").read_text())
    assert record["repo_id"] == "me/tiny-lora" and record["commit_url"].startswith(hub.url)
    assert "pushed: " in result.output
    assert _files(trained_run / "train" / "adapter") == adapter_before  # staging wrote nothing through its links


def test_push_without_a_token_is_one_line_and_stages_nothing(trained_run, monkeypatch, tmp_path):
    from sft_pipeline.cli import app

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a request would fail loudly
    before = sorted(p.name for p in (trained_run / "push").iterdir()) if (trained_run / "push").is_dir() else []
    result = runner.invoke(app, ["push", str(trained_run), "--repo", "me/x", "--what", "merged"])
    assert result.exit_code == 2
    assert "HF_TOKEN is not set" in result.output and len(result.output.strip().splitlines()) == 1
    after = sorted(p.name for p in (trained_run / "push").iterdir()) if (trained_run / "push").is_dir() else []
    assert after == before and "merged" not in after


def test_dry_run_needs_no_token_and_sends_nothing(trained_run, monkeypatch):
    from sft_pipeline.cli import app

    monkeypatch.delenv("HF_TOKEN", raising=False)
    with StubHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        result = runner.invoke(app, ["push", str(trained_run), "--repo", "me/tiny", "--what", "merged", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert hub.seen.requests == []
    staged = trained_run / "push" / "merged"
    assert (staged / "README.md").is_file() and (staged / "model.safetensors").is_file()
    assert "library_name: transformers" in result.output and "dry run: nothing uploaded" in result.output
    assert "model.safetensors" in result.output  # the file list
    assert result.output.count("- `README.md`") == 1  # the card's file list names each file once


def test_gguf_push_names_export_when_missing_and_takes_only_gguf_files_and_modelfile(trained_run, monkeypatch):
    import shutil

    from sft_pipeline.cli import app

    monkeypatch.delenv("HF_TOKEN", raising=False)
    export = trained_run / "export"
    shutil.rmtree(export, ignore_errors=True)
    result = runner.invoke(app, ["push", str(trained_run), "--repo", "me/g", "--what", "gguf", "--dry-run"])
    assert result.exit_code == 2 and "sft-pipeline export" in result.output
    assert len(result.output.strip().splitlines()) == 1
    export.mkdir()
    (export / "model-Q8_0.gguf").write_bytes(b"GGUF" + bytes(60))
    (export / "model-F16.gguf").write_bytes(b"GGUF" + bytes(90))
    (export / "Modelfile").write_text("FROM ./model-Q8_0.gguf\n")
    (export / "verify.json").write_text("{}")
    try:
        result = runner.invoke(app, ["push", str(trained_run), "--repo", "me/g", "--what", "gguf", "--dry-run"])
        assert result.exit_code == 0, result.output
        staged = _files(trained_run / "push" / "gguf")
        assert {n for n in staged if not n.startswith("plots/")} == {"model-Q8_0.gguf", "model-F16.gguf", "Modelfile",
                                                                      "README.md"}
        assert staged["model-F16.gguf"] == (export / "model-F16.gguf").read_bytes()
        assert "- gguf" in staged["README.md"].decode()
    finally:
        shutil.rmtree(export)


def test_train_keeps_an_online_wandb_url_for_the_card(tmp_path, monkeypatch):
    """The card's W&B link comes from tracking.json, where train keeps an online run's URL next
    to its id; an offline run has no URL to keep."""
    from types import SimpleNamespace

    from sft_pipeline.rundir.files import read_json
    from sft_pipeline.training.trackers import IDENTITY, Tracking, identity

    made = identity(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    Tracking._keep_url(SimpleNamespace(out=tmp_path), SimpleNamespace(url="https://wandb.ai/me/p/runs/x"))
    assert "wandb_url" not in read_json(tmp_path / IDENTITY)
    monkeypatch.setenv("WANDB_MODE", "online")
    Tracking._keep_url(SimpleNamespace(out=tmp_path), SimpleNamespace(url="https://wandb.ai/me/p/runs/x"))
    assert read_json(tmp_path / IDENTITY) == {**made, "wandb_url": "https://wandb.ai/me/p/runs/x"}
