"""Speculative decoding, npgpt against transformers on the same random checkpoints, side by side in one run.

    python tools/bench_speculative.py            # GPT-2 124M target, a 6-layer (distilgpt2-sized) assistant
    python tools/bench_speculative.py --quick    # tiny models, one run: a smoke test of this script

Measures:
- the cost curve: the time of a verify step of k drafted tokens (one forward pass of k + 1 new positions after
  a 64-token prefix) over that of a 1-token step, k = 1..16; then in ms, beside transformers' own step and the
  products of k + 1 rows alone (the floor NumPy's BLAS sets for npgpt);
- decode batch 8 and few-row products: what every verify step and batch rests on;
- tokens/s and tokens per forward pass for plain greedy, prompt lookup and an assistant model, for npgpt and
  for transformers' own `prompt_lookup_num_tokens` / `assistant_model`, on two workloads: input-grounded (a
  prompt holding a passage twice, so that continuing it can copy) and open-ended (a short prompt).

Random weights make acceptance unlike real use: a random target copies its input only by chance, and a random
assistant agrees with a random target only by chance. The ratios between the libraries still measure the
implementations, since on the same weights both draft and accept the same tokens (greedy), and the tokens per
forward pass printed beside them show what was accepted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import npgpt  # noqa: E402
from bench import cpu_name, interleaved, median_time, products  # noqa: E402

NEW_TOKENS, LOOKUP, RUNS = 96, 10, 3
GROUNDED = ("The committee met on Tuesday to review the budget. The chair said that the budget for the coming year "
            "would rise by four percent, that the new library would open in the spring, and that the roads on the "
            "east side would be repaired before winter. Summary of the meeting: the chair said that the budget "
            "for the coming year would rise by four percent, that")
OPEN = "Once upon a time, in a village by the sea,"


def checkpoint(name: str, config: npgpt.GPT2Config, seed: int) -> str:
    path = os.path.join(tempfile.gettempdir(), "npgpt-bench", f"{name}-random")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        print(f"writing a random {name} checkpoint to {path}", file=sys.stderr)
        npgpt.GPT2.random(config, seed=seed).save(path)
    return path


# ------------------------------------------------------------------------------------------------ the cost curve


def cost_curve(model, ks) -> dict[int, float]:
    """Seconds of a forward pass of k + 1 new positions after a 64-token prefix, for each k (and k = 0)."""
    cache = model.new_cache(1, 64 + max(ks) + 1)
    model.forward(np.arange(64)[None], cache, last_only=True)

    def step(k):
        def run():
            cache.length = 64
            model.forward(np.arange(k + 1)[None] + 100, cache)  # every position's logits, as a verify step
        return run

    seconds = interleaved({k: step(k) for k in [0, *ks]}, RUNS * 2)
    return seconds


def transformers_cost_curve(runner, ks) -> dict[int, float]:
    """The same for transformers: GPT2LMHeadModel on k + 1 positions after a 64-token DynamicCache, cropped back
    to the prefix after each run."""
    torch = runner.torch
    with torch.inference_mode():
        cache = runner.model(torch.arange(64)[None], use_cache=True).past_key_values

    def step(k):
        def run():
            with torch.inference_mode():
                runner.model(torch.arange(k + 1)[None] + 100, past_key_values=cache, use_cache=True)
            cache.crop(-(k + 1))  # back to the prefix (a negative length removes that many positions)
        return run

    return interleaved({k: step(k) for k in [0, *ks]}, RUNS * 2)


def print_cost_curves(model, runners, ks) -> None:
    """npgpt's and transformers' verify steps in ms, and the products of k + 1 rows alone (npgpt's ways): with
    the same drafts accepted, prompt lookup's ratio to transformers' is about the ratio of these step times, so
    a products floor above transformers' step / 1.5 puts the 1.5x target out of NumPy's reach."""
    curve = cost_curve(model, ks)
    print("verify step of k drafts / 1-token step: " + "  ".join(f"k={k} {curve[k] / curve[0]:.2f}x" for k in ks))
    theirs = transformers_cost_curve(runners[1], ks) if len(runners) > 1 else None
    floor = {k: median_time(products(model, k + 1, k + 1), RUNS * 2) for k in [0, *ks]}
    print(f"\n{'ms of a step of k drafts':26}{'npgpt':>10}{'products alone':>16}"
          + (f"{'transformers':>14}{'transformers / npgpt':>22}" if theirs else ""))
    for k in [0, *ks]:
        line = f"{'k = ' + str(k):26}{curve[k] * 1e3:>10.1f}{floor[k] * 1e3:>16.1f}"
        if theirs:
            line += f"{theirs[k] * 1e3:>14.1f}{theirs[k] / curve[k]:>21.2f}x"
        print(line)


# ----------------------------------------------------------------------------------------------- decoding runs


class Npgpt:
    name = "npgpt"

    def __init__(self, target_dir, assistant_dir):
        self.model, self.assistant = npgpt.load(target_dir), npgpt.load(assistant_dir)
        self.forwards = 0

    def run(self, prompt: str, how: str):
        extra = {"plain": {}, "lookup": {"prompt_lookup_num_tokens": LOOKUP},
                 "assistant": {"assistant_model": self.assistant}}[how]
        return self.model.generate(prompt, max_new_tokens=NEW_TOKENS, eos_token_id=None, **extra).ids


class Transformers:
    name = "transformers"

    def __init__(self, target_dir, assistant_dir):
        import torch
        from transformers import GPT2LMHeadModel
        from transformers.utils import logging

        logging.set_verbosity_error()
        self.torch = torch
        self.model = GPT2LMHeadModel.from_pretrained(target_dir).eval()
        self.assistant = GPT2LMHeadModel.from_pretrained(assistant_dir).eval()
        self.tokenizer = npgpt.Tokenizer.gpt2()

    def run(self, prompt: str, how: str):
        extra = {"plain": {}, "lookup": {"prompt_lookup_num_tokens": LOOKUP},
                 "assistant": {"assistant_model": self.assistant}}[how]
        ids = self.torch.tensor([self.tokenizer.encode(prompt)])
        with self.torch.inference_mode():
            out = self.model.generate(ids, attention_mask=self.torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                      min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0, **extra)
        return out[0, ids.shape[1]:].tolist()


def forwards_per_run(model, prompt: str, how: str, assistant) -> int:
    """How many forward passes of the target npgpt makes for this run (tokens per forward = NEW_TOKENS / it)."""
    calls = 0
    original = model.forward

    def counted(*args, **kwargs):
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    model.forward = counted
    try:
        extra = {"plain": {}, "lookup": {"prompt_lookup_num_tokens": LOOKUP},
                 "assistant": {"assistant_model": assistant}}[how]
        model.generate(prompt, max_new_tokens=NEW_TOKENS, eos_token_id=None, **extra)
    finally:
        del model.forward
    return calls - 1  # the prefill is not a decoding step


def main(argv=None) -> int:
    global NEW_TOKENS, RUNS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and one run: a smoke test")
    parser.add_argument("--no-transformers", action="store_true", help="measure npgpt alone")
    args = parser.parse_args(argv)
    if args.quick:
        NEW_TOKENS, RUNS = 12, 1
        target_config = npgpt.GPT2Config(n_layer=2, n_head=2, n_embd=64)
        assistant_config = npgpt.GPT2Config(n_layer=1, n_head=2, n_embd=64)
    else:
        target_config, assistant_config = npgpt.GPT2Config.preset("gpt2"), npgpt.GPT2Config.preset("distilgpt2")
    target_dir = checkpoint("quick" if args.quick else "gpt2", target_config, seed=0)
    assistant_dir = checkpoint("quick-assistant" if args.quick else "distilgpt2", assistant_config, seed=1)

    runners = [Npgpt(target_dir, assistant_dir)]
    if not args.no_transformers:
        try:
            runners.append(Transformers(target_dir, assistant_dir))
        except ImportError:
            print("transformers is not installed: measuring npgpt alone", file=sys.stderr)
    model = runners[0].model
    c = model.config
    print(f"\nGPT-2 {c.n_layer} x {c.n_embd} target, {runners[0].assistant.config.n_layer}-layer assistant, random "
          f"weights, float32, {os.cpu_count()} cores ({cpu_name()}), medians of {RUNS} interleaved runs\n")

    print_cost_curves(model, runners, [1, 2, 4, 8, 12, 16])

    print(f"\n{'workload, method':36}" + "".join(f"{r.name + ' tok/s':>20}" for r in runners)
          + f"{'tokens/forward':>16}" + ("   npgpt / transformers" if len(runners) > 1 else ""))
    plain = {}
    for workload, prompt in (("input-grounded", GROUNDED), ("open-ended", OPEN)):
        for how in ("plain", "lookup", "assistant"):
            same = len({tuple(r.run(prompt, how)) for r in runners}) == 1
            seconds = interleaved({r.name: (lambda r=r: r.run(prompt, how)) for r in runners}, RUNS)
            rate = {name: NEW_TOKENS / s for name, s in seconds.items()}
            per_forward = NEW_TOKENS / max(1, forwards_per_run(model, prompt, how, runners[0].assistant))
            line = f"{workload + ', ' + how:36}" + "".join(f"{rate[r.name]:>20.1f}" for r in runners)
            line += f"{per_forward:>16.2f}"
            if len(runners) > 1:
                line += f"   {rate['npgpt'] / rate['transformers']:.2f}x" + ("" if same else " (tokens differ!)")
            if how == "plain":
                plain[workload] = rate["npgpt"]
            else:
                line += f"   {rate['npgpt'] / plain[workload]:.2f}x npgpt plain"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
