"""npgpt against transformers on the same randomly initialised checkpoint, measured side by side in one run.

    python tools/bench.py                 # GPT-2 124M, medians of 5 runs
    python tools/bench.py --size gpt2-medium --runs 5
    python tools/bench.py --quick         # a tiny model, one run: a smoke test of this script

Measures decode tokens/s at batch 1 (16-token prompt, 128 new tokens, greedy) and at batch 8, prefill tokens/s
for a 512-token prompt, the time per token at position ~20 and ~900, whole-process cold start to the first
generated token (a fresh python each time, weights already on disk) and peak RSS. Also the floor: the bytes
of weights a decoded token must read, over the GEMV bandwidth measured here on the model's own matrices; the
ceilings that the products alone set; and where npgpt's prefill spends its time (products, attention, GELU,
LayerNorm, the cache's writes, the rest), timed in place.
transformers is measured when it is installed (the `golden` extra); both use every core, float32.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import npgpt  # noqa: E402
from npgpt import cores  # noqa: E402

PROMPT, NEW_TOKENS, BATCH, PREFILL, NEAR, FAR, STEPS = 16, 128, 8, 512, 16, 880, 32
QUICK = dict(PROMPT=8, NEW_TOKENS=8, BATCH=4, PREFILL=64, NEAR=16, FAR=890, STEPS=4)


def median_time(fn, runs: int) -> float:
    fn()  # warm up: page the weights in, let BLAS start its threads
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(functions: dict, runs: int) -> dict:
    """Median seconds of each function, run in turn (a, b, a, b, ...) so that all see the machine in the same
    state: on a shared machine the speed drifts, and measuring one library after the other would bias the
    ratio. A pause before each run lets the other library's worker threads stop spinning."""
    times = {name: [] for name in functions}
    for f in functions.values():
        f()  # warm up: page the weights in, start the thread pools
    for _ in range(runs):
        for name, f in functions.items():
            time.sleep(0.2)
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def cpu_name() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it, and the kernels NumPy's OpenBLAS chose for it (on an
    AVX-512 CPU, OPENBLAS_CORETYPE changes much): figures are only comparable on one machine, with one BLAS."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = "unknown CPU"
    kernels = cores.blas_kernels()
    return f"{name}, OpenBLAS {kernels} kernels" if kernels else name


def prompts(batch: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50000, size=(batch, length))


# ---------------------------------------------------------------------------------------------------- the runners


class Npgpt:
    name = "npgpt"

    def __init__(self, model_dir: str):
        self.model = npgpt.load(model_dir)

    def decode(self, batch: int) -> None:
        ids = prompts(batch, PROMPT).tolist()
        self.model.generate(ids if batch > 1 else ids[0], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)

    def prefill(self) -> None:
        self.model.forward(prompts(1, PREFILL), self.model.new_cache(1, PREFILL), last_only=True)

    def steps_at(self, position: int):
        """A cache filled to `position`; then a function that decodes STEPS more tokens one by one."""
        cache = self.model.new_cache(1, position + STEPS + 1)
        self.model.forward(prompts(1, position), cache, last_only=True)

        def run():
            cache.length = position
            for i in range(STEPS):
                self.model.forward(np.array([[100 + i]]), cache, last_only=True)
        return run


class Transformers:
    name = "transformers"

    def __init__(self, model_dir: str):
        import torch
        from transformers import GPT2LMHeadModel
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()
        self.torch = torch
        self.model = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.model.generation_config.pad_token_id = 0

    def decode(self, batch: int) -> None:
        ids = self.torch.as_tensor(prompts(batch, PROMPT))
        with self.torch.inference_mode():
            self.model.generate(ids, attention_mask=self.torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                min_new_tokens=NEW_TOKENS, do_sample=False)

    def prefill(self) -> None:
        with self.torch.inference_mode():
            self.model(self.torch.as_tensor(prompts(1, PREFILL)), use_cache=True, logits_to_keep=1)

    def steps_at(self, position: int):
        from transformers import DynamicCache

        torch = self.torch
        with torch.inference_mode():
            past = self.model(torch.as_tensor(prompts(1, position)), use_cache=True, logits_to_keep=1).past_key_values

        def run():
            cache = DynamicCache()
            for layer in range(len(past.layers)):
                cache.update(past.layers[layer].keys.clone(), past.layers[layer].values.clone(), layer)
            with torch.inference_mode():
                for i in range(STEPS):
                    cache = self.model(torch.tensor([[100 + i]]), past_key_values=cache, use_cache=True,
                                       logits_to_keep=1).past_key_values
        return run


# ---------------------------------------------------------------------------------------------- fresh processes

COLD = {
    "npgpt": "import npgpt; m = npgpt.load({dir!r}); m.generate({ids}, max_new_tokens=1)",
    "transformers": ("import torch; from transformers import GPT2LMHeadModel; "
                     "m = GPT2LMHeadModel.from_pretrained({dir!r}); "
                     "m.generate(torch.tensor([{ids}]), max_new_tokens=1, do_sample=False, pad_token_id=0)"),
}
RSS = {
    "npgpt": "import npgpt; m = npgpt.load({dir!r}); m.generate({ids}, max_new_tokens={n}, min_new_tokens={n})",
    "transformers": ("import torch; from transformers import GPT2LMHeadModel; "
                     "m = GPT2LMHeadModel.from_pretrained({dir!r}).eval(); torch.inference_mode().__enter__(); "
                     "m.generate(torch.tensor([{ids}]), max_new_tokens={n}, min_new_tokens={n}, do_sample=False, "
                     "pad_token_id=0)"),
}


PEAK_RSS = ("; import re; print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)))")


def run_child(code: str) -> tuple[float, float]:
    """Wall time of a fresh python running `code`, and its peak resident memory in MB (VmHWM: unlike
    ru_maxrss, it does not carry over the peak of the process that started it)."""
    code += PEAK_RSS
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return elapsed, int(done.stdout.strip().splitlines()[-1]) / 1024  # kB -> MB


# ----------------------------------------------------------------------------------------------------- the floor


def block_matrices(model: npgpt.GPT2) -> list[np.ndarray]:
    """Every block's four weight matrices (48 for GPT-2 124M), in the order a forward step multiplies them."""
    return [w for b in model.blocks for w in (b.attn.c_attn.weight, b.attn.c_proj.weight, b.mlp.c_fc.weight,
                                              b.mlp.c_proj.weight)]


FLOOR_PASSES = 8


def gemv_floor(model: npgpt.GPT2):
    """(bytes of weights one decoded token reads, a function reading them with BLAS matrix-vector products).

    The same matrices as a decode step (every block's four projections and the tied output head), one
    vector each, nothing else: the time no implementation on this machine can beat by much. The function runs
    them FLOOR_PASSES times, so that waking BLAS's threads after the pause between runs (up to 10 ms on an Intel
    Xeon, where one pass takes 18) is not counted as reading weights."""
    matrices = block_matrices(model)
    head = model.lm_head.T
    vectors = [np.ones((1, w.shape[0]), np.float32) for w in matrices] + [np.ones((1, head.shape[0]), np.float32)]

    def products():
        for _ in range(FLOOR_PASSES):
            for x, w in zip(vectors, matrices + [head]):
                x @ w
    return sum(w.nbytes for w in matrices) + head.nbytes, products


def products(model: npgpt.GPT2, rows: int, head_rows: int, last_rows: int | None = None):
    """A function computing the products of one forward pass of `rows` rows the way npgpt does (ops.linear for
    the block products, ops.head_product for the head on `head_rows` rows), nothing else: a step cannot be
    faster than this, so it bounds the tokens/s of a batch or a prefill on this machine's BLAS.

    last_rows: rows of the last block's attention projection and MLP (a prefill that wants only the last
    position's logits, as bench's does, runs them on 1 row); default `rows`."""
    from npgpt import ops

    rng = np.random.default_rng(0)
    matrices = block_matrices(model)
    counts = [rows] * (len(matrices) - 3) + [rows if last_rows is None else last_rows] * 3
    inputs = [rng.standard_normal((n, w.shape[0]), dtype=np.float32) for n, w in zip(counts, matrices)]
    final = rng.standard_normal((head_rows, model.lm_head.shape[1]), dtype=np.float32)

    def run():
        for x, w in zip(inputs, matrices):
            ops.linear(x, w)
        ops.head_product(final, model.lm_head)
    return run


def transcendentals(config: npgpt.GPT2Config, tokens: int):
    """A function evaluating only the exp and tanh that a prefill of `tokens` tokens needs at the least: exp of
    every score a causal softmax keeps (n_head x tokens (tokens + 1) / 2 a block, the last block's last query
    only), tanh of every GELU input (tokens x 4 n_embd a block, one row in the last), or exp where npgpt computes
    GELU from exp (ops.TANH_IS_FAST). NumPy evaluates them far more slowly than a multiply (on the AMD EPYC about
    1.4 ns an element against 0.1), so they bound a prefill as the products do; split across the cores as npgpt
    splits a prefill (npgpt.cores)."""
    from npgpt import cores, ops

    rng = np.random.default_rng(0)
    scores = -np.abs(rng.standard_normal(config.n_head * tokens * (tokens + 1) // 2, dtype=np.float32))
    gelu_in = rng.standard_normal(tokens * 4 * config.n_embd, dtype=np.float32)
    last = (config.n_head * tokens, 4 * config.n_embd)  # the last block: one query, one MLP row
    out = (np.empty_like(scores), np.empty_like(gelu_in))

    def evaluate(f, x, y, n):
        cores.split(lambda lo, hi: f(x[lo:hi], out=y[lo:hi]), n)

    def run():
        for layer in range(config.n_layer):
            s, g = (len(scores), len(gelu_in)) if layer < config.n_layer - 1 else last
            evaluate(np.exp, scores, out[0], s)
            evaluate(np.tanh if ops.TANH_IS_FAST else np.exp, gelu_in, out[1], g)
    return run


def ceilings(model: npgpt.GPT2, results: dict, runs: int) -> None:
    """What the products alone allow for decode batch BATCH and a prefill of PREFILL tokens, and for the prefill
    the products with the exp and tanh it cannot do without, against transformers' figures of the same run: a
    ratio below a target here means NumPy cannot reach it."""
    print("\nceilings from the products alone (npgpt's ways), and for the prefill with its exp and tanh; attention's "
          "products, the other passes and LayerNorm excluded, so real runs are slower:")
    prefill_products = median_time(products(model, PREFILL, 1, last_rows=1), runs)
    for label, key, tokens, seconds in (
            (f"decode batch {BATCH}", f"decode_b{BATCH}", BATCH,
             median_time(products(model, BATCH, BATCH), runs)),
            (f"prefill {PREFILL} tokens", "prefill", PREFILL, prefill_products),
            (f"prefill {PREFILL} tokens with its exp and tanh", "prefill", PREFILL,
             prefill_products + median_time(transcendentals(model.config, PREFILL), runs))):
        line = f"  {label}: {seconds * 1e3:.1f} ms -> at most {tokens / seconds:.0f} tokens/s"
        if "transformers" in results:
            line += f" = {tokens / seconds / results['transformers'][key]:.2f}x transformers"
        print(line + f" (npgpt reached {results['npgpt'][key]:.0f})")


def prefill_parts(model: npgpt.GPT2, runs: int) -> dict:
    """Where npgpt's prefill of PREFILL tokens spends its time, timed in place: for the duration, each of these
    operations is wrapped in a timer where the model finds it (npgpt.ops, the cache's class). Medians over
    `runs` prefills, seconds, with "the rest" (embeddings, residual sums, heads split and merged, ...)."""
    from npgpt import kv_cache, ops

    parts = {"products": (ops, ["linear", "head_product"]), "attention": (ops, ["causal_attention"]),
             "GELU": (ops, ["gelu"]), "LayerNorm": (ops, ["layer_norm"]), "cache writes": (kv_cache.KVCache, ["update"])}
    spent = dict.fromkeys(parts, 0.0)
    originals = [(owner, name, getattr(owner, name)) for owner, names in parts.values() for name in names]

    def timed(part, fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - start
        return run

    ids = prompts(1, PREFILL)
    samples = {part: [] for part in [*parts, "whole"]}
    try:
        for part, (owner, names) in parts.items():
            for name in names:
                setattr(owner, name, timed(part, getattr(owner, name)))
        for run in range(runs + 1):  # the first run warms up
            spent.update(dict.fromkeys(parts, 0.0))
            start = time.perf_counter()
            model.forward(ids, model.new_cache(1, PREFILL), last_only=True)
            whole = time.perf_counter() - start
            if run:
                samples["whole"].append(whole)
                for part in parts:
                    samples[part].append(spent[part])
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)
    medians = {part: statistics.median(samples[part]) for part in ["whole", *parts]}
    return {**medians, "the rest": medians["whole"] - sum(medians[part] for part in parts)}


def float16_probe() -> tuple[float, float]:
    """ms to convert one 768 x 3072 float16 matrix to float32, and ms to multiply a vector by it in float32."""
    w32 = np.random.default_rng(0).standard_normal((768, 3072)).astype(np.float32)
    w16, x = w32.astype(np.float16), np.ones((1, 768), np.float32)
    return median_time(lambda: w16.astype(np.float32), 5) * 1e3, median_time(lambda: x @ w32, 20) * 1e3


# --------------------------------------------------------------------------------------------------------- main


def checkpoint(size: str, quick: bool, directory: str | None) -> str:
    name = "quick" if quick else size
    path = directory or os.path.join(tempfile.gettempdir(), "npgpt-bench", f"{name}-random")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        config = npgpt.GPT2Config(n_layer=2, n_head=2, n_embd=64) if quick else npgpt.GPT2Config.preset(size)
        print(f"writing a random {name} checkpoint (official layout) to {path}", file=sys.stderr)
        npgpt.GPT2.random(config, seed=0).save(path)
    return path


def measure(runners: list, floor, runs: int) -> dict:
    """Every in-process measurement, the implementations (and the GEMV floor) interleaved run by run."""
    results = {r.name: {} for r in runners}

    def each(key, make, scale):
        seconds = interleaved({r.name: make(r) for r in runners}, runs)
        for name, value in seconds.items():
            results[name][key] = scale(value)

    seconds = interleaved({**{r.name: (lambda r=r: r.decode(1)) for r in runners}, "floor": floor}, runs)
    for r in runners:
        results[r.name]["decode_b1"] = NEW_TOKENS / seconds[r.name]
    results["floor"] = seconds["floor"] / FLOOR_PASSES
    each(f"decode_b{BATCH}", lambda r: lambda: r.decode(BATCH), lambda t: BATCH * NEW_TOKENS / t)
    each("prefill", lambda r: r.prefill, lambda t: PREFILL / t)
    each("ms_near", lambda r: r.steps_at(NEAR), lambda t: t / STEPS * 1e3)
    each("ms_far", lambda r: r.steps_at(FAR), lambda t: t / STEPS * 1e3)
    return results


def fresh_processes(names: list[str], model_dir: str, runs: int, results: dict) -> None:
    """Cold start (median of `runs`) and peak RSS, each in a new python, the implementations in turn."""
    ids = prompts(1, PROMPT)[0].tolist()
    cold = {name: [] for name in names}
    for _ in range(runs):
        for name in names:
            cold[name].append(run_child(COLD[name].format(dir=model_dir, ids=ids))[0])
    for name in names:
        results[name]["cold"] = statistics.median(cold[name])
        results[name]["rss"] = run_child(RSS[name].format(dir=model_dir, ids=ids, n=NEW_TOKENS))[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="gpt2", choices=list(npgpt.PRESETS), help="model size (gpt2 = 124M)")
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement; medians are reported")
    parser.add_argument("--quick", action="store_true", help="a tiny model and one run: a smoke test")
    parser.add_argument("--no-transformers", action="store_true", help="measure npgpt alone")
    parser.add_argument("--dir", help="where the random checkpoint is kept (default: a temp directory)")
    args = parser.parse_args(argv)
    if args.quick:
        globals().update(QUICK)
        args.runs = 1
    model_dir = checkpoint(args.size, args.quick, args.dir)
    runners = [Npgpt]
    if not args.no_transformers:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
            runners.append(Transformers)
        except ImportError:
            print("transformers is not installed: measuring npgpt alone (pip install -e '.[golden]')",
                  file=sys.stderr)

    runners = [runner_class(model_dir) for runner_class in runners]
    names = [r.name for r in runners]
    config = runners[0].model.config
    floor_bytes, floor = gemv_floor(runners[0].model)
    results = measure(runners, floor, args.runs)
    model = runners[0].model
    del runners
    fresh_processes(names, model_dir, args.runs, results)

    rows = [
        ("decode batch 1 (tokens/s)", "decode_b1", "higher"),
        (f"decode batch {BATCH} (tokens/s)", f"decode_b{BATCH}", "higher"),
        (f"prefill {PREFILL} tokens (tokens/s)", "prefill", "higher"),
        (f"ms per token at position ~{NEAR + STEPS // 2}", "ms_near", "lower"),
        (f"ms per token at position ~{FAR + STEPS // 2}", "ms_far", "lower"),
        ("cold start to first token (s)", "cold", "lower"),
        ("peak RSS (MB)", "rss", "lower"),
    ]
    print(f"\nGPT-2 {config.n_layer} layers x {config.n_embd} ({config.parameter_count() / 1e6:.0f}M parameters, "
          f"random weights, float32), {os.cpu_count()} cores ({cpu_name()}), medians of {args.runs} interleaved run(s)\n")
    header = f"{'':38}" + "".join(f"{n:>14}" for n in names) + ("   npgpt / transformers" if len(names) > 1 else "")
    print(header)
    for label, key, better in rows:
        line = f"{label:38}" + "".join(f"{results[n][key]:>14.2f}" for n in names)
        if len(names) > 1:
            ratio = results["npgpt"][key] / results["transformers"][key]
            line += f"   {ratio:6.2f}x ({better} is better)"
        print(line)
    for n in names:
        print(f"{'position ~900 / ~20 (' + n + ')':38}{results[n]['ms_far'] / results[n]['ms_near']:>14.2f}")
    per_token = 1e3 / results["npgpt"]["decode_b1"]
    floor_seconds = results["floor"]
    floor_ms = floor_seconds * 1e3
    print(f"\nfloor: {floor_bytes / 1e6:.0f} MB of weights per decoded token / {floor_bytes / floor_seconds / 1e9:.1f} "
          f"GB/s (GEMV over the model's matrices, measured here) = {floor_ms:.1f} ms per token")
    print(f"npgpt decode batch 1: {per_token:.1f} ms per token = {per_token / floor_ms:.2f}x the floor")
    ceilings(model, results, args.runs)
    parts = prefill_parts(model, args.runs)
    print(f"npgpt's prefill of {PREFILL} tokens timed in place, ms (medians of {args.runs}): "
          + ", ".join(f"{part} {seconds * 1e3:.1f}" for part, seconds in parts.items())
          + " (attention's own per-head products count in attention)")
    convert, multiply = float16_probe()
    print(f"float16 weight store: converting a 768x3072 float16 matrix to float32 takes {convert:.2f} ms, "
          f"multiplying a vector by it in float32 {multiply:.3f} ms: NumPy has no fast float16 path, so a "
          f"float16 store would halve the memory but not pay for itself in speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
