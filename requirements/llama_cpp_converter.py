#!/usr/bin/env python3
"""llama.cpp's own HF -> GGUF converter, taken from the llama-cpp-python source package the lock pins.

  python requirements/llama_cpp_converter.py LOCK DEST     # make install; docker/install.sh

llama-cpp-python's wheel carries the library (and so llama.cpp's quantizer, llama_model_quantize)
but not convert_hf_to_gguf.py; its source package does, with the `conversion` package beside it
and the gguf-py it was written against. The three are unpacked into DEST (the venv's
share/llama.cpp, where sft_pipeline/model/gguf_tools.py looks) with a VERSION file, so the converter
always matches the library that loads what it writes. Standard library only: it runs in a bare
venv and in the image build. Does nothing when DEST already holds the locked version.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "llama-cpp-python"
WANTED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


def locked_version(lock: Path) -> str:
    for line in lock.read_text().splitlines():
        m = re.match(r"^llama[-_.]cpp[-_.]python==(\S+)$", line.strip(), re.I)
        if m:
            return m[1]
    sys.exit(f"{lock}: no {PACKAGE}==VERSION pin")


def unpack(sdist: Path, dest: Path) -> None:
    with tarfile.open(sdist) as tar:
        members = []
        for member in tar.getmembers():
            parts = member.name.split("/", 3)  # <pkg>-<ver>/vendor/llama.cpp/<rest>
            if len(parts) < 4 or parts[1:3] != ["vendor", "llama.cpp"]:
                continue
            rest = parts[3]
            if any(rest == w or (w.endswith("/") and rest.startswith(w)) for w in WANTED) and (
                    member.isfile() or member.isdir()):
                member.name = rest
                members.append(member)
        if not any(m.name == "convert_hf_to_gguf.py" for m in members):
            sys.exit(f"{sdist.name}: no vendor/llama.cpp/convert_hf_to_gguf.py inside")
        # the "data" filter (Python >= 3.11.4, 3.10.12) refuses links and paths that leave dest
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **extra)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2])
    lock, dest = Path(sys.argv[1]), Path(sys.argv[2])
    version = locked_version(lock)
    stamp = dest / "VERSION"
    if stamp.is_file() and stamp.read_text().strip() == version and (dest / "convert_hf_to_gguf.py").is_file():
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "-d", tmp, f"{PACKAGE}=={version}"], check=True)
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if len(sdists) != 1:
            sys.exit(f"pip download {PACKAGE}=={version}: expected one source package, got {sdists}")
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        unpack(sdists[0], partial)
        (partial / "VERSION").write_text(version + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        partial.rename(dest)
    print(f"llama.cpp converter {version} -> {dest}")


if __name__ == "__main__":
    main()
