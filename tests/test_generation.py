"""Generation: greedy and seeded sampling, stop conditions, and results that carry their finish reason."""

import numpy as np
import pytest

import npgpt
from npgpt.generation import Step


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
    ({"temperature": -0.5}, "temperature must be >= 0"),
])
def test_bad_settings_name_the_setting(micro, settings, message):
    with pytest.raises(npgpt.SettingsError, match=message):
        micro.generate("Hello", **settings)


def test_zero_new_tokens(micro):
    out = micro.generate("Hello", max_new_tokens=0)
    assert out == "" and out.finish_reason == "length"
