"""Make the golden data under tests/golden/ from PyTorch (transformers' GPT2LMHeadModel and its generate).

For each small GPT-2 below, built with a fixed seed: the checkpoint in the official layout (config.json,
model.safetensors) and expected.safetensors with what transformers computes on fixed inputs:

    single.ids [1, T], single.logits [1, T, V], single.hidden [L+1, 1, T, C], single.attentions [L, 1, H, T, T]
    batch.ids [2, T], batch.mask [2, T] (left padding), batch.logits / .hidden / .attentions as above
    greedy.prompt [1, T0], greedy.tokens [1, N]: transformers' greedy generate
    greedy_batch.prompt [2, T0], greedy_batch.mask [2, T0], greedy_batch.tokens [2, N] (-1 after an early end)

The full-vocabulary model keeps only the last position's logits (`*.last_logits`) to stay small, and uses the
prompts of seed notebook 003.

Decoding (issue 3): tests/golden/processors.safetensors holds fixed logits and input ids and, for each of
transformers' logits processors and warpers (and a chain of them in generate's order), its output; each model
directory's generate.safetensors holds generate() outputs with decoding rules and with beam search.

Run: python tools/make_golden.py (needs the `golden` extra).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "golden")

# The greedy continuations are this long.
NEW_TOKENS = 24
SMALL = dict(vocab_size=1000, n_positions=128, n_embd=64, n_head=4, n_layer=3, bos_token_id=999, eos_token_id=999)
TINY = dict(vocab_size=50257, n_positions=64, n_embd=16, n_head=2, n_layer=2)


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


def make_processors():
    """Each transformers logits processor/warper applied to fixed logits [4, 1000] and input ids [4, 12]."""
    import torch
    from transformers.generation import logits_process as lp

    rng = np.random.default_rng(5)
    logits = (3 * rng.standard_normal((4, 1000))).astype(np.float32)
    logits[1] = np.round(logits[1])  # many ties, to check which tied tokens top-k keeps
    logits[3, :500] -= 8.0  # a peaked row
    ids = rng.integers(0, 40, (4, 12))  # small ids so that tokens and n-grams repeat
    ids[0, -2:] = ids[0, 3:5]  # row 0 ends with a bigram seen before
    ids[2, -3:] = ids[2, 1:4]  # row 2 ends with a trigram seen before
    eos = 999
    cases = {
        "temperature_0.7": lp.TemperatureLogitsWarper(0.7),
        "temperature_1.5": lp.TemperatureLogitsWarper(1.5),
        "top_k_1": lp.TopKLogitsWarper(1),
        "top_k_10": lp.TopKLogitsWarper(10),
        "top_k_50": lp.TopKLogitsWarper(50),
        "top_p_0.3": lp.TopPLogitsWarper(0.3),
        "top_p_0.9": lp.TopPLogitsWarper(0.9),
        "top_p_0.95": lp.TopPLogitsWarper(0.95),
        "min_p_0.05": lp.MinPLogitsWarper(0.05),
        "min_p_0.3": lp.MinPLogitsWarper(0.3),
        "typical_p_0.5": lp.TypicalLogitsWarper(0.5),
        "typical_p_0.9": lp.TypicalLogitsWarper(0.9),
        "repetition_penalty_1.3": lp.RepetitionPenaltyLogitsProcessor(1.3),
        "repetition_penalty_0.7": lp.RepetitionPenaltyLogitsProcessor(0.7),
        "no_repeat_ngram_size_2": lp.NoRepeatNGramLogitsProcessor(2),
        "no_repeat_ngram_size_3": lp.NoRepeatNGramLogitsProcessor(3),
        "bad_words_ids": lp.NoBadWordsLogitsProcessor([[7], [int(ids[0, -1]), 11], [3, 4, 5], [eos]], eos),
        "min_new_tokens_5": lp.MinNewTokensLengthLogitsProcessor(8, 5, eos),
        "min_new_tokens_4": lp.MinNewTokensLengthLogitsProcessor(8, 4, eos),
        "logit_bias": lp.SequenceBiasLogitsProcessor([[[5], -5.0], [[17], 3.0], [[998], -100.0]]),
        # the chain generate builds for these settings, in its order (processors, then warpers)
        "chain": lp.LogitsProcessorList([
            lp.RepetitionPenaltyLogitsProcessor(1.2), lp.NoRepeatNGramLogitsProcessor(2),
            lp.NoBadWordsLogitsProcessor([[7]], eos), lp.MinNewTokensLengthLogitsProcessor(8, 5, eos),
            lp.TemperatureLogitsWarper(0.8), lp.TopKLogitsWarper(40), lp.TopPLogitsWarper(0.9),
            lp.MinPLogitsWarper(0.02), lp.TypicalLogitsWarper(0.95)]),
    }
    out = {"logits": logits, "input_ids": ids}
    for name, processor in cases.items():
        # (some processors return a strided view: safetensors would write its raw buffer, so copy)
        out[name] = np.ascontiguousarray(processor(torch.as_tensor(ids), torch.as_tensor(logits).clone()).numpy())
    path = os.path.join(GOLDEN, "processors.safetensors")
    save_file(out, path, metadata={"made_by": "tools/make_golden.py"})
    print(f"processors: {os.path.getsize(path) / 1e6:.2f} MB")


def make_generate(name: str, seed: int, config: dict, logit_std: float = 1.0):
    """transformers' generate on a golden model: greedy with decoding rules, and beam search."""
    model = reference.build(seed, logit_std=logit_std, **config)
    expected = load_file(os.path.join(GOLDEN, name, "expected.safetensors"))
    single, batch, mask = expected["greedy.prompt"], expected["greedy_batch.prompt"], expected["greedy_batch.mask"]
    vocab = config["vocab_size"]
    runs = {
        "rules": (single, None, dict(max_new_tokens=24, repetition_penalty=1.5, no_repeat_ngram_size=2,
                                     bad_words_ids=[[int(expected["greedy.tokens"][0, 0])]], min_new_tokens=10)),
        "rules_batch": (batch, mask, dict(max_new_tokens=16, repetition_penalty=1.3, no_repeat_ngram_size=3)),
        "beam": (single, None, dict(max_new_tokens=16, num_beams=4, num_return_sequences=2)),
        "beam_early": (single, None, dict(max_new_tokens=16, num_beams=3, early_stopping=True, length_penalty=0.5)),
        "beam_never": (single, None, dict(max_new_tokens=12, num_beams=3, early_stopping="never",
                                          length_penalty=2.0, num_return_sequences=3)),
        "beam_batch": (batch, mask, dict(max_new_tokens=12, num_beams=3, num_return_sequences=2,
                                         no_repeat_ngram_size=2)),
    }
    if vocab > 50256:  # end-of-text exists: make the model likely to end, to see beams finish early
        bias = [[[50256], 6.0]]
        runs["beam_eos"] = (single, None, dict(max_new_tokens=16, num_beams=4, num_return_sequences=4,
                                               sequence_bias=bias))
        runs["beam_eos_early"] = (batch, mask, dict(max_new_tokens=16, num_beams=3, early_stopping=True,
                                                    sequence_bias=bias, length_penalty=-0.5))
        runs["greedy_eos"] = (batch, mask, dict(max_new_tokens=16, sequence_bias=bias, min_new_tokens=3))
    out = {}
    for run, (ids, run_mask, settings) in runs.items():
        beams = settings.get("num_beams", 1)
        tokens, scores = reference.generate(model, ids, run_mask, do_sample=False, **settings)
        out[f"{run}.tokens"] = tokens
        if beams > 1:
            out[f"{run}.scores"] = scores
    path = os.path.join(GOLDEN, name, "generate.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, path, metadata={"made_by": "tools/make_golden.py"})
    print(f"{name}/generate: {len(runs)} runs")


def main():
    rng = np.random.default_rng(2)
    # A small vocabulary keeps full logits, hidden states and attentions of every position affordable.
    make("small", seed=1, full_logits=True,
         config=SMALL,
         single=rng.integers(0, 999, 20).tolist(),
         batch=[rng.integers(0, 999, 13).tolist(), rng.integers(0, 999, 20).tolist()])
    # GPT-2's own vocabulary and tokenizer, with the prompts of notebook 003.
    hello, effort, day = [15496, 11, 314, 716], [6109, 3626, 6100, 345], [6109, 1110, 6622, 257]
    make("tiny", seed=3, full_logits=False,
         config=TINY,
         single=hello, batch=[effort, day])
    make_processors()
    make_generate("small", seed=1, config=SMALL)
    make_generate("tiny", seed=3, config=TINY)


if __name__ == "__main__":
    main()
