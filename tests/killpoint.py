"""Run the sft-pipeline CLI and SIGKILL it at an exact point. Used by the crash tests only.

    python tests/killpoint.py '<rule as JSON>' <cli args...>

A rule patches one call the run directory code makes, in this process only (nothing in the
package knows about it):
  {"on": "replace", "match": REGEX, "nth": 1, "when": "before" | "after"}
      os.replace(src, dst) whose "src -> dst" matches REGEX, the nth time: kill before or after it.
  {"on": "write", "match": REGEX, "nth": 1, "fraction": 0.5}
      a file the run directory code (rundir/files.atomic_write_text: stage JSON files, the manifest)
      opens for writing whose path matches REGEX, the nth time: write that fraction of the text,
      flush it to disk, and kill: a write cut off halfway.
The process then dies by SIGKILL (exit status -9); if the point is never reached it exits 0 and
the calling test fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(rule: dict) -> None:
    from sft_pipeline.rundir import files

    pattern = re.compile(rule["match"])
    nth = rule.get("nth", 1)
    seen = {"n": 0}

    def hit(text: str) -> bool:
        if not pattern.search(text):
            return False
        seen["n"] += 1
        return seen["n"] == nth

    if rule["on"] == "replace":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if hit(f"{src} -> {dst}"):
                if rule.get("when", "before") == "before":
                    die()
                real_replace(src, dst, *args, **kwargs)
                die()
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
    elif rule["on"] == "write":
        real_open = open

        class HalfWriter:
            def __init__(self, fh):
                self.fh = fh

            def write(self, text):
                self.fh.write(text[: int(len(text) * rule.get("fraction", 0.5))])
                self.fh.flush()
                os.fsync(self.fh.fileno())
                die()

            def __getattr__(self, name):
                return getattr(self.fh, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self.fh.__exit__(*exc)

        def patched_open(path, mode="r", *args, **kwargs):
            fh = real_open(path, mode, *args, **kwargs)
            if any(c in mode for c in "wa") and hit(str(path)):
                return HalfWriter(fh)
            return fh

        files.open = patched_open  # module global: shadows the builtin inside rundir/files.py only
    else:
        raise SystemExit(f"unknown rule {rule}")


def main() -> None:
    rule = json.loads(sys.argv[1])
    install(rule)
    from sft_pipeline.cli import app

    sys.argv = ["sft-pipeline", *sys.argv[2:]]
    app()


if __name__ == "__main__":
    main()
