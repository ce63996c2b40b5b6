"""Stage 1, load: kept/dropped counting with the invariant kept + dropped == read, the cap,
format detection, and the stage run through the pipeline's run directory."""

import json

import pytest
from helpers import lima_rows, write_jsonl

from sft_pipeline.data.sources import SourceError
from sft_pipeline.rundir.files import read_json
from sft_pipeline.stages import open_run_directory
from sft_pipeline.stages.load import load_split

GOOD = {"conversations": ["q", "a"], "source": "s"}


def invariant(stats):
    return stats["kept"] + sum(stats["dropped"].values()) == stats["read"]


@pytest.fixture
def mixed(tmp_path):
    """A jsonl mixing usable and unusable LIMA records (line numbers matter)."""
    lines = [
        GOOD,                                                # 1 kept
        {"conversations": ["only a question"]},              # 2 ends_on_user
        None,                                                # 3 blank line: skipped, not read
        {"conversations": ["q2", "a2", "q3", "a3"]},         # 4 kept (no source)
        {"conversations": ["q", "   "]},                     # 5 empty_turn
        ["not", "a", "mapping"],                             # 6 not_a_mapping
        {"source": "x"},                                     # 7 missing_field:conversations
        {"conversations": ["q"]},                            # 8 ends_on_user
        {"conversations": ["q", "a", "q"]},                  # 9 ends_on_user
        {"conversations": ["q", 5]},                         # 10 wrong_type:conversations
        {"conversations": ["x"]},                            # 11 ends_on_user (4th: no example)
        {"conversations": ["q3", "a3"], "source": 7},        # 12 kept, non-string source -> ""
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join("\n" if r is None else json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["auto", "lima"])
def test_mixed_records_are_counted_by_reason(mixed, fmt):
    kept, stats = load_split(str(mixed), "train", fmt, None)
    assert kept == [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "source": "s"},
        {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"},
                      {"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"}], "source": ""},
        {"messages": [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"}], "source": ""},
    ]
    assert stats["source"] == str(mixed) and stats["split"] == "train" and stats["format"] == "lima"
    assert stats["read"] == 11 and stats["kept"] == 3
    assert stats["dropped"] == {
        "empty_turn": 1,
        "ends_on_user": 4,
        "missing_field:conversations": 1,
        "not_a_mapping": 1,
        "wrong_type:conversations": 1,
    }
    assert list(stats["dropped"]) == sorted(stats["dropped"])
    assert invariant(stats)
    assert stats["dropped_examples"] == {
        "ends_on_user": [f"{mixed}:2", f"{mixed}:8", f"{mixed}:9"],  # at most three per reason
        "empty_turn": [f"{mixed}:5"],
        "not_a_mapping": [f"{mixed}:6"],
        "missing_field:conversations": [f"{mixed}:7"],
        "wrong_type:conversations": [f"{mixed}:10"],
    }


def test_stats_are_json_serializable(mixed):
    _, stats = load_split(str(mixed), "train", "auto", None)
    assert json.loads(json.dumps(stats)) == stats


def test_max_records_caps(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", lima_rows(12))
    kept, stats = load_split(str(path), "train", "auto", 5)
    assert stats["read"] == 5 and stats["kept"] == 5 and len(kept) == 5
    assert kept[-1]["messages"][0]["content"] == "What is 4 plus 4?"
    assert invariant(stats)


def test_max_records_counts_dropped_records_too(tmp_path):
    a, b, c = lima_rows(3)
    path = write_jsonl(tmp_path / "d.jsonl", [a, {"conversations": ["q"]}, b, c])
    kept, stats = load_split(str(path), "train", "lima", 3)
    assert stats["read"] == 3 and stats["kept"] == 2 and stats["dropped"] == {"ends_on_user": 1}


def test_max_records_does_not_read_past_the_cap(tmp_path):
    path = tmp_path / "d.jsonl"
    a, b = lima_rows(2)
    path.write_text(json.dumps(a) + "\n" + json.dumps(b) + "\n" + "this is not json\n", encoding="utf-8")
    _, stats = load_split(str(path), "train", "auto", 2)
    assert stats["read"] == 2 and stats["kept"] == 2


@pytest.mark.parametrize(
    "rows, fmt",
    [
        (lima_rows(2), "lima"),
        ([{"question": "q", "answer": "a", "source": "s"}], "deeplake_lima"),
        ([{"instruction": "i", "input": "", "output": "o"}], "alpaca"),
        ([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}], "messages"),
    ],
)
def test_format_auto_detection(tmp_path, rows, fmt):
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    kept, stats = load_split(str(path), "train", "auto", None)
    assert stats["format"] == fmt
    assert stats["kept"] == len(rows) == len(kept)


def test_auto_detection_uses_the_first_record_only(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}, GOOD])
    kept, stats = load_split(str(path), "train", "auto", None)
    assert stats["format"] == "deeplake_lima"
    assert stats["kept"] == 1 and stats["dropped"] == {"missing_field:question": 1}


def test_explicit_format_is_used_as_given(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", lima_rows(3))
    kept, stats = load_split(str(path), "train", "alpaca", None)
    assert kept == [] and stats["format"] == "alpaca"
    assert stats["dropped"] == {"missing_field:instruction": 3}


def test_first_record_with_unknown_columns_stops_with_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n" + json.dumps({"text": "hello"}) + "\n" + json.dumps(GOOD) + "\n", encoding="utf-8")
    with pytest.raises(SourceError) as info:
        load_split(str(path), "train", "auto", None)
    assert str(info.value).startswith(f"{path}:2: cannot tell the record shape from columns ['text']")


def test_first_record_not_an_object_stops_with_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [["q", "a"], GOOD])
    with pytest.raises(SourceError) as info:
        load_split(str(path), "train", "auto", None)
    assert str(info.value) == f"{path}:1: a record is a JSON object, got list"


def test_empty_source(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    kept, stats = load_split(str(path), "train", "auto", None)
    assert kept == [] and stats["read"] == 0 and stats["format"] is None and stats["dropped"] == {}


# ---- the stage through update_stage ------------------------------------------------------------

def test_load_stage_through_run_stage(recipe_factory):
    import datasets

    from sft_pipeline.orchestration.pipeline import update_stage

    recipe = recipe_factory()
    run = open_run_directory(recipe.resolved_run_dir(), recipe)
    assert run.stage_state("load") == "missing"
    assert update_stage(run, "load") is True

    stats = read_json(run.path / "load" / "stats.json")
    assert set(stats) == {"train", "eval"}
    assert {k: stats["train"][k] for k in ("split", "format", "read", "kept", "dropped")} == {
        "split": "train", "format": "lima", "read": 12, "kept": 12, "dropped": {}}
    assert {k: stats["eval"][k] for k in ("split", "format", "read", "kept", "dropped")} == {
        "split": "test", "format": "lima", "read": 4, "kept": 4, "dropped": {}}
    assert read_json(run.path / "load" / "summary.json") == {
        "train": {"kept": 12, "dropped": 0}, "eval": {"kept": 4, "dropped": 0}}

    train = datasets.load_from_disk(str(run.path / "load" / "train"))
    assert len(train) == 12 and train[0]["source"] == "math"
    assert [m["role"] for m in train[0]["messages"]] == ["user", "assistant", "user", "assistant"]
    assert len(datasets.load_from_disk(str(run.path / "load" / "eval"))) == 4

    record = read_json(run.manifest_path)["stages"]["load"]
    assert record["status"] == "complete"
    assert record["fingerprint"] == run.fingerprint("load")
    assert record["summary"] == {"train": {"kept": 12, "dropped": 0}, "eval": {"kept": 4, "dropped": 0}}
    assert run.stage_state("load") == "complete"
    assert not (run.path / ".partial" / "load").exists()

    assert update_stage(run, "load") is False  # up to date


def test_load_stage_with_no_usable_records_fails_and_records_nothing(recipe_factory, tmp_path):
    from sft_pipeline.orchestration.pipeline import update_stage

    bad = write_jsonl(tmp_path / "bad" / "train.jsonl", [{"conversations": ["q"]}] * 3)
    recipe = recipe_factory(data={"source": str(bad), "eval_split": None})
    run = open_run_directory(recipe.resolved_run_dir(), recipe)
    with pytest.raises(SourceError, match=r"no usable records \(\{'ends_on_user': 3\}\)"):
        update_stage(run, "load")
    assert run.stage_state("load") == "missing"
    assert not (run.path / "load").exists()


def test_sharegpt_prompt_completion_and_column_mapping(tmp_path):
    from sft_pipeline.stages.load import load_split

    sharegpt = [{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi?"},
                                   {"from": "gpt", "value": "Hello."}]}]
    pc = [{"prompt": "2+2?", "completion": "4"}]
    custom = [{"q": "Why?", "a": "Because."}]
    for rows, fmt, cols, expected in [
        (sharegpt, "sharegpt", None, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                                      {"role": "assistant", "content": "Hello."}]),
        (pc, "prompt_completion", None, [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]),
        (custom, "deeplake_lima", {"question": "q", "answer": "a"},
         [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Because."}]),
    ]:
        path = write_jsonl(tmp_path / f"{fmt}.jsonl", rows)
        kept, stats = load_split(str(path), "train", "auto", None, cols)
        assert stats["format"] == fmt and kept[0]["messages"] == expected


def test_duplicates_are_dropped_and_counted(tmp_path):
    from sft_pipeline.stages.load import load_split

    rows = lima_rows(3) + lima_rows(2)
    kept, stats = load_split(str(write_jsonl(tmp_path / "d.jsonl", rows)), "train", "auto", None)
    assert stats["kept"] == 3 and stats["dropped"] == {"duplicate": 2} and stats["read"] == 5


def test_seeded_eval_carve(tmp_path, recipe_factory):
    from sft_pipeline.orchestration.pipeline import update_stage
    from sft_pipeline.rundir.files import read_json
    from sft_pipeline.stages import open_run_directory

    src = write_jsonl(tmp_path / "all.jsonl", lima_rows(20))
    recipe = recipe_factory(data={"source": str(src), "eval_size": 0.25, "eval_split": "unused"})
    run = open_run_directory(recipe.resolved_run_dir(), recipe)
    update_stage(run, "load")
    stats = read_json(run.path / "load" / "stats.json")
    assert stats["eval"]["kept"] == 5 and stats["train"]["kept_after_eval_carve"] == 15
    import datasets

    train = datasets.load_from_disk(str(run.path / "load" / "train"))
    evals = datasets.load_from_disk(str(run.path / "load" / "eval"))
    assert not {str(m) for m in train["messages"]} & {str(m) for m in evals["messages"]}


def _load(recipe):
    from sft_pipeline.orchestration.pipeline import update_stage

    run = open_run_directory(recipe.resolved_run_dir(), recipe)
    update_stage(run, "load")
    return read_json(run.path / "load" / "stats.json")


def test_a_source_with_a_test_split_uses_it_even_with_eval_size(recipe_factory, lima_dir):
    stats = _load(recipe_factory(data={"source": str(lima_dir), "eval_size": 0.5}))
    assert stats["eval"]["split"] == "test" and stats["eval"]["kept"] == 4 and "carved_from" not in stats["eval"]
    assert stats["train"]["kept"] == 12 and "kept_after_eval_carve" not in stats["train"]


def test_a_single_file_is_never_read_again_as_its_own_test_split(tmp_path, recipe_factory):
    """One file has no test split: the default eval_split must not evaluate on the training rows."""
    src = write_jsonl(tmp_path / "all.jsonl", lima_rows(20))
    with pytest.raises(SourceError, match=r"^data.eval_split: .*all.jsonl has no 'test' split; set data.eval_size"):
        _load(recipe_factory(data={"source": str(src)}))
    stats = _load(recipe_factory(data={"source": str(src), "eval_size": 4}))
    assert stats["eval"]["carved_from"] == "train" and stats["eval"]["kept"] == 4
    assert stats["train"]["kept_after_eval_carve"] == 16


def test_has_split_by_source_kind(tmp_path, lima_dir):
    from sft_pipeline.data.sources import has_split

    assert has_split(str(lima_dir), "test") and not has_split(str(lima_dir), "validation")
    assert has_split(str(lima_dir / "{split}.jsonl"), "test") and not has_split(str(lima_dir / "{split}.jsonl"), "dev")
    assert has_split(str(lima_dir / "train.jsonl"), "test") is False  # one file: one undivided set
    assert has_split(str(lima_dir / "*.jsonl"), "test") is False
    assert has_split("bundled:lima_house_style", "test") is True
    (tmp_path / "dl" / "_deeplake_log").mkdir(parents=True)
    assert has_split(str(tmp_path / "dl"), "test") is False  # a Deep Lake dataset has no splits
