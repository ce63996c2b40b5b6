"""Answer prompts with the base model, the trained model (adapter, or method full's whole model), or the merged model, using the
recipe's template: the seed's inference step, batched, decoded as the recipe's `generate:`
section says (greedy by default; model/sampling.py builds the one GenerationConfig)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from rich.console import Console

from ..config import GenerateConfig, Recipe
from ..data.prompts import render_prompt
from ..progress import progress
from ..rundir.directory import RunDirectory
from . import precision, sampling

# base: model.ref as it is; trained: the model as train saved it (LoRA: the adapter on the base;
# method full: train's whole model, there being no adapter); merged: merge's standalone export
MODELS = ("base", "trained", "merged")
# the name "trained" had before it covered method full's whole model; still accepted
ALIASES = {"adapter": "trained"}


def model_choice(name: str, extra: tuple[str, ...] = ()) -> str:
    """The --model value as one of MODELS (+ extra), an alias resolved; a one-line error otherwise."""
    from ..config import RecipeError

    name = ALIASES.get(name, name)
    if name not in (*MODELS, *extra):
        raise RecipeError(f"--model {name}: expected one of {', '.join((*MODELS, *extra))}")
    return name

console = Console(stderr=True)


def inference_precision(recipe: Recipe) -> precision.Precision:
    """Inference computes as training did on this machine: bf16 where it is fast, else fp32."""
    from .hardware import detect

    return precision.plan(recipe, detect())


def load_for_inference(run_dir: RunDirectory, which: str) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) for `which` of MODELS, in the weights' dtype training used."""
    from peft import PeftModel

    from .loader import load_model, load_tokenizer

    recipe = run_dir.recipe
    dtype = inference_precision(recipe).weights_dtype
    tokenizer = load_tokenizer(recipe.model.ref, recipe.model.trust_remote_code)
    trained_whole = which == "trained" and recipe.method == "full"
    if which == "merged" or trained_whole:
        path = run_dir.artifact("train", "model") if trained_whole else merged_model(run_dir)
        model = load_model(str(path), dtype=dtype, trust_remote_code=recipe.model.trust_remote_code)
    else:
        model = load_model(recipe.model.ref, dtype=dtype, trust_remote_code=recipe.model.trust_remote_code,
                           allow_pickle=recipe.model.allow_pickle)
        if which == "trained":
            model = PeftModel.from_pretrained(model, str(run_dir.artifact("train", "adapter")))
    model.eval()
    return model, tokenizer


def merged_model(run_dir: RunDirectory) -> Path:
    """merge's model folder, also where merge is stale only because the recipe's generate settings
    changed since: its weights do not depend on them, and readers pass the recipe's settings
    explicitly, so `chat --model merged --set generate.temperature=0.7` needs no new merge.
    Only the saved generation_config.json is then behind, which is said once."""
    from .sampling import RECORD

    made_for = run_dir.artifact("merge", RECORD, fresh=False)  # merge may be stale: that is the case here
    if run_dir.stage_state("merge") == "stale" and made_for.is_file():
        made = json.loads(made_for.read_text(encoding="utf-8"))
        as_made = run_dir.with_recipe(run_dir.recipe.model_copy(
            update={"generate": run_dir.recipe.generate.model_copy(update=made)}))
        if as_made.stage_state("merge") == "complete":
            console.print("[yellow]note: merge/model/generation_config.json was written for other generate settings "
                          "than these (used here); `sft-pipeline merge` rewrites it", highlight=False)
            return as_made.artifact("merge", "model")
    return run_dir.artifact("merge", "model")


def prompt_text(recipe: Recipe, question: str, tokenizer: Any) -> str:
    return render_prompt([{"role": "user", "content": question}], recipe.template, tokenizer)


def generate(model: Any, tokenizer: Any, prompts: list[str], settings: GenerateConfig, label: str = "generate",
             compute: precision.Precision | None = None, plain_greedy: bool = False) -> list[str]:
    """Answers decoded as `settings` say, batched (settings.batch_size) with left padding; each
    stops at EOS. Sampling draws from settings.seed, fixed once per call, so the same seed,
    prompts and batch size give the same text twice (rows of a batch share one stream of
    draws); plain_greedy: argmax without repetition penalty (evaluate's comparisons).
    `compute`: run under its autocast, as training computed (needed where fp32 weights meet
    bf16 compute). The padding side is passed per call, so the caller's tokenizer keeps its own."""
    import torch

    config = sampling.generation_config(settings, tokenizer, model.generation_config, plain_greedy=plain_greedy)
    seed = settings.seed if config.do_sample else None
    answers: list[str] = []
    with progress() as bar, sampling.seeded(seed, model.device.type):
        task = bar.add_task(label, total=len(prompts))
        for lo in range(0, len(prompts), settings.batch_size):
            chunk = prompts[lo : lo + settings.batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
            enc = enc.to(model.device)
            with torch.no_grad(), precision.autocast(compute, model.device.type) if compute else nullcontext():
                out = model.generate(**enc, generation_config=config)
            for row in out[:, enc["input_ids"].shape[1] :]:
                answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
            bar.advance(task, len(chunk))
    return answers


def read_prompts(prompt: str | None, prompts_file: Path | None) -> list[str]:
    if prompts_file is not None:
        lines = [line.strip() for line in prompts_file.read_text(encoding="utf-8").splitlines()]
        return [line for line in lines if line]
    return [prompt] if prompt else []
