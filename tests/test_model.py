"""The model: configuration, shapes, the key/value cache, attention maps and hidden states."""

import json

import numpy as np
import pytest

import npgpt
from npgpt import GPT2Config

from conftest import max_abs


@pytest.mark.parametrize("name, params", [
    ("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080),
    ("gpt2-xl", 1_557_611_200), ("distilgpt2", 81_912_576)])
def test_presets_have_the_published_parameter_counts(name, params):
    assert GPT2Config.preset(name).parameter_count() == params


def test_random_model_has_the_configured_parameter_count(micro, micro_config):
    assert micro.n_params == micro_config.parameter_count()
    assert npgpt.GPT2.random("distilgpt2").n_params == 81_912_576


def test_random_model_is_reproducible_from_its_seed(micro_config):
    a, b = npgpt.GPT2.random(micro_config, seed=7), npgpt.GPT2.random(micro_config, seed=7)
    np.testing.assert_array_equal(a([1, 2]), b([1, 2]))
    assert not np.array_equal(a([1, 2]), npgpt.GPT2.random(micro_config, seed=8)([1, 2]))


def test_config_reads_transformers_config_json(tmp_path):
    d = {"model_type": "gpt2", "n_layer": 2, "n_head": 4, "n_embd": 32, "n_ctx": 64, "vocab_size": 100,
         "activation_function": "gelu_new", "layer_norm_epsilon": 1e-6}
    (tmp_path / "config.json").write_text(json.dumps(d))
    c = GPT2Config.from_json(tmp_path / "config.json")
    assert (c.n_layer, c.n_head, c.n_embd, c.n_positions, c.vocab_size, c.layer_norm_epsilon) == \
        (2, 4, 32, 64, 100, 1e-6)


@pytest.mark.parametrize("change, message", [
    ({"n_embd": 30}, "divisible by n_head"),
    ({"n_layer": 0}, "n_layer must be a positive integer"),
    ({"activation_function": "relu"}, "not GPT-2's tanh GELU"),
    ({"scale_attn_by_inverse_layer_idx": True}, "not supported"),
])
def test_config_errors_say_what_is_wrong(tmp_path, change, message):
    d = {"model_type": "gpt2", "n_layer": 2, "n_head": 4, "n_embd": 32, **change}
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(npgpt.ConfigError, match=message):
        GPT2Config.from_json(tmp_path / "config.json")
    with pytest.raises(npgpt.ConfigError, match="unknown preset"):
        GPT2Config.preset("gpt3")


def test_call_shapes_and_dtype(micro):
    assert micro([1, 2, 3]).shape == (3, 50257)
    logits = micro(np.array([[1, 2, 3], [4, 5, 6]]))
    assert logits.shape == (2, 3, 50257) and logits.dtype == np.float32
    np.testing.assert_allclose(logits[1], micro([4, 5, 6]), atol=1e-6)


def test_bad_ids_are_clear_errors(micro):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        micro([1, 50257])
    with pytest.raises(ValueError, match="must be integers"):
        micro([1.5])
    with pytest.raises(ValueError, match="shape"):
        micro([])
    with pytest.raises(npgpt.ContextLengthError, match="context of 32 tokens"):
        micro(list(range(33)))


def test_cache_gives_the_same_logits_as_the_whole_sequence(small):
    model, expected = small
    ids = expected["single.ids"]  # [1, 20]
    full = model(ids)  # [1, 20, V]
    cache = model.new_cache(1)
    pieces = [model.forward(ids[:, :7], cache).logits]  # a prefill of 7, then one position at a time
    for t in range(7, ids.shape[1]):
        pieces.append(model.forward(ids[:, t:t + 1], cache).logits)
    assert cache.length == ids.shape[1]
    assert max_abs(np.concatenate(pieces, axis=1), full) <= 1e-5


def test_the_cache_refuses_to_overflow(micro):
    cache = micro.new_cache(1, capacity=4)
    micro.forward([[1, 2, 3, 4]], cache)
    with pytest.raises(ValueError, match="cache holds"):
        micro.forward([[5]], cache)


def test_last_only_matches_the_last_position(small):
    model, expected = small
    ids = expected["single.ids"]
    assert max_abs(model.forward(ids, last_only=True).logits[:, 0], model(ids)[:, -1]) <= 1e-5  # GEMV vs GEMM


def test_logits_false_skips_the_head_and_keeps_the_hidden_states(small):
    model, expected = small
    ids = expected["single.ids"]
    full = model.forward(ids, output_hidden_states=True)
    bare = model.forward(ids, output_hidden_states=True, logits=False)
    assert bare.logits is None and "logits=None" in repr(bare)
    for a, b in zip(full.hidden_states, bare.hidden_states, strict=True):
        np.testing.assert_array_equal(a, b)


def test_last_hidden_state_is_the_last_of_the_hidden_states_without_keeping_them(small):
    model, expected = small
    ids = expected["single.ids"]
    full = model.forward(ids, output_hidden_states=True)
    bare = model.forward(ids, logits=False)  # what scoring asks for: no head, no per-layer states
    assert bare.hidden_states is None
    np.testing.assert_array_equal(bare.last_hidden_state, full.hidden_states[-1])
    np.testing.assert_array_equal(full.last_hidden_state, full.hidden_states[-1])
    last = model.forward(ids, last_only=True)
    assert last.last_hidden_state.shape == (1, 1, model.config.n_embd)
    np.testing.assert_allclose(last.last_hidden_state[:, 0], full.hidden_states[-1][:, -1], rtol=1e-5, atol=1e-5)

def test_attention_maps_are_causal_probabilities(small):
    model, expected = small
    out = model.forward(expected["single.ids"], output_attentions=True)
    c = model.config
    assert len(out.attentions) == c.n_layer
    t = expected["single.ids"].shape[1]
    for probs in out.attentions:
        assert probs.shape == (1, c.n_head, t, t)
        np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)
        assert (probs[..., np.triu_indices(t, 1)[0], np.triu_indices(t, 1)[1]] == 0).all()


def test_hidden_states_are_the_embeddings_then_each_block(small):
    model, expected = small
    ids = expected["single.ids"]
    out = model.forward(ids, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.n_layer + 1
    embeddings = model.wte[ids] + model.wpe[np.arange(ids.shape[1])]
    np.testing.assert_array_equal(out.hidden_states[0], embeddings)
    # as in transformers, the last one is after the final LayerNorm, so the logits are it times wte
    np.testing.assert_allclose(out.hidden_states[-1] @ model.wte.T, out.logits, rtol=1e-5, atol=1e-5)


def test_a_left_padded_row_equals_the_row_alone(small):
    model, _ = small
    short, long = [5, 6, 7], [9, 8, 7, 6, 5, 4]
    ids = np.array([[0, 0, 0] + short, long])
    mask = np.array([[0, 0, 0, 1, 1, 1], [1] * 6])
    logits = model.forward(ids, attention_mask=mask).logits
    assert max_abs(logits[0, 3:], model(short)) <= 1e-5
    assert max_abs(logits[1], model(long)) <= 1e-5


def test_decoding_several_rows_keeps_a_transposed_head_of_a_loaded_model_only(micro, micro_dir):
    """A loaded checkpoint's head is read-only, so a transposed copy of it cannot go stale: decode steps of 2-32
    rows make it once and read it; scoring (no cache) does not make it; a writeable head never has one."""
    loaded = npgpt.GPT2.from_dir(micro_dir)
    texts = [[5, 6, 7, 8], [9, 10, 11, 12]]
    loaded(texts)  # a forward pass without a cache (scoring): no copy
    loaded.unembed(np.ones((3, micro.config.n_embd), np.float32))
    assert loaded._head_columns is None
    out = loaded.generate(texts, max_new_tokens=6)  # a batch of two rows: decode steps with a cache
    assert loaded._head_columns is not None
    columns = loaded.head_columns()
    assert columns is not None and columns is loaded.head_columns()  # made once
    np.testing.assert_array_equal(columns, loaded.lm_head.T)
    assert columns.flags.c_contiguous
    same = micro.generate(texts, max_new_tokens=6)  # the same weights, writeable: the head as stored
    assert [r.ids for r in out] == [r.ids for r in same]
    cache = loaded.new_cache(2)
    step = loaded.forward(np.array(texts), cache, last_only=True).logits
    np.testing.assert_allclose(step, micro.forward(np.array(texts), last_only=True).logits, rtol=1e-5, atol=1e-5)

    assert micro.head_columns() is None and micro._head_columns is None
    micro.generate(texts, max_new_tokens=3)
    assert micro._head_columns is None
    assert loaded.processed(fold_ln=True).head_columns() is None  # processed weights are new, writeable arrays
    view = np.ones((4, 4), np.float32)[:2]
    view.flags.writeable = False  # read-only, but a view of a writeable array: it can change
    assert not npgpt.model._read_only(view)
