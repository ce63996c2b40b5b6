"""How much loss NF4 itself costs: the base model's loss on a run's packed blocks, full precision
against NF4 (double quantization, as QLoRA loads it), before any training.

    sft-pipeline run recipes/demo.yaml --until pack --run-dir /tmp/qlora-measure
    .venv/bin/python bench/nf4_loss.py /tmp/qlora-measure            # fp32 and bf16 compute

The loss is the token-weighted mean cross-entropy over every labelled token of the split's
blocks (bfd rows with their position_ids, one block at a time, so transformers' SDPA keeps the
samples apart), the same quantity as `sft-pipeline evaluate`'s 'before' loss. The models are
loaded with sft_pipeline.model.loader.load_model and prepare's seed preparation, as training loads
them; bf16 compute runs under torch.autocast, with bf16 base weights (what `train.precision: bf16`
uses).
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path


def block_loss(model, blocks, pad_id: int, compute) -> tuple[float, int]:
    import torch

    from sft_pipeline.training.collate import PackedCollator

    collate = PackedCollator(pad_id)
    total, count = 0.0, 0
    ctx = nullcontext() if compute == torch.float32 else torch.autocast(device_type="cpu", dtype=compute)
    with torch.no_grad(), ctx:
        for i in range(len(blocks)):
            batch = collate([blocks[i]])
            labels = batch.pop("labels")
            batch.pop("attention_mask", None)  # bfd rows: position_ids alone keep samples apart
            # no KV cache: with one, transformers ignores packed rows' position_ids
            logits = model(**batch, use_cache=False).logits.float()[:, :-1]
            target = labels[:, 1:]
            keep = target != -100
            total += float(torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum"))
            count += int(keep.sum())
    return total / max(count, 1), count


def main() -> None:
    import datasets
    import torch

    from sft_pipeline.config import load_recipe
    from sft_pipeline.model.build import seed_preparation
    from sft_pipeline.model.loader import load_model, load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="a run directory whose pack stage is complete")
    ap.add_argument("--split", default="eval")
    ap.add_argument("--compute", default="fp32,bf16", help="comma-separated: fp32, bf16")
    args = ap.parse_args()

    recipe = load_recipe(args.run_dir / "recipe.yaml")
    ref = recipe.model.ref
    blocks = datasets.load_from_disk(str(args.run_dir / "pack" / args.split))
    pad_id = load_tokenizer(ref, recipe.model.trust_remote_code).pad_token_id
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    print(f"# {ref}, {args.run_dir}/pack/{args.split}: {len(blocks)} blocks; torch threads {torch.get_num_threads()}")
    print(f"{'compute':8s} {'base':6s} {'loss':>8s} {'tokens':>7s} {'seconds':>8s}")
    for name in args.compute.split(","):
        dtype = dtypes[name]
        losses = {}
        for quant in ("none", "nf4"):
            model = load_model(ref, dtype=dtype, quantization=quant, compute_dtype=dtype, attn_implementation="sdpa",
                               trust_remote_code=recipe.model.trust_remote_code, allow_pickle=recipe.model.allow_pickle)
            seed_preparation(model, checkpointing=False)
            model.eval()
            start = time.perf_counter()
            losses[quant], tokens = block_loss(model, blocks, pad_id, dtype)
            print(f"{name:8s} {'full' if quant == 'none' else 'nf4':6s} {losses[quant]:8.4f} {tokens:7d} "
                  f"{time.perf_counter() - start:8.1f}", flush=True)
            del model
        print(f"{name:8s} nf4 - full = {losses['nf4'] - losses['none']:+.4f} "
              f"({100 * (losses['nf4'] / losses['none'] - 1):+.1f}%)")


if __name__ == "__main__":
    main()
