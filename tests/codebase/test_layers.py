"""The package's shape, checked from its source: every module belongs to a layer with a rank, a
module imports only modules of its own layer or of a lower rank, and no stage imports another
stage. Imports inside functions count: they are how the code avoids heavy imports at start-up,
not a way around the layering."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "sft_pipeline"
STAGE_MODULES = {"load", "template", "pack", "prepare", "train", "merge", "evaluate", "export"}
# a layer is a subpackage (sft_pipeline/data/) or a module at the top (sft_pipeline/cli.py); its rank
# says what it may import: its own layer's modules and those of a lower rank, nothing else
RANKS = {
    "__init__": 0,  # the package's docstring: imports nothing
    "errors": 0, "config": 0, "progress": 0,
    "harness_tasks": 0,  # lm-eval's task code, loaded by lm-eval by path: imports nothing of the package
    "rundir": 1,
    "data": 2, "model": 2,  # one layer in two packages (ONE_LAYER): they may import each other
    "training": 3,
    "stages": 4,
    "orchestration": 5, "chat": 5, "serving": 5, "publish": 5, "report": 5,  # beside each other (SIDEWAYS)
    "cli": 6, "train_worker": 6,
}
ONE_LAYER = {frozenset({"data", "model"})}
# the imports allowed between two layers of the same rank, importer -> imported, and why
SIDEWAYS = {("config", "errors"): "a bad recipe is a PipelineError (RecipeError); errors imports nothing"}


def layer_of(module: str) -> str:
    """sft_pipeline.data.sources -> data; sft_pipeline.cli -> cli; sft_pipeline -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def may_import(importer: str, imported: str) -> bool:
    if importer == imported or frozenset({importer, imported}) in ONE_LAYER:
        return True
    if (importer, imported) in SIDEWAYS:
        return True
    return RANKS[imported] < RANKS[importer]


def imported_modules(path: Path) -> set[str]:
    """Absolute dotted names of every sft_pipeline module a file imports (relative imports
    resolved against the file's package; `from . import x` counts as the module x)."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sft_pipeline")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("sft_pipeline"):
                continue
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}  # `from .stages import pack` names a module
    return found


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def test_the_import_parser_resolves_relative_imports(tmp_path):
    """The checks below are only as good as this: a relative import inside a function, two levels up."""
    here = PACKAGE / "stages" / "merge.py"
    names = imported_modules(here)
    assert "sft_pipeline.model.build" in names  # `from ..model.build import build_model` inside a function
    assert "sft_pipeline.rundir.directory" in names


def test_no_stage_imports_another_stage():
    offenders = []
    for name, path in modules().items():
        parts = name.split(".")
        if len(parts) != 3 or parts[1] != "stages" or parts[2] not in STAGE_MODULES:
            continue
        for imported in imported_modules(path):
            bits = imported.split(".")
            if len(bits) >= 3 and bits[1] == "stages" and bits[2] in STAGE_MODULES and bits[2] != parts[2]:
                offenders.append(f"{name} imports {imported}")
    assert not offenders, offenders


def test_every_module_is_in_a_layer():
    """A module added in a new folder (or at the top) has no rank until it is given one here."""
    unranked = sorted(name for name in modules() if layer_of(name) not in RANKS)
    assert not unranked, f"modules in no layer of RANKS: {unranked}"
    gone = sorted(set(RANKS) - {layer_of(name) for name in modules()})
    assert not gone, f"layers in RANKS with no module: {gone}"


def test_layers_import_downwards_only():
    offenders = []
    for name, path in modules().items():
        here = layer_of(name)
        for imported in imported_modules(path):
            there = layer_of(imported)
            if there not in RANKS:
                offenders.append(f"{name} imports {imported}, which is in no layer")
            elif not may_import(here, there):
                offenders.append(f"{name} ({here}, rank {RANKS[here]}) imports {imported} ({there}, rank {RANKS[there]})")
    assert not offenders, "\n".join(sorted(offenders))


def test_the_rank_check_refuses_what_it_should():
    """The rule itself, on pairs whose answer is known: up is refused, sideways only where allowed."""
    assert may_import("stages", "training") and may_import("data", "model") and may_import("model", "data")
    assert not may_import("training", "stages") and not may_import("rundir", "data")
    assert not may_import("chat", "serving") and not may_import("serving", "chat")
    assert not may_import("report", "orchestration") and not may_import("orchestration", "report")
    assert may_import("config", "errors") and not may_import("errors", "config")
    assert may_import("cli", "stages") and not may_import("cli", "train_worker")


def test_no_two_modules_import_each_other():
    """Not even through others, nor inside functions: a circle is what made data/sources.py's
    readers import SourceError lazily (it lives in data/source_errors.py now, below them all)."""
    def plain(name: str) -> str:  # a package's __init__ is imported by the package's name
        return name.removesuffix(".__init__")

    graph = {plain(name): {m for m in imported_modules(path) if m in {plain(n) for n in modules()}} - {plain(name)}
             for name, path in modules().items()}
    done: set[str] = set()
    circles = []

    def visit(name: str, path: list[str]) -> None:
        for nxt in sorted(graph[name]):
            if nxt in path:
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(name)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert not circles, "\n".join(circles)
