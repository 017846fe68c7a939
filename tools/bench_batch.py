"""npgpt batch's scoring throughput against a plain loop of transformers on the same corpus, and the memory a worker
adds.

    python tools/bench_batch.py                    # GPT-2 124M (random weights), 64 texts of 8 to 512 tokens
    python tools/bench_batch.py --quick            # a tiny model and a few texts: a smoke test of this script

The corpus is English prose (the docstrings of Python's standard library) cut into texts whose lengths follow a
log-normal law (median ~100 tokens), written as a JSON Lines scoring job. npgpt runs it with `npgpt.batch.run_file`
(1 worker: this process, every core's BLAS threads; 2 workers: two processes of one BLAS thread each) at several
batch sizes; the time is the whole job's, worker start and model load included. transformers scores the same
token ids one text at a time (GPT2LMHeadModel(ids, labels=ids), inference mode, every core). Tokens/s counts the
texts' tokens. The configurations run in turn, round after round (medians are reported), so that all of them see
a shared machine in about the same state. While the 2-worker jobs run, each worker's /proc/PID/status is sampled:
RssAnon is the memory that worker adds (its interpreter, tokenizer, activations), RssFile the pages of the
memory-mapped checkpoint it shares with the others through the page cache.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import math
import os
import statistics
import sys
import tempfile
import shutil
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import npgpt  # noqa: E402
from npgpt import batch  # noqa: E402

MODULES = ("collections", "json", "argparse", "logging", "pathlib", "subprocess", "typing", "inspect", "unittest",
           "email.message", "http.client", "asyncio.events", "decimal", "fractions", "datetime", "re", "textwrap",
           "string", "functools", "itertools", "contextlib", "dataclasses", "enum", "heapq", "shutil", "tarfile",
           "zipfile", "threading", "queue", "socket", "ssl", "urllib.parse", "xml.dom.minidom", "csv", "sqlite3")


def prose() -> str:
    """The docstrings of a fixed list of standard-library modules and their members, joined."""
    parts = []
    for name in MODULES:
        module = importlib.import_module(name)
        parts.append(inspect.getdoc(module) or "")
        for _, member in sorted(vars(module).items()):
            if (inspect.isclass(member) or inspect.isfunction(member)) and getattr(member, "__module__", "") == name:
                parts.append(inspect.getdoc(member) or "")
    return "\n\n".join(p for p in parts if p)


def corpus(tokenizer, texts: int, longest: int, seed: int = 0) -> list[str]:
    """`texts` consecutive pieces of the prose, of log-normally distributed lengths (median 100 tokens)."""
    ids = tokenizer.encode(prose())
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(math.log(100), 0.8, texts).astype(int), 8, longest)
    out, start = [], 0
    for n in lengths:
        if start + n > len(ids):
            start = 0
        out.append(tokenizer.decode(ids[start:start + n]))
        start += n
    return out


def checkpoint(quick: bool, directory: str | None) -> str:
    name = "quick" if quick else "gpt2"
    path = directory or os.path.join(tempfile.gettempdir(), "npgpt-bench", f"{name}-random")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        config = npgpt.GPT2Config(n_layer=2, n_head=2, n_embd=64) if quick else npgpt.GPT2Config.preset("gpt2")
        print(f"writing a random {name} checkpoint (official layout) to {path}", file=sys.stderr)
        npgpt.GPT2.random(config, seed=0).save(path)
    return path


# --------------------------------------------------------------------------------------------- worker memory


def status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem of a process, in kB (empty when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f)
                    if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem")}
    except (OSError, ValueError):
        return {}


def workers_of(parent: int) -> list[int]:
    """The worker processes a job started: children of `parent` running multiprocessing's spawn_main."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            pids.append(int(entry))
    return pids


class Sampler(threading.Thread):
    """Samples the job's workers' memory every 50 ms; peak[pid][field] in kB."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.running = {}, True

    def run(self):
        while self.running:
            for pid in workers_of(os.getpid()):
                for key, value in status(pid).items():
                    seen = self.peak.setdefault(pid, {})
                    seen[key] = max(seen.get(key, 0), value)
            time.sleep(0.05)

    def stop(self) -> dict:
        self.running = False
        self.join()
        return self.peak


# ---------------------------------------------------------------------------------------------------- runners


def run_npgpt(model_dir: str, job: str, out_dir: str, workers: int, batch_size: int) -> tuple[float, list, dict]:
    """(tokens/s, perplexities, peak memory of each worker) of one whole job."""
    out = os.path.join(out_dir, f"out-{workers}-{batch_size}.jsonl")
    if os.path.exists(out):
        os.remove(out)
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    summary = batch.run_file(job, out, model_dir, workers=workers, batch_size=batch_size,
                             progress=False)
    seconds = time.perf_counter() - start
    peak = sampler.stop()
    with open(out) as f:
        results = [json.loads(line) for line in f]
    assert summary.failed == 0, [r for r in results if "error" in r][:3]
    return sum(r["tokens"] for r in results) / seconds, [r["perplexity"] for r in results], peak


def run_transformers(model_dir: str, rows: list[list[int]]) -> tuple[float, list]:
    import torch
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    model = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        model(torch.tensor([rows[0]]), labels=torch.tensor([rows[0]]))  # warm up
        start = time.perf_counter()
        perplexities = []
        for row in rows:
            ids = torch.tensor([row])
            perplexities.append(math.exp(model(ids, labels=ids).loss.item()))
        seconds = time.perf_counter() - start
    return sum(len(r) for r in rows) / seconds, perplexities


# --------------------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and a few texts: a smoke test")
    parser.add_argument("--texts", type=int, default=64, help="texts in the corpus (64)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16], help="batch sizes (1 16)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every configuration; medians (2)")
    parser.add_argument("--no-transformers", action="store_true", help="measure npgpt alone")
    parser.add_argument("--dir", help="where the random checkpoint is kept (default: a temp directory)")
    args = parser.parse_args(argv)
    if args.quick:
        args.texts, args.batch_sizes, args.rounds = 12, [4], 1
    model_dir = checkpoint(args.quick, args.dir)
    model = npgpt.load(model_dir)
    texts = corpus(model.tokenizer, args.texts, longest=min(512, model.config.n_positions))
    rows = [model.tokenizer.encode(t) for t in texts]
    del model
    work = tempfile.mkdtemp(prefix="npgpt-bench-batch-")
    try:
        return report(args, model_dir, texts, rows, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(args, model_dir: str, texts: list[str], rows: list[list[int]], work: str) -> int:
    job = os.path.join(work, "corpus.jsonl")
    with open(job, "w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    tokens = sum(len(r) for r in rows)
    size = os.path.getsize(os.path.join(model_dir, "model.safetensors"))
    print(f"\ncorpus: {len(texts)} texts, {tokens:,} tokens (median {statistics.median(map(len, rows)):.0f}, "
          f"longest {max(map(len, rows))}); checkpoint {size / 1e6:.0f} MB; {batch.usable_cores()} cores; "
          f"medians of {args.rounds} round(s)\n", flush=True)

    transformers = not args.no_transformers and importlib.util.find_spec("transformers") is not None
    if not args.no_transformers and not transformers:
        print("transformers is not installed: measuring npgpt alone (pip install -e '.[golden]')", file=sys.stderr)
    rates, memory, perplexities = {}, {}, {}
    for _ in range(args.rounds):
        for workers in (1, 2):
            for batch_size in args.batch_sizes:
                rate, perplexities["npgpt"], peak = run_npgpt(model_dir, job, work, workers, batch_size)
                rates.setdefault(f"npgpt, {workers} worker{'s' if workers > 1 else ''}, batch {batch_size}",
                                 []).append(rate)
                memory.setdefault(batch_size, []).extend(peak.values())  # every worker of every round
        if transformers:
            rate, perplexities["transformers"] = run_transformers(model_dir, rows)
            rates.setdefault("transformers, a plain loop", []).append(rate)

    results = {name: statistics.median(r) for name, r in rates.items()}
    base = results.get("transformers, a plain loop")
    print(f"{'scoring throughput':40}{'tokens/s':>12}" + ("   vs transformers" if base else ""))
    for name, rate in results.items():
        print(f"{name:40}{rate:>12,.0f}" + (f"   {rate / base:6.2f}x" if base else ""))
    if "transformers" in perplexities:
        a, b = np.array(perplexities["npgpt"]), np.array(perplexities["transformers"])
        print(f"\nperplexities, npgpt vs transformers: largest relative difference {np.max(np.abs(a / b - 1)):.1e}")
    print(f"\nmemory of a worker of the 2-worker jobs: the largest peak of any worker over the jobs (the "
          f"checkpoint is {size / 1e6:.0f} MB)")
    print(f"{'batch size':>12}{'VmRSS MB':>12}{'RssFile MB':>12}{'RssAnon MB':>12}{'RssAnon / model':>18}")
    for batch_size, peaks in memory.items():
        worst = {key: max(p.get(key, 0) for p in peaks) for key in ("VmRSS", "RssFile", "RssAnon")}
        print(f"{batch_size:>12}{worst['VmRSS'] / 1024:>12.0f}{worst['RssFile'] / 1024:>12.0f}"
              f"{worst['RssAnon'] / 1024:>12.0f}{worst['RssAnon'] * 1024 / size:>17.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
