"""Files that readers see whole or not at all, and the one-writer lock on a folder.

A stage's outputs and the manifest are written through a temp file, fsync and rename, so a crash
or a full disk never leaves a half-written file that looks finished.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import PipelineError


class LockedError(PipelineError, RuntimeError):
    """Another process holds the folder's lock; the message names it."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder, fsync, then rename: readers see old or new."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:  # disk full mid-write: do not leave the half-written temp file taking space
            tmp.unlink()
        except OSError:
            pass
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@contextmanager
def exclusive(folder: Path, command: str) -> Iterator[None]:
    """One writer at a time. flock dies with its process, so a stale lock frees itself; the lock
    file says who holds it (pid, host, command), for the refusal a second writer gets."""
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / ".lock", "a+", encoding="utf-8")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "{}"
        fh.close()
        try:
            info = json.loads(holder)
        except json.JSONDecodeError:
            info = {}
        raise LockedError(
            f"{folder} is in use by pid {info.get('pid', '?')} on {info.get('host', '?')} "
            f"running `{info.get('command', '?')}`; wait for it or stop it"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": now()}))
    fh.flush()
    try:
        yield
    finally:
        fh.seek(0)
        fh.truncate()
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def link_tree(src: Path, dst: Path) -> str:
    """`dst` as a copy of `src` made of hard links where the filesystem allows (no second copy of a
    model's weights on disk; every writer here replaces files, never edits them in place, so the
    two names cannot drift apart), and of copies where it does not (another filesystem). Returns
    how: "hardlinked", "copied", or both with counts."""
    import errno
    import shutil

    linked = copied = 0
    for folder, _, files in os.walk(src):
        target = dst / Path(folder).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            try:
                os.link(os.path.join(folder, name), target / name)
                linked += 1
            except OSError as err:
                if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                    raise
                shutil.copy2(os.path.join(folder, name), target / name)
                copied += 1
    if linked and copied:
        return f"hardlinked {linked} files, copied {copied}"
    return "copied" if copied else "hardlinked"
