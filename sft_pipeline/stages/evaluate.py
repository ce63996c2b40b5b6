"""Before/after evaluation: loss on the packed train and eval blocks, and the share of greedy
answers to the eval prompts that follow a style (a regex), for the base and the trained adapter.

"Before" is the same adapter model with the adapter disabled, i.e. the base model exactly.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from ..progress import progress
from ..run.rundir import RunDir, write_json
from ..run.stage_spec import StageSpec

SPEC = StageSpec(
    # train.precision: inference computes as training did; the eval batch size for the loss passes
    name="evaluate", reads=("evaluate", "generate", "model", "train.precision", "train.per_device_eval_batch_size"),
    upstream=("template", "pack", "train"), writes=("report.json", "summary.json"),
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


def style_share(answers: list[str], pattern: str) -> float:
    rx = re.compile(pattern)
    return sum(1 for a in answers if rx.fullmatch(a.strip())) / max(len(answers), 1)


def run(run: RunDir, out: Path) -> None:
    import datasets

    from ..training import attention
    from ..model import precision
    from ..model.generate import generate, inference_precision, load_for_inference

    recipe = run.recipe
    cfg = recipe.evaluate
    template_dir, pack_dir = run.stage_dir("template"), run.stage_dir("pack")
    model, tokenizer = load_for_inference(run, "adapter")
    compute = inference_precision(recipe)
    device = model.device.type
    split = "eval" if (template_dir / "eval").is_dir() else "train"
    prompts_ds = datasets.load_from_disk(str(template_dir / split))
    n = len(prompts_ds) if cfg.max_prompts is None else min(cfg.max_prompts, len(prompts_ds))
    prompts, references = prompts_ds["prompt"][:n], prompts_ds["reference"][:n]
    bs = recipe.train.per_device_eval_batch_size
    report: dict[str, Any] = {"prompts": n, "split": split, "precision": compute.record()}
    # the loss passes use train's attention (per-sample on packed rows, padding-free); generation
    # keeps the model's own, which handles left padding and the KV cache
    causal = model.get_base_model()
    own = causal.config._attn_implementation
    for_loss = attention.choose(causal.config, recipe.model.attn_implementation, device)

    for phase in ("before", "after"):
        ctx = model.disable_adapter() if phase == "before" else nullcontext()
        with ctx:
            losses = {}
            packed = attention.use(causal, for_loss) in attention.PER_SAMPLE
            for name in ("train", "eval"):
                if (pack_dir / name).is_dir():
                    blocks = datasets.load_from_disk(str(pack_dir / name))
                    losses[name] = mean_loss(model, blocks, tokenizer.pad_token_id, bs, f"loss {name} ({phase})",
                                             padding_free=packed, autocast=lambda: precision.autocast(compute, device))
            attention.use(causal, own)
            answers = generate(model, tokenizer, prompts, recipe.generate.max_new_tokens,
                               recipe.generate.batch_size, f"answers ({phase})", compute=compute)
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

