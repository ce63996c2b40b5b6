"""Data stages throughput: load, template and pack on a synthetic instruction set, and our
packing against TRL's `pack_dataset` and a plain-Python ConstantLengthDataset, in one run.

    .venv/bin/python bench/data_throughput.py                 # 10,000 and 100,000 conversations
    .venv/bin/python bench/data_throughput.py --sizes 2000    # quick

Each size runs in its own process so its peak RSS is its own. Ratios, not absolute times, are
what to compare: these machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WORDS = ("the a model data water energy market light cell planet music garden python memory budget "
         "travel health history learn system value change because with from into over under about "
         "river mountain bread coffee engine signal number theory practice simple careful quickly").split()


def synth(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def sentence(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."

    rows = []
    for i in range(n):
        turns = [sentence(5, 40), " ".join(sentence(5, 20) for _ in range(rng.randint(1, 12)))]
        if rng.random() < 0.1:
            turns += [sentence(5, 20), sentence(10, 60)]
        rows.append({"conversations": turns, "source": f"synthetic-{i % 17}"})
    return rows


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


def reference_constant_length(samples, seq_length: int, eos: int) -> list[list[int]]:
    """The seed's ConstantLengthDataset, as plain Python: buffer, EOS between samples, cut."""
    buffer: list[int] = []
    for ids, _ in samples:
        buffer.extend(ids.tolist())
        buffer.append(eos)
    return [buffer[i : i + seq_length] for i in range(0, len(buffer) - seq_length + 1, seq_length)]


def worker(n: int, seq_length: int) -> dict:
    import datasets
    from trl.data_utils import pack_dataset

    from sft_pipeline.config import PackConfig, TemplateConfig
    from sft_pipeline.models import load_tokenizer
    from sft_pipeline.stages.load import load_split
    from sft_pipeline.stages.pack import pack, tokenize
    from sft_pipeline.stages.template import render

    datasets.disable_progress_bars()
    rss = PeakRSS()
    out: dict = {"records": n}
    tokenizer = load_tokenizer("bundled:smollm2-135m-instruct")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        with open(path, "w") as fh:
            for row in synth(n):
                fh.write(json.dumps(row) + "\n")

        def stage(name, fn, tokens=None):
            rss.reset()
            t0 = time.perf_counter()
            result = fn()
            dt = time.perf_counter() - t0
            out[name] = {"seconds": dt, "records_per_s": n / dt, "peak_rss_mb": rss.peak / 2**20}
            return result

        rows, _ = stage("load", lambda: load_split(str(path), "train", "auto", None))
        cfg = TemplateConfig(kind="chat")
        rendered = stage("template", lambda: [render(r["messages"], cfg, tokenizer) for r in rows])
        texts, spans = [t for t, _ in rendered], [s for _, s in rendered]
        samples = stage("tokenize", lambda: list(tokenize(texts, spans, tokenizer, "assistant", add_eos=False)))
        tokens = sum(len(s[0]) for s in samples)
        out["tokens"] = tokens
        out["tokenize"]["tokens_per_s"] = tokens / out["tokenize"]["seconds"]
        eos = tokenizer.eos_token_id

        for strategy in ("bfd", "wrapped"):
            blocks, _ = stage(f"pack_{strategy}", lambda: pack(samples, PackConfig(seq_length=seq_length, strategy=strategy), eos))
            out[f"pack_{strategy}"]["tokens_per_s"] = tokens / out[f"pack_{strategy}"]["seconds"]
        # TRL gets its own input format: a Dataset of input_ids (what its tokenize map produces).
        trl_input = datasets.Dataset.from_dict({"input_ids": [s[0].tolist() for s in samples]})
        for strategy in ("bfd", "wrapped"):
            stage(f"trl_{strategy}", lambda: pack_dataset(trl_input, seq_length, strategy=strategy))
            out[f"trl_{strategy}"]["tokens_per_s"] = tokens / out[f"trl_{strategy}"]["seconds"]
        stage("python_reference", lambda: reference_constant_length(samples, seq_length, eos))
        out["python_reference"]["tokens_per_s"] = tokens / out["python_reference"]["seconds"]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


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
    print(f"{'records':>8} {'stage':<18} {'seconds':>8} {'records/s':>10} {'tokens/s':>11} {'peak RSS MB':>11}")
    for r in results:
        for name in ("load", "template", "tokenize", "pack_bfd", "pack_wrapped", "trl_bfd", "trl_wrapped", "python_reference"):
            st = r[name]
            tps = f"{st['tokens_per_s']:,.0f}" if "tokens_per_s" in st else "-"
            print(f"{r['records']:>8} {name:<18} {st['seconds']:>8.2f} {st['records_per_s']:>10,.0f} {tps:>11} {st['peak_rss_mb']:>11.0f}")
        print(f"{r['records']:>8} ratios: ours wrapped / python reference = {r['pack_wrapped']['tokens_per_s'] / r['python_reference']['tokens_per_s']:.1f}x, "
              f"ours bfd / TRL bfd = {r['pack_bfd']['tokens_per_s'] / r['trl_bfd']['tokens_per_s']:.2f}x, "
              f"ours wrapped / TRL wrapped = {r['pack_wrapped']['tokens_per_s'] / r['trl_wrapped']['tokens_per_s']:.2f}x; "
              f"whole-run peak RSS {r['peak_rss_mb']:.0f} MB ({r['tokens']:,} tokens)")
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(f"peak RSS grows {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x for {b['records'] / a['records']:.0f}x the records")


if __name__ == "__main__":
    main()
