"""Each stage's SPEC says everything it reads and writes: every stage runs on the tiny model with a
recipe that records each field read and a run directory that records each stage folder opened.

A read the SPEC does not declare is a staleness bug (the fingerprint misses it, so a changed key
reuses an old output); a declared read never made is a declaration that no test holds to. Both
fail here, and so does a SPEC with any one of its reads or upstream stages removed.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from types import FunctionType
from typing import Any, Callable

import pytest
import yaml
from helpers import lima_rows, write_jsonl
from pydantic import BaseModel

from sft_pipeline import stages
from sft_pipeline.config import Recipe, recipe_from_dict
from sft_pipeline.orchestration import pipeline
from sft_pipeline.orchestration.pipeline import update_stage
from sft_pipeline.rundir.directory import COMPLETE, RunDirectory
from sft_pipeline.rundir.stage_spec import StageSpec, within
from sft_pipeline.stages import open_run_directory

# what hands out a whole section (or the whole recipe) at once: pydantic's dumps and copies
WHOLE = {"model_dump", "model_dump_json", "model_copy", "dict", "json", "copy", "__copy__", "__deepcopy__"}


class RecipeView:
    """A recipe (or one section of it) as a stage sees it. Reading a field records its dotted path;
    reading the whole (model_dump, iteration, comparison, printing) records the section; a method
    of the recipe's own classes runs on the view, so the fields it reads are recorded too.
    Everything else passes through. Stages may not change the recipe."""

    def __init__(self, real: BaseModel, path: str, log: set[str]):
        object.__setattr__(self, "_real", real)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_log", log)

    def _whole(self) -> None:
        self._log.update([self._path] if self._path else type(self._real).model_fields)

    def __getattr__(self, name: str) -> Any:
        real = self._real
        if name in type(real).model_fields:
            key = f"{self._path}.{name}" if self._path else name
            value = getattr(real, name)
            if isinstance(value, BaseModel):
                return RecipeView(value, key, self._log)
            self._log.add(key)
            return value
        if name in WHOLE:
            self._whole()
            return getattr(real, name)
        own = _own_function(type(real), name)
        return own.__get__(self) if own is not None else getattr(real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a stage changed the recipe ({self._path or 'recipe'}.{name})")

    def __iter__(self):
        self._whole()
        return iter(self._real)

    def __eq__(self, other: object) -> bool:
        self._whole()
        return self._real == (other._real if isinstance(other, RecipeView) else other)

    def __repr__(self) -> str:
        self._whole()
        return repr(self._real)


def _own_function(cls: type, name: str) -> FunctionType | None:
    """A plain function `name` defined on the recipe's classes (not pydantic's), e.g. resolved_run_dir."""
    for klass in cls.__mro__:
        if klass is BaseModel:
            return None
        fn = vars(klass).get(name)
        if isinstance(fn, FunctionType):
            return fn
    return None


@dataclass
class Seen:
    """What one stage read in one run: recipe keys, and the stages whose folders (or state) it asked for."""

    reads: set[str] = field(default_factory=set)
    upstream: set[str] = field(default_factory=set)


class StageView:
    """The run directory as a stage sees it: the recipe through a RecipeView, and artifact /
    stage_dir / stage_state recorded. Nothing else of RunDirectory is offered (stages read other
    stages through these three; fingerprint, declarations and path pass through). The real
    RunDirectory keeps the real recipe, so fingerprints are not counted as reads."""

    def __init__(self, run: RunDirectory, seen: Seen):
        self._run, self._seen = run, seen
        self.recipe = RecipeView(run.recipe, "", seen.reads)

    def artifact(self, stage: str, name: str, fresh: bool = True) -> Path:
        self._seen.upstream.add(stage)
        return self._run.artifact(stage, name, fresh=fresh)

    def stage_dir(self, stage: str) -> Path:
        self._seen.upstream.add(stage)
        return self._run.stage_dir(stage)

    @property
    def declarations(self):
        """Passed through unrecorded: what every stage declares (train lists the fingerprints)."""
        return self._run.declarations

    def stage_state(self, stage: str) -> str:
        self._seen.upstream.add(stage)
        return self._run.stage_state(stage)

    def fingerprint(self, stage: str) -> str:
        """Passed through unrecorded: train gives W&B every stage's fingerprint as run metadata,
        which reads no stage's folder and changes nothing it writes."""
        return self._run.fingerprint(stage)

    @property
    def path(self) -> Path:
        """Passed through unrecorded: the run directory's own location (W&B's offline folders
        are found under it); a stage folder read through it would escape the check, so stage
        code reads other stages through stage_dir."""
        return self._run.path


def declaration_problems(spec: StageSpec, seen: Seen) -> list[str]:
    """The checker: what a stage read that its SPEC does not declare, as "read <key>" (a recipe
    key in neither reads nor ignores) and "upstream <stage>" (a folder not in upstream)."""
    return ([f"read {k}" for k in spec.undeclared_reads(seen.reads)]
            + [f"upstream {s}" for s in spec.undeclared_upstream(seen.upstream)])


def unexercised(spec: StageSpec, seen: list[Seen]) -> list[str]:
    """Declared reads, ignores and upstream stages that no run made: held to by nothing."""
    keys = set().union(*(s.reads for s in seen))
    ups = set().union(*(s.upstream for s in seen))

    def used(declared: str) -> bool:  # a read under it, or a whole-section read above it
        return any(within(k, declared) or within(declared, k) for k in keys)

    out = [f"{spec.name}: reads {d} never read" for d in spec.reads if not used(d)]
    out += [f"{spec.name}: ignores {d} never read" for d in spec.ignores if not used(d)]
    out += [f"{spec.name}: upstream {u} never opened" for u in spec.upstream if u not in ups]
    return out


# ---- the runs: each stage, in recipes that take the branches that read more ----------------

SCENARIOS: dict[str, dict[str, Any]] = {
    # chat template, bfd, an eval split evaluated each epoch, checkpoints, TensorBoard
    "chat-eval": {"train": {"eval_strategy": "epoch", "save_strategy": "epoch"}, "tracking": {"tensorboard": True}},
    # custom template with a system prompt, wrapped packing, no eval set, W&B offline
    "plain-no-eval": {"data": {"eval_split": None}, "template": {"kind": "custom", "system": "Be brief."},
                      "pack": {"strategy": "wrapped"}, "tracking": {"wandb": "offline"},
                      "evaluate": {"style_regex": None, "max_prompts": 2, "pairs": 1}},
    # QLoRA: NF4 base, merged into the dequantized weights; eval carved from train, evaluated by steps
    "nf4-carved": {"data": {"eval_split": "validation", "eval_size": 2}, "template": {"kind": "seed"},
                   "pack": {"strategy": "none", "overlong": "drop"}, "model": {"quantization": "nf4"},
                   "train": {"eval_strategy": "steps", "eval_steps": 1, "save_strategy": "steps", "save_steps": 1}},
    # full fine-tuning: no adapter (prepare saves none, train saves the model, merge exports it),
    # evaluated each epoch with checkpoints of the whole model
    "full": {"method": "full", "train": {"eval_strategy": "epoch", "save_strategy": "steps", "save_steps": 1}},
    # train in 2 processes (torchrun, gloo): the launcher reads the distributed section, rank 0 writes
    "two-processes": {"distributed": {"nproc_per_node": 2}, "train": {"save_strategy": "steps", "save_steps": 1}},
    # export on the model llama.cpp's converter takes (the tiny tokenizer's pre-tokenizer it refuses):
    # a custom template with a system prompt, two types, the Modelfile from the smaller
    "export": {"template": {"kind": "custom", "system": "Be brief."}, "export": {"types": ["f16", "q8_0"],
                                                                                   "verify_prompts": 1,
                                                                                   "verify_tokens": 4}},
}
# which model and stages each scenario runs: export needs the GGUF-able model, the others use the
# tiny one and run every stage but export
GGUF_SCENARIOS = {"export"}


def scenario_stages(name: str) -> tuple[str, ...]:
    return (*stages.ORDER, "export") if name in GGUF_SCENARIOS else tuple(s for s in stages.ALL if s != "export")


def _recipe(root: Path, model_dir: Path, data_dir: Path, overrides: dict[str, Any]) -> Recipe:
    tree: dict[str, Any] = {
        "name": "decl", "run_dir": str(root / "run"),
        "data": {"source": str(data_dir)}, "model": {"ref": str(model_dir)},
        "pack": {"seq_length": 64}, "lora": {"r": 4, "lora_alpha": 8},
        "train": {"max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1,
                  "eval_strategy": "no", "save_strategy": "no"},
        "tracking": {"wandb": "off", "tensorboard": False},
        "generate": {"max_new_tokens": 8, "batch_size": 4},
    }
    for section, values in overrides.items():
        tree[section].update(values) if section in tree else tree.__setitem__(section, values)
    return recipe_from_dict(tree)


@dataclass
class Observed:
    recipe: Recipe
    run: RunDirectory
    seen: dict[str, Seen]


def _recording_runner(seen: dict[str, Seen], real: Callable[[str], Callable]) -> Callable[[str], Callable]:
    def runner(stage: str) -> Callable:
        def run(run_dir: RunDirectory, out: Path) -> Any:
            seen[stage] = Seen()
            return real(stage)(StageView(run_dir, seen[stage]), out)  # what it returns: RecordedElsewhere or None
        return run
    return runner


@pytest.fixture(scope="module")
def observed(tmp_path_factory, tiny_model_dir, gguf_model_dir) -> dict[str, Observed]:
    """Every stage of every scenario (scenario_stages), run once through the pipeline with recording views."""
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_API_KEY", raising=False)
        for name, overrides in SCENARIOS.items():
            root = tmp_path_factory.mktemp(name)
            write_jsonl(root / "data" / "train.jsonl", lima_rows(12, multi_every=4))
            write_jsonl(root / "data" / "test.jsonl", lima_rows(4))
            model = gguf_model_dir if name in GGUF_SCENARIOS else tiny_model_dir
            recipe = _recipe(root, model, root / "data", overrides)
            seen: dict[str, Seen] = {}
            mp.setattr(pipeline, "_producer", _recording_runner(seen, stages.producer))
            run = open_run_directory(recipe.resolved_run_dir(), recipe)
            for stage in scenario_stages(name):
                assert update_stage(run, stage), f"{name}: {stage} did not run"
            results[name] = Observed(recipe, run, seen)
    return results


# ---- the declarations ------------------------------------------------------------------------

@pytest.mark.parametrize("stage", stages.ALL)
def test_every_read_is_declared(observed, stage):
    spec = stages.spec(stage)
    problems = [f"[{name}] {stage}: {p}, not declared in its SPEC" for name, o in observed.items() if stage in o.seen
                for p in declaration_problems(spec, o.seen[stage])]
    assert any(stage in o.seen for o in observed.values()), f"no scenario runs {stage}"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("stage", stages.ALL)
def test_every_declaration_is_exercised(observed, stage):
    problems = unexercised(stages.spec(stage), [o.seen[stage] for o in observed.values() if stage in o.seen])
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("stage", stages.ALL)
def test_the_checker_fails_when_any_declared_input_is_removed(observed, stage, monkeypatch):
    """Drop each read and each upstream stage from the real SPEC in turn, as an edit would: the
    checker, given what the stage really read, names what is now undeclared."""
    module = importlib.import_module(f"sft_pipeline.stages.{stage}")
    spec = module.SPEC
    removals = [("reads", key) for key in spec.reads] + [("upstream", up) for up in spec.upstream]
    assert removals
    for what, item in removals:
        monkeypatch.setattr(module, "SPEC", dataclasses.replace(spec, **{what: tuple(x for x in getattr(spec, what) if x != item)}))
        problems = {p for o in observed.values() if stage in o.seen
                    for p in declaration_problems(stages.spec(stage), o.seen[stage])}
        if what == "reads":
            named = {p for p in problems if p.startswith("read ") and within(p[len("read "):], item)}
        else:
            named = problems & {f"upstream {item}"}
        assert named, f"{stage}: removing {what} {item!r} went unnoticed"
        assert problems == named, f"{stage}: removing {item!r} reported {problems - named} too"


@pytest.mark.parametrize("stage", stages.ALL)
def test_writes_are_declared_and_written(observed, stage):
    spec = stages.spec(stage)
    problems = [f"[{name}] {stage}: {p}" for name, o in observed.items() if stage in o.seen
                for p in spec.write_problems(o.run.path / stage, ignore={COMPLETE})]
    assert not problems, "\n".join(problems)
    # and each entry written only sometimes (a name or a pattern) was written in some run
    written = {p.name + ("/" if p.is_dir() else "") for o in observed.values() if stage in o.seen
               for p in (o.run.path / stage).iterdir()}
    never = sorted(w for w in spec.may_write if not any(fnmatchcase(name, w) for name in written))
    assert not never, f"{stage}: never written: {never}"


def test_only_train_resumes():
    assert [s.name for s in stages.specs() if s.resumes] == ["train"]


# ---- staleness follows the declarations ------------------------------------------------------

def _changed(observed: Observed, **sections: dict[str, Any]) -> RunDirectory:
    tree = json.loads(observed.recipe.model_dump_json())
    for section, values in sections.items():
        tree[section].update(values)
    return open_run_directory(observed.run.path, recipe_from_dict(tree))


def _states(run: RunDirectory) -> dict[str, str]:
    return {stage: state for stage, state, _, _ in run.status_rows()}


def test_a_new_seed_makes_prepare_and_everything_after_it_stale(observed):
    """The issue's report: `status --set train.seed=7` after a run showed prepare complete, so
    the next run trained from the old initial adapter."""
    run = observed["chat-eval"]
    assert set(_states(run.run).values()) == {"complete", "missing"} and _states(run.run)["export"] == "missing"
    states = _states(_changed(run, train={"seed": 7}))
    assert states == {"load": "complete", "template": "complete", "pack": "complete",
                      "prepare": "stale", "train": "stale", "merge": "stale", "evaluate": "stale", "export": "missing"}


def test_status_command_with_a_new_seed(observed, tmp_path):
    from typer.testing import CliRunner

    from sft_pipeline.cli import app

    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump(json.loads(observed["chat-eval"].recipe.model_dump_json())))
    result = CliRunner().invoke(app, ["status", str(recipe_path), "--set", "train.seed=7"])
    assert result.exit_code == 0, result.output
    rows = {cells[1].strip(): cells[2].strip() for line in result.output.splitlines()
            if len(cells := re.split(r"[│|]", line)) > 3 and cells[1].strip() in stages.ALL}
    assert rows == {"load": "complete", "template": "complete", "pack": "complete",
                    "prepare": "stale", "train": "stale", "merge": "stale", "evaluate": "stale", "export": "missing"}


def test_template_kind_makes_pack_stale(observed):
    states = _states(_changed(observed["chat-eval"], template={"kind": "seed"}))
    assert states["load"] == "complete" and states["prepare"] == "complete"
    assert {s for s, v in states.items() if v == "stale"} == {"template", "pack", "train", "merge", "evaluate"}
    export = observed["export"]
    assert _states(_changed(export, template={"system": "Other."}))["export"] == "stale"
    assert _states(_changed(export, export={"verify_tokens": 5})) == {**_states(export.run), "export": "stale"}


def test_an_ignored_key_changes_no_fingerprint(observed):
    """train reads tracking.* and name (where metrics go, the run's name): not its output."""
    run = observed["chat-eval"]
    changed = _changed(run, tracking={"tensorboard": False, "project": "elsewhere"})
    changed = open_run_directory(changed.path, changed.recipe.model_copy(update={"name": "renamed"}))
    assert set(_states(changed).values()) == {"complete", "missing"}  # export never ran in this scenario


def test_a_key_only_pack_and_later_read_leaves_template_complete(observed):
    """pack reads model.attn_implementation (bfd's attention check); template does not."""
    states = _states(_changed(observed["chat-eval"], model={"attn_implementation": "eager"}))
    assert states["template"] == "complete" and states["pack"] == "stale" and states["prepare"] == "stale"


# ---- the recording itself --------------------------------------------------------------------

def test_the_view_records_fields_sections_and_methods():
    log: set[str] = set()
    view = RecipeView(Recipe(), "", log)
    assert view.train.seed == 42 and view.pack.strategy == "bfd"
    assert log == {"train.seed", "pack.strategy"}
    view.lora.model_dump()
    list(view.merge)
    view.resolved_run_dir()  # a method of Recipe runs on the view: reads run_dir and name
    assert log >= {"lora", "merge", "run_dir", "name"}
    with pytest.raises(AttributeError, match="changed the recipe"):
        view.train.seed = 1
