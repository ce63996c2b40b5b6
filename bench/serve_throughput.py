"""Export and serving: time and memory of making the GGUF files, then tokens/s of llama.cpp on each
against transformers on the HF model they were made from, and of `sft-pipeline serve`, in one run.

    make bench-serve                                             # SmolLM2-135M-Instruct, 3 prompts x 48 tokens
    .venv/bin/python bench/serve_throughput.py --max-new-tokens 32 --json /tmp/serve.json

The model is the bundled SmolLM2-135M-Instruct (bundled:smollm2-135m-instruct, the local HF
checkpoint model/loader.py makes of it), standing in for a run's merge/model.

  export   llama.cpp's converter to F16, then its quantizer F16 -> Q8_0 and F16 -> Q4_K_M
           (model/gguf_tools.py, as the export stage runs them): wall time and the peak RSS of the
           converter's or quantizer's own process.
  decode   the same prompts (the chat template applied, one request at a time, batch 1), greedy,
           the same max_new_tokens, on: transformers fp32; transformers under
           torch.autocast("cpu", bfloat16) where the CPU has AVX512-BF16 or AMX (else it is emulated
           and skipped); llama_cpp.Llama on each GGUF; and `sft-pipeline serve` on the Q4_K_M file
           through the openai client (what a user of the endpoint sees: HTTP, JSON, the server's
           threads). tokens/s is generated tokens over the wall time of the requests (prompt
           processing included), after one warm-up request. Each engine runs in its own process,
           so its peak RSS (loading included) is its own; the server's is its VmHWM.

Machines here are shared and noisy: read the ratios (each engine against transformers fp32 in
the same run), not the absolute rates. `same text` counts the prompts whose greedy answer equals
transformers fp32's word for word: F16 should mostly agree, the quantized files less.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODEL_REF = "bundled:smollm2-135m-instruct"
PROMPTS = ("What is the capital of France?",
           "Give three tips for staying healthy.",
           "Explain what a hash table is in two sentences.")
QUANTS = ("Q8_0", "Q4_K_M")  # quantized from the F16 file
GIB = 1024**3


# ---- workers: one process each ---------------------------------------------------------------------

def export_worker(step: str, src: str, dst: str, log: str) -> dict[str, Any]:
    """One export step; its tool runs in a child process of this one, so RUSAGE_CHILDREN is its peak."""
    from sft_pipeline.model import gguf_tools

    t0 = time.perf_counter()
    if step == "F16":
        gguf_tools.convert(Path(src), Path(dst), "f16", Path(log))
    else:
        gguf_tools.quantize(Path(src), Path(dst), step, Path(log))
    return {"seconds": time.perf_counter() - t0, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
            "file_bytes": Path(dst).stat().st_size}


def transformers_worker(model_dir: str, max_new: int, bf16: bool, threads: int) -> dict[str, Any]:
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    compute = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def answer(question: str, n: int) -> tuple[str, int]:
        ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.inference_mode(), compute:
            out = model.generate(**ids, do_sample=False, max_new_tokens=n, pad_token_id=tok.eos_token_id)
        new = out[0, ids["input_ids"].shape[1]:]
        return tok.decode(new, skip_special_tokens=True), int(new.shape[0])

    return _timed(answer, max_new)


def llama_cpp_worker(gguf: str, max_new: int, threads: int) -> dict[str, Any]:
    import llama_cpp

    model = llama_cpp.Llama(model_path=gguf, n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False)

    def answer(question: str, n: int) -> tuple[str, int]:
        r = model.create_chat_completion(messages=[{"role": "user", "content": question}], temperature=0,
                                         max_tokens=n, repeat_penalty=1.0)
        return r["choices"][0]["message"]["content"], r["usage"]["completion_tokens"]

    return _timed(answer, max_new)


def _timed(answer: Any, max_new: int) -> dict[str, Any]:
    answer("Hello!", 8)  # warm-up: first-call allocations, kernels picked
    texts, tokens, t0 = [], 0, time.perf_counter()
    for question in PROMPTS:
        text, n = answer(question, max_new)
        texts.append(text)
        tokens += n
    seconds = time.perf_counter() - t0
    return {"texts": texts, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def run_worker(*args: object, timeout: float = 600) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--worker", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"worker {args[0]} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


# ---- the server ------------------------------------------------------------------------------------

def serve_bench(gguf: Path, workdir: Path, max_new: int, threads: int) -> dict[str, Any]:
    """`sft-pipeline serve` on the file, timed through the openai client, then stopped by SIGTERM."""
    from openai import OpenAI

    recipe = workdir / "serve-recipe.yaml"
    recipe.write_text(json.dumps({"name": "smollm2", "run_dir": str(workdir / "run"),
                                  "generate": {"max_new_tokens": max_new},
                                  "serve": {"n_ctx": 1024, "threads": threads}}))
    log = open(workdir / "serve.log", "w+")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "sft_pipeline.cli", "serve", str(recipe), "--gguf", str(gguf),
                             "--port", "0", "--pid-file", str(workdir / "serve.pid")],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)})
    try:
        url = None
        while url is None and time.perf_counter() - t0 < 120 and proc.poll() is None:
            time.sleep(0.2)
            found = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", Path(log.name).read_text())
            url = found[1] if found else None
        if url is None:
            raise SystemExit(f"the server did not start:\n{Path(log.name).read_text()[-3000:]}")
        ready_s = time.perf_counter() - t0
        client = OpenAI(base_url=url, api_key="unused", timeout=120, max_retries=0)

        def answer(question: str, n: int) -> tuple[str, int]:
            r = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": question}],
                                               temperature=0, max_tokens=n)
            return r.choices[0].message.content, r.usage.completion_tokens

        out = _timed(answer, max_new)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        out["peak_rss_bytes"] = int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) * 1024
        out["ready_seconds"] = ready_s
        return out
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


# ---- the run ---------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--workdir", type=Path, default=None, help="where the GGUF files go (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, *rest = args.worker
        fn = {"export": lambda s, a, b, c: export_worker(s, a, b, c),
              "transformers": lambda d, n, b, t: transformers_worker(d, int(n), b == "bf16", int(t)),
              "llama_cpp": lambda g, n, t: llama_cpp_worker(g, int(n), int(t))}[kind]
        print("RESULT " + json.dumps(fn(*rest)))
        return

    from sft_pipeline.model.hardware import cpu_flags, default_threads
    from sft_pipeline.model.loader import resolve

    t_all = time.perf_counter()
    threads = default_threads()[0]
    flags = cpu_flags()
    bf16_fast = bool({"avx512_bf16", "amx_bf16"} & flags)
    model_dir = resolve(MODEL_REF).path
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        files = {kind: work / f"model-{kind}.gguf" for kind in ("F16", *QUANTS)}
        export = {"F16": run_worker("export", "F16", model_dir, files["F16"], work / "export.log")}
        for kind in QUANTS:
            export[kind] = run_worker("export", kind, files["F16"], files[kind], work / "export.log")
        decode = {"transformers fp32": run_worker("transformers", model_dir, args.max_new_tokens, "fp32", threads)}
        if bf16_fast:
            decode["transformers bf16 autocast"] = run_worker("transformers", model_dir, args.max_new_tokens, "bf16",
                                                              threads)
        for kind, path in files.items():
            decode[f"llama.cpp {kind}"] = run_worker("llama_cpp", path, args.max_new_tokens, threads)
        decode["serve Q4_K_M (openai client)"] = serve_bench(files["Q4_K_M"], work, args.max_new_tokens, threads)
    report(export, decode, threads, flags, model_dir, args.max_new_tokens, time.perf_counter() - t_all)
    if args.json:
        args.json.write_text(json.dumps({"export": export, "decode": decode, "threads": threads}, indent=1))


def report(export: dict[str, Any], decode: dict[str, Any], threads: int, flags: set[str], model_dir: str,
           max_new: int, total_s: float) -> None:
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"\nmodel {MODEL_REF} ({model_dir}); {len(PROMPTS)} prompts, greedy, max_new_tokens {max_new}, "
          f"batch 1; {threads} threads everywhere; CPU {cpu} ({os.cpu_count()} logical), "
          f"bf16 {'fast (' + ', '.join(sorted({'avx512_bf16', 'amx_bf16'} & flags)) + ')' if {'avx512_bf16', 'amx_bf16'} & flags else 'emulated'}")
    print(f"\n{'export step':<30} {'seconds':>8} {'peak RSS':>10} {'file':>10}")
    for kind, r in export.items():
        what = "convert HF -> F16" if kind == "F16" else f"quantize F16 -> {kind}"
        print(f"{what:<30} {r['seconds']:>8.1f} {r['peak_rss_bytes'] / GIB:>6.2f} GiB {r['file_bytes'] / 2**20:>6.0f} MiB")
    ref = decode["transformers fp32"]
    print(f"\n{'engine':<32} {'tokens':>6} {'seconds':>8} {'tokens/s':>9} {'x fp32':>7} {'peak RSS':>10} {'same text':>9}")
    for name, r in decode.items():
        same = sum(a.strip() == b.strip() for a, b in zip(r["texts"], ref["texts"]))
        print(f"{name:<32} {r['tokens']:>6} {r['seconds']:>8.1f} {r['tokens_per_s']:>9.1f} "
              f"{r['tokens_per_s'] / ref['tokens_per_s']:>6.2f}x {r['peak_rss_bytes'] / GIB:>6.2f} GiB "
              f"{same:>5}/{len(PROMPTS)}")
    srv = decode.get("serve Q4_K_M (openai client)")
    if srv:
        print(f"\nserve: ready {srv['ready_seconds']:.1f} s after start; through HTTP "
              f"{srv['tokens_per_s'] / decode['llama.cpp Q4_K_M']['tokens_per_s']:.2f}x the direct llama.cpp Q4_K_M rate")
    print(f"first answer, transformers fp32: {ref['texts'][0]!r}")
    print(f"first answer, llama.cpp Q4_K_M:  {decode['llama.cpp Q4_K_M']['texts'][0]!r}")
    print(f"whole run: {total_s:.0f} s")


if __name__ == "__main__":
    main()
