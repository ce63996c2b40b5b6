"""The package's shape, checked from its source: no stage imports another stage, and the layers
import downwards only (data and model never reach into training or the stages; training never
into the stages). Imports inside functions count: they are how the code avoids heavy imports at
start-up, not a way around the layering."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "sft_pipeline"
STAGE_MODULES = {"load", "template", "pack", "prepare", "train", "merge", "evaluate", "export"}
# layer -> the layers its modules may not import
# serving (the `serve` command's server) and chat (the `chat` loop) sit beside the stages: below the
# CLI, above the rest
FORBIDDEN = {"data": {"training", "stages", "serving", "chat"}, "model": {"training", "stages", "serving", "chat"},
             "training": {"stages", "serving", "chat"}, "chat": {"training", "stages", "serving"},
             "serving": {"training", "stages", "chat"}}


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


def test_layers_import_downwards_only():
    offenders = []
    for name, path in modules().items():
        parts = name.split(".")
        if len(parts) < 3 or parts[1] not in FORBIDDEN:
            continue
        for imported in imported_modules(path):
            bits = imported.split(".")
            if len(bits) >= 2 and bits[1] in FORBIDDEN[parts[1]]:
                offenders.append(f"{name} imports {imported}")
    assert not offenders, offenders
