"""llama.cpp's own tools for GGUF files: its HF -> GGUF converter and its quantizer.

Why llama.cpp's and not ours: the GGUF a runtime loads must be laid out the way that runtime's
loader expects (tensor names, vocabulary, pre-tokenizer hash), and only llama.cpp's converter
tracks that. The converter script (with its `conversion` package and the gguf-py it was written
against) is unpacked by `make install` from the llama-cpp-python source package the lock pins
(requirements/llama_cpp_converter.py), so it always matches the library that loads what it
writes; the quantizer is that library's llama_model_quantize. Both run in a child process: they
print a line per tensor at the C level, which goes to a log file, and a crash in either cannot
take the caller with it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from ..errors import PipelineError

CONVERTER_ENV = "SFT_PIPELINE_LLAMA_CPP_DIR"  # where convert_hf_to_gguf.py lies, when not in the venv
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")  # what convert_hf_to_gguf.py writes itself


class GGUFError(PipelineError, RuntimeError):
    """The converter or the quantizer failed, or cannot be found."""


def converter_dir() -> Path:
    """The folder of convert_hf_to_gguf.py: $SFT_PIPELINE_LLAMA_CPP_DIR, else <venv>/share/llama.cpp."""
    folder = Path(os.environ.get(CONVERTER_ENV) or Path(sys.prefix) / "share" / "llama.cpp")
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise GGUFError(f"llama.cpp's converter is not at {folder}/convert_hf_to_gguf.py: run `make install` "
                        f"(it unpacks it from llama-cpp-python's source package), or set {CONVERTER_ENV}")
    return folder


@lru_cache(maxsize=None)
def supported_architectures(folder: Path | None = None) -> frozenset[str]:
    """The HF architectures (config.json "architectures") the converter turns into text models.

    Read from the converter's own table (conversion/__init__.py's TEXT_MODEL_MAP) without importing
    it: importing loads torch and every model module, which `validate` must not pay for."""
    source = (folder or converter_dir()) / "conversion" / "__init__.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP" and node.value is not None:
            return frozenset(ast.literal_eval(node.value).keys())
    raise GGUFError(f"{source}: no TEXT_MODEL_MAP (a llama.cpp converter this code does not know)")


def quantization_types() -> dict[str, int]:
    """llama.cpp's file types by their usual name (Q4_K_M, Q8_0, F16, ...) -> LLAMA_FTYPE value."""
    import llama_cpp

    prefix = "LLAMA_FTYPE_MOSTLY_"
    return {name[len(prefix):]: getattr(llama_cpp, name) for name in dir(llama_cpp) if name.startswith(prefix)}


def canonical_type(name: str) -> str:
    """The llama.cpp spelling of a quantization type given in any case ("q4_k_m" -> "Q4_K_M");
    GGUFError naming the known ones for anything else."""
    known = quantization_types()
    by_upper = {k.upper(): k for k in known}
    found = by_upper.get(name.strip().upper())
    if found is None:
        raise GGUFError(f"unknown GGUF quantization type '{name}' (llama.cpp knows: {', '.join(sorted(known))})")
    return found


def convert(model_dir: Path, out_file: Path, outtype: str, log: Path) -> None:
    """HF checkpoint folder -> one GGUF file of `outtype` (one of CONVERTER_TYPES), via llama.cpp's
    convert_hf_to_gguf.py in a child process; its output goes to `log`."""
    if outtype not in CONVERTER_TYPES:
        raise GGUFError(f"the converter writes {', '.join(CONVERTER_TYPES)}, not '{outtype}' (quantize from f16)")
    folder = converter_dir()
    command = [sys.executable, str(folder / "convert_hf_to_gguf.py"), str(model_dir),
               "--outfile", str(out_file), "--outtype", outtype]
    _run(command, log, f"convert_hf_to_gguf.py ({outtype})")
    if not out_file.is_file():
        raise GGUFError(f"convert_hf_to_gguf.py exited 0 but wrote no {out_file} (see {log})")


def quantize(src: Path, dst: Path, type_name: str, log: Path, threads: int = 0) -> None:
    """GGUF `src` -> `dst` quantized to `type_name` (Q4_K_M, Q8_0, ...) by llama.cpp's quantizer,
    in a child process whose C-level output goes to `log`. threads 0: llama.cpp's default."""
    ftype = quantization_types()[canonical_type(type_name)]
    command = [sys.executable, "-m", __name__, "quantize", str(src), str(dst), str(ftype), str(threads)]
    _run(command, log, f"llama_model_quantize ({type_name})")
    if not dst.is_file():
        raise GGUFError(f"llama_model_quantize exited 0 but wrote no {dst} (see {log})")


def _run(command: list[str], log: Path, what: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as sink:
        sink.write(("$ " + " ".join(command) + "\n").encode())
        sink.flush()
        code = subprocess.call(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if code != 0:
        raise GGUFError(f"{what} failed with exit status {code}: {_last_line(log)} (full output: {log})")


def _last_line(log: Path) -> str:
    lines = [l.strip() for l in log.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
    return lines[-1][:300] if lines else "no output"


def _quantize_main(src: str, dst: str, ftype: str, threads: str) -> int:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.nthread = int(threads)
    return int(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params))


if __name__ == "__main__":  # the quantizer's child process (see quantize)
    if len(sys.argv) == 6 and sys.argv[1] == "quantize":
        sys.exit(_quantize_main(*sys.argv[2:]))
    sys.exit("usage: python -m sft_pipeline.model.gguf_tools quantize SRC DST FTYPE THREADS")
