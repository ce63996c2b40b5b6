"""Several sources in one split (`data.sources`): each source is loaded and counted on its own,
then mixed with `datasets`' own operations, seeded, and what the mixing leaves out or repeats
is counted per source as well.

- weights (every source has one): `datasets.interleave_datasets` with probabilities in
  proportion to the weights. `first_exhausted` (datasets' default) stops at the first source
  that runs out, so the records the other sources had left are not drawn (counted as
  `not_drawn`, a named drop); `all_exhausted` goes on until every source has been drawn whole,
  drawing the ones that ran out again (counted as `repeated`).
- fractions (or neither): `datasets.concatenate_datasets` of a seeded choice of that share of
  each source's records (all of them when no fraction is given), in the source's own order; the
  rest is counted as `not_taken`. Training shuffles, and bfd packing sorts, so the order of the
  concatenation is not what the model sees.

Only normalized conversations are mixed: every source has been through its own format and
columns, so they share one schema (a source whose turns carry reasoning or weights widens the
others to its schema first).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from .arrow_io import SplitWriter, data_files, folder_schema, iter_batches
from .sources import SourceError

STOPPING = ("first_exhausted", "all_exhausted")
_INDEX = "__mixture_source"


@dataclass(frozen=True)
class Part:
    """One source's kept records (a load split folder) and how much of it the mixture wants."""

    key: str  # the recipe key that names it, e.g. data.sources[1]
    folder: Path
    weight: float | None = None
    fraction: float | None = None


def widen_all(parts: list[Part], wide: pa.Schema) -> None:
    """Rewrite the parts not written with `wide` (the load stage's wider turn schema) to it."""
    for part in parts:
        if folder_schema(part.folder) != wide:
            tmp = part.folder.with_name(part.folder.name + ".wide")
            with SplitWriter(tmp, wide) as writer:
                for batch in iter_batches(part.folder):
                    writer.add_table(pa.Table.from_batches([batch]))
            for f in part.folder.iterdir():
                f.unlink()
            part.folder.rmdir()
            tmp.rename(part.folder)


def _dataset(part: Part, i: int) -> Any:
    import datasets

    ds = datasets.concatenate_datasets([datasets.Dataset.from_file(str(f)) for f in data_files(part.folder)])
    return ds.add_column(_INDEX, np.full(len(ds), i, dtype=np.int32))


def _take(ds: Any, part: Part, rng: random.Random) -> Any:
    if part.fraction is None:
        return ds
    n = round(len(ds) * part.fraction)
    if n < 1:
        raise SourceError(f"{part.key}.fraction: {part.fraction} of its {len(ds)} kept records takes none")
    return ds.select(sorted(rng.sample(range(len(ds)), n)))


def mix(parts: list[Part], seed: int, stopping: str = "first_exhausted") -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    """(the mixed dataset, each part's counts, how it was mixed). Counts: `in_mixture` (rows
    of the mixture from that source) and `not_drawn`, `not_taken` or `repeated`."""
    import datasets

    if stopping not in STOPPING:
        raise ValueError(f"stopping strategy {stopping!r}; expected one of {', '.join(STOPPING)}")
    sets = [_dataset(p, i) for i, p in enumerate(parts)]
    weighted = parts[0].weight is not None
    if weighted:
        total = sum(p.weight for p in parts)  # type: ignore[misc]
        probabilities = [p.weight / total for p in parts]  # type: ignore[operator]
        mixed = datasets.interleave_datasets(sets, probabilities=probabilities, seed=seed, stopping_strategy=stopping)
        how = {"how": "interleave", "seed": seed, "stopping_strategy": stopping,
               "probabilities": [round(p, 6) for p in probabilities]}
    else:
        rng = random.Random(seed)
        mixed = datasets.concatenate_datasets([_take(ds, p, rng) for ds, p in zip(sets, parts)])
        how = {"how": "concatenate", "seed": seed, "fractions": [p.fraction if p.fraction is not None else 1.0 for p in parts]}
    drawn = np.bincount(np.asarray(mixed.select_columns([_INDEX]).with_format("numpy")[_INDEX], dtype=np.int64),
                        minlength=len(parts))
    counts = []
    for n, ds in zip(drawn.tolist(), sets):
        c: dict[str, Any] = {"in_mixture": n}
        if not weighted:
            c["not_taken"] = len(ds) - n
        elif n >= len(ds):
            c["repeated"] = n - len(ds)  # all_exhausted draws a source that ran out again
        else:
            c["not_drawn"] = len(ds) - n
        counts.append(c)
    return mixed.remove_columns([_INDEX]), counts, how


def batches(mixed: Any, rows: int = 1000) -> Iterator[pa.Table]:
    """The mixture as Arrow tables of `rows` rows, in its order."""
    yield from mixed.with_format("arrow").iter(batch_size=rows)
