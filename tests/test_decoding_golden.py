"""Decoding against transformers (tools/make_golden.py): each rule on fixed logits, and generate() outputs."""

import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from npgpt import TokenCompletion, sampling

from conftest import GOLDEN, golden_dir

PROCESSORS = load_file(os.path.join(GOLDEN, "processors.safetensors"))
LOGITS, IDS = PROCESSORS["logits"], PROCESSORS["input_ids"]
EOS = 999  # the fixed logits have 1000 tokens; the goldens use 999 as end-of-text
TIED_ROW = 1  # row 1 has rounded logits: many ties

RULES = {
    "temperature_0.7": sampling.Temperature(0.7),
    "temperature_1.5": sampling.Temperature(1.5),
    "top_k_1": sampling.TopK(1),
    "top_k_10": sampling.TopK(10),
    "top_k_50": sampling.TopK(50),
    "top_p_0.3": sampling.TopP(0.3),
    "top_p_0.9": sampling.TopP(0.9),
    "top_p_0.95": sampling.TopP(0.95),
    "min_p_0.05": sampling.MinP(0.05),
    "min_p_0.3": sampling.MinP(0.3),
    "typical_p_0.5": sampling.TypicalP(0.5),
    "typical_p_0.9": sampling.TypicalP(0.9),
    "repetition_penalty_1.3": sampling.RepetitionPenalty(1.3),
    "repetition_penalty_0.7": sampling.RepetitionPenalty(0.7),
    "no_repeat_ngram_size_2": sampling.NoRepeatNGram(2),
    "no_repeat_ngram_size_3": sampling.NoRepeatNGram(3),
    "min_new_tokens_5": sampling.MinNewTokens(5, prompt_length=8, eos_token_id=EOS),
    "min_new_tokens_4": sampling.MinNewTokens(4, prompt_length=8, eos_token_id=EOS),
    "logit_bias": sampling.LogitBias({5: -5.0, 17: 3.0, 998: -100.0}),
}


def assert_same_processed(got, want, name):
    """Same removed tokens (-inf) and the same values to 1e-6. Where logits tie at a cut-off, transformers'
    choice among the tied tokens follows PyTorch's unstable sort, so for the tied row only the number of kept
    tokens and their values must agree."""
    for row in range(len(want)):
        kept_got, kept_want = np.isfinite(got[row]), np.isfinite(want[row])
        if row == TIED_ROW and name.startswith(("top_p", "typical_p", "chain")):
            assert kept_got.sum() == kept_want.sum(), name
            np.testing.assert_allclose(np.sort(got[row][kept_got]), np.sort(want[row][kept_want]), atol=1e-6)
            continue
        np.testing.assert_array_equal(kept_got, kept_want, err_msg=f"{name}, row {row}")
        np.testing.assert_allclose(got[row][kept_got], want[row][kept_want], rtol=0, atol=1e-6, err_msg=name)
        assert (got[row][~kept_got] == -np.inf).all()


@pytest.mark.parametrize("name", sorted(RULES))
def test_each_rule_equals_the_transformers_processor(name):
    got = RULES[name](IDS, LOGITS.copy())
    assert got.dtype == np.float32
    assert_same_processed(got, PROCESSORS[name], name)


def test_banned_sequences_equal_no_bad_words():
    # transformers drops a ban of end-of-text alone; the Sampler does the same (see test below)
    rule = sampling.BannedSequences([[7], [int(IDS[0, -1]), 11], [3, 4, 5]])
    assert_same_processed(rule(IDS, LOGITS.copy()), PROCESSORS["bad_words_ids"], "bad_words_ids")
    sampler = sampling.Sampler(bad_words_ids=[[7], [int(IDS[0, -1]), 11], [3, 4, 5], [EOS]], eos_token_id=EOS,
                               vocab_size=1000)
    got = sampling.apply(sampler.processors(prompt_length=12), IDS, LOGITS.copy())
    assert_same_processed(got, PROCESSORS["bad_words_ids"], "bad_words_ids")


def test_the_sampler_chains_rules_in_transformers_order():
    sampler = sampling.Sampler(repetition_penalty=1.2, no_repeat_ngram_size=2, bad_words_ids=[[7]], min_new_tokens=5,
                               temperature=0.8, top_k=40, top_p=0.9, min_p=0.02, typical_p=0.95, eos_token_id=EOS,
                               vocab_size=1000)
    got = sampling.apply(sampler.rules(prompt_length=8), IDS, LOGITS.copy())
    assert_same_processed(got, PROCESSORS["chain"], "chain")


# ------------------------------------------------------------------------------------- generate() on the models


def prompts(expected):
    single = expected["greedy.prompt"][0].tolist()
    batch = [row[mask == 1].tolist() for row, mask in zip(expected["greedy_batch.prompt"],
                                                         expected["greedy_batch.mask"])]
    return single, batch


def runs(expected):
    single, batch = prompts(expected)
    banned = int(expected["greedy.tokens"][0, 0])  # greedy's first choice, so the ban changes the text
    bias = {50256: 6.0}  # makes end-of-text likely, to see rows and beams end early
    return {
        "rules": (single, dict(max_new_tokens=24, repetition_penalty=1.5, no_repeat_ngram_size=2,
                               bad_words_ids=[[banned]], min_new_tokens=10)),
        "rules_batch": (batch, dict(max_new_tokens=16, repetition_penalty=1.3, no_repeat_ngram_size=3)),
        "beam": (single, dict(max_new_tokens=16, num_beams=4, num_return_sequences=2)),
        "beam_early": (single, dict(max_new_tokens=16, num_beams=3, early_stopping=True, length_penalty=0.5)),
        "beam_never": (single, dict(max_new_tokens=12, num_beams=3, early_stopping="never", length_penalty=2.0,
                                    num_return_sequences=3)),
        "beam_batch": (batch, dict(max_new_tokens=12, num_beams=3, num_return_sequences=2, no_repeat_ngram_size=2)),
        "beam_eos": (single, dict(max_new_tokens=16, num_beams=4, num_return_sequences=4, logit_bias=bias)),
        "beam_eos_early": (batch, dict(max_new_tokens=16, num_beams=3, early_stopping=True, logit_bias=bias,
                                       length_penalty=-0.5)),
        "greedy_eos": (batch, dict(max_new_tokens=16, logit_bias=bias, min_new_tokens=3)),
    }


def sequences_of(result, batched):
    """All completions of a generate() result, in transformers' order (prompt by prompt, best first)."""
    out = []
    for r in (result if batched else [result]):
        out.extend([r] if isinstance(r, TokenCompletion) else r)
    return out


def until_end(tokens):
    """transformers' row of new tokens up to its <|endoftext|> (excluded) or padding."""
    out = []
    for t in tokens.tolist():
        if t in (-1, 50256):
            break
        out.append(t)
    return out


COMMON = ["rules", "rules_batch", "beam", "beam_early", "beam_never", "beam_batch"]
CASES = [("small", run) for run in COMMON] + [("tiny", run) for run in COMMON + ["beam_eos", "beam_eos_early",
                                                                                 "greedy_eos"]]


@pytest.mark.parametrize("name, run", CASES)
def test_generate_equals_transformers_generate(name, run, small, tiny):
    model, expected = {"small": small, "tiny": tiny}[name]
    golden = load_file(os.path.join(golden_dir(name), "generate.safetensors"))
    prompt, settings = runs(expected)[run]
    sequences = sequences_of(model.generate(prompt, **settings), batched=isinstance(prompt[0], list))
    want = golden[f"{run}.tokens"]
    assert len(sequences) == len(want)
    for got, row in zip(sequences, want):
        assert list(got) == until_end(row)
        ended = len(until_end(row)) < len(row) and row[len(until_end(row))] == 50256
        assert got.finish_reason == ("eos" if ended else "length")
    if f"{run}.scores" in golden:
        np.testing.assert_allclose([c.score for c in sequences], golden[f"{run}.scores"], rtol=0, atol=1e-5)
