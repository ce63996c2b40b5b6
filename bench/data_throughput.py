"""Data stages throughput: the load, template and pack stages of the pipeline on a synthetic
instruction set, then our packing against TRL's `pack_dataset` and a plain-Python
ConstantLengthDataset on the same tokenized data, in one run.

    .venv/bin/python bench/data_throughput.py                 # 10,000 and 100,000 conversations
    .venv/bin/python bench/data_throughput.py --sizes 2000    # quick

Each size runs in its own process so its peak RSS is its own. The stages run as `sft-pipeline
run` runs them (run directory, Arrow files on disk); "whole run" peak RSS is the highest RSS seen
while they ran. The packing comparison starts each packer from its own native input (our flat
token arrays, a `datasets.Dataset` of input_ids for TRL, Python lists for the reference): the
conversions are not timed. Ratios, not absolute times, are what to compare: these machines are
noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from synthetic import conversations  # bench/synthetic.py: run as a script, bench/ is on sys.path


class PeakRSS:
    """Samples this process's RSS every 10 ms; `peak` is the largest seen since reset()."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def reset(self) -> None:
        self.peak = self.proc.memory_info().rss


def reference_constant_length(samples: list[list[int]], seq_length: int, eos: int) -> list[list[int]]:
    """The seed's ConstantLengthDataset, as plain Python: buffer, EOS between samples, cut."""
    buffer: list[int] = []
    for ids in samples:
        buffer.extend(ids)
        buffer.append(eos)
    return [buffer[i : i + seq_length] for i in range(0, len(buffer) - seq_length + 1, seq_length)]


def worker(n: int, seq_length: int) -> dict:
    import datasets
    import numpy as np
    from trl.data_utils import pack_dataset

    from sft_pipeline.config import PackConfig, recipe_from_dict
    from sft_pipeline.data.packing import pack, with_eos
    from sft_pipeline.data.tokens import tokenize_split
    from sft_pipeline.model.loader import load_tokenizer
    from sft_pipeline.orchestration.pipeline import update_stage
    from sft_pipeline.rundir.files import read_json
    from sft_pipeline.stages import open_run_directory

    datasets.disable_progress_bars()
    rss = PeakRSS()
    out: dict = {"records": n}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        with open(path, "w") as fh:
            for row in conversations(n, multi_turn=0.1):
                fh.write(json.dumps(row) + "\n")
        recipe = recipe_from_dict({
            "name": "bench", "run_dir": str(Path(tmp) / "run"),
            "data": {"source": str(path), "eval_split": None},
            "template": {"kind": "chat"},
            "pack": {"seq_length": seq_length, "strategy": "bfd"},
            "train": {"eval_strategy": "no"},
        })
        run = open_run_directory(recipe.resolved_run_dir(), recipe)
        whole = 0
        for stage in ("load", "template", "pack"):
            rss.reset()
            t0 = time.perf_counter()
            update_stage(run, stage)
            dt = time.perf_counter() - t0
            out[stage] = {"seconds": dt, "records_per_s": n / dt, "peak_rss_mb": rss.peak / 2**20}
            whole = max(whole, rss.peak)
        out["whole_run_peak_rss_mb"] = whole / 2**20
        stats = read_json(run.path / "pack" / "stats.json")["train"]
        out["tokens"] = tokens = stats["tokens_in"]
        out["pack"]["tokens_per_s"] = tokens / out["pack"]["seconds"]

        # the same tokenized data for every packer
        tokenizer = load_tokenizer(recipe.model.ref)
        rss.reset()
        t0 = time.perf_counter()
        toks = tokenize_split(run.path / "template" / "train", tokenizer, "assistant", add_eos=False)
        dt = time.perf_counter() - t0
        out["tokenize"] = {"seconds": dt, "records_per_s": n / dt, "tokens_per_s": tokens / dt, "peak_rss_mb": rss.peak / 2**20}
        eos = tokenizer.eos_token_id

        def timed(name, fn):
            rss.reset()
            t0 = time.perf_counter()
            result = fn()
            dt = time.perf_counter() - t0
            out[name] = {"seconds": dt, "records_per_s": n / dt, "tokens_per_s": tokens / dt, "peak_rss_mb": rss.peak / 2**20}
            return result

        # each packer gets the input its own pipeline makes: for wrapped, samples already ending in
        # EOS (our tokenize with add_eos, TRL's tokenize step); the seed's loop appends EOS itself
        inputs = {"bfd": toks, "wrapped": with_eos(toks, eos)}
        for strategy in ("bfd", "wrapped"):  # ours: up to the Arrow table that is written to disk
            timed(f"ours_{strategy}", lambda: pack(inputs[strategy], PackConfig(seq_length=seq_length, strategy=strategy))[0].table())
        for strategy in ("bfd", "wrapped"):
            t = inputs[strategy]
            trl_input = datasets.Dataset.from_dict({"input_ids": [t.ids[a:b].tolist() for a, b in zip(t.offsets[:-1], t.offsets[1:])]})
            timed(f"trl_{strategy}", lambda data=trl_input, how=strategy: pack_dataset(data, seq_length, strategy=how))
            del trl_input  # the next strategy's input is built after this one's memory is given back
        as_lists = [toks.ids[a:b].tolist() for a, b in zip(toks.offsets[:-1], toks.offsets[1:])]
        reference = timed("python_reference", lambda: reference_constant_length(as_lists, seq_length, eos))
        ours = pack(inputs["wrapped"], PackConfig(seq_length=seq_length, strategy="wrapped"))[0]
        same = np.array_equal(np.asarray(reference, dtype=np.int64).reshape(-1), ours.columns["input_ids"].astype(np.int64))
        out["wrapped_equals_reference"] = bool(same)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


STAGES = ("load", "template", "pack", "tokenize", "ours_bfd", "trl_bfd", "ours_wrapped", "trl_wrapped", "python_reference")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--seq-length", type=int, default=512)
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.seq_length)))
        return
    results = []
    for n in args.sizes:
        proc = subprocess.run([sys.executable, __file__, "--worker", str(n), "--seq-length", str(args.seq_length)],
                              capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "true"})
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{'records':>8} {'step':<17} {'seconds':>8} {'records/s':>10} {'tokens/s':>12} {'peak RSS MB':>11}")
    for r in results:
        for name in STAGES:
            st = r[name]
            tps = f"{st['tokens_per_s']:,.0f}" if "tokens_per_s" in st else "-"
            print(f"{r['records']:>8} {name:<17} {st['seconds']:>8.2f} {st['records_per_s']:>10,.0f} {tps:>12} {st['peak_rss_mb']:>11.0f}")
        print(f"{r['records']:>8} ratios (tokens/s): ours wrapped / python reference = "
              f"{r['ours_wrapped']['tokens_per_s'] / r['python_reference']['tokens_per_s']:.1f}x, "
              f"ours bfd / TRL bfd = {r['ours_bfd']['tokens_per_s'] / r['trl_bfd']['tokens_per_s']:.1f}x, "
              f"ours wrapped / TRL wrapped = {r['ours_wrapped']['tokens_per_s'] / r['trl_wrapped']['tokens_per_s']:.1f}x; "
              f"wrapped blocks identical to the reference: {r['wrapped_equals_reference']}")
        print(f"{r['records']:>8} whole run (load, template, pack stages) peak RSS {r['whole_run_peak_rss_mb']:.0f} MB, "
              f"{r['tokens']:,} tokens")
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(f"whole-run peak RSS grows {b['whole_run_peak_rss_mb'] / a['whole_run_peak_rss_mb']:.2f}x "
              f"for {b['records'] / a['records']:.0f}x the records")


if __name__ == "__main__":
    main()
