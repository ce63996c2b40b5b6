"""Which rows an earlier process's offline W&B folders really hold.

wandb-core buffers its transaction log (run-<id>.wandb) and a SIGKILLed train takes the buffer
with it: measured with wandb 0.31, a process killed seconds after logging five rows left a
7-byte file, its header alone. scalars.jsonl says those rows were logged, so a resume that
trusted it alone would lose them on the dashboard. trackers.Tracking reads the earlier folders
with this module and logs again what they lack.

The file is a LevelDB log (github.com/google/leveldb/blob/main/doc/log_format.md) of W&B's
protobuf Records after a 7-byte header: 32 KiB blocks of records, each a 7-byte header
(crc32, length, type FULL/FIRST/MIDDLE/LAST) and its bytes; a record cut off by the kill ends
the scan.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Iterator

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
FILE_IDENT = b":W&B"


def records(path: Path) -> Iterator[bytes]:
    """The serialized Records of one .wandb file, up to the first damaged or cut-off one."""
    data = path.read_bytes()
    if len(data) < HEADER or data[:4] != FILE_IDENT:
        return
    pos, parts = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the block's zero trailer
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        body = data[pos + HEADER:pos + HEADER + length]
        if kind == 0 and length == 0:  # zero fill: nothing more was written
            return
        if len(body) < length or zlib.crc32(body, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            return
        pos += HEADER + length
        if kind == FULL:
            yield body
        elif kind == FIRST:
            parts = body
        elif kind == MIDDLE:
            parts += body
        elif kind == LAST:
            yield parts + body
            parts = b""


def logged_rows(folder: Path, step_key: str) -> set[tuple[str, int]]:
    """(kind, step) of every history row in an offline run folder: eval where it has eval/loss,
    train where it has train/loss (step_scalars' rows)."""
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    found = set()
    for path in folder.glob("run-*.wandb"):
        for blob in records(path):
            rec = pb.Record()
            try:
                rec.ParseFromString(blob)
            except Exception:  # a record of a newer wandb this one cannot read: not a row of ours
                continue
            if rec.WhichOneof("record_type") != "history":
                continue
            # the key is in nested_key (one part for "train/loss") or, in older writers, in key
            keys = {item.key or ".".join(item.nested_key): item.value_json for item in rec.history.item}
            if step_key not in keys:
                continue
            kind = "eval" if "eval/loss" in keys else "train" if "train/loss" in keys else None
            if kind:
                found.add((kind, int(float(json.loads(keys[step_key])))))
    return found
