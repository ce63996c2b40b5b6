"""Turn a failed write into one clear line: which path, and why (disk full, read-only, ...).

Libraries report the same fault very differently: Python and pyarrow raise OSError(ENOSPC),
safetensors a SafetensorError whose text ends in "(os error 28)", torch.save a RuntimeError that
only says "iostream error". So the cause is looked for in the exception chain, then in the
messages, and last by writing a small probe file into the run directory.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

WRITE_ERRNOS = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space (disk quota)",
    errno.EFBIG: "raise the file size limit (ulimit -f)",
    errno.EROFS: "make the run directory writable",
    errno.EACCES: "make the run directory writable",
    errno.EPERM: "make the run directory writable",
}
_ERRNO_IN_TEXT = re.compile(r"(?:os error |\[Errno )(\d+)")
PROBE_BYTES = 64 * 1024


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _inside(path: str | None, root: Path) -> bool:
    if not path:
        return False
    try:
        Path(path).resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False


def find_cause(exc: BaseException, run_path: Path) -> tuple[int, str | None] | None:
    """(errno, path or None) when `exc` is a failed write under the run directory."""
    for item in _chain(exc):
        code = getattr(item, "errno", None) if isinstance(item, OSError) else None
        if code in WRITE_ERRNOS:
            filename = getattr(item, "filename", None)
            # EACCES/EPERM may be a data file that cannot be read: only ours count as write faults
            if code in (errno.EACCES, errno.EPERM) and not _inside(filename, run_path):
                continue
            return code, filename
    for item in _chain(exc):
        for match in _ERRNO_IN_TEXT.finditer(str(item)):
            code = int(match.group(1))
            if code in WRITE_ERRNOS and code not in (errno.EACCES, errno.EPERM):
                return code, None
    if isinstance(exc, ValueError):  # our own one-line errors (recipe, source, format): not a write
        return None
    return probe(run_path)


def probe(run_path: Path) -> tuple[int, str | None] | None:
    """Write (and remove) a small file in the run directory; its failure names the cause."""
    target = run_path / f".write-probe-{os.getpid()}"
    try:
        with open(target, "wb") as fh:
            fh.write(b"\0" * PROBE_BYTES)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        return (err.errno, str(target)) if err.errno in WRITE_ERRNOS else None
    finally:
        try:
            target.unlink()
        except OSError:
            pass
    return None


def describe(stage: str, cause: tuple[int, str | None], fallback: Path, run_path: Path) -> str:
    code, path = cause
    where = path or f"{fallback} (or below it)"
    return (f"{stage}: cannot write {where}: {os.strerror(code)}; nothing was recorded as complete; "
            f"{WRITE_ERRNOS[code]} and run the command again ({run_path})")
