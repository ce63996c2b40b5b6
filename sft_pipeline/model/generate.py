"""Answer prompts with the base model, the trained adapter, or the merged model, using the
recipe's template: the seed's inference step, batched and greedy by default."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

from . import precision
from ..config import Recipe
from ..progress import progress
from ..run.rundir import RunDir
from ..data.prompts import render_prompt

# base: model.ref as it is; adapter: the trained model as train saved it (LoRA: the adapter on the
# base; method full: train's whole model, there being no adapter); merged: merge's standalone export
MODELS = ("base", "adapter", "merged")


def inference_precision(recipe: Recipe) -> precision.Precision:
    """Inference computes as training did on this machine: bf16 where it is fast, else fp32."""
    from .hardware import detect

    return precision.plan(recipe, detect())


def load_for_inference(run: RunDir, which: str) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) for `which` of MODELS, in the weights' dtype training used."""
    from peft import PeftModel

    from .loader import load_model, load_tokenizer

    recipe = run.recipe
    dtype = inference_precision(recipe).weights_dtype
    tokenizer = load_tokenizer(recipe.model.ref, recipe.model.trust_remote_code)
    trained_whole = which == "adapter" and recipe.method == "full"
    if which == "merged" or trained_whole:
        path = run.stage_dir("train") / "model" if trained_whole else run.stage_dir("merge") / "model"
        model = load_model(str(path), dtype=dtype, trust_remote_code=recipe.model.trust_remote_code)
    else:
        model = load_model(recipe.model.ref, dtype=dtype, trust_remote_code=recipe.model.trust_remote_code,
                           allow_pickle=recipe.model.allow_pickle)
        if which == "adapter":
            model = PeftModel.from_pretrained(model, str(run.stage_dir("train") / "adapter"))
    model.eval()
    return model, tokenizer


def prompt_text(recipe: Recipe, question: str, tokenizer: Any) -> str:
    return render_prompt([{"role": "user", "content": question}], recipe.template, tokenizer)


def generate(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int,
             label: str = "generate", compute: precision.Precision | None = None) -> list[str]:
    """Greedy answers, batched with left padding; each stops at EOS. `compute`: run under its
    autocast, as training computed (needed where fp32 weights meet bf16 compute). The padding
    side is passed per call, so the caller's tokenizer keeps its own."""
    import torch

    answers: list[str] = []
    with progress() as bar:
        task = bar.add_task(label, total=len(prompts))
        for lo in range(0, len(prompts), batch_size):
            chunk = prompts[lo : lo + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
            with torch.no_grad(), precision.autocast(compute, model.device.type) if compute else nullcontext():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            for row in out[:, enc["input_ids"].shape[1] :]:
                answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
            bar.advance(task, len(chunk))
    return answers


def read_prompts(prompt: str | None, prompts_file: Path | None) -> list[str]:
    if prompts_file is not None:
        lines = [l.strip() for l in prompts_file.read_text(encoding="utf-8").splitlines()]
        return [l for l in lines if l]
    return [prompt] if prompt else []
