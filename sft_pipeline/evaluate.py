"""Before/after evaluation: loss on the packed train and eval blocks, and the share of greedy
answers to the eval prompts that follow a style (a regex), for the base and the trained adapter.

"Before" is the same adapter model with the adapter disabled, i.e. the base model exactly.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from .progress import progress
from .rundir import RunDir, write_json


def mean_loss(model: Any, blocks: Any, pad_id: int, batch_size: int, label: str) -> float:
    """Token-weighted mean cross-entropy over every labelled token of the packed blocks."""
    import torch

    from .collate import PackedCollator

    collate = PackedCollator(pad_id)
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone, head = causal_lm.base_model, causal_lm.get_output_embeddings()
    total, count = 0.0, 0
    with progress() as bar, torch.no_grad():
        task = bar.add_task(label, total=len(blocks))
        for lo in range(0, len(blocks), batch_size):
            batch = collate([blocks[i] for i in range(lo, min(lo + batch_size, len(blocks)))])
            labels = batch.pop("labels")
            # Project only the labelled positions through the LM head: the full (batch, seq, vocab)
            # logits would be ~100x larger than what the loss needs. No KV cache: with one,
            # transformers would ignore the packed samples' position_ids.
            hidden = backbone(**batch, use_cache=False).last_hidden_state
            shift_labels = labels[:, 1:]
            mask = shift_labels != -100
            logits = head(hidden[:, :-1][mask]).float()
            loss = torch.nn.functional.cross_entropy(logits, shift_labels[mask], reduction="sum")
            total += float(loss)
            count += int(mask.sum())
            bar.advance(task, batch["input_ids"].shape[0])
    return total / max(count, 1)


def style_share(answers: list[str], pattern: str) -> float:
    rx = re.compile(pattern)
    return sum(1 for a in answers if rx.fullmatch(a.strip())) / max(len(answers), 1)


def run(run: RunDir, out: Path) -> None:
    import datasets

    from .generate import generate, load_for_inference

    recipe = run.recipe
    cfg = recipe.evaluate
    template_dir, pack_dir = run.stage_dir("template"), run.stage_dir("pack")
    model, tokenizer = load_for_inference(run, "adapter")
    split = "eval" if (template_dir / "eval").is_dir() else "train"
    prompts_ds = datasets.load_from_disk(str(template_dir / split))
    n = len(prompts_ds) if cfg.max_prompts is None else min(cfg.max_prompts, len(prompts_ds))
    prompts, references = prompts_ds["prompt"][:n], prompts_ds["reference"][:n]
    bs = recipe.train.per_device_eval_batch_size
    report: dict[str, Any] = {"prompts": n, "split": split}

    for phase in ("before", "after"):
        ctx = model.disable_adapter() if phase == "before" else nullcontext()
        with ctx:
            losses = {}
            for name in ("train", "eval"):
                if (pack_dir / name).is_dir():
                    blocks = datasets.load_from_disk(str(pack_dir / name))
                    losses[name] = mean_loss(model, blocks, tokenizer.pad_token_id, bs, f"loss {name} ({phase})")
            answers = generate(model, tokenizer, prompts, recipe.generate.max_new_tokens,
                               recipe.generate.batch_size, f"answers ({phase})")
        report[phase] = {"loss": losses, "answers": answers}
        if cfg.style_regex:
            report[phase]["style_share"] = style_share(answers, cfg.style_regex)
    report["pairs"] = [
        {"question": prompts_ds[i]["question"], "reference": references[i],
         "before": report["before"]["answers"][i], "after": report["after"]["answers"][i]}
        for i in range(min(cfg.pairs, n))
    ]
    write_json(out / "report.json", report)
    summary = {p: {"loss": report[p]["loss"], "style_share": report[p].get("style_share")} for p in ("before", "after")}
    write_json(out / "summary.json", summary)

