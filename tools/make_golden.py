"""Make the golden data under tests/golden/ from PyTorch (transformers' GPT2LMHeadModel).

For each small GPT-2 below, built with a fixed seed: the checkpoint in the official layout (config.json,
model.safetensors) and expected.safetensors with what transformers computes on fixed inputs:

    single.ids [1, T], single.logits [1, T, V], single.hidden [L+1, 1, T, C], single.attentions [L, 1, H, T, T]
    batch.ids [2, T], batch.mask [2, T] (left padding), batch.logits / .hidden / .attentions as above
    greedy.prompt [1, T0], greedy.tokens [1, N]: transformers' greedy generate
    greedy_batch.prompt [2, T0], greedy_batch.mask [2, T0], greedy_batch.tokens [2, N] (-1 after an early end)

The full-vocabulary model keeps only the last position's logits (`*.last_logits`) to stay small, and uses the
prompts of seed notebook 003. Run: python tools/make_golden.py (needs the `golden` extra).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "golden")

# The greedy continuations are this long.
NEW_TOKENS = 24


def left_pad(rows: list[list[int]], pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.array([[pad] * (width - len(r)) + r for r in rows], dtype=np.int64)
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=np.int64)
    return ids, mask


def make(name: str, seed: int, config: dict, single: list[int], batch: list[list[int]], full_logits: bool):
    model = reference.build(seed, **config)
    out_dir = os.path.join(GOLDEN, name)
    reference.save_official(model, out_dir)
    expected = {}
    single_ids = np.array([single], dtype=np.int64)
    batch_ids, batch_mask = left_pad(batch)
    for key, ids, mask in (("single", single_ids, None), ("batch", batch_ids, batch_mask)):
        logits, hidden, attentions = reference.forward(model, ids, mask)
        expected[f"{key}.ids"] = ids
        if mask is not None:
            expected[f"{key}.mask"] = mask
        if full_logits:
            expected[f"{key}.logits"] = logits
            expected[f"{key}.hidden"] = hidden
            expected[f"{key}.attentions"] = attentions
        else:
            expected[f"{key}.last_logits"] = logits[:, -1]
    expected["greedy.prompt"] = single_ids
    expected["greedy.tokens"] = reference.greedy(model, single_ids, NEW_TOKENS)
    expected["greedy_batch.prompt"], expected["greedy_batch.mask"] = batch_ids, batch_mask
    expected["greedy_batch.tokens"] = reference.greedy(model, batch_ids, NEW_TOKENS, batch_mask)
    save_file({k: np.ascontiguousarray(v) for k, v in expected.items()}, os.path.join(out_dir, "expected.safetensors"),
              metadata={"made_by": "tools/make_golden.py", "seed": str(seed)})
    sizes = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"{name}: {sizes / 1e6:.2f} MB in {out_dir}")


def main():
    rng = np.random.default_rng(2)
    # A small vocabulary keeps full logits, hidden states and attentions of every position affordable.
    make("small", seed=1, full_logits=True,
         config=dict(vocab_size=1000, n_positions=128, n_embd=64, n_head=4, n_layer=3, bos_token_id=999,
                     eos_token_id=999),
         single=rng.integers(0, 999, 20).tolist(),
         batch=[rng.integers(0, 999, 13).tolist(), rng.integers(0, 999, 20).tolist()])
    # GPT-2's own vocabulary and tokenizer, with the prompts of notebook 003.
    hello, effort, day = [15496, 11, 314, 716], [6109, 3626, 6100, 345], [6109, 1110, 6622, 257]
    make("tiny", seed=3, full_logits=False,
         config=dict(vocab_size=50257, n_positions=64, n_embd=16, n_head=2, n_layer=2),
         single=hello, batch=[effort, day])


if __name__ == "__main__":
    main()
