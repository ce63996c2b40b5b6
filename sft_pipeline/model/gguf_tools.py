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
import json
import os
import re
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import PipelineError

CONVERTER_ENV = "SFT_PIPELINE_LLAMA_CPP_DIR"  # where convert_hf_to_gguf.py lies, when not in the venv
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")  # what convert_hf_to_gguf.py writes itself
EXPORT_DIR = "export"  # the export stage's folder in a run directory


def gguf_file(run_dir: Any, type_name: str) -> Path:
    """Where the export stage puts the GGUF file of `type_name` (any case: "q4_k_m") in a run
    directory (a path or a RunDirectory): <run dir>/export/model-<TYPE>.gguf, TYPE as llama.cpp spells
    it. The contract `chat --model gguf` and `serve` find the files by; the file may not exist."""
    root = Path(getattr(run_dir, "path", run_dir))
    return root / EXPORT_DIR / gguf_name(type_name)


def gguf_name(type_name: str) -> str:
    return f"model-{canonical_type(type_name)}.gguf"


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


def architectures(config_file: Path) -> list[str]:
    """A checkpoint's config.json "architectures" (an empty list where it names none)."""
    try:
        found = json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError) as err:
        raise GGUFError(f"{config_file}: cannot read the model's architectures ({err})") from None
    return [str(a) for a in found]


def unsupported(archs: list[str], where: str) -> str | None:
    """Why llama.cpp's converter cannot turn a model of `archs` into a GGUF file, in one line
    naming `where` they were read; None when it can."""
    known = supported_architectures()
    if not archs:
        return f"{where}: names no architecture, so llama.cpp's converter cannot export it to GGUF"
    missing = [a for a in archs if a not in known]
    if missing:
        return (f"{where}: {', '.join(missing)} is not an architecture llama.cpp's converter supports, so this "
                f"model cannot be exported to GGUF ({len(known)} are, e.g. LlamaForCausalLM, Qwen2ForCausalLM)")
    return None


def convert(model_dir: Path, out_file: Path, outtype: str, log: Path) -> dict[str, float]:
    """HF checkpoint folder -> one GGUF file of `outtype` (one of CONVERTER_TYPES), via llama.cpp's
    convert_hf_to_gguf.py in a child process; its output goes to `log`. Returns the child's
    wall time and peak resident memory (what a user sizes a machine by)."""
    if outtype not in CONVERTER_TYPES:
        raise GGUFError(f"the converter writes {', '.join(CONVERTER_TYPES)}, not '{outtype}' (quantize from f16)")
    folder = converter_dir()
    command = [sys.executable, "-m", __name__, "convert", str(folder / "convert_hf_to_gguf.py"), str(model_dir),
               "--outfile", str(out_file), "--outtype", outtype]
    cost, _ = _run(command, log, f"convert_hf_to_gguf.py ({outtype})")
    if not out_file.is_file():
        raise GGUFError(f"convert_hf_to_gguf.py exited 0 but wrote no {out_file} (see {log})")
    return cost


def quantize(src: Path, dst: Path, type_name: str, log: Path, threads: int = 0) -> dict[str, float]:
    """GGUF `src` -> `dst` quantized to `type_name` (Q4_K_M, Q8_0, ...) by llama.cpp's quantizer,
    in a child process whose C-level output goes to `log`. threads 0: llama.cpp's default.
    Returns the child's wall time and peak resident memory."""
    ftype = quantization_types()[canonical_type(type_name)]
    command = [sys.executable, "-m", __name__, "quantize", str(src), str(dst), str(ftype), str(threads)]
    cost, output = _run(command, log, f"llama_model_quantize ({type_name})")
    if not dst.is_file():
        raise GGUFError(f"llama_model_quantize exited 0 but wrote no {dst} (see {log})")
    return {**cost, **quantized_types(output)}


# the quantizer's line per tensor: "[  2/ 20] token_embd.weight - [64, 49152, 1, 1], type = f16,
# converting to q8_0 .. size = ..." (or "type = f32, size = ..." for a tensor it keeps)
_TENSOR_LINE = re.compile(r"^\[\s*\d+/\s*(\d+)\] \S+\s+- \[[^]]*\], type =\s*(\w+), (?:converting to (\w+))?", re.M)


def quantized_types(output: str) -> dict[str, Any]:
    """What the quantizer made of each tensor, from its own per-tensor report: counts by type,
    and its warning when rows not divisible by a K-quant's 256 made it fall back to another type.
    (Reading the written file back with gguf's GGUFReader says the same, in ~8 s per file.)"""
    counts: dict[str, int] = {}
    total = 0
    for match in _TENSOR_LINE.finditer(output):
        total = int(match.group(1))
        kind = (match.group(3) or match.group(2)).upper()
        counts[kind] = counts.get(kind, 0) + 1
    if sum(counts.values()) != total or not total:
        raise GGUFError(f"llama_model_quantize reported {sum(counts.values())} of {total} tensors: "
                        "not the output this code reads (another llama.cpp version?)")
    fallback = re.search(r"WARNING: (\d+) of (\d+) tensor\(s\) required fallback quantization", output)
    return {"tensor_types": dict(sorted(counts.items())), "fallback_tensors": int(fallback.group(1)) if fallback else 0}


def _run(command: list[str], log: Path, what: str) -> tuple[dict[str, float], str]:
    """Run `command` with its output appended to `log`: its wall time and peak resident memory,
    and what it printed. The peak is the child's own VmHWM, which it prints as it exits
    (_report_peak): wait4's ru_maxrss would count the parent's pages too (Linux keeps the
    high-water mark across fork and exec, and this parent holds torch)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as sink:
        sink.write(("$ " + " ".join(command) + "\n").encode())
        sink.flush()
        offset = sink.tell()
        start = time.perf_counter()
        code = subprocess.call(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
    with open(log, "rb") as source:
        source.seek(offset)
        output = source.read().decode("utf-8", errors="replace")
    if code != 0:
        raise GGUFError(f"{what} failed with exit status {code}: {_last_line(log)} (full output: {log})")
    peak = re.findall(rf"^{PEAK_LINE} (\d+)$", output, re.M)
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(int(peak[-1]) / 1024, 1) if peak else None}, output


PEAK_LINE = "sft-pipeline peak RSS KiB:"


def _report_peak() -> None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:  # not Linux: no peak recorded
        return
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    if found:
        sys.stdout.flush()
        print(f"{PEAK_LINE} {found.group(1)}", flush=True)


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
             if line.strip() and not line.startswith(PEAK_LINE)]
    return lines[-1][:300] if lines else "no output"


def _quantize_main(src: str, dst: str, ftype: str, threads: str) -> int:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.nthread = int(threads)
    return int(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params))


def _convert_main(script: str, args: list[str]) -> None:
    """The converter run as its own __main__ in this process, so the peak reported is its own."""
    import runpy

    sys.argv = [script, *args]
    sys.path.insert(0, str(Path(script).parent))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":  # the converter's and the quantizer's child process (see convert, quantize)
    import atexit

    atexit.register(_report_peak)
    if len(sys.argv) == 6 and sys.argv[1] == "quantize":
        sys.exit(_quantize_main(*sys.argv[2:]))
    if len(sys.argv) > 3 and sys.argv[1] == "convert":
        _convert_main(sys.argv[2], sys.argv[3:])
        sys.exit(0)
    sys.exit("usage: python -m sft_pipeline.model.gguf_tools quantize SRC DST FTYPE THREADS | convert SCRIPT ARGS...")
