"""Deep Lake datasets: hub:// (v3, read through deeplake.query as the seed's sets need),
al:// and local paths (file:// or a plain folder holding a Deep Lake dataset).

Credentials come from the environment (ACTIVELOOP_TOKEN and the cloud providers' variables),
read by deeplake itself; nothing here writes them anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from .source_errors import SourceError

SCHEMES = ("hub://", "al://", "file://", "s3://", "gcs://", "gs://", "azure://", "mem://")


def is_deeplake(source: str) -> bool:
    if source.startswith(SCHEMES):
        return True
    return (Path(source).expanduser() / "_deeplake_log").is_dir()


def _open(source: str) -> Any:
    import deeplake

    if source.startswith("hub://"):
        # v3 datasets on the Activeloop hub are readable only through the query engine.
        return deeplake.query(f'SELECT * FROM "{source}"')
    path = source if "://" in source else str(Path(source).expanduser().resolve())
    return deeplake.open_read_only(path)


def read(source: str) -> Iterator[tuple[str, Any]]:
    try:
        ds = _open(source)
        columns = [c.name for c in ds.schema.columns]
        values = {c: ds[c][:] for c in columns}
    except Exception as err:
        raise SourceError(f"data.source: {source}: cannot read Deep Lake dataset: {str(err).splitlines()[0]}") from None
    for i in range(len(ds)):
        rec = {}
        for c in columns:
            v = values[c][i]
            rec[c] = v.tolist() if hasattr(v, "tolist") else v
        yield f"{source} row {i}", rec
