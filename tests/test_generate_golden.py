"""transformers' keywords with transformers' meanings (issue 11), against transformers' own generate on the tiny
golden model (tools/make_golden.py's HABIT_RUNS, in tests/golden/tiny/habits.safetensors): max_length with
eos_token_id and pad_token_id, for one prompt and for a left-padded batch; eos_token_id as a list and as None;
do_sample=False beside sampling settings; min_length; stop_strings; a GenerationConfig.

transformers returns rows padded with pad_token_id after their end token; npgpt returns each row's new ids without
the end token (but with the token that completes a stop string) and says why it ended."""

import os

import numpy as np
import pytest
from safetensors.numpy import load_file

import npgpt
from npgpt import TokenCompletion

from conftest import golden_dir

HELLO, CAT, EFFORT, DAY = "Hello, I am", "The cat sat on the", "Every effort moves you", "Every day holds a"
EOT = 50256

# tools/make_golden.py's HABIT_RUNS, as npgpt takes them: the same keywords, except that transformers'
# sequence_bias={(50256,): 3.75} is npgpt's logit_bias and its GenerationConfig is npgpt.GenerationConfig.
RUNS = {
    "max_length": ([HELLO], dict(max_length=14, eos_token_id=19645, pad_token_id=50256)),
    "max_length_open": ([CAT], dict(max_length=14, eos_token_id=19645, pad_token_id=50256)),
    "max_length_batch": ([HELLO, CAT], dict(max_length=15, eos_token_id=19645, pad_token_id=0)),
    "eos_list": ([EFFORT], dict(max_length=16, eos_token_id=[50256, 21319], pad_token_id=50256)),
    "eos_list_batch": ([CAT, DAY], dict(max_length=16, eos_token_id=[50256, 33891], pad_token_id=50256)),
    "eos_default": ([CAT], dict(max_new_tokens=12, logit_bias={EOT: 3.75})),
    "eos_none": ([CAT], dict(max_new_tokens=12, logit_bias={EOT: 3.75}, eos_token_id=None)),
    "greedy_despite_sampling": ([DAY], dict(max_length=16, do_sample=False, temperature=0.7, top_k=5)),
    "min_length": ([HELLO], dict(max_length=20, min_length=10, eos_token_id=[19645, 581], pad_token_id=50256)),
    "min_length_batch": ([HELLO, CAT], dict(max_length=15, min_length=8, eos_token_id=19645, pad_token_id=50256)),
    "min_length_batch_held": ([HELLO, CAT], dict(max_length=15, min_length=9, eos_token_id=19645,
                                                 pad_token_id=50256)),
    "stop_strings": ([CAT], dict(max_length=20, stop_strings=["ool disc"], pad_token_id=50256)),
    "config_beams": ([DAY], dict(generation_config=dict(max_length=12, num_beams=3, num_return_sequences=2))),
    "config_default": ([EFFORT], dict(generation_config=dict())),
    "config_max_length": ([EFFORT], dict(generation_config=dict(max_length=20))),
}

# How transformers' rows end (checked below, so that each case tests what it is meant to).
REASONS = {
    "max_length": ["eos"], "max_length_open": ["length"], "max_length_batch": ["eos", "length"],
    "eos_list": ["eos"], "eos_list_batch": ["eos", "eos"], "eos_default": ["eos"], "eos_none": ["length"],
    "greedy_despite_sampling": ["length"], "min_length": ["eos"], "min_length_batch": ["eos", "length"],
    "min_length_batch_held": ["length", "length"], "stop_strings": ["stop"], "config_beams": ["length", "length"],
    "config_default": ["length"], "config_max_length": ["length"],
}


@pytest.fixture(scope="module")
def golden():
    return load_file(os.path.join(golden_dir("tiny"), "habits.safetensors"))


def settings_of(run):
    settings = dict(RUNS[run][1])
    if "generation_config" in settings:
        settings["generation_config"] = npgpt.GenerationConfig(**settings["generation_config"])
    return settings


def end_ids(run):
    """The ids that end a row in transformers' run (the model's <|endoftext|> unless eos_token_id says)."""
    eos = RUNS[run][1].get("eos_token_id", EOT)
    return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)


def expected_rows(run, golden, tokenizer):
    """Each transformers row as npgpt gives it: (new ids, finish_reason). A row ends at an end id (not kept) or
    at the token that completes a stop string (kept); only pad_token_id may follow (checked)."""
    eos, stops = end_ids(run), RUNS[run][1].get("stop_strings", [])
    pad = RUNS[run][1].get("pad_token_id", EOT)
    rows = []
    for row in golden[f"{run}.tokens"].tolist():
        end, reason = len(row), "length"
        for i, token in enumerate(row):
            if token in eos:
                end, reason = i, "eos"
                break
            if any(s in tokenizer.decode(row[:i + 1]) for s in stops):
                end, reason = i + 1, "stop"
                break
        assert all(t == pad for t in row[end + (reason == "eos"):]), f"{run}: not padding after the end"
        rows.append((row[:end], reason))
    return rows


def sequences_of(result, batched):
    """All completions of a generate() result, in transformers' order (prompt by prompt, best first)."""
    out = []
    for r in (result if batched else [result]):
        out.extend([r] if isinstance(r, TokenCompletion) else r)
    return out


def assert_same(run, got, golden, tokenizer):
    want = expected_rows(run, golden, tokenizer)
    assert [(list(c), c.finish_reason) for c in got] == [(ids, reason) for ids, reason in want], run
    if f"{run}.scores" in golden:
        np.testing.assert_allclose([c.score for c in got], golden[f"{run}.scores"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("run", sorted(RUNS))
def test_generate_equals_transformers_generate_with_its_keywords(run, tiny, golden):
    """The prompt ids as lists (one prompt, or a batch of rows of different lengths)."""
    model, _ = tiny
    prompts = [model.tokenizer.encode(p) for p in RUNS[run][0]]
    ids, mask = golden[f"{run}.prompt"], golden[f"{run}.mask"]
    assert prompts == [row[m == 1].tolist() for row, m in zip(ids, mask)]
    batched = len(prompts) > 1
    result = model.generate(prompts if batched else prompts[0], **settings_of(run))
    assert_same(run, sequences_of(result, batched), golden, model.tokenizer)


@pytest.mark.parametrize("run", sorted(r for r in RUNS if len(RUNS[r][0]) > 1))
def test_left_padded_ids_with_attention_mask_as_transformers_takes_them(run, tiny, golden):
    """The batch as transformers was given it: left-padded ids [B, T] (padded with pad_token_id) and the mask."""
    model, _ = tiny
    ids, mask = golden[f"{run}.prompt"], golden[f"{run}.mask"]
    assert not mask.all()  # rows of different lengths
    result = model.generate(ids, attention_mask=mask, **settings_of(run))
    assert_same(run, sequences_of(result, batched=True), golden, model.tokenizer)


@pytest.mark.parametrize("run", sorted(RUNS))
def test_the_goldens_end_rows_as_the_cases_need(run, tiny, golden):
    model, _ = tiny
    assert [reason for _, reason in expected_rows(run, golden, model.tokenizer)] == REASONS[run]


def test_the_goldens_show_each_habit(tiny, golden):
    """eos_token_id=None runs past an <|endoftext|>; min_length holds back an end token greedy search emits;
    the padded width counts for min_length; transformers' default without max_length is 20 new tokens."""
    model, _ = tiny
    rows = {run: expected_rows(run, golden, model.tokenizer) for run in RUNS}
    none_ids, _ = rows["eos_none"][0]
    default_ids, _ = rows["eos_default"][0]
    assert none_ids[len(default_ids)] == EOT and none_ids[:len(default_ids)] == default_ids
    assert len(none_ids) > len(default_ids) + 1
    plain, _ = rows["max_length"][0]  # greedy's 4th token is 19645, the end token
    held, _ = rows["min_length"][0]
    assert held[:len(plain)] == plain and held[len(plain)] != 19645 and len(held) > len(plain)
    # row 0 (4 tokens, padded to 5) emits 19645 at length 8: ends with min_length 8, is held back with 9
    assert rows["min_length_batch"][0] == rows["max_length_batch"][0]
    assert rows["min_length_batch_held"][0][1] == "length"
    assert len(rows["config_default"][0][0]) == 20 and len(rows["config_max_length"][0][0]) == 16
