import json
import os
import subprocess
import sys

import pytest

from sft_pipeline.config import Recipe
from sft_pipeline.rundir.directory import RunDirectory, StageError
from sft_pipeline.rundir.files import LockedError, write_json
from sft_pipeline.rundir.stage_spec import STATS
from sft_pipeline.stages import ORDER, open_run_directory


def _complete(run: RunDirectory, stage: str) -> None:
    with run.stage_output(stage) as out:
        write_json(out / "summary.json", {"ok": 1})


def _completed_then_changed(tmp_path, key: str) -> RunDirectory:
    """Every stage complete for the default recipe; the same run directory seen with `key` changed."""
    from sft_pipeline.config import _set_dotted, recipe_from_dict

    run = open_run_directory(tmp_path, Recipe())
    for stage in ORDER:
        _complete(run, stage)
    tree = json.loads(Recipe().model_dump_json())
    dotted, value = key.split("=")
    _set_dotted(tree, dotted, value)
    return open_run_directory(tmp_path, recipe_from_dict(tree))


@pytest.mark.parametrize("key, stale_from", [
    ("data.max_records=5", "load"),
    ("template.kind=seed", "template"),
    ("template.control_text=keep", "template"),  # read by template; pack follows through its upstream
    ("pack.seq_length=128", "pack"),
    ("lora.r=8", "prepare"),
    ("train.learning_rate=0.5", "train"),
    ("merge.tolerance=0.1", "merge"),
])
def test_changing_a_key_makes_exactly_that_stage_and_downstream_stale(tmp_path, key, stale_from):
    changed = _completed_then_changed(tmp_path, key)
    downstream = {
        "load": {"load", "template", "pack", "train", "merge"},
        "template": {"template", "pack", "train", "merge"},
        "pack": {"pack", "prepare", "train", "merge"},  # prepare's memory estimate uses seq_length
        "prepare": {"prepare", "train", "merge"},
        "train": {"train", "merge"},
        "merge": {"merge"},
    }[stale_from]
    states = {s: changed.stage_state(s) for s in ORDER}
    assert {s for s, v in states.items() if v == "stale"} == downstream
    assert {s for s, v in states.items() if v == "complete"} == set(ORDER) - downstream


@pytest.mark.parametrize("key", ["train.seed=7", "train.precision=fp32", "pack.strategy=wrapped",
                                 "train.per_device_eval_batch_size=2", "train.eval_strategy=no"])
def test_what_prepare_reads_outside_its_sections_makes_it_stale(tmp_path, key):
    """prepare initialises LoRA from train.seed, takes its dtype from train.precision and estimates
    memory from the attention (pack.strategy) and evaluation: a change must not reuse its output."""
    changed = _completed_then_changed(tmp_path, key)
    assert changed.stage_state("prepare") == "stale"
    assert changed.stage_state("load") == "complete"


def test_failed_stage_leaves_nothing_that_looks_complete(tmp_path):
    run = open_run_directory(tmp_path, Recipe())
    _complete(run, "load")
    with pytest.raises(RuntimeError):
        with run.stage_output("load") as out:
            (out / "half-written").write_text("x")
            raise RuntimeError("killed")
    # the old complete output is untouched, the partial one is not promoted
    assert run.stage_state("load") == "complete"
    assert not (tmp_path / "load" / "half-written").exists()


def test_stage_dir_refuses_missing_upstream_with_the_command_to_run(tmp_path):
    run = open_run_directory(tmp_path, Recipe())
    with pytest.raises(StageError, match=r"stage 'pack' has not run .*sft-pipeline pack"):
        run.stage_dir("pack")


def test_artifact_is_a_declared_file_of_a_complete_stage(tmp_path):
    run = open_run_directory(tmp_path, Recipe())
    _complete(run, "load")
    assert run.artifact("load", STATS) == tmp_path / "load" / "stats.json"
    assert run.artifact("load", "train") == tmp_path / "load" / "train"  # a declared folder ("train/")


def test_artifact_reaches_under_a_declared_folder(tmp_path):
    run = open_run_directory(tmp_path, Recipe())
    _complete(run, "merge")
    assert run.artifact("merge", "model/config.json") == tmp_path / "merge" / "model" / "config.json"
    with pytest.raises(KeyError, match=r"stage merge declares no artifact 'adapter/adapter_config.json'"):
        run.artifact("merge", "adapter/adapter_config.json")  # train's folder, not merge's


def test_artifact_matches_a_may_write_pattern(tmp_path):
    run = open_run_directory(tmp_path, Recipe())
    _complete(run, "export")
    assert run.artifact("export", "model-Q4_K_M.gguf") == tmp_path / "export" / "model-Q4_K_M.gguf"  # "model-*.gguf"
    with pytest.raises(KeyError, match=r"stage export declares no artifact 'model-Q4_K_M.bin'"):
        run.artifact("export", "model-Q4_K_M.bin")


def test_artifact_refuses_an_undeclared_name_naming_the_stage_and_the_name(tmp_path):
    """A misspelt or renamed artifact is the reader's bug: said first, whatever the stage's state."""
    run = open_run_directory(tmp_path, Recipe())
    _complete(run, "prepare")
    with pytest.raises(KeyError, match=r"stage prepare declares no artifact 'prepared.json' \(it writes: prepare.json, "):
        run.artifact("prepare", "prepared.json")
    with pytest.raises(KeyError, match=r"stage pack declares no artifact 'metrics.json'"):
        run.artifact("pack", "metrics.json")  # pack has not run: the name is still what is wrong


def test_artifact_of_a_missing_or_stale_stage_is_refused_as_stage_dir_refuses(tmp_path):
    run = open_run_directory(tmp_path, Recipe())
    with pytest.raises(StageError, match=r"^stage 'pack' has not run in .*: run `sft-pipeline pack <recipe>` first$"):
        run.artifact("pack", STATS)
    changed = _completed_then_changed(tmp_path, "pack.seq_length=128")
    with pytest.raises(StageError, match=r"^stage 'pack' is stale \(the recipe changed\) in "):
        changed.artifact("pack", STATS)
    with pytest.raises(StageError) as from_stage_dir:
        changed.stage_dir("pack")
    with pytest.raises(StageError) as from_artifact:
        changed.artifact("pack", "train")
    assert str(from_artifact.value) == str(from_stage_dir.value)
    # fresh=False: the folder as it is, for readers that want an earlier output; the name still checked
    assert changed.artifact("pack", STATS, fresh=False) == tmp_path / "pack" / "stats.json"
    with pytest.raises(KeyError, match=r"stage pack declares no artifact 'stat.json'"):
        changed.artifact("pack", "stat.json", fresh=False)


def test_manifest_records_fingerprint_and_versions(tmp_path):
    run = open_run_directory(tmp_path, Recipe())
    _complete(run, "load")
    rec = json.loads((tmp_path / "manifest.json").read_text())["stages"]["load"]
    assert rec["status"] == "complete" and rec["fingerprint"] == run.fingerprint("load")
    assert "torch" in rec["versions"] and rec["summary"] == {"ok": 1}
    assert (tmp_path / "recipe.yaml").is_file()


def test_second_writer_is_refused_with_the_holder(tmp_path):
    run = open_run_directory(tmp_path, Recipe())
    with run.locked("sft-pipeline train demo.yaml"):
        with pytest.raises(LockedError, match=rf"pid {os.getpid()} .*sft-pipeline train demo.yaml"):
            with open_run_directory(tmp_path, Recipe()).locked("other"):
                pass
    with run.locked("again"):  # released on exit
        pass


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    code = (
        "import os; from sft_pipeline.stages import open_run_directory; from sft_pipeline.config import Recipe\n"
        f"r = open_run_directory({str(tmp_path)!r}, Recipe())\n"
        "with r.locked('victim'): os._exit(0)\n"  # dies holding the lock
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert "victim" in (tmp_path / ".lock").read_text()
    with open_run_directory(tmp_path, Recipe()).locked("survivor"):
        assert "survivor" in (tmp_path / ".lock").read_text()
