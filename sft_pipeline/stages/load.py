"""Stage 1, load: read the source, normalize every record to a conversation, count the rest.

Invariant, per split: kept + sum(dropped by reason) == records read. A file that cannot be read
at all stops the stage with the file and line; a record that cannot be used is counted.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from ..data import mixture
from ..data.arrow_io import SplitWriter, folder_schema, iter_batches
from ..data.formats import FormatError, detect_format, record_tools, rename_columns, to_conversation
from ..data.sources import SourceError, has_split, read_records
from ..data.turn_weights import TurnWeightError
from ..progress import progress
from ..rundir.directory import RunDirectory
from ..rundir.files import write_json
from ..rundir.stage_spec import STATS, SUMMARY, StageSpec

SPEC = StageSpec(
    name="load", reads=("data",),
    writes=("train/", STATS, SUMMARY),
    may_write={"eval/": "an eval set: data.eval_source, the source's eval split, or data.eval_size"},
)

EXAMPLES_PER_REASON = 3


TOOL_CALL = pa.struct([("id", pa.string()), ("name", pa.string()), ("arguments", pa.string())])
TURN_FIELDS = [("role", pa.string()), ("content", pa.string()), ("tool_calls", pa.list_(TOOL_CALL)),
               ("tool_call_id", pa.string()), ("name", pa.string())]
# tool_calls (assistant turns) and tool_call_id/name (tool turns) are null on other turns;
# tools is the record's tool definitions as JSON text, null when it has none
LOAD_SCHEMA = pa.schema([
    ("messages", pa.list_(pa.struct(TURN_FIELDS))),
    ("source", pa.string()),
    ("tools", pa.string()),
])
# a split where some assistant turn carries reasoning or an untrained weight (`train: false`)
# is written with these two turn fields more (null elsewhere); every other split keeps LOAD_SCHEMA
TURN_EXTRAS = ("reasoning", "train")
WIDE_SCHEMA = pa.schema([
    ("messages", pa.list_(pa.struct([*TURN_FIELDS, ("reasoning", pa.string()), ("train", pa.bool_())]))),
    ("source", pa.string()),
    ("tools", pa.string()),
])


def needs_wide(row: dict[str, Any]) -> bool:
    return any(k in m for m in row["messages"] for k in TURN_EXTRAS)


def write_rows(writer: SplitWriter, rows: Iterator[dict[str, Any]]) -> None:
    """Rows into a load split, the schema widened at the first row that needs it. A write that
    fails (a full disk) closes the reading generator here, so its progress bar and source stop
    now, not at interpreter exit where their modules are gone (a traceback after the one line)."""
    try:
        for row in rows:
            if needs_wide(row):
                writer.widen(WIDE_SCHEMA)
            writer.add(row)
    finally:
        close = getattr(rows, "close", None)  # a generator; a plain iterator has nothing to close
        if close is not None:
            close()


def _conversation(rec: Any, fmt: str, columns: dict[str, str] | None,
                  notes: Counter[str]) -> tuple[list | None, str | None, str | None]:
    """to_conversation, plus the record's tool definitions: (messages, tools, reason)."""
    messages, why = to_conversation(rec, fmt, columns, notes)
    if why:
        return None, None, why
    tools, why = record_tools(rec, columns, wrap_bare=fmt in ("sharegpt", "alpaca"))
    return (None, None, why) if why else (messages, tools, None)


def _digest(messages: list[dict[str, Any]], tools: str | None) -> bytes:
    """16 bytes naming the conversation (and its tool definitions, when it has any)."""
    blob = json.dumps(messages if tools is None else [messages, tools], sort_keys=True)
    return hashlib.blake2b(blob.encode(), digest_size=16).digest()


def iter_split(source: str, split: str, fmt: str, max_records: int | None,
               columns: dict[str, str] | None, stats: dict[str, Any],
               csv_delimiter: str = "auto") -> Iterator[dict[str, Any]]:
    """Yield the kept records as {"messages", "source"} (and "tools", when the record defines
    some); fill `stats` (read, kept, dropped by reason with the first locations) as it goes.
    Duplicates are found by a 16-byte digest of the conversation, so memory grows by bytes per
    record, not by the records themselves."""
    seen: set[bytes] = set()
    dropped: Counter[str] = Counter()
    notes: Counter[str] = Counter()  # of the kept records: parts dropped, untrained and reasoning turns
    examples: dict[str, list[str]] = {}
    read = kept = 0
    chosen = None if fmt == "auto" else fmt
    stats.update({"source": source, "split": split, "format": chosen, "read": 0, "kept": 0,
                  "dropped": {}, "dropped_examples": examples})
    with progress() as bar:
        task = bar.add_task(f"load {split}", total=max_records)
        # islice stops before fetching record max_records+1: a broken line past the cap is never read
        for where, rec in itertools.islice(read_records(source, split, csv_delimiter), max_records):
            read += 1
            bar.advance(task)
            if chosen is None:
                if not isinstance(rec, dict):
                    raise SourceError(f"{where}: a record is a JSON object, got {type(rec).__name__}")
                try:
                    renamed = rename_columns(rec, columns or {})
                    chosen = detect_format(renamed.keys(), renamed)
                except FormatError as err:
                    raise SourceError(f"{where}: {err}") from None
                stats["format"] = chosen
            own: Counter[str] = Counter()
            try:
                messages, tools, why = _conversation(rec, chosen, columns, own)
            except TurnWeightError as err:
                raise SourceError(f"{where}: {err}") from None
            if messages is not None:
                key = _digest(messages, tools)
                if key in seen:
                    messages, why = None, "duplicate"
                seen.add(key)
            if why:
                dropped[why] += 1
                examples.setdefault(why, [])
                if len(examples[why]) < EXAMPLES_PER_REASON:
                    examples[why].append(where)
                continue
            kept += 1
            notes.update(own)
            src = rec.get("source") if isinstance(rec.get("source"), str) else ""
            yield {"messages": messages, "source": src, **({"tools": tools} if tools else {})}
    stats.update({"read": read, "kept": kept, "dropped": dict(sorted(dropped.items())), **note_stats(notes)})
    assert kept + sum(dropped.values()) == read  # the invariant the tests rely on


def note_stats(notes: Counter[str]) -> dict[str, Any]:
    """The kept records' notes as stats keys, each only where there is something to say (a
    split of plain records has the stats it always had)."""
    out: dict[str, Any] = {}
    parts = {k.split(":", 1)[1]: n for k, n in sorted(notes.items()) if k.startswith("parts_dropped:")}
    if parts:
        out["parts_dropped"] = parts
    for key in ("untrained_turns", "reasoning_turns"):
        if notes[key]:
            out[key] = notes[key]
    return out


def load_split(source: str, split: str, fmt: str, max_records: int | None,
               columns: dict[str, str] | None = None,
               csv_delimiter: str = "auto") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """iter_split, collected: for callers that want the rows in memory (tests, small data)."""
    stats: dict[str, Any] = {}
    rows = list(iter_split(source, split, fmt, max_records, columns, stats, csv_delimiter))
    return rows, stats


def eval_indices(n_rows: int, size: float, seed: int) -> set[int]:
    """A seeded split for sources without an eval split: `size` rows, or a fraction when < 1."""
    n = round(n_rows * size) if size < 1 else int(size)
    if not 1 <= n < n_rows:
        raise SourceError(f"data.eval_size: {size} leaves no train or no eval rows out of {n_rows}")
    order = list(range(n_rows))
    random.Random(seed).shuffle(order)
    return set(order[:n])


def produce(run_dir: RunDirectory, out: Path) -> None:
    cfg = run_dir.recipe.data
    if cfg.sources is not None:
        return _run_sources(cfg, out)
    plan = [("train", cfg.source, cfg.train_split)]
    carve = _eval_plan(cfg, plan)
    stats: dict[str, Any] = {}
    for name, source, split in plan:
        split_stats: dict[str, Any] = {}
        folder = out / (f".{name}-all" if carve and name == "train" else name)
        with SplitWriter(folder, LOAD_SCHEMA) as writer:
            write_rows(writer, iter_split(source, split, cfg.format, cfg.max_records, cfg.columns, split_stats,
                                          cfg.csv_delimiter))
            if not split_stats["kept"]:
                raise SourceError(f"data.source: {source} (split {split}): no usable records ({split_stats['dropped'] or 'empty'})")
        stats[name] = split_stats
    if carve:
        stats["eval"] = _carve(out, stats["train"]["kept"], cfg.eval_size, cfg.split_seed)
        stats["train"]["kept_after_eval_carve"] = stats["train"]["kept"] - stats["eval"]["kept"]
    _write_stats(out, stats)


def _write_stats(out: Path, stats: dict[str, Any]) -> None:
    write_json(out / STATS, stats)
    write_json(out / SUMMARY, {s: {"kept": v["kept"], "dropped": sum(v["dropped"].values())} for s, v in stats.items()})


# ---- several sources (data.sources) -------------------------------------------------------------

def _run_sources(cfg: Any, out: Path) -> None:
    """Each source loaded and counted on its own, then mixed (data/mixture.py). Eval: eval_source
    when set; else every source's eval_split, concatenated whole, when each has one; else a carve
    of eval_size from the mixed train set."""
    specs = list(cfg.sources)
    stats: dict[str, Any] = {}
    evals = _sources_eval_plan(cfg, specs)
    carve = evals is None and cfg.eval_source is None and cfg.eval_size is not None
    train_parts = [mixture.Part(f"data.sources[{i}]", out / ".sources" / f"train-{i}", s.weight, s.fraction)
                   for i, s in enumerate(specs)]
    stats["train"] = _load_mixture(cfg, out / (".train-all" if carve else "train"), specs,
                                   [s.split or cfg.train_split for s in specs], train_parts, weighted=True)
    if cfg.eval_source is not None:
        eval_stats: dict[str, Any] = {}
        with SplitWriter(out / "eval", LOAD_SCHEMA) as writer:
            write_rows(writer, iter_split(cfg.eval_source, cfg.eval_split or cfg.train_split, cfg.format,
                                          cfg.max_records, cfg.columns, eval_stats, cfg.csv_delimiter))
        if not eval_stats["kept"]:
            raise SourceError(f"data.eval_source: {cfg.eval_source}: no usable records ({eval_stats['dropped'] or 'empty'})")
        stats["eval"] = eval_stats
    elif evals is not None:
        eval_parts = [mixture.Part(f"data.sources[{i}]", out / ".sources" / f"eval-{i}") for i in range(len(specs))]
        stats["eval"] = _load_mixture(cfg, out / "eval", specs, evals, eval_parts, weighted=False)
    shutil.rmtree(out / ".sources", ignore_errors=True)
    if carve:
        stats["eval"] = _carve(out, stats["train"]["kept"], cfg.eval_size, cfg.split_seed)
        stats["train"]["kept_after_eval_carve"] = stats["train"]["kept"] - stats["eval"]["kept"]
    _write_stats(out, stats)


def _sources_eval_plan(cfg: Any, specs: list[Any]) -> list[str] | None:
    """Each source's eval split name, or None where eval comes from eval_source or a carve."""
    if cfg.eval_source is not None or cfg.eval_split is None:
        return None
    lacking = [(i, s) for i, s in enumerate(specs) if has_split(s.source, cfg.eval_split) is False]
    if not lacking:
        return [cfg.eval_split] * len(specs)
    if cfg.eval_size is None:
        i, spec = lacking[0]
        raise SourceError(
            f"data.eval_split: data.sources[{i}] ({spec.source}) has no '{cfg.eval_split}' split; set data.eval_size "
            "(a count, or a fraction < 1) to carve a seeded one from the mixed train set, or data.eval_split: null")
    return None


def _load_mixture(cfg: Any, folder: Path, specs: list[Any], splits: list[str], parts: list[Any],
                  weighted: bool) -> dict[str, Any]:
    """Load every source's split into its part folder, mix them into `folder`; the split's
    stats: totals, and each source's own read/kept/dropped and what the mixing did with it."""
    per: dict[str, Any] = {}
    wide = False
    for i, (spec, split, part) in enumerate(zip(specs, splits, parts)):
        st: dict[str, Any] = {}
        with SplitWriter(part.folder, LOAD_SCHEMA) as writer:
            write_rows(writer, iter_split(spec.source, split, spec.format, cfg.max_records, spec.columns, st,
                                          cfg.csv_delimiter))
            wide |= writer.schema == WIDE_SCHEMA
        if not st["kept"]:
            raise SourceError(f"data.sources[{i}]: {spec.source} (split {split}): no usable records "
                              f"({st['dropped'] or 'empty'})")
        per[cfg.source_names()[i]] = st
    if wide:
        mixture.widen_all(parts, WIDE_SCHEMA)
    if not weighted:  # an eval split is every source's whole split
        parts = [mixture.Part(p.key, p.folder) for p in parts]
    mixed, counts, how = mixture.mix(parts, cfg.split_seed, cfg.stopping_strategy)
    with SplitWriter(folder, WIDE_SCHEMA if wide else LOAD_SCHEMA) as writer:
        for table in mixture.batches(mixed):
            writer.add_table(table)
    dropped: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    for st, c in zip(per.values(), counts):
        st.update(c)
        dropped.update(st["dropped"])
        dropped.update({k: c[k] for k in ("not_drawn", "not_taken") if c.get(k)})
        for why, wheres in st["dropped_examples"].items():
            examples[why] = (examples.get(why, []) + wheres)[:EXAMPLES_PER_REASON]
    out = {"source": f"data.sources ({len(specs)})", "format": "mixed", "mixing": how,
           "read": sum(st["read"] for st in per.values()), "kept": len(mixed), "dropped": dict(sorted(dropped.items())),
           "dropped_examples": examples, "repeated": sum(c.get("repeated", 0) for c in counts), "sources": per}
    # every record read is in the mixture or counted once under a reason; all_exhausted adds repeats
    assert out["kept"] + sum(dropped.values()) == out["read"] + out["repeated"]
    return out


def _eval_plan(cfg: Any, plan: list[tuple[str, str, str]]) -> bool:
    """Where eval comes from: eval_source, else the source's own eval split, else (eval_size) a
    seeded carve from train. Appends to plan; returns True to carve."""
    if cfg.eval_source is not None:
        plan.append(("eval", cfg.eval_source, cfg.eval_split or cfg.train_split))
        return False
    if cfg.eval_split is not None:
        if has_split(cfg.source, cfg.eval_split) is not False:
            plan.append(("eval", cfg.source, cfg.eval_split))
            return False
        if cfg.eval_size is None:
            raise SourceError(
                f"data.eval_split: {cfg.source} has no '{cfg.eval_split}' split; set data.eval_size "
                "(a count, or a fraction < 1) to carve a seeded one from train, or data.eval_split: null")
    return cfg.eval_size is not None


def _carve(out: Path, n_rows: int, size: float, seed: int) -> dict[str, Any]:
    """Route the kept train rows to train and eval by a seeded choice of row numbers, streaming."""
    held = eval_indices(n_rows, size, seed)
    source = out / ".train-all"
    i = 0
    schema = folder_schema(source)
    with SplitWriter(out / "train", schema) as train, SplitWriter(out / "eval", schema) as evals:
        for batch in iter_batches(source):
            for row in batch.to_pylist():
                (evals if i in held else train).add(row)
                i += 1
    shutil.rmtree(source)
    return {"carved_from": "train", "eval_size": size, "seed": seed, "kept": len(held), "read": len(held), "dropped": {}}
