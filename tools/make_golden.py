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

Issue 10: tests/golden/long/ is a GPT-2 with a 320-token context, and its expected.safetensors what transformers
computes on a 300-token prompt (npgpt takes attention in blocks of 64 queries beyond 64 tokens): logits, every
layer's attention probabilities and hidden states at chosen positions, one layer's hidden states at every
position, and greedy continuations through the cache of the prompt alone and of a left-padded batch.
tests/golden/processors_vocab.safetensors: the rules on 200 rows of full-vocabulary logits of the tiny model
(stored as the hidden states they are rebuilt from, exactly; outputs stored compactly, see make_processors_vocab).
tests/golden/tiny/stop.safetensors: greedy and beam search with stop strings (transformers' stop_strings).

Issue 11: tests/golden/tiny/habits.safetensors: transformers' generate with its own keywords as given (max_length,
eos_token_id as an id, a list or None, pad_token_id, min_length, do_sample=False beside sampling settings,
stop_strings, a GenerationConfig), rows as generate returns them (padded with pad_token_id after their end).

A golden file whose tensors and metadata are unchanged is left as it is (safetensors writes its metadata keys in
no fixed order), so that running this script reproduces the committed files byte for byte.

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
# Long enough for a 300-token prompt and its continuation; no causal-mask buffers in its checkpoint (320 x 320
# per layer would be most of its bytes).
LONG = dict(vocab_size=500, n_positions=320, n_embd=32, n_head=4, n_layer=2, bos_token_id=499, eos_token_id=499)
LONG_PROMPT = 300  # > 4 blocks of 64 queries, not a multiple of 64
LONG_SHORT = 37  # the other row of the left-padded batch
# The positions whose logits, attention rows and hidden states are kept: both ends of each block of 128.
LONG_ROWS = [0, 1, 63, 126, 127, 128, 129, 191, 254, 255, 256, 257, 280, 297, 298, 299]
LONG_NEW = 12
# The text whose tiny-model logits the decoding rules are checked on (repetitive, so that repetition penalties
# and n-gram bans find something).
TEXT = (
    "The wheels on the bus go round and round, round and round, round and round. The wheels on the bus go round "
    "and round, all through the town. The wipers on the bus go swish, swish, swish. The horn on the bus goes beep, "
    "beep, beep, all through the town. Once upon a time there was a little girl who lived in a village near the "
    "forest. Whenever she went out, the little girl wore a red riding cloak, so everyone in the village called her "
    "Little Red Riding Hood. One morning, Little Red Riding Hood asked her mother if she could go to visit her "
    "grandmother as it had been awhile since they had seen each other. \"That is a good idea,\" her mother said. "
    "So they packed a nice basket for Little Red Riding Hood to take to her grandmother. It was the best of times, "
    "it was the worst of times, it was the age of wisdom, it was the age of foolishness, it was the epoch of "
    "belief, it was the epoch of incredulity, it was the season of Light, it was the season of Darkness, it was the "
    "spring of hope, it was the winter of despair. To be, or not to be, that is the question: whether it is "
    "nobler in the mind to suffer the slings and arrows of outrageous fortune, or to take arms against a sea of "
    "troubles. In the beginning God created the heaven and the earth. And the earth was without form, and void; "
    "and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters."
)
VOCAB_ROWS_FROM = 24  # rows: positions 24..63 of each 64-token window of TEXT (their last 16 tokens as input ids)
VOCAB_HISTORY = 16


def save_golden(tensors: dict, path: str, metadata: dict) -> None:
    """save_file, unless `path` already holds exactly these tensors and metadata (then its bytes are kept)."""
    from safetensors import safe_open

    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    if os.path.exists(path):
        with safe_open(path, "np") as f:
            same = f.metadata() == metadata and set(f.keys()) == set(tensors)
        if same:
            old = load_file(path)
            if all(old[k].dtype == v.dtype and old[k].shape == v.shape and old[k].tobytes() == v.tobytes()
                   for k, v in tensors.items()):
                return
    save_file(tensors, path, metadata=metadata)


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
    save_golden(expected, os.path.join(out_dir, "expected.safetensors"),
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
    save_golden(out, path, metadata={"made_by": "tools/make_golden.py"})
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
    save_golden(out, path, metadata={"made_by": "tools/make_golden.py"})
    print(f"{name}/generate: {len(runs)} runs")


def make_long():
    """A 300-token prompt on a GPT-2 with a 320-token context: what no short golden reaches (blocked attention)."""
    model = reference.build(12, **LONG)
    out_dir = os.path.join(GOLDEN, "long")
    reference.save_official(model, out_dir, causal_buffers=False)
    rng = np.random.default_rng(12)
    ids = rng.integers(0, 499, (1, LONG_PROMPT))
    short = rng.integers(0, 499, LONG_SHORT).tolist()
    rows = np.array(LONG_ROWS)
    logits, hidden, attentions = reference.forward(model, ids)
    expected = {
        "single.ids": ids, "single.rows": rows,
        "single.logits": logits[:, rows],  # [1, R, V]
        "single.hidden": hidden[:, :, rows],  # [L + 1, 1, R, C]
        "single.hidden_1": hidden[1],  # [1, T, C]: the first block's output at every position
        "single.attentions": attentions[:, :, :, rows],  # [L, 1, H, R, T]: whole rows of probabilities
    }
    batch_ids, batch_mask = left_pad([ids[0].tolist(), short])
    batch_logits, _, _ = reference.forward(model, batch_ids, batch_mask)
    expected.update({"batch.ids": batch_ids, "batch.mask": batch_mask, "batch.last_logits": batch_logits[:, -1]})
    expected["greedy.tokens"] = reference.greedy(model, ids, LONG_NEW)
    expected["greedy_batch.tokens"] = reference.greedy(model, batch_ids, LONG_NEW, batch_mask)
    # greedy choices must not be near-ties (else float32 rounding could pick another token)
    for prompt, mask, tokens in ((ids, None, expected["greedy.tokens"]),
                                 (batch_ids, batch_mask, expected["greedy_batch.tokens"])):
        full = np.concatenate([prompt, tokens], axis=1)
        full_mask = None if mask is None else np.concatenate([mask, np.ones_like(tokens)], axis=1)
        step_logits = reference.forward(model, full, full_mask)[0][:, prompt.shape[1] - 1:-1]
        top2 = np.sort(step_logits, axis=-1)[..., -2:]
        assert (top2[..., 1] - top2[..., 0]).min() > 1e-3, "a greedy step is a near-tie"
    save_golden(expected, os.path.join(out_dir, "expected.safetensors"),
                metadata={"made_by": "tools/make_golden.py", "seed": "12"})
    sizes = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"long: {sizes / 1e6:.2f} MB in {out_dir}")


def vocab_logits(hidden: np.ndarray, wte: np.ndarray) -> np.ndarray:
    """hidden [R, C] @ wte.T [C, V] in float32, one multiply and one add per channel in a fixed order: each step
    is a correctly rounded IEEE operation, so the result is the same bit for bit on any machine (a BLAS matmul
    is not). tests/test_decoding_golden.py rebuilds the logits with this same function."""
    logits = hidden[:, :1] * wte[None, :, 0]
    for c in range(1, hidden.shape[1]):
        logits = logits + hidden[:, c:c + 1] * wte[None, :, c]
    return logits.astype(np.float32)


def sorted_runs(logits: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The kept tokens of each row as runs [n, 3] (row, start, stop) over the row's tokens ranked by logit,
    highest first (ties by id): a top-k, top-p or min-p set is one run, a typical set one run or a few."""
    order = np.argsort(-logits, axis=-1, kind="stable")
    ranked = np.take_along_axis(kept, order, axis=-1).astype(np.int8)
    edges = np.diff(np.pad(ranked, ((0, 0), (1, 1))), axis=-1)  # +1 where a run starts, -1 after it ends
    starts, stops = np.nonzero(edges == 1), np.nonzero(edges == -1)
    return np.stack([starts[0], starts[1], stops[1]], axis=1).astype(np.int32)


def vocab_rules(input_ids: np.ndarray, eos: int):
    """transformers' processors for the full-vocabulary rows (the test builds npgpt's twins of these)."""
    from transformers.generation import logits_process as lp

    first = int(input_ids[0, -1])
    return {
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
        "typical_p_0.95": lp.TypicalLogitsWarper(0.95),
        "repetition_penalty_1.3": lp.RepetitionPenaltyLogitsProcessor(1.3),
        "repetition_penalty_0.7": lp.RepetitionPenaltyLogitsProcessor(0.7),
        "no_repeat_ngram_size_2": lp.NoRepeatNGramLogitsProcessor(2),
        "no_repeat_ngram_size_3": lp.NoRepeatNGramLogitsProcessor(3),
        "bad_words_ids": lp.NoBadWordsLogitsProcessor([[262], [first, 11], [290, 262, 1748], [eos]], eos),
        "min_new_tokens_10": lp.MinNewTokensLengthLogitsProcessor(8, 10, eos),
        "min_new_tokens_8": lp.MinNewTokensLengthLogitsProcessor(8, 8, eos),
        "logit_bias": lp.SequenceBiasLogitsProcessor([[[262], -5.0], [[11], 3.0], [[eos], -100.0]]),
        "chain": lp.LogitsProcessorList([
            lp.RepetitionPenaltyLogitsProcessor(1.2), lp.NoRepeatNGramLogitsProcessor(2),
            lp.NoBadWordsLogitsProcessor([[262]], eos), lp.MinNewTokensLengthLogitsProcessor(8, 10, eos),
            lp.TemperatureLogitsWarper(0.8), lp.TopKLogitsWarper(40), lp.TopPLogitsWarper(0.9),
            lp.MinPLogitsWarper(0.02), lp.TypicalLogitsWarper(0.95)]),
    }


def make_processors_vocab():
    """Each processor on 200 rows of full-vocabulary logits: the tiny golden model's last hidden states (after
    ln_f) on TEXT, each row scaled so its logits have a standard deviation between 1.5 and 5 (some flat, some
    peaked, as a trained model's), times the model's wte.

    200 x 50257 float32 logits (40 MB) are not stored: their hidden states [200, 16] are, and vocab_logits
    rebuilds them exactly (metadata logits_sha256 lets the test check that). Outputs are stored compactly:
    `<rule>.runs` the kept (finite) tokens as runs over each row's ranking (sorted_runs); `<rule>.changed`
    [n, 2] (row, token) and `<rule>.values` [n] the kept values that differ from the input logits, except for
    the temperatures, which change every value: their `<rule>.values` [200, 32] are the outputs at each row's
    32 highest logits.
    """
    import hashlib

    import torch
    from transformers.generation import logits_process as lp  # noqa: F401

    from npgpt import Tokenizer

    model = reference.build(3, **TINY)
    tokens = np.array(Tokenizer.gpt2().encode(TEXT))
    n_ctx = TINY["n_positions"]
    windows = tokens[:len(tokens) // n_ctx * n_ctx].reshape(-1, n_ctx)[:5]  # [5, 64]
    with torch.no_grad():
        last = model(torch.as_tensor(windows), output_hidden_states=True).hidden_states[-1].numpy()  # after ln_f
    positions = np.arange(VOCAB_ROWS_FROM, n_ctx)
    hidden = last[:, positions].reshape(-1, last.shape[-1])  # [200, 16]
    input_ids = np.stack([w[p - VOCAB_HISTORY + 1:p + 1] for w in windows for p in positions])  # [200, 16]
    wte = load_file(os.path.join(GOLDEN, "tiny", "model.safetensors"))["wte.weight"]
    target_std = np.exp(np.random.default_rng(7).uniform(np.log(1.5), np.log(5.0), len(hidden)))
    hidden = (hidden * (target_std / vocab_logits(hidden, wte).std(axis=-1))[:, None]).astype(np.float32)
    logits = vocab_logits(hidden, wte)
    eos = 50256
    out = {"hidden": hidden, "input_ids": input_ids}
    top32 = np.argsort(-logits, axis=-1, kind="stable")[:, :32]
    for name, processor in vocab_rules(input_ids, eos).items():
        got = np.ascontiguousarray(processor(torch.as_tensor(input_ids), torch.as_tensor(logits).clone()).numpy())
        kept = np.isfinite(got)
        assert (got[~kept] == -np.inf).all()
        out[f"{name}.runs"] = sorted_runs(logits, kept)
        if name.startswith("temperature"):
            out[f"{name}.values"] = np.take_along_axis(got, top32, axis=-1)
        else:
            changed = np.argwhere(kept & (got != logits)).astype(np.int32)
            out[f"{name}.changed"] = changed.reshape(-1, 2)
            out[f"{name}.values"] = got[changed[:, 0], changed[:, 1]] if len(changed) else np.zeros(0, np.float32)
    path = os.path.join(GOLDEN, "processors_vocab.safetensors")
    save_golden(out, path, metadata={"made_by": "tools/make_golden.py",
                                     "logits_sha256": hashlib.sha256(logits.tobytes()).hexdigest()})
    print(f"processors_vocab: {os.path.getsize(path) / 1e6:.2f} MB")


# Stop strings chosen so that beams hit them: some returned beams end on them, and some hits are pruned.
STOP_RUNS = {
    "beam_stop": (["Every effort moves you"], dict(max_new_tokens=12, num_beams=4, num_return_sequences=4,
                                                   stop_strings=[" preset"])),
    "beam_stop_span": (["Every day holds a"], dict(max_new_tokens=12, num_beams=3, num_return_sequences=3,
                                                   stop_strings=["yAm", "ruar"])),  # across two tokens
    "beam_stop_batch": (["Every effort moves you", "Every day holds a"],
                        dict(max_new_tokens=12, num_beams=3, num_return_sequences=2, stop_strings=[" Columb", "Act"])),
    "greedy_stop": (["Hello, I am"], dict(max_new_tokens=12, stop_strings=[" Bub"])),
    "greedy_stop_batch": (["Every effort moves you", "Every day holds a"],
                          dict(max_new_tokens=12, stop_strings=["isance"])),
}


def make_stop():
    """transformers' generate with stop_strings on the tiny model (GPT-2's tokenizer, built offline): a stop
    string ends a beam as <|endoftext|> does. tokens [B * n, N] (-1 after a finished row), scores [B * n]."""
    tokenizer = reference.gpt2_tokenizer()
    model = reference.build(3, **TINY)
    out = {}
    for run, (prompts, settings) in STOP_RUNS.items():
        ids, mask = left_pad([tokenizer.encode(p) for p in prompts])
        beams = settings.get("num_beams", 1)
        # generate's stop-string check looks up every token id, so greedy rows cannot be padded with -1:
        # pad with <|endoftext|>, then mark what follows a stop as -1 (checked: only padding follows it)
        tokens, scores = reference.generate(model, ids, None if mask.all() else mask, do_sample=False,
                                            tokenizer=tokenizer, pad=-1 if beams > 1 else 50256, **settings)
        if beams == 1:
            for row in tokens:
                for i in range(len(row)):
                    if any(s in tokenizer.decode(row[:i + 1]) for s in settings["stop_strings"]):
                        assert (row[i + 1:] == 50256).all()
                        row[i + 1:] = -1
                        break
        out[f"{run}.prompt"], out[f"{run}.mask"], out[f"{run}.tokens"] = ids, mask, tokens
        if beams > 1:
            out[f"{run}.scores"] = scores
    path = os.path.join(GOLDEN, "tiny", "stop.safetensors")
    save_golden(out, path, metadata={"made_by": "tools/make_golden.py"})
    print(f"tiny/stop: {len(STOP_RUNS)} runs, {os.path.getsize(path) / 1e3:.1f} kB")


# Issue 11: transformers' keywords with transformers' meanings. Prompts (GPT-2's tokenizer) and the settings given
# to transformers' generate as they are; end tokens are chosen from the tiny model's greedy continuations
# ("Hello, I am" -> ... " Bub" (19645) as its 4th token; "Every effort moves you" -> 21319 5th; "The cat sat on
# the" -> 33891 7th; "Every day holds a" -> 33891 2nd), so that the rows end where the cases need them to.
HELLO, CAT, EFFORT, DAY = "Hello, I am", "The cat sat on the", "Every effort moves you", "Every day holds a"
EOS_BIAS = {(50256,): 3.75}  # "The cat sat on the" then emits <|endoftext|> as its 5th token
HABIT_RUNS = {
    "max_length": ([HELLO], dict(max_length=14, eos_token_id=19645, pad_token_id=50256)),
    "max_length_open": ([CAT], dict(max_length=14, eos_token_id=19645, pad_token_id=50256)),
    "max_length_batch": ([HELLO, CAT], dict(max_length=15, eos_token_id=19645, pad_token_id=0)),
    "eos_list": ([EFFORT], dict(max_length=16, eos_token_id=[50256, 21319], pad_token_id=50256)),
    "eos_list_batch": ([CAT, DAY], dict(max_length=16, eos_token_id=[50256, 33891], pad_token_id=50256)),
    "eos_default": ([CAT], dict(max_new_tokens=12, sequence_bias=EOS_BIAS)),  # the model's eos: 50256
    "eos_none": ([CAT], dict(max_new_tokens=12, sequence_bias=EOS_BIAS, eos_token_id=None)),  # never stops
    "greedy_despite_sampling": ([DAY], dict(max_length=16, do_sample=False, temperature=0.7, top_k=5)),
    # 19645 held back at length 7 < 10; 581 ends the row at length 10
    "min_length": ([HELLO], dict(max_length=20, min_length=10, eos_token_id=[19645, 581], pad_token_id=50256)),
    # the padded width counts: row 0 (4 tokens, padded to 5) emits 19645 at length 8 = min_length: not held back
    "min_length_batch": ([HELLO, CAT], dict(max_length=15, min_length=8, eos_token_id=19645, pad_token_id=50256)),
    "min_length_batch_held": ([HELLO, CAT], dict(max_length=15, min_length=9, eos_token_id=19645,
                                                 pad_token_id=50256)),
    "stop_strings": ([CAT], dict(max_length=20, stop_strings=["ool disc"], pad_token_id=50256)),  # across 2 tokens
    "config_beams": ([DAY], dict(generation_config=dict(max_length=12, num_beams=3, num_return_sequences=2))),
    # no max_length: transformers 5 then generates 20 new tokens (its default max_length=20 counts them only)
    "config_default": ([EFFORT], dict(generation_config=dict())),
    "config_max_length": ([EFFORT], dict(generation_config=dict(max_length=20))),  # counts the prompt
}


def transformers_end(row, eos_ids, stop_strings, tokenizer) -> tuple[int, str]:
    """Where a row of transformers' new tokens ends: (tokens before the end, "eos" | "stop" | "length"); an
    <|endoftext|>-like end token is not counted, the token that completes a stop string is."""
    for i, token in enumerate(row.tolist()):
        if token in eos_ids:
            return i, "eos"
        if any(s in tokenizer.decode(row[:i + 1]) for s in stop_strings):
            return i + 1, "stop"
    return len(row), "length"


def make_habits():
    """transformers' generate on the tiny model with its own keywords as given (HABIT_RUNS): tokens [B * n, N] as
    generate returns them (each row padded after its end with pad_token_id, or with the model's eos when none is
    given), the left-padded prompt [B, T] (padded with pad_token_id, or 50256) and its mask, and beams' scores."""
    from transformers import GenerationConfig

    tokenizer = reference.gpt2_tokenizer()
    model = reference.build(3, **TINY)
    out = {}
    for run, (prompts, settings) in HABIT_RUNS.items():
        settings = dict(settings)
        pad = settings.get("pad_token_id")
        ids, mask = left_pad([tokenizer.encode(p) for p in prompts], 50256 if pad is None else pad)
        if "generation_config" in settings:
            settings["generation_config"] = GenerationConfig(**settings["generation_config"])
        if "stop_strings" in settings:
            settings["tokenizer"] = tokenizer
        tokens, steps, scores = reference.generate_as_given(model, ids, mask, **settings)
        eos = settings.get("eos_token_id", 50256)
        eos_ids = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
        pad = 50256 if pad is None else pad
        for r, row in enumerate(tokens):
            end, reason = transformers_end(row, eos_ids, settings.get("stop_strings", []), tokenizer)
            rest = row[end + (reason == "eos"):]
            assert (rest == pad).all(), (run, r, "only padding follows a row's end")
            if steps is not None:  # greedy: no chosen token may be a near-tie (float32 rounding could flip it)
                top2 = np.sort(steps[:end + (reason == "eos"), r], axis=-1)[:, -2:]
                assert (top2[:, 1] - top2[:, 0]).min() > 1e-4, (run, r, "a greedy step is a near-tie")
            print(f"  {run}[{r}]: {reason} after {end} tokens")
        out[f"{run}.prompt"], out[f"{run}.mask"], out[f"{run}.tokens"] = ids, mask, tokens
        if scores is not None:
            out[f"{run}.scores"] = scores
    path = os.path.join(GOLDEN, "tiny", "habits.safetensors")
    save_golden(out, path, metadata={"made_by": "tools/make_golden.py"})
    print(f"tiny/habits: {len(HABIT_RUNS)} runs, {os.path.getsize(path) / 1e3:.1f} kB")


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
    make_long()
    make_processors_vocab()
    make_stop()
    make_habits()


if __name__ == "__main__":
    main()
