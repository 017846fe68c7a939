"""npgpt against outputs dumped from PyTorch (tools/make_golden.py): NumPy only, |difference| <= 1e-5."""

import numpy as np
import pytest

from conftest import GOLDEN_ATOL, load_golden, max_abs


def real_positions(expected, key):
    ids = expected[f"{key}.ids"]
    return expected.get(f"{key}.mask", np.ones_like(ids)).astype(bool)  # [B, T]


@pytest.mark.parametrize("key", ["single", "batch"])
def test_logits_hidden_states_and_attentions_match_pytorch(small, key):
    model, expected = small
    out = model.forward(expected[f"{key}.ids"], attention_mask=expected.get(f"{key}.mask"),
                        output_hidden_states=True, output_attentions=True)
    real = real_positions(expected, key)  # padding positions' outputs are meaningless in both implementations
    assert out.logits.dtype == np.float32
    assert out.logits.shape == expected[f"{key}.logits"].shape
    assert max_abs(out.logits[real], expected[f"{key}.logits"][real]) <= GOLDEN_ATOL

    hidden = np.stack(out.hidden_states)  # [L + 1, B, T, C]
    assert hidden.shape == expected[f"{key}.hidden"].shape
    assert max_abs(hidden[:, real], expected[f"{key}.hidden"][:, real]) <= GOLDEN_ATOL

    attentions = np.stack(out.attentions)  # [L, B, H, T, S]: compare the rows of real query positions
    assert attentions.shape == expected[f"{key}.attentions"].shape
    rows = attentions.transpose(1, 3, 0, 2, 4)[real]
    expected_rows = expected[f"{key}.attentions"].transpose(1, 3, 0, 2, 4)[real]
    assert max_abs(rows, expected_rows) <= GOLDEN_ATOL


def test_full_vocabulary_logits_match_pytorch(tiny):
    model, expected = tiny
    for key in ("single", "batch"):
        logits = model(expected[f"{key}.ids"])  # [B, T, 50257]
        assert max_abs(logits[:, -1], expected[f"{key}.last_logits"]) <= GOLDEN_ATOL


@pytest.mark.parametrize("name", ["small", "tiny"])
def test_greedy_continuation_matches_transformers_generate(name, small, tiny):
    model, expected = {"small": small, "tiny": tiny}[name]
    prompt = expected["greedy.prompt"][0].tolist()
    want = expected["greedy.tokens"][0].tolist()
    got = model.generate(prompt, max_new_tokens=len(want))
    assert got == want


def greedy_batch(model, ids, mask, steps):
    """Greedy decoding of a (left-padded) batch through the cache, one position per step."""
    cache = model.new_cache(len(ids), capacity=ids.shape[1] + steps)
    logits = model.forward(ids, cache, attention_mask=mask, last_only=True).logits[:, -1]
    chosen = []
    for _ in range(steps):
        token = logits.argmax(-1)
        chosen.append(token)
        mask = np.concatenate([mask, np.ones((len(ids), 1), mask.dtype)], axis=1)
        logits = model.forward(token[:, None], cache, attention_mask=mask, last_only=True).logits[:, -1]
    return np.stack(chosen, axis=1)


@pytest.mark.parametrize("name", ["small", "tiny"])
def test_batched_greedy_with_cache_matches_transformers_generate(name, small, tiny):
    model, expected = {"small": small, "tiny": tiny}[name]
    want = expected["greedy_batch.tokens"]
    got = greedy_batch(model, expected["greedy_batch.prompt"], expected["greedy_batch.mask"], want.shape[1])
    np.testing.assert_array_equal(got, want)


def test_notebook_003_prompts_continue_as_in_transformers(tiny):
    model, expected = tiny
    tok = model.tokenizer
    assert expected["greedy.prompt"][0].tolist() == tok.encode("Hello, I am")
    assert expected["greedy_batch.prompt"].tolist() == [tok.encode("Every effort moves you"),
                                                       tok.encode("Every day holds a")]
    want = expected["greedy.tokens"][0].tolist()
    text = model.generate("Hello, I am", max_new_tokens=len(want))
    assert text == tok.decode(want)
    assert text.ids == want


# ------------------------------------------------------------------- a 300-token prompt: attention in blocks


@pytest.fixture(scope="module")
def long():
    """A GPT-2 with a 320-token context and transformers' outputs on a 300-token prompt: beyond 64 tokens npgpt
    takes attention in blocks of 64 queries, with heads split across the cores (ops.causal_attention)."""
    return load_golden("long")


def test_long_prompt_logits_attentions_and_hidden_states_match_pytorch(long):
    model, expected = long
    ids, rows = expected["single.ids"], expected["single.rows"]
    assert ids.shape[1] > 4 * 64 and ids.shape[1] % 64  # five blocks, the last one partial
    out = model.forward(ids, output_hidden_states=True, output_attentions=True)
    assert max_abs(out.logits[:, rows], expected["single.logits"]) <= GOLDEN_ATOL
    hidden = np.stack(out.hidden_states)  # [L + 1, 1, T, C]
    assert max_abs(hidden[:, :, rows], expected["single.hidden"]) <= GOLDEN_ATOL
    assert max_abs(hidden[1], expected["single.hidden_1"]) <= GOLDEN_ATOL
    attentions = np.stack(out.attentions)  # [L, 1, H, T, T]: whole rows, zeros above the diagonal included
    assert max_abs(attentions[:, :, :, rows], expected["single.attentions"]) <= GOLDEN_ATOL


def test_long_prompt_without_attentions_gives_the_same_logits(long):
    model, expected = long
    rows = expected["single.rows"]
    logits = model(expected["single.ids"])  # the path that skips the probabilities
    assert max_abs(logits[:, rows], expected["single.logits"]) <= GOLDEN_ATOL


def test_long_left_padded_batch_prefills_and_decodes_through_the_cache_as_transformers(long):
    model, expected = long
    ids, mask = expected["batch.ids"], expected["batch.mask"]
    assert ids.shape[1] > 2 * 128 and not mask.all()  # one long row, one short row left-padded to it
    cache = model.new_cache(len(ids), capacity=ids.shape[1] + 1)
    prefill = model.forward(ids, cache, attention_mask=mask, last_only=True).logits[:, -1]
    assert max_abs(prefill, expected["batch.last_logits"]) <= GOLDEN_ATOL
    want = expected["greedy_batch.tokens"]
    np.testing.assert_array_equal(greedy_batch(model, ids, mask, want.shape[1]), want)


def test_long_prompt_greedy_continuation_matches_transformers_generate(long):
    model, expected = long
    want = expected["greedy.tokens"][0].tolist()
    assert model.generate(expected["single.ids"][0].tolist(), max_new_tokens=len(want)) == want
