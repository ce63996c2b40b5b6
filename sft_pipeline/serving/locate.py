"""Which GGUF file `serve` loads: the export stage's <run dir>/export/model-<TYPE>.gguf, TYPE being
llama.cpp's own spelling of the quantization (F16, Q8_0, Q4_K_M), chosen by serve.quant."""

from __future__ import annotations

from pathlib import Path

from ..model.gguf_tools import GGUFError, canonical_type
from ..rundir.directory import RunDirectory
from . import ServeError

EXPORT = "export"
PREFIX, SUFFIX = "model-", ".gguf"
# serve.quant auto: the smallest and fastest on a CPU first; the larger ones are closer to the
# merged model's answers, and served only when asked for (or when they are all there is).
PREFERENCE = ("Q4_K_M", "Q8_0", "F16")


def export_folder(run_dir: RunDirectory) -> Path:
    """The run's complete, fresh export folder; otherwise StageError naming `sft-pipeline export`."""
    return run_dir.stage_dir(EXPORT)


def present(folder: Path) -> dict[str, Path]:
    """TYPE -> file, for every model-<TYPE>.gguf in the folder."""
    return {p.name[len(PREFIX):-len(SUFFIX)]: p for p in sorted(folder.glob(f"{PREFIX}*{SUFFIX}")) if p.is_file()}


def pick(folder: Path, quant: str) -> Path:
    """The file of type `quant` (any case), or for "auto" the first of PREFERENCE there (else the
    only file there); ServeError naming what is there otherwise."""
    files = present(folder)
    there = ", ".join(files) or "none"
    if quant.lower() != "auto":
        try:
            wanted = canonical_type(quant)
        except GGUFError as err:
            raise ServeError(f"serve.quant: {err}") from None
        if wanted not in files:
            raise ServeError(f"serve.quant {wanted}: no {folder / (PREFIX + wanted + SUFFIX)} (exported types: {there}); "
                             f"export that type, or serve one of these with --quant")
        return files[wanted]
    for kind in PREFERENCE:
        if kind in files:
            return files[kind]
    if len(files) == 1:
        return next(iter(files.values()))
    if not files:
        raise ServeError(f"{folder}: no {PREFIX}<TYPE>{SUFFIX} file to serve: run `sft-pipeline export <recipe>` again")
    raise ServeError(f"{folder}: several GGUF files ({there}) and none of {', '.join(PREFERENCE)}: choose one with "
                     f"--quant TYPE (serve.quant)")


def gguf_to_serve(run_dir: RunDirectory, quant: str, gguf: Path | None) -> Path:
    """`--gguf PATH` when given (checked to exist), else the run's export by serve.quant."""
    if gguf is not None:
        if not gguf.is_file():
            raise ServeError(f"--gguf {gguf}: file not found")
        return gguf
    return pick(export_folder(run_dir), quant)
