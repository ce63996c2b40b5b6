"""Facts decided in one place: the label the loss ignores, what a model reference names, and
whether a bundled dataset exists."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

import pytest

import sft_pipeline

PACKAGE = Path(next(iter(sft_pipeline.__path__)))  # a namespace package: no __file__


def _minus_100(path: Path) -> list[int]:
    """Lines of code (not comments or strings) that spell the literal -100."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
              if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)]
    return [b.start[0] for a, b in zip(tokens, tokens[1:])
            if a.type == tokenize.OP and a.string == "-" and b.type == tokenize.NUMBER and b.string == "100"]


def test_the_ignored_label_is_written_once():
    from sft_pipeline.data import inspect, tokens
    from sft_pipeline.training import collate, loss

    assert tokens.IGNORE == -100  # PyTorch cross_entropy's ignore_index, which the model's loss uses
    spelled = {str(p.relative_to(PACKAGE)): lines for p in PACKAGE.rglob("*.py") if (lines := _minus_100(p))}
    assert list(spelled) == ["data/tokens.py"], spelled
    assert loss.IGNORE is collate.IGNORE is inspect.IGNORE is tokens.IGNORE


@pytest.mark.parametrize("ref, kind", [
    ("bundled:smollm2-135m-instruct", "bundled"), ("model.gguf", "gguf"), ("/no/such/folder", "local"),
    ("./rel", "local"), ("~/m", "local"), ("HuggingFaceTB/SmolLM2-135M", "hub"), ("gpt2", "hub"),
])
def test_ref_kind(ref, kind):
    from sft_pipeline.model.loader import ref_kind

    assert ref_kind(ref) == kind


def test_an_existing_folder_is_local_however_it_is_spelled(tmp_path, monkeypatch):
    from sft_pipeline.model.loader import ref_kind, resolve

    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert ref_kind("org/name") == "local"  # not the hub id it looks like
    assert resolve("org/name").path == str((tmp_path / "org" / "name").resolve())


def test_the_recipe_check_and_the_loader_refuse_a_missing_path_alike(tmp_path):
    from sft_pipeline.model.loader import ModelRefError, check_ref, resolve

    missing = str(tmp_path / "gone")
    for call in (check_ref, resolve):
        with pytest.raises(ModelRefError, match=r"^model\.ref: .*gone: folder not found$"):
            call(missing)
    with pytest.raises(ModelRefError, match=r"^model\.ref: 'not a hub id!': not a bundled model"):
        check_ref("not a hub id!")


def test_an_unknown_bundled_dataset_is_refused_alike_by_preflight_and_load(recipe_factory):
    from sft_pipeline.config import RecipeError
    from sft_pipeline.data.sources import SourceError, read_records
    from sft_pipeline.orchestration import preflight

    expected = "unknown bundled dataset 'nope'; known: lima_house_style"
    recipe = recipe_factory(data={"eval_source": "bundled:nope"})
    with pytest.raises(RecipeError, match=f"^data.eval_source: {expected}$"):
        preflight.check(recipe, ["load"])
    with pytest.raises(SourceError, match=f"^data.source: {expected}$"):
        list(read_records("bundled:nope", "train"))
