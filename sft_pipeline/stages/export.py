"""After merge: the merged model as GGUF files for llama.cpp and Ollama, verified against transformers.

export/model-<TYPE>.gguf for each of export.types (TYPE as llama.cpp spells it: F16, Q8_0,
Q4_K_M): F16 written by llama.cpp's own converter, every other type quantized from it by
llama.cpp's quantizer (model/gguf_tools.py). The recipe's prompt template travels in each file
as its tokenizer.chat_template (a Jinja template generated for seed/custom templates,
model/chat_template.py): the converter reads it from a staging copy of merge/model whose
weights are hard links and whose tokenizer_config.json is rewritten. Beside them: an Ollama
Modelfile, merge's generation_config.json, verify.json (model/gguf_verify.py) and summary.json.

Not part of `sft-pipeline run`: an architecture llama.cpp cannot convert (OPT, the seed's Xeon
model) still trains and merges; `export` and `validate` (with an export section) refuse it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import PipelineError
from ..model import gguf_tools
from ..model.sampling import GENERATION_CONFIG
from ..rundir.directory import RunDirectory
from ..rundir.files import link_tree, write_json
from ..rundir.stage_spec import SUMMARY, StageSpec

GGUF_FILES = "model-*.gguf"  # model-<TYPE>.gguf, TYPE as llama.cpp spells it (model/gguf_tools.gguf_name)
MODELFILE = "Modelfile"  # Ollama's: `ollama create NAME -f Modelfile` in this folder

SPEC = StageSpec(
    # template: the chat template the files carry and the verification prompts; generate: the
    # Modelfile's sampling parameters
    name="export", reads=("export", "template", "generate"),
    upstream=("template", "merge"),
    writes=(MODELFILE, "verify.json", SUMMARY, "tools.log"),
    may_write={GGUF_FILES: "one per type in export.types (model-F16.gguf, model-Q8_0.gguf, model-Q4_K_M.gguf)",
               GENERATION_CONFIG: "merge/model has one (the recipe's sampling settings)"},
)
# F16 is always converted (every other type is quantized from it): written, removed at the end when
# export.types does not list it
SOURCE = "F16"
CONVERTED = {"F16": "f16", "BF16": "bf16"}  # what the converter writes itself; the rest is quantized

console = Console(stderr=True)


class ExportError(PipelineError, RuntimeError):
    pass


def produce(run_dir: RunDirectory, out: Path) -> None:
    from transformers import AutoTokenizer

    from ..model.chat_template import chat_layout, gguf_chat_template

    recipe, cfg = run_dir.recipe, run_dir.recipe.export
    merged = run_dir.artifact("merge", "model")
    problem = gguf_tools.unsupported(gguf_tools.architectures(merged / "config.json"), str(merged / "config.json"))
    if problem:
        raise ExportError(problem)
    types = [gguf_tools.canonical_type(t) for t in cfg.types]

    # The chat template the files carry, and its layout for Ollama
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    chat_template = gguf_chat_template(recipe.template, tokenizer)
    layout = chat_layout(recipe.template, tokenizer)

    # Convert (F16, BF16) from a staging copy that carries the template, then quantize from F16
    log = out / "tools.log"
    costs: dict[str, dict[str, Any]] = {}
    staging = out / ".staging" / "model"  # the converter names the model after its folder (general.name)
    stage_model(merged, staging, chat_template)
    try:
        for name in dict.fromkeys([SOURCE, *[t for t in types if t in CONVERTED]]):
            console.print(f"converting merge/model to {name} (llama.cpp's convert_hf_to_gguf.py)")
            costs[name] = {"by": "convert_hf_to_gguf.py", **gguf_tools.convert(staging, out / gguf_tools.gguf_name(name),
                                                                               CONVERTED[name], log)}
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)
    source = out / gguf_tools.gguf_name(SOURCE)
    for name in (t for t in types if t not in CONVERTED):
        console.print(f"quantizing to {name} (llama.cpp's llama_model_quantize)")
        costs[name] = {"by": "llama_model_quantize from F16", **gguf_tools.quantize(source, out / gguf_tools.gguf_name(name),
                                                                                    name, log)}
    record = verify(run_dir, merged, out, types)
    for name in types:
        carried = record["files"][name].pop("chat_template")
        if carried != chat_template:
            raise ExportError(f"export: {gguf_tools.gguf_name(name)} does not carry the recipe's chat template "
                              f"(tokenizer.chat_template is {'missing' if carried is None else 'another one'}; see {log})")
    if SOURCE not in types:
        source.unlink()
    files = {name: {"file": gguf_tools.gguf_name(name), "bytes": (out / gguf_tools.gguf_name(name)).stat().st_size,
                    **costs[name]} for name in types}
    if (merged / GENERATION_CONFIG).is_file():
        shutil.copyfile(merged / GENERATION_CONFIG, out / GENERATION_CONFIG)
    from_type = write_modelfile(run_dir, out, files, layout, tokenizer)
    record["files"] = {name: {**files[name], **record["files"][name]} for name in types}
    write_json(out / "verify.json", {**record, "chat_template": chat_template,
                                     "ollama_template": "from the recipe's template" if layout else
                                     "none (Ollama uses the GGUF's tokenizer.chat_template)"})
    write_json(out / SUMMARY, {
        "files": {n: f["file"] for n, f in files.items()}, "modelfile_from": from_type,
        "f16_greedy_equal": record["f16_greedy_equal"],
        "agreement_rate": {n: record["files"][n]["agreement_rate"] for n in types},
        "sizes_mib": {n: round(f["bytes"] / 2**20, 2) for n, f in files.items()},
        "costs": costs})
    console.print(f"export: {', '.join(f['file'] for f in files.values())} and a Modelfile in {run_dir.path / 'export'}")


def stage_model(merged: Path, staging: Path, chat_template: str) -> None:
    """merge/model as the converter should see it: the same files (hard links, no copy of the
    weights), with the chat template in tokenizer_config.json, which the converter reads before
    chat_template.jinja/.json (those are dropped so nothing else can win). The linked
    tokenizer_config.json is replaced, never written through: that would change merge's."""
    link_tree(merged, staging)
    for name in ("chat_template.jinja", "chat_template.json"):
        (staging / name).unlink(missing_ok=True)
    config_file = staging / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    config["chat_template"] = chat_template
    config_file.unlink(missing_ok=True)
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def eval_prompts(run_dir: RunDirectory, limit: int | None) -> list[str]:
    """The rendered prompts evaluate answers (template's eval split, else its train split)."""
    import datasets

    split = "eval" if run_dir.artifact("template", "eval").is_dir() else "train"
    prompts = datasets.load_from_disk(str(run_dir.artifact("template", split)))["prompt"]
    return list(prompts if limit is None else prompts[:limit])


def verify(run_dir: RunDirectory, merged: Path, out: Path, types: list[str]) -> dict[str, Any]:
    """Every file answers the eval prompts; F16's greedy tokens equal transformers' (near-ties
    excepted, recorded); every file's agreement rate. Fails on a real F16 disagreement, or on a
    file answering nothing where the merged model answers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..model.gguf_verify import check_file, reference_answers, stop_ids

    cfg = run_dir.recipe.export
    prompts = eval_prompts(run_dir, cfg.verify_prompts)
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    stops = stop_ids(tokenizer, model)
    console.print(f"verify: transformers' greedy answers to {len(prompts)} prompts (fp32, {cfg.verify_tokens} tokens)")
    references = reference_answers(model, tokenizer, prompts, cfg.verify_tokens, stops)
    del model
    files = {}
    for name in dict.fromkeys([SOURCE, *types]):
        console.print(f"verify: {gguf_tools.gguf_name(name)} through llama-cpp-python")
        files[name] = check_file(out / gguf_tools.gguf_name(name), references, prompts, cfg.verify_tokens, stops,
                                 cfg.tie_margin)
    f16 = files[SOURCE]
    record: dict[str, Any] = {
        "prompts": len(prompts), "tokens": cfg.verify_tokens, "stop_ids": stops, "tie_margin": cfg.tie_margin,
        "reference": "transformers greedy on merge/model in float32, prompt ids from its tokenizer",
        "transformers": [{"tokens": r.tokens, "top2_margins": [round(m, 5) for m in r.margins]} for r in references],
        "f16_greedy_equal": f16["greedy_equal_prompts"] == len(prompts),
        "f16_near_ties": [d for d in f16["disagreements"] if d["near_tie"]],
        "files": {name: files[name] for name in types},
    }
    real = [d for d in f16["disagreements"] if not d["near_tie"]]
    if real:
        d = real[0]
        raise ExportError(f"export: {gguf_tools.gguf_name(SOURCE)} disagrees with transformers at token {d['position']} "
                          f"of eval prompt {d['prompt']} (transformers' top-2 logit margin {d['transformers_top2_margin']:.3g}"
                          f" > export.tie_margin {cfg.tie_margin}): the GGUF does not compute the merged model")
    answered = {i for i, r in enumerate(references) if tokenizer.decode(r.tokens, skip_special_tokens=True).strip()}
    for name in types:
        silent = sorted(set(files[name]["empty_answers"]) & answered)
        if silent:
            raise ExportError(f"export: {gguf_tools.gguf_name(name)} answers nothing to eval prompt {silent[0]}, "
                              "which the merged model answers")
    return record


def write_modelfile(run_dir: RunDirectory, out: Path, files: dict[str, dict[str, Any]], layout: Any, tokenizer: Any) -> str:
    """The Ollama Modelfile, FROM export.modelfile_type, else Q4_K_M, else the smallest file."""
    from ..model.modelfile import modelfile_text

    cfg = run_dir.recipe.export
    chosen = cfg.modelfile_type or ("Q4_K_M" if "Q4_K_M" in files else min(files, key=lambda n: files[n]["bytes"]))
    system = layout.default_system if layout is not None else run_dir.recipe.template.system
    stops = end_tokens(out, tokenizer)
    header = (f"Written by `sft-pipeline export` (template.kind {run_dir.recipe.template.kind}).\n"
              "Create the model from this folder: ollama create NAME -f Modelfile")
    (out / MODELFILE).write_text(modelfile_text(files[chosen]["file"], layout, system, stops, run_dir.recipe.generate,
                                                  header), encoding="utf-8")
    return chosen


def end_tokens(out: Path, tokenizer: Any) -> list[str]:
    """The end-of-turn tokens' texts (Ollama stops on text): the tokenizer's EOS and those the
    generation config names."""
    ids = {tokenizer.eos_token_id} - {None}
    config = out / GENERATION_CONFIG
    if config.is_file():
        eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token_id")
        ids |= set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    return [tokenizer.convert_ids_to_tokens(i) for i in sorted(ids)]

