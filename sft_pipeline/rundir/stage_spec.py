"""What a stage declares about itself, next to its produce(): the recipe keys it reads, the stages
whose folders it reads, what it writes into its own folder, and whether it resumes.

The declarations are the single source for fingerprints (a stage is stale when a key it reads
changes), `status`, preflight and the pipeline's resume handling; tests/stages/test_stage_declarations.py
runs every stage with a recipe that records each field read and fails when one is not declared.

A key is a recipe section ("train"), a dotted field ("pack.seq_length") or a top-level field
("name"); a key covers itself and everything under it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping

# Artifact names read outside the stage that writes them are constants, shared by the writer's
# SPEC and every reader (RunDirectory.artifact checks a name against the SPEC). Those that one stage
# reads from another's folder are here, the layer every stage imports (a stage may not import
# another stage); those read only from above the stages sit beside their stage's SPEC.
SUMMARY = "summary.json"  # every stage writes one: the manifest and `status` show it
STATS = "stats.json"  # the data stages' counts: read, kept, dropped by reason
PREPARED = "prepare.json"  # prepare's record (method, counts, memory plan): train starts from it
METRICS = "metrics.json"  # what train measured: evaluate's W&B step, report, compare, sweep, push


@dataclass(frozen=True)
class RecordedElsewhere:
    """What a stage's produce() returns when its output is recorded on another machine: train on a
    node other than 0 of a multi-node job, whose processes trained while node 0's first process
    wrote the result into node 0's run directory. The pipeline then neither swaps the work folder
    in nor records the stage here, and runs no stage after it (they read its output, which is
    there). produce() returns None otherwise."""

    where: str  # whose run directory records it, for the line the pipeline prints


def within(key: str, declared: str) -> bool:
    """True when `key` is `declared` or lies under it ("train.seed" within "train")."""
    return key == declared or key.startswith(declared + ".")


@dataclass(frozen=True)
class StageSpec:
    """One stage's declaration. `ignores` maps recipe keys the stage reads but whose value does not
    change its output (where metrics are reported, a run's display name) to the reason; they stay
    out of the fingerprint. `may_write` maps entries written only sometimes to when."""

    name: str
    reads: tuple[str, ...]
    upstream: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()  # always in the folder; "adapter/" is a folder, "summary.json" a file
    may_write: Mapping[str, str] = field(default_factory=dict)  # a name, or a pattern ("model-*.gguf")
    resumes: bool = False  # keeps its partial work folder across attempts (train's checkpoints)
    ignores: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # read-only views: a declaration is not changed after it is made
        object.__setattr__(self, "may_write", MappingProxyType(dict(self.may_write)))
        object.__setattr__(self, "ignores", MappingProxyType(dict(self.ignores)))
        both = [k for k in self.ignores if self.covers(k)]
        if both:
            raise ValueError(f"stage {self.name}: {', '.join(both)} both read and ignored")
        twice = set(self.writes) & set(self.may_write)
        if twice:
            raise ValueError(f"stage {self.name}: {', '.join(sorted(twice))} in both writes and may_write")

    def covers(self, key: str) -> bool:
        """Is `key` part of what this stage's output depends on (its fingerprint)?"""
        return any(within(key, declared) for declared in self.reads)

    def ignored(self, key: str) -> bool:
        return any(within(key, declared) for declared in self.ignores)

    def declares(self, name: str) -> bool:
        """Does the stage write `name` (its first path part: "model/config.json" is under "model/")?"""
        head, sep, _ = name.partition("/")
        entries = (head + "/",) if sep else (head, head + "/")  # "adapter" may name the folder "adapter/"
        declared = (*self.writes, *self.may_write)
        return any(e in declared or any(fnmatchcase(e, d) for d in self.may_write) for e in entries)

    def check_artifact(self, name: str) -> None:
        """A read of an artifact the stage does not declare is a bug in the reader: said at once."""
        if not self.declares(name):
            declared = ", ".join((*self.writes, *self.may_write))
            raise KeyError(f"stage {self.name} declares no artifact '{name}' (it writes: {declared})")

    def undeclared_reads(self, keys: Iterable[str]) -> list[str]:
        """The keys read that neither `reads` nor `ignores` accounts for."""
        return sorted({k for k in keys if not (self.covers(k) or self.ignored(k))})

    def undeclared_upstream(self, stages: Iterable[str]) -> list[str]:
        """The stages whose folders were read without being declared upstream."""
        return sorted(set(stages) - set(self.upstream) - {self.name})

    def write_problems(self, folder: Path, ignore: Iterable[str] = ()) -> list[str]:
        """What a finished stage folder has that the declaration does not say, and the reverse:
        a declared entry missing, of the wrong kind (file or folder), or an undeclared one."""
        present = {(p.name + "/" if p.is_dir() else p.name) for p in folder.iterdir()} - set(ignore)
        declared = set(self.writes) | set(self.may_write)
        problems = [f"declared, not written: {w}" for w in self.writes if w not in present]
        problems += [f"written, not declared: {p}" for p in sorted(present)
                     if p not in declared and not any(fnmatchcase(p, d) for d in self.may_write)]
        return problems
