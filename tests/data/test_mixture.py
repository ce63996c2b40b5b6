"""data.sources: several sources in one recipe, each counted on its own, mixed with datasets'
interleave (weights) or concatenate (fractions), seeded, and what the mixing leaves or repeats
counted; the recipe rules, preflight and inspect around it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from helpers import write_jsonl

from sft_pipeline.config import DataConfig, RecipeError, recipe_from_dict, recipe_to_yaml
from sft_pipeline.data.arrow_io import folder_schema, iter_batches
from sft_pipeline.data.sources import SourceError
from sft_pipeline.stages import load
from sft_pipeline.stages.load import LOAD_SCHEMA, WIDE_SCHEMA


def qa(tag: str, n: int, bad: int = 0) -> list[dict]:
    """n deeplake_lima records tagged by source, and `bad` with an empty answer."""
    return [{"question": f"{tag} q{i}", "answer": f"{tag} a{i}"} for i in range(n)] + \
        [{"question": f"{tag} bad{i}", "answer": ""} for i in range(bad)]


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    chat = [{"messages": [{"role": "user", "content": [{"type": "text", "text": f"chat q{i}"}, {"type": "image", "image": "x"}]},
                          {"role": "assistant", "content": f"chat a{i}"}]} for i in range(10)]
    return {"a": write_jsonl(tmp_path / "a.jsonl", qa("a", 40, bad=2)), "b": write_jsonl(tmp_path / "b.jsonl", qa("b", 10)),
            "chat": write_jsonl(tmp_path / "chat.jsonl", chat)}


def run_load(out: Path, **data) -> dict:
    load.produce(SimpleNamespace(recipe=SimpleNamespace(data=DataConfig(**{"eval_split": None, **data}))), out)
    return json.loads((out / "stats.json").read_text())


def rows(folder: Path) -> list[dict]:
    return [r for b in iter_batches(folder) for r in b.to_pylist()]


def tag(row: dict) -> str:
    return row["messages"][0]["content"].split()[0]


def test_weighted_sources_are_interleaved_seeded_and_each_counted(tmp_path, files):
    specs = [{"source": str(files["a"]), "weight": 3}, {"source": str(files["b"]), "weight": 1, "name": "b"}]
    stats = run_load(tmp_path / "out", sources=specs)["train"]
    got = rows(tmp_path / "out" / "train")
    a, b = stats["sources"][str(files["a"])], stats["sources"]["b"]
    assert (a["read"], a["kept"], a["dropped"]) == (42, 40, {"empty_turn": 2})  # each source's own counts
    assert (b["read"], b["kept"], b["dropped"]) == (10, 10, {})
    # what the mixture holds is what the counts say, source by source
    assert a["in_mixture"] == sum(tag(r) == "a" for r in got) and b["in_mixture"] == sum(tag(r) == "b" for r in got)
    assert b["in_mixture"] == 10 and b.get("not_drawn", 0) == 0  # first_exhausted: b ran out first...
    assert a["not_drawn"] == 40 - a["in_mixture"] > 0  # ...and the rest of a is counted, not lost
    assert stats["kept"] == len(got) and stats["read"] == 52
    assert stats["dropped"] == {"empty_turn": 2, "not_drawn": a["not_drawn"]}
    assert stats["kept"] + sum(stats["dropped"].values()) == stats["read"]
    assert stats["mixing"] == {"how": "interleave", "seed": 42, "stopping_strategy": "first_exhausted",
                               "probabilities": [0.75, 0.25]}
    again = run_load(tmp_path / "again", sources=specs)
    assert rows(tmp_path / "again" / "train") == got and again["train"] == stats  # seeded
    run_load(tmp_path / "other", sources=specs, split_seed=7)
    assert [tag(r) for r in rows(tmp_path / "other" / "train")] != [tag(r) for r in got]


def test_all_exhausted_draws_every_record_and_counts_the_repeats(tmp_path, files):
    specs = [{"source": str(files["a"]), "weight": 1}, {"source": str(files["b"]), "weight": 1}]
    stats = run_load(tmp_path / "out", sources=specs, stopping_strategy="all_exhausted")["train"]
    got = rows(tmp_path / "out" / "train")
    assert {r["messages"][0]["content"] for r in got} >= {f"{t} q{i}" for t, n in (("a", 40), ("b", 10)) for i in range(n)}
    b = stats["sources"][str(files["b"])]
    assert b["repeated"] == b["in_mixture"] - 10 > 0 and stats["repeated"] == b["repeated"]
    assert stats["kept"] + sum(stats["dropped"].values()) == stats["read"] + stats["repeated"]


def test_fractions_take_a_seeded_share_of_each_source_in_its_order(tmp_path, files):
    specs = [{"source": str(files["a"]), "fraction": 0.25}, {"source": str(files["b"])}]
    stats = run_load(tmp_path / "out", sources=specs)["train"]
    got = rows(tmp_path / "out" / "train")
    assert [tag(r) for r in got] == ["a"] * 10 + ["b"] * 10  # concatenated, a's share first
    taken = [int(r["messages"][0]["content"].split("q")[1]) for r in got[:10]]
    assert taken == sorted(taken) and taken != list(range(10))  # a seeded choice, in the source's order
    own = stats["sources"][str(files["a"])]
    assert (own["in_mixture"], own["not_taken"]) == (10, 30)
    assert stats["dropped"] == {"empty_turn": 2, "not_taken": 30}
    assert stats["mixing"] == {"how": "concatenate", "seed": 42, "fractions": [0.25, 1.0]}


def test_a_fraction_that_takes_nothing_is_refused(tmp_path, files):
    with pytest.raises(SourceError, match=r"^data\.sources\[1\]\.fraction: 0\.01 of its 10 kept records takes none$"):
        run_load(tmp_path / "out", sources=[{"source": str(files["a"])}, {"source": str(files["b"]), "fraction": 0.01}])


def test_a_source_with_no_usable_record_is_named(tmp_path, files):
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"question": "q", "answer": " "}])
    with pytest.raises(SourceError) as info:
        run_load(tmp_path / "out", sources=[{"source": str(files["a"])}, {"source": str(empty)}])
    assert str(info.value) == f"data.sources[1]: {empty} (split train): no usable records ({{'empty_turn': 1}})"
    assert not (tmp_path / "out" / "train").exists()


def test_each_source_keeps_its_format_and_parts_counts_and_schemas_are_joined(tmp_path, files):
    reasoned = write_jsonl(tmp_path / "r.jsonl", [{"messages": [{"role": "user", "content": "r q"},
                                                                {"role": "assistant", "content": "r a", "reasoning": "why"}]}])
    stats = run_load(tmp_path / "out", sources=[{"source": str(files["chat"]), "format": "messages"},
                                                {"source": str(reasoned)}, {"source": str(files["b"])}])["train"]
    chat = stats["sources"][str(files["chat"])]
    assert chat["format"] == "messages" and chat["parts_dropped"] == {"image": 10}
    assert stats["sources"][str(files["b"])]["format"] == "deeplake_lima"
    assert folder_schema(tmp_path / "out" / "train") == WIDE_SCHEMA  # one source's reasoning widens the mixture
    got = rows(tmp_path / "out" / "train")
    assert [r["messages"][1]["reasoning"] for r in got if tag(r) == "r"] == ["why"]
    assert all(r["messages"][1]["reasoning"] is None for r in got if tag(r) != "r")
    plain = run_load(tmp_path / "plain", sources=[{"source": str(files["a"])}, {"source": str(files["b"])}])
    assert folder_schema(tmp_path / "plain" / "train") == LOAD_SCHEMA and plain["train"]["kept"] == 50


def test_eval_from_every_sources_split_or_a_carve_of_the_mixture(tmp_path):
    for name in ("x", "y"):
        write_jsonl(tmp_path / name / "train.jsonl", qa(name, 6))
        write_jsonl(tmp_path / name / "test.jsonl", qa(name + "t", 2))
    specs = [{"source": str(tmp_path / "x"), "weight": 1}, {"source": str(tmp_path / "y"), "weight": 1}]
    stats = run_load(tmp_path / "out", sources=specs, eval_split="test")
    assert stats["eval"]["mixing"]["how"] == "concatenate"  # eval is every source's whole split
    assert sorted(tag(r) for r in rows(tmp_path / "out" / "eval")) == ["xt"] * 2 + ["yt"] * 2
    single = write_jsonl(tmp_path / "single.jsonl", qa("s", 6))
    with pytest.raises(SourceError, match=r"^data\.eval_split: data\.sources\[1\] \(.*single\.jsonl\) has no 'test' split; set data\.eval_size"):
        run_load(tmp_path / "bad", sources=[specs[0], {"source": str(single), "weight": 1}], eval_split="test")
    stats = run_load(tmp_path / "carved", sources=[specs[0], {"source": str(single), "weight": 1}], eval_split="test", eval_size=3)
    assert stats["eval"]["carved_from"] == "train" and stats["eval"]["kept"] == 3
    assert stats["train"]["kept_after_eval_carve"] == stats["train"]["kept"] - 3
    assert len(rows(tmp_path / "carved" / "train")) + 3 == stats["train"]["kept"]


def test_recipe_rules_and_the_frozen_recipe(tmp_path):
    with pytest.raises(RecipeError, match="data.source and data.sources: give one"):
        recipe_from_dict({"data": {"source": "x.jsonl", "sources": [{"source": "a.jsonl"}]}})
    recipe = recipe_from_dict({"data": {"sources": [{"source": "a.jsonl", "weight": 2}, {"source": "b.jsonl", "weight": 1}]}})
    frozen = yaml.safe_load(recipe_to_yaml(recipe))
    assert "source" not in frozen["data"]  # the unread default is not written, so the frozen recipe reads back
    assert recipe_from_dict(frozen) == recipe
    plain = yaml.safe_load(recipe_to_yaml(recipe_from_dict({})))
    # a recipe without sources or reasoning dumps as before: runs made before the keys stay up to date
    assert "sources" not in plain["data"] and "stopping_strategy" not in plain["data"]
    assert "reasoning" not in plain["template"]
    inline = recipe_from_dict({"template": {"reasoning": "inline"}})
    assert recipe_from_dict(yaml.safe_load(recipe_to_yaml(inline))).template.reasoning == "inline"


def test_preflight_checks_every_source(tmp_path, files):
    from sft_pipeline.orchestration.preflight import check

    recipe = recipe_from_dict({"run_dir": str(tmp_path / "run"), "data": {
        "eval_split": None, "sources": [{"source": str(files["a"])}, {"source": str(tmp_path / "missing.jsonl")}]},
        "train": {"eval_strategy": "no"}})
    with pytest.raises(RecipeError, match=r"^data\.sources\[1\]\.source: .*missing\.jsonl: no such file or folder$"):
        check(recipe, ["load"])


def test_inspect_shows_each_source_and_the_mixing(tmp_path, files, tiny_model_dir):
    from typer.testing import CliRunner

    from sft_pipeline.cli import app

    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump({
        "name": "mixed", "run_dir": str(tmp_path / "run"), "model": {"ref": str(tiny_model_dir)}, "pack": {"seq_length": 64},
        "data": {"eval_split": None, "eval_size": 2, "sources": [
            {"source": str(files["a"]), "fraction": 0.5, "name": "half-of-a"}, {"source": str(files["chat"]), "format": "messages"}]},
        "train": {"eval_strategy": "no"}}))
    result = CliRunner().invoke(app, ["inspect", str(path), "--samples", "0"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    row = next(line for line in lines if "half-of-a" in line)
    assert "42" in row and "40 (20 in the mixture, not taken 20)" in row and "empty_turn: 2" in row
    chat = next(line for line in lines if "chat.jsonl" in line)
    assert "10 (10 in the mixture)" in chat and "parts dropped: image 10" in chat
    assert any("concatenated (datasets.concatenate_datasets, fractions [0.5, 1.0], seed 42)" in line for line in lines)
