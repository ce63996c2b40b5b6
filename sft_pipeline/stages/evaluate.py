"""Before/after evaluation: loss and perplexity on the packed eval blocks (and the train blocks
with evaluate.train_loss), greedy answers to the eval prompts and, where evaluate.style_regex is
set, the share that follows that style, for the base and the trained adapter; and, where
evaluate.harness.tasks names any, lm-evaluation-harness tasks on the same two models
(model/harness.py), their main metric per task in summary.json (and so in W&B's summary). The
answers are plain greedy (argmax, no repetition penalty) whatever generate's sampling settings
say: the pairs compare two models, and with sampling part of their difference would be the draw.

"Before" is the same adapter model with the adapter disabled, i.e. the base model exactly. Under
`method: full` there is no adapter to disable: "before" is the base model loaded as training
loaded it (fp32 weights), "after" the model train saved, one in memory at a time.
answers.json keeps every evaluation of the same trained adapter (W&B's answers table grows with
each one instead of being replaced: training/trackers.py log_evaluation).
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator

from ..progress import progress
from ..rundir.directory import RunDirectory
from ..rundir.files import read_json, write_json
from ..rundir.stage_spec import SUMMARY, StageSpec
from ..training.step_scalars import perplexity
from ..training.trackers import IDENTITY, log_evaluation

REPORT = "report.json"  # both passes: losses, perplexities, answers, style share, harness metrics
ANSWERS = "answers.json"  # every evaluation's answers of the same trained adapter (the report's table)

SPEC = StageSpec(
    # method: what "before" and "after" are; train.precision: inference computes as training did;
    # the eval batch size for the loss passes; of generate only the answers' length and batch:
    # the answers are plain greedy (produce() says why), so the sampling settings change nothing here
    name="evaluate", reads=("method", "evaluate", "generate.max_new_tokens", "generate.batch_size", "model",
                            "train.precision", "train.per_device_eval_batch_size"),
    upstream=("template", "pack", "train"),
    writes=(REPORT, SUMMARY, ANSWERS),
    may_write={"wandb/": "tracking.wandb is not off (the before/after table joins train's run)"},
    ignores={"tracking": "where the before/after results are reported (train's W&B run), not what is measured",
             "name": "the W&B / TensorBoard run name"},
)


def mean_loss(model: Any, blocks: Any, pad_id: int, batch_size: int, label: str, padding_free: bool = False,
              autocast: Any = nullcontext) -> float:
    """Token-weighted mean cross-entropy over every labelled token of the packed blocks, with the
    LM head on labelled positions only (loss.labelled_loss), as train computes it. padding_free:
    each batch's rows as one row, for a per-sample attention (attention.py); autocast: a factory
    of the context training computed in (precision.autocast)."""
    import torch

    from ..training.collate import PackedCollator
    from ..training.loss import labelled_loss

    collate = PackedCollator(pad_id, padding_free=padding_free)
    total, count = 0.0, 0
    with progress() as bar, torch.no_grad():
        task = bar.add_task(label, total=len(blocks))
        for lo in range(0, len(blocks), batch_size):
            rows = [blocks[i] for i in range(lo, min(lo + batch_size, len(blocks)))]
            with autocast():
                loss, labelled = labelled_loss(model, collate(rows))
            total += float(loss) * int(labelled)
            count += int(labelled)
            bar.advance(task, len(rows))
    return total / max(count, 1)


def follows(answer: str, pattern: str) -> bool:
    return re.fullmatch(pattern, answer.strip()) is not None


def style_share(answers: list[str], pattern: str) -> float:
    return sum(1 for a in answers if follows(a, pattern)) / max(len(answers), 1)


def scored_splits(pack_dir: Path, train_loss: bool) -> list[str]:
    """The packed splits whose loss evaluate computes: eval, and train when the recipe asks."""
    return [name for name in ("train", "eval") if (pack_dir / name).is_dir() and (name == "eval" or train_loss)]


def answer_rows(previous: Path, train_run: str | None, questions: list[str], report: dict[str, Any],
                pattern: str | None) -> dict[str, Any]:
    """This evaluation's answers as rows (prompt, before, after, whether each follows the style),
    after those of the earlier evaluations of the same trained adapter (`previous`: the last
    evaluate's answers.json, still in place while this one runs)."""
    old = read_json(previous) if previous.is_file() else {}
    rows = old.get("rows", []) if train_run is not None and old.get("train_run") == train_run else []
    number = max((r["evaluation"] for r in rows), default=0) + 1
    for i, question in enumerate(questions):
        row: dict[str, Any] = {"evaluation": number, "prompt": question,
                               "before": report["before"]["answers"][i], "after": report["after"]["answers"][i]}
        if pattern:
            row["before_follows_style"] = follows(row["before"], pattern)
            row["after_follows_style"] = follows(row["after"], pattern)
        rows.append(row)
    return {"train_run": train_run, "rows": rows}


def phases(run_dir: RunDirectory) -> Iterator[tuple[str, Any, Any]]:
    """("before", model, tokenizer), then ("after", ...). LoRA: one model, its adapter disabled,
    then enabled. Full: the base model, then train's, each loaded when its phase starts (the
    consumer drops the first before asking for the second)."""
    from ..model.generate import load_for_inference

    if run_dir.recipe.method == "full":
        for phase, which in (("before", "base"), ("after", "trained")):
            model, tokenizer = load_for_inference(run_dir, which)
            yield phase, model, tokenizer
            del model
        return
    model, tokenizer = load_for_inference(run_dir, "trained")
    with model.disable_adapter():
        yield "before", model, tokenizer
    yield "after", model, tokenizer


def produce(run_dir: RunDirectory, out: Path) -> None:
    import datasets

    from ..model import precision
    from ..model.generate import generate, inference_precision
    from ..model.harness import headline, run_harness
    from ..training import attention
    from ..training.loss import causal_lm

    recipe = run_dir.recipe
    cfg = recipe.evaluate
    split = "eval" if run_dir.artifact("template", "eval").is_dir() else "train"
    pack_dir, train_dir = run_dir.stage_dir("pack"), run_dir.stage_dir("train")
    compute = inference_precision(recipe)
    prompts_ds = datasets.load_from_disk(str(run_dir.artifact("template", split)))
    n = len(prompts_ds) if cfg.max_prompts is None else min(cfg.max_prompts, len(prompts_ds))
    prompts, references = prompts_ds["prompt"][:n], prompts_ds["reference"][:n]
    bs = recipe.train.per_device_eval_batch_size
    report: dict[str, Any] = {"prompts": n, "split": split, "precision": compute.record(), "method": recipe.method}

    for phase, model, tokenizer in phases(run_dir):
        device = model.device.type
        # the loss passes use train's attention (per-sample on packed rows, padding-free); generation
        # keeps the model's own, which handles left padding and the KV cache
        causal = causal_lm(model)
        own = causal.config._attn_implementation
        for_loss = attention.choose(causal.config, recipe.model.attn_implementation, device)
        losses = {}
        packed = attention.use(causal, for_loss) in attention.PER_SAMPLE
        for name in scored_splits(pack_dir, cfg.train_loss):
            blocks = datasets.load_from_disk(str(run_dir.artifact("pack", name)))
            losses[name] = mean_loss(model, blocks, tokenizer.pad_token_id, bs, f"loss {name} ({phase})",
                                     padding_free=packed, autocast=lambda: precision.autocast(compute, device))
        attention.use(causal, own)
        # plain greedy whatever generate's sampling settings say: the pairs compare models, and a
        # draw (or a repetition penalty) would make part of the difference the decoding's
        answers = generate(model, tokenizer, prompts, recipe.generate, f"answers ({phase})", compute=compute,
                           plain_greedy=True)
        report[phase] = {"loss": losses, "perplexity": {k: perplexity(v) for k, v in losses.items()}, "answers": answers}
        if cfg.harness.tasks:  # lm-eval's tasks on this same model: before is the base, after the trained one
            report[phase]["harness"] = run_harness(model, tokenizer, cfg.harness, compute=compute)
        del model, causal
        if cfg.style_regex:
            report[phase]["style_share"] = style_share(answers, cfg.style_regex)
    report["pairs"] = [
        {"question": prompts_ds[i]["question"], "reference": references[i],
         "before": report["before"]["answers"][i], "after": report["after"]["answers"][i]}
        for i in range(min(cfg.pairs, n))
    ]
    ident = run_dir.artifact("train", IDENTITY)
    train_run = read_json(ident)["wandb_run_id"] if ident.is_file() else None
    # the last evaluation's answers, in place until this one is swapped in (made for any recipe:
    # answer_rows keeps them only for the same trained adapter)
    previous = run_dir.artifact(SPEC.name, ANSWERS, fresh=False)
    history = answer_rows(previous, train_run, prompts_ds["question"][:n], report, cfg.style_regex)
    write_json(out / REPORT, report)
    write_json(out / ANSWERS, history)
    summary = {p: {k: report[p].get(k) for k in ("loss", "perplexity", "style_share")} for p in ("before", "after")}
    if cfg.harness.tasks:  # each task's main metric; REPORT has every metric
        for p in ("before", "after"):
            summary[p]["harness"] = headline(report[p]["harness"])
    write_json(out / SUMMARY, summary)
    log_evaluation(recipe, out, train_dir, summary, history["rows"])

