"""A stage's files are read outside it through RunDirectory.artifact, by names it shares with the
stage's declaration (a constant beside its SPEC, or in rundir/stage_spec.py where another stage
reads it): never by a literal of its own, and never by joining a path onto a stage's folder.
Checked from the source, against every stage's SPEC."""

from __future__ import annotations

import ast
from pathlib import Path

from sft_pipeline import stages

PACKAGE = Path(__file__).resolve().parents[2] / "sft_pipeline"


def declared_files() -> dict[str, set[str]]:
    """Every file name (or pattern) a stage declares it writes -> the stages declaring it. Folders
    ("model/", "eval/") are left out: their bare names are everyday words ("model", "train")."""
    names: dict[str, set[str]] = {}
    for spec in stages.specs():
        for entry in (*spec.writes, *spec.may_write):
            if not entry.endswith("/"):
                names.setdefault(entry, set()).add(spec.name)
    return names


def _exempt_constants(tree: ast.Module) -> set[int]:
    """The string constants allowed anywhere: docstrings, and the value of a module-level constant
    (`REPORT = "report.json"`): the one definition readers import."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            ids.add(id(node.value))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if node.__dict__.get("value") is not None and all(isinstance(t, ast.Name) and t.id.isupper() for t in targets) \
                and targets and isinstance(node.value, ast.Constant):
            ids.add(id(node.value))
    return ids


def offences(rel: str, source: str, files: dict[str, set[str]]) -> list[str]:
    """What in one module (path relative to the package) reads a stage's files by literal or by path."""
    own = rel[len("stages/"):-len(".py")] if rel.startswith("stages/") else None
    tree = ast.parse(source)
    exempt = _exempt_constants(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in exempt:
            declaring = files.get(node.value, set())
            if declaring and own not in declaring:
                found.append(f"{rel}:{node.lineno}: '{node.value}' ({', '.join(sorted(declaring))}'s) by literal")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            left, right = node.left, node.right
            if isinstance(left, ast.Call) and isinstance(left.func, ast.Attribute) and left.func.attr == "stage_dir":
                found.append(f"{rel}:{node.lineno}: stage_dir(...) / ...: use run_dir.artifact(stage, name)")
            if isinstance(left, ast.Attribute) and left.attr == "path" and isinstance(right, ast.Constant) \
                    and right.value in stages.ALL and right.value != own:
                found.append(f"{rel}:{node.lineno}: .path / '{right.value}': a stage's folder by path")
    return found


def _modules() -> dict[str, str]:
    """Every module outside rundir/ (the run directory itself resolves the paths), by relative path."""
    return {str(p.relative_to(PACKAGE)): p.read_text(encoding="utf-8") for p in sorted(PACKAGE.rglob("*.py"))
            if p.relative_to(PACKAGE).parts[0] != "rundir"}


def test_no_module_reads_a_stage_by_literal_or_path():
    files = declared_files()
    found = [line for rel, source in _modules().items() for line in offences(rel, source, files)]
    assert not found, "\n".join(found)


def test_each_name_has_one_constant():
    """The allowance for constants is not a way round: a name is defined once, where readers import it."""
    files = declared_files()
    defined: dict[str, list[str]] = {}
    for rel, source in {**_modules(), "rundir/stage_spec.py": (PACKAGE / "rundir" / "stage_spec.py").read_text()}.items():
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value in files:
                defined.setdefault(node.value.value, []).append(f"{rel}:{node.lineno}")
    twice = {name: places for name, places in defined.items() if len(places) > 1}
    assert not twice, twice


def test_the_scan_finds_each_kind_of_read():
    """The checks above are only as good as this: each way of reading another stage's file is found,
    in a module of any layer, and the allowed forms are not."""
    files = declared_files()
    source = '''
"""evaluate/report.json is mentioned in a docstring: fine."""
REPORT = "report.json"  # a constant's definition: fine
def read(run_dir):
    a = run_dir.stage_dir("evaluate") / "report.json"
    b = run_dir.path / "train" / METRICS
    c = run_dir.artifact("evaluate", "report.json")
    d = run_dir.artifact("evaluate", REPORT)
    e = run_dir.stage_dir("train")
'''
    found = offences("report/collect.py", source, files)
    assert [line.split(":")[1] for line in found] == ["5", "5", "6", "7"], found
    assert offences("stages/evaluate.py", 'x = out / "report.json"\ny = run_dir.path / "evaluate"', files) == []
    assert offences("stages/export.py", 'x = out / "report.json"', files)  # evaluate's, not export's
