"""Generation: greedy and seeded sampling, stop conditions, and results that carry their finish reason."""

import numpy as np
import pytest

import npgpt
from npgpt.results import Step


def test_text_in_text_out_ids_in_ids_out(micro):
    text = micro.generate("Hello, I am", max_new_tokens=5)
    assert isinstance(text, str) and text.finish_reason == "length" and len(text.ids) == 5
    assert text == micro.tokenizer.decode(text.ids)
    ids = micro.generate([15496, 11, 314, 716], max_new_tokens=5)
    assert ids == text.ids and ids.finish_reason == "length"
    assert micro.generate(np.array([15496, 11, 314, 716]), max_new_tokens=5) == text.ids


def test_greedy_is_deterministic_and_is_the_argmax(micro):
    prompt = [15496, 11, 314, 716]
    new = micro.generate(prompt, max_new_tokens=6)
    assert micro.generate(prompt, max_new_tokens=6) == new
    ids = list(prompt)
    for token in new:  # no cache: the whole sequence each time
        assert micro(ids)[-1].argmax() == token
        ids.append(token)
    assert micro.generate(prompt, max_new_tokens=6, temperature=0.0) == new


def test_sampling_same_seed_same_text_other_seed_other_text(micro):
    a = micro.generate("Hello", max_new_tokens=12, temperature=1.0, seed=1)
    assert micro.generate("Hello", max_new_tokens=12, temperature=1.0, seed=1) == a
    assert micro.generate("Hello", max_new_tokens=12, temperature=1.0, seed=2) != a


def test_sampling_follows_the_distribution():
    from npgpt.sampling import sample

    logits = np.log(np.array([[0.5, 0.3, 0.2, 0.0]], np.float32) + 1e-30)
    rng = [np.random.default_rng(0)]
    counts = np.bincount([sample(logits, rng)[0] for _ in range(4000)], minlength=4)
    np.testing.assert_allclose(counts / 4000, [0.5, 0.3, 0.2, 0.0], atol=0.03)
    assert counts[3] == 0


def test_low_temperature_sampling_is_greedy(micro):
    greedy = micro.generate("Hello", max_new_tokens=8)
    assert micro.generate("Hello", max_new_tokens=8, temperature=1e-4, seed=3) == greedy


class ScriptedModel:
    """A stand-in model whose next-token logits follow a script: it tests the loop without a network."""

    def __init__(self, script, n_positions=32):
        self.script, self.calls = list(script), 0
        self.config = npgpt.GPT2Config(n_layer=1, n_head=1, n_embd=4, n_positions=n_positions)
        self.tokenizer = npgpt.Tokenizer.gpt2()

    def new_cache(self, batch_size, capacity=None):
        return None

    def forward(self, ids, cache=None, last_only=False, **kw):
        logits = np.zeros((len(ids), 1, 50257), np.float32)
        logits[:, 0, self.script[min(self.calls, len(self.script) - 1)]] = 10.0
        self.calls += 1
        return npgpt.Output(logits)


def test_generation_stops_at_end_of_text_which_is_not_in_the_output():
    model = ScriptedModel([15496, 11, 50256, 314])
    text = npgpt.GPT2.generate(model, "x", max_new_tokens=10)
    assert text == "Hello," and text.finish_reason == "eos" and text.ids == [15496, 11]
    assert model.calls == 3


def test_generation_stops_at_the_context_limit_with_a_reason(micro):
    prompt = list(range(1, 30))  # 29 of the micro model's 32 positions
    out = micro.generate(prompt, max_new_tokens=10)
    assert len(out) == 3 and out.finish_reason == "context"
    with pytest.raises(npgpt.ContextLengthError, match="prompt is 40 tokens; the model's context is 32"):
        micro.generate(list(range(40)), max_new_tokens=1)


def test_stream_yields_each_token_with_the_reason_on_the_last(micro):
    steps = list(micro.stream_steps("Hello", max_new_tokens=4))
    assert [s.finish_reason for s in steps] == [None, None, None, "length"]
    assert all(isinstance(s, Step) for s in steps)
    assert "".join(micro.stream("Hello", max_new_tokens=4)) == micro.generate("Hello", max_new_tokens=4)


def test_empty_prompt_starts_from_end_of_text(micro):
    assert micro.generate("", max_new_tokens=3).ids == micro.generate([50256], max_new_tokens=3)


@pytest.mark.parametrize("settings, message", [
    ({"max_new_tokens": -1}, "max_new_tokens must be an integer >= 0"),
    ({"temperature": -0.5}, "temperature must be a finite number >= 0"),
])
def test_bad_settings_name_the_setting(micro, settings, message):
    with pytest.raises(npgpt.SettingsError, match=message):
        micro.generate("Hello", **settings)


def test_zero_new_tokens(micro):
    out = micro.generate("Hello", max_new_tokens=0)
    assert out == "" and out.finish_reason == "length"


# ------------------------------------------------------------------------------------------ batches and samples


def test_a_batch_of_different_lengths_equals_one_prompt_at_a_time(small):
    model, _ = small
    prompts = [[5, 9, 2], list(range(10, 30)), [7], [3, 1, 4, 1, 5, 9, 2, 6]]
    batch = model.generate(prompts, max_new_tokens=12)
    assert len(batch) == 4
    for prompt, result in zip(prompts, batch):
        assert result == model.generate(prompt, max_new_tokens=12)


def test_a_batch_of_texts_gives_texts_in_order(tiny):
    model, _ = tiny
    prompts = ["Hello, I am", "Every effort moves you", "A"]
    results = model.generate(prompts, max_new_tokens=6)
    assert [type(r) for r in results] == [npgpt.Completion] * 3
    assert results == [model.generate(p, max_new_tokens=6) for p in prompts]


def test_rows_finish_independently(tiny):
    model, _ = tiny
    # with this bias towards end-of-text the rows end after 0, 10, 1 and 0 tokens
    prompts = ["Hello, I am", "Every effort moves you", "A", "The cat sat on"]
    settings = dict(max_new_tokens=10, logit_bias={50256: 4.5})
    batch = model.generate(prompts, **settings)
    assert [(len(r.ids), r.finish_reason) for r in batch] == [(0, "eos"), (10, "length"), (1, "eos"), (0, "eos")]
    assert batch == [model.generate(p, **settings) for p in prompts]


def test_batched_sampling_rows_equal_their_prompt_alone(micro):
    prompts = ["Once upon", "The", "In a land far away"]
    batch = micro.generate(prompts, max_new_tokens=8, temperature=0.9, seed=11)
    assert batch == [micro.generate(p, max_new_tokens=8, temperature=0.9, seed=11) for p in prompts]


def test_n_samples_per_prompt(micro):
    results = micro.generate(["Hello", "World"], n=3, max_new_tokens=6, temperature=1.0, seed=5)
    assert len(results) == 2 and all(len(r) == 3 for r in results)
    assert len(set(results[0])) > 1  # different samples
    assert micro.generate("Hello", n=3, max_new_tokens=6, temperature=1.0, seed=5) == results[0]
    assert micro.generate("Hello", max_new_tokens=6, temperature=1.0, seed=5) == results[0][0]
    assert micro.generate("Hello", num_return_sequences=3, max_new_tokens=6, temperature=1.0, seed=5) == results[0]


def test_beam_search_returns_the_best_beams_with_scores(small):
    model, expected = small
    prompt = expected["greedy.prompt"][0]
    beams = model.generate(prompt, num_beams=4, num_return_sequences=4, max_new_tokens=8)
    assert len(beams) == 4
    scores = [b.score for b in beams]
    assert scores == sorted(scores, reverse=True)
    # a beam's score is its log-probability under the model divided by its length (length_penalty 1)
    ids = prompt.tolist()
    for beam in beams:
        logits = model(ids + list(beam))
        logp = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
        total = sum(logp[len(ids) - 1 + i, t] for i, t in enumerate(beam))
        assert abs(total / len(beam) - beam.score) < 1e-4
    greedy = model.generate(prompt, max_new_tokens=8, logprobs=True)
    assert sum(lp.logprob for lp in greedy.logprobs) / 8 <= beams[0].score + 1e-5  # beam search finds no worse
    assert beams[0].finish_reason == "length"


# ------------------------------------------------------------------------------------------------ stop strings


def test_stop_string_cuts_the_text_before_it(tiny):
    model, _ = tiny
    full = model.generate("Hello, I am", max_new_tokens=20)
    stop = full[5:9]  # some text the continuation contains
    out = model.generate("Hello, I am", max_new_tokens=20, stop=[stop, "zzzz"])
    assert out == full[:full.index(stop)] and out.finish_reason == "stop"
    streamed = "".join(model.stream("Hello, I am", max_new_tokens=20, stop=stop))
    assert streamed == out


def test_stop_strings_never_cut_a_character():
    # the script writes "日本" then "語" token by token; a stop string inside a character cannot match
    tok = npgpt.Tokenizer.gpt2()
    script = tok.encode("日本語 end") + [50256]
    out = npgpt.GPT2.generate(ScriptedModel_(script), "x", max_new_tokens=20, stop=["語"])
    assert out == "日本" and out.finish_reason == "stop"
    pieces = list(npgpt.GPT2.stream(ScriptedModel_(script), "x", max_new_tokens=20))
    assert "".join(pieces) == "日本語 end"
    assert not any("\ufffd" in p for p in pieces)  # a piece is never half a character


def ScriptedModel_(script):  # a fresh scripted model (it counts its calls)
    return ScriptedModel(script)


# --------------------------------------------------------------------------------------------------- logprobs


def test_logprobs_are_the_models_own_with_top_alternatives(small):
    model, expected = small
    prompt = expected["greedy.prompt"][0].tolist()
    out = model.generate(prompt, max_new_tokens=5, logprobs=True, top_logprobs=3, temperature=0.8, seed=1)
    assert len(out.logprobs) == 5
    ids = prompt + list(out)
    logits = model(ids).astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    for i, lp in enumerate(out.logprobs):
        position = len(prompt) - 1 + i
        assert lp.id == out[i] and abs(lp.logprob - logp[position, lp.id]) < 1e-4
        assert [a.id for a in lp.top_logprobs] == list(np.argsort(-logp[position])[:3])
        assert lp.top_logprobs[0].logprob >= lp.top_logprobs[1].logprob >= lp.top_logprobs[2].logprob


# ------------------------------------------------------------------------------------------ context and errors


def test_a_prompt_longer_than_the_context_needs_truncate_prompt(micro):
    long = list(range(1, 41))
    with pytest.raises(npgpt.ContextLengthError, match="truncate_prompt=True"):
        micro.generate(long, max_new_tokens=5)
    out = micro.generate(long, max_new_tokens=5, truncate_prompt=True)
    assert out == micro.generate(long[-27:], max_new_tokens=5)  # room for the 5 new tokens in 32 positions
    assert out.finish_reason == "length"


@pytest.mark.parametrize("settings, message", [
    ({"top_p": 0.0}, "top_p must be in"),
    ({"top_k": -3}, "top_k must be an integer >= 1"),
    ({"repetition_penalty": 0.0}, "repetition_penalty must be a finite number > 0"),
    ({"num_beams": 0}, "num_beams must be an integer >= 1"),
    ({"n": 2}, "n > 1 needs sampling"),
    ({"num_beams": 2, "n": 3}, "must be <= num_beams"),
    ({"num_beams": 2, "temperature": 0.7}, "beam search with sampling"),
    ({"stop": [""]}, "stop must be a non-empty string"),
    ({"early_stopping": "sometimes"}, "early_stopping must be"),
    ({"frobnicate": 1}, "unknown setting 'frobnicate'"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"top_logprobs": 50}, "top_logprobs must be at most 20"),
])
def test_bad_generation_settings_name_the_setting(micro, settings, message):
    with pytest.raises(npgpt.SettingsError, match=message):
        micro.generate("Hello", **settings)


def test_streaming_takes_one_prompt(micro):
    with pytest.raises(npgpt.SettingsError, match="streaming takes one prompt"):
        micro.stream(["a", "b"])


def test_next_token_distribution_is_what_generation_samples_from(small):
    model, expected = small
    prompt = expected["greedy.prompt"][0].tolist()
    settings = dict(temperature=0.7, top_k=20, repetition_penalty=1.3)
    probs = model.next_token_distribution(prompt, **settings)
    assert probs.shape == (1000,) and abs(probs.sum() - 1) < 1e-5 and (probs > 0).sum() == 20
    draws = [model.generate(prompt, max_new_tokens=1, seed=s, **settings)[0] for s in range(400)]
    counts = np.bincount(draws, minlength=1000) / 400
    assert set(np.nonzero(counts)[0]) <= set(np.nonzero(probs)[0])
    assert np.abs(counts - probs).max() < 0.08
    greedy = model.next_token_distribution(prompt)
    assert greedy.argmax() == model.generate(prompt, max_new_tokens=1)[0]
