"""Bad input through the Python API is a one-line NpgptError, never a raw exception nor a silent wrong result;
sizes are checked before allocating; the forward pass keeps only what was asked for."""

import time
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import npgpt


@pytest.mark.parametrize("call, error, message", [
    (lambda m: m([70000]), npgpt.InputError, "token id 70000 is outside the vocabulary"),
    (lambda m: m("Hi"), npgpt.InputError, "forward takes token ids"),
    (lambda m: m([[1, 2], [3]]), npgpt.InputError, "rows of one length"),
    (lambda m: m(np.array([1.5, 2.0])), npgpt.InputError, "token ids must be integers"),
    (lambda m: m.generate([99999]), npgpt.InputError, "token id 99999 is outside"),
    (lambda m: m.generate(None), npgpt.InputError, "a prompt is text .* got NoneType"),
    (lambda m: m.generate(b"hi"), npgpt.InputError, "got bytes; decode it first"),
    (lambda m: m.generate([2 ** 70]), npgpt.InputError, "outside the vocabulary"),
    (lambda m: m.generate(5), npgpt.InputError, "got int 5"),
    (lambda m: m.generate([1.9, 2.2]), npgpt.InputError, "token ids must be integers, got 1.9"),
    (lambda m: m.generate([True, 3]), npgpt.InputError, "token ids must be integers, got True"),
    (lambda m: m.generate("Hi", max_new_token=3), npgpt.SettingsError, "did you mean max_new_tokens"),
    (lambda m: m.next_token_distribution("Hi", max_new_tokens=3), npgpt.SettingsError,
     "does not change the next-token distribution"),
    (lambda m: m.generate("Hi", stop="x" * 5000), npgpt.SettingsError, "a stop string is at most"),
    (lambda m: m.generate("Hi", logprobs="yes"), npgpt.SettingsError, "logprobs must be true or false"),
    (lambda m: m.generate("Hi", temperature=1.0, logit_bias={5: float("inf")}), npgpt.SettingsError,
     "below \\+inf"),
    (lambda m: m.generate("Hi", repetition_penalty=1e-300), npgpt.SettingsError, "repetition_penalty must be"),
    (lambda m: m.generate("Hi", logit_bias={i: -np.inf for i in range(50257)}), npgpt.DistributionError,
     "LogitBias.*removes every token"),
    (lambda m: m.generate("Hi", n=10 ** 6, temperature=1.0), npgpt.SettingsError, "lower n or num_beams"),
    (lambda m: m.generate("Hi", num_beams=10 ** 5), npgpt.SettingsError, "lower n or num_beams"),
    (lambda m: m.new_cache(10 ** 7), npgpt.SettingsError, "key/value cache of 10000000 rows"),
])
def test_bad_input_is_a_one_line_npgpt_error(micro, call, error, message):
    with pytest.raises(error, match=message) as e:
        call(micro)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("config, message", [
    (dict(n_layer=10 ** 12), "npgpt runs GPT-2s up to"),
    (dict(layer_norm_epsilon=1e999), "layer_norm_epsilon must be a small positive number"),
    (dict(layer_norm_epsilon=float("nan")), "layer_norm_epsilon"),
])
def test_absurd_configs_are_refused_before_allocating(config, message):
    start = time.perf_counter()
    with pytest.raises(npgpt.ConfigError, match=message):
        npgpt.GPT2.random(npgpt.GPT2Config(**config))
    assert time.perf_counter() - start < 1


def test_a_tiny_temperature_samples_the_greedy_token(micro):
    greedy = micro.generate("Once upon", max_new_tokens=6)
    assert micro.generate("Once upon", max_new_tokens=6, temperature=1e-300, seed=3) == greedy


def test_nan_weights_give_an_error_not_token_zero(micro_config):
    model = npgpt.GPT2.random(micro_config, seed=0)
    state = dict(model.state)
    state["h.1.mlp.c_fc.weight"] = state["h.1.mlp.c_fc.weight"].copy()
    state["h.1.mlp.c_fc.weight"][0, 0] = np.nan
    broken = npgpt.GPT2(micro_config, state)
    with pytest.raises(npgpt.DistributionError, match="model's logits are not finite"):
        broken.generate("Hi", max_new_tokens=3)


def test_truncate_prompt_says_what_it_kept(micro):
    with pytest.warns(npgpt.errors.PromptTruncatedWarning, match="the prompt was 41 tokens; its last 16 were kept"):
        out = micro.generate("a " * 40, max_new_tokens=5000, truncate_prompt=True)
    assert len(out.ids) == 16 and out.finish_reason == "context"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say when the prompt fits
        micro.generate("a " * 10, max_new_tokens=5, truncate_prompt=True)


def test_a_long_stop_string_costs_linear_time():
    from npgpt.results import StopStrings, held_back

    stop = "ab" * 500  # 1000 characters, the longest allowed
    holder = StopStrings([stop])
    start = time.perf_counter()
    shown = "".join(holder.feed("ab")[0] for _ in range(2000))
    assert time.perf_counter() - start < 1.0
    assert shown == ""  # the stop string was found: everything before it was shown, nothing after
    assert held_back("xxab", "abc") == 2 and held_back("xxa", "abc") == 1 and held_back("xx", "abc") == 0
    assert held_back("aaaa", "aaab") == 3


def test_beam_search_stops_at_a_stop_string_while_searching(tiny):
    model, _ = tiny
    plain = model.generate("The capital of France is", num_beams=3, max_new_tokens=12)
    stop = model.tokenizer.decode(plain.ids[3:5])  # text the best beam produces a few tokens in
    out = model.generate("The capital of France is", num_beams=3, max_new_tokens=12, stop=[stop])
    assert out.finish_reason == "stop" and stop not in out
    assert stop in model.tokenizer.decode(out.ids)  # the ids end with the tokens that completed it
    assert stop not in model.tokenizer.decode(out.ids[:-1])


def test_forward_keeps_hidden_states_only_when_asked():
    config = npgpt.GPT2Config(n_layer=12, n_head=4, n_embd=64, n_positions=512, vocab_size=1000)
    model = npgpt.GPT2.random(config, seed=0)
    ids = np.random.default_rng(0).integers(0, 1000, (8, 512))

    def peak(**kw):
        tracemalloc.start()
        model.forward(ids, **kw)
        result = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return result

    plain, with_hidden = peak(last_only=True), peak(last_only=True, output_hidden_states=True)
    hidden_bytes = 13 * ids.size * config.n_embd * 4  # the embeddings and 12 blocks' outputs
    assert with_hidden - plain > 0.8 * hidden_bytes  # asking for nothing does not pay for them


SETTINGS = st.fixed_dictionaries({}, optional={
    "temperature": st.sampled_from([0.0, 1e-300, 1e-30, 0.01, 0.7, 1.0, 5.0, 1e30]),
    "top_k": st.sampled_from([0, 1, 2, 50, 10 ** 6]),
    "top_p": st.sampled_from([1e-9, 0.1, 0.9, 1.0]),
    "min_p": st.sampled_from([0.0, 0.5, 1.0]),
    "typical_p": st.sampled_from([1e-9, 0.2, 1.0]),
    "repetition_penalty": st.sampled_from([1e-30, 0.5, 1.0, 2.0, 1e30]),
    "presence_penalty": st.sampled_from([-2.0, 0.0, 2.0]),
    "frequency_penalty": st.sampled_from([-2.0, 0.0, 2.0]),
    "no_repeat_ngram_size": st.sampled_from([0, 1, 2]),
    "min_new_tokens": st.sampled_from([0, 3, 100]),
    "logit_bias": st.sampled_from([{}, {"the": 100.0}, {13: -np.inf}, {i: -1e30 for i in range(0, 50257, 7)}]),
    "seed": st.integers(0, 3),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(SETTINGS)
def test_any_settings_give_a_result_or_an_npgpt_error_never_nan(micro, chosen):
    try:
        out = micro.generate("Hello there", max_new_tokens=4, logprobs=True, **chosen)
        probs = micro.next_token_distribution("Hello there", **{k: v for k, v in chosen.items()})
    except npgpt.NpgptError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert np.isfinite(probs).all() and abs(probs.sum() - 1) < 1e-4
    assert len(out.ids) <= 4 and all(np.isfinite(lp.logprob) for lp in out.logprobs or [])
    tokens = [i for i in out.ids]
    assert not (len(tokens) == 4 and tokens == [0] * 4 and probs[0] < 0.5)  # no "!!!!" from a broken distribution
