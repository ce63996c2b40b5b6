"""The model card of a published run, built with huggingface_hub's ModelCard so the Hub reads its
metadata as it reads any card's: base_model (the model tree), datasets, library_name (which
loader snippet the Hub shows), tags, license and model-index (evaluate's figures as EvalResults).

Everything on the card is read from the run directory (RunFacts): a run pushed from another box
gets the same card. Nothing secret is read: the recipe, stage outputs and the W&B run id only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.sources import source_kind
from ..model.loader import HUB_ID
from ..rundir.directory import RunDirectory
from ..rundir.files import read_json
from ..rundir.stage_spec import METRICS, STATS, SUMMARY

# The bundled model is a GGUF copy of a Hub model: the card names the Hub model, whose card says
# where the weights came from, and its licence (HuggingFaceTB/SmolLM2-135M-Instruct: apache-2.0)
BUNDLED_BASES = {"bundled:smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}
WHAT = ("adapter", "merged", "gguf")
LIBRARY = {"adapter": "peft", "merged": "transformers", "gguf": None}  # gguf: the Hub tags it from the files


@dataclass
class RunFacts:
    """What the card says, as the run directory holds it; None where a stage has not run."""

    name: str
    method: str
    model_ref: str
    data_source: str
    eval_source: str | None
    recipe_yaml: str
    load_stats: dict[str, Any] | None
    train_metrics: dict[str, Any] | None
    evaluation: dict[str, Any] | None  # evaluate's SUMMARY
    eval_split: str | None  # the split evaluate answered (its REPORT), for the model-index
    wandb: dict[str, Any] | None  # run_id, project, url (url only when the run was online)


def _read(run_dir: RunDirectory, stage: str, name: str) -> dict[str, Any] | None:
    """The stage's JSON file `name`; None where the stage is not complete for this recipe or
    (a run from before the file existed) the file is not there."""
    if run_dir.stage_state(stage) != "complete":
        return None
    path = run_dir.artifact(stage, name, fresh=False)  # its state was just checked
    return read_json(path) if path.is_file() else None


def read_facts(run_dir: RunDirectory) -> RunFacts:
    from ..stages.evaluate import REPORT
    from ..training.trackers import IDENTITY

    recipe = run_dir.recipe
    wandb = None
    ident = _read(run_dir, "train", IDENTITY) if recipe.tracking.wandb != "off" else None
    if ident is not None:
        wandb = {"run_id": ident.get("wandb_run_id"), "project": recipe.tracking.project, "url": ident.get("wandb_url")}
    report = _read(run_dir, "evaluate", REPORT)
    frozen = run_dir.path / "recipe.yaml"
    return RunFacts(
        name=recipe.name, method=recipe.method, model_ref=recipe.model.ref, data_source=recipe.data.source,
        eval_source=recipe.data.eval_source,
        recipe_yaml=frozen.read_text(encoding="utf-8") if frozen.is_file() else "",
        load_stats=_read(run_dir, "load", STATS),
        train_metrics=_read(run_dir, "train", METRICS),
        evaluation=_read(run_dir, "evaluate", SUMMARY),
        eval_split=report.get("split") if report is not None else None,
        wandb=wandb,
    )


def base_model(ref: str) -> tuple[str | None, str | None]:
    """(the base's Hub id, its licence when known). A local folder or .gguf file has no Hub id
    the card could honestly name."""
    if ref in BUNDLED_BASES:
        return BUNDLED_BASES[ref]
    if not ref.startswith("bundled:") and not Path(ref).exists() and HUB_ID.match(ref):
        return ref, None
    return None, None


def hub_datasets(*sources: str | None) -> list[str]:
    """The sources that are Hub dataset ids (the Hub links them); local files and Deep Lake paths are not."""
    found = []
    for source in sources:
        if source and source_kind(source) == "hf":
            name = source.removeprefix("hf:")
            if not Path(name).exists() and HUB_ID.match(name) and name not in found:
                found.append(name)
    return found


def eval_results(facts: RunFacts, model_name: str) -> list[Any]:
    """evaluate's "after" figures as model-index entries: loss and perplexity on each packed
    split, the style share, each harness task's main metric. Non-finite values are left out (the
    Hub's schema takes numbers)."""
    from huggingface_hub import EvalResult

    if not facts.evaluation:
        return []
    after = facts.evaluation.get("after") or {}
    source = facts.eval_source or facts.data_source
    dataset = (hub_datasets(source) or [source])[0]  # a Hub id where it is one, else the source as named
    results = []

    def add(metric: str, value: Any, split: str | None, dataset_type: str = dataset, name: str | None = None) -> None:
        if isinstance(value, (int, float)) and math.isfinite(value):
            results.append(EvalResult(task_type="text-generation", dataset_type=dataset_type, dataset_name=dataset_type,
                                      dataset_split=split, metric_type=metric, metric_name=name or metric,
                                      metric_value=float(value)))

    for split, value in (after.get("loss") or {}).items():
        add("loss", value, split, name=f"{split} loss")
    for split, value in (after.get("perplexity") or {}).items():
        add("perplexity", value, split, name=f"{split} perplexity")
    add("style_share", after.get("style_share"), facts.eval_split, name="house style share")
    for task, metrics in (after.get("harness") or {}).items():
        for metric, value in metrics.items():
            add(metric, value, None, dataset_type=f"lm-eval:{task}", name=f"{task} {metric}")
    return results


def card_data(facts: RunFacts, what: str, repo_id: str) -> Any:
    from huggingface_hub import ModelCardData

    base, license_ = base_model(facts.model_ref)  # a fine-tune inherits its base's licence; unknown: none claimed
    method_tag = {"lora": "lora", "qlora": "qlora", "full": "full-fine-tune"}[facts.method]
    tags = ["sft", "trl", method_tag, "sft-pipeline"] + (["gguf"] if what == "gguf" else [])
    library = LIBRARY[what] if not (what == "adapter" and facts.method == "full") else "transformers"
    model_name = repo_id.split("/")[-1]
    return ModelCardData(base_model=base, datasets=hub_datasets(facts.data_source, facts.eval_source) or None,
                         library_name=library, license=license_, tags=tags, pipeline_tag="text-generation",
                         model_name=model_name, eval_results=eval_results(facts, model_name) or None)


def _num(value: Any, fmt: str) -> str:
    return "-" if not isinstance(value, (int, float)) or not math.isfinite(value) else format(value, fmt)


def evaluation_table(evaluation: dict[str, Any]) -> list[str]:
    before, after = evaluation.get("before") or {}, evaluation.get("after") or {}
    rows = ["| metric | before | after |", "|---|---:|---:|"]
    for split in after.get("loss") or {}:
        rows.append(f"| {split} loss | {_num(before.get('loss', {}).get(split), '.4f')} | {_num(after['loss'][split], '.4f')} |")
        rows.append(f"| {split} perplexity | {_num(before.get('perplexity', {}).get(split), '.2f')} | "
                    f"{_num(after['perplexity'][split], '.2f')} |")
    if after.get("style_share") is not None:
        rows.append(f"| house style share | {_num(before.get('style_share'), '.0%')} | {_num(after['style_share'], '.0%')} |")
    for task, metrics in (after.get("harness") or {}).items():
        for metric, value in metrics.items():
            rows.append(f"| lm-eval {task}: {metric} | {_num((before.get('harness') or {}).get(task, {}).get(metric), '.4f')} | "
                        f"{_num(value, '.4f')} |")
    return rows


def data_table(stats: dict[str, Any]) -> list[str]:
    rows = ["| split | source | read | kept | dropped |", "|---|---|---:|---:|---|"]
    for split, s in stats.items():
        if isinstance(s, dict):
            dropped = ", ".join(f"{reason}: {n}" for reason, n in (s.get("dropped") or {}).items()) or "none"
            rows.append(f"| {split} | `{s.get('source')}` ({s.get('split')}) | {s.get('read')} | {s.get('kept')} | {dropped} |")
    return rows


USAGE = {
    "adapter": "```python\nfrom peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
               "model = AutoPeftModelForCausalLM.from_pretrained(\"{repo}\")\n"
               "tokenizer = AutoTokenizer.from_pretrained(\"{repo}\")\n```",
    "merged": "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
              "model = AutoModelForCausalLM.from_pretrained(\"{repo}\")\n"
              "tokenizer = AutoTokenizer.from_pretrained(\"{repo}\")\n```",
    "gguf": "Download a `.gguf` file and the `Modelfile`, then `ollama create {name} -f Modelfile` "
            "(or load the GGUF file with llama.cpp).",
}


def card_body(facts: RunFacts, what: str, repo_id: str, files: list[str], plots: list[str]) -> str:
    base, _ = base_model(facts.model_ref)
    method = {"lora": "LoRA", "qlora": "QLoRA (LoRA on an NF4 base)", "full": "full fine-tuning"}[facts.method]
    usage_key = "merged" if what == "adapter" and facts.method == "full" else what
    lines = [f"# {repo_id.split('/')[-1]}", "",
             f"Fine-tuned from {f'[{base}](https://huggingface.co/{base})' if base else f'`{facts.model_ref}`'} "
             f"with sft-pipeline ({method}, TRL's SFTTrainer); recipe `{facts.name}`. "
             f"This repository holds the {'GGUF export' if what == 'gguf' else 'merged model' if what == 'merged' else 'trained ' + ('model' if facts.method == 'full' else 'adapter')}.",
             "", "## Use", "", USAGE[usage_key].format(repo=repo_id, name=repo_id.split("/")[-1]), ""]
    lines += ["## Data", ""]
    if facts.load_stats:
        lines += data_table(facts.load_stats)
    else:
        lines.append(f"Source `{facts.data_source}` (the load stage's counts were not available).")
    lines += ["", "## Evaluation", ""]
    if facts.evaluation:
        lines += ["Before (the base model) and after fine-tuning, from `sft-pipeline evaluate`:", ""]
        lines += evaluation_table(facts.evaluation)
    else:
        lines.append("Not evaluated: `sft-pipeline evaluate` had not run on this run directory.")
    if facts.train_metrics:
        m = facts.train_metrics
        lines += ["", "## Training", "",
                  f"{m.get('steps')} optimizer steps in {m.get('precision')}, {_num(m.get('train_runtime_s'), '.0f')} s, "
                  f"{_num(m.get('tokens_per_second'), '.1f')} tokens/s; final train loss {_num(m.get('final_train_loss'), '.4f')}."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    if facts.wandb:
        w = facts.wandb
        lines += ["", "## Tracking", "",
                  f"W&B run: {w['url']}" if w.get("url") else
                  f"W&B run `{w['run_id']}` in project `{w['project']}`, recorded offline (`wandb sync` on the "
                  f"run directory's train/wandb/offline-run-*-{w['run_id']} folders uploads it)."]
    lines += ["", "## Recipe", "", "The resolved recipe, as the run directory froze it:", "", "```yaml",
              facts.recipe_yaml.rstrip(), "```", "", "## Files", ""] + [f"- `{f}`" for f in files]
    return "\n".join(lines) + "\n"


def build_card(facts: RunFacts, what: str, repo_id: str, files: list[str], plots: list[str]) -> Any:
    """The ModelCard: YAML metadata from card_data, then the body. `files` and `plots` are paths
    relative to the repository root (plots are shown from there)."""
    from huggingface_hub import ModelCard

    data = card_data(facts, what, repo_id)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{card_body(facts, what, repo_id, files, plots)}")
