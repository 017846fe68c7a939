"""Properties of the decoding rules, and the public next-token distribution."""

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from hypothesis.extra.numpy import arrays

import npgpt
from npgpt import ops, sampling
from npgpt.sampling import Sampler, next_token_distribution

V = 64
logit_rows = arrays(np.float32, (2, V), elements=st.floats(-20, 20, width=32))
history = arrays(np.int64, (2, 10), elements=st.integers(0, V - 1))
rules = st.fixed_dictionaries({}, optional={
    "temperature": st.floats(0.05, 5), "top_k": st.integers(0, V + 5), "top_p": st.floats(0.01, 1.0),
    "min_p": st.floats(0.0, 1.0), "typical_p": st.floats(0.01, 1.0), "repetition_penalty": st.floats(0.2, 5),
    "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
    "no_repeat_ngram_size": st.integers(0, 4), "min_new_tokens": st.integers(0, 5)})


@settings(max_examples=300, deadline=None)
@given(logit_rows, history, rules)
def test_processed_distributions_are_finite_and_sum_to_one(logits, ids, rule_settings):
    probs = next_token_distribution(logits, ids, prompt_length=6, eos_token_id=V - 1, **rule_settings)
    assert probs.shape == (2, V) and np.isfinite(probs).all() and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-30, 30, width=32), min_size=5, max_size=V, unique=True), st.data())
def test_top_k_keeps_exactly_k_distinct_logits(values, data):
    k = data.draw(st.integers(1, len(values)))
    logits = np.array([values], np.float32)
    kept = np.isfinite(sampling.TopK(k)(None, logits))
    assert kept.sum() == k
    assert logits[kept].min() >= logits[~kept].max(initial=-np.inf)


def test_top_k_keeps_every_token_tied_with_the_kth_as_transformers():
    logits = np.array([[3.0, 1.0, 2.0, 2.0, 0.0, 2.0]], np.float32)
    kept = np.isfinite(sampling.TopK(2)(None, logits))[0]
    assert kept.tolist() == [True, False, True, True, False, True]


@settings(max_examples=300, deadline=None)
@given(arrays(np.float32, (1, 40), elements=st.floats(-10, 10, width=32)), st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_prefix_reaching_p(logits, p):
    probs = np.exp(logits.astype(np.float64) - logits.max())
    probs = (probs / probs.sum())[0]
    kept = np.isfinite(sampling.TopP(p)(None, logits))[0]
    order = np.argsort(-logits[0], kind="stable")
    n = kept.sum()
    assert kept[order[:n]].all()  # a prefix of the ranking ...
    assert probs[order[:n]].sum() >= p - 1e-9  # ... reaching p ...
    assert probs[order[:n - 1]].sum() < p + 1e-9  # ... and none shorter does



def _top_p_by_sorting_everything(logits, p):
    """The nucleus by a stable sort of the whole vocabulary: what TopP gives, by its definition."""
    order = np.argsort(-logits, axis=-1, kind="stable")
    sorted_logits = np.take_along_axis(logits, order, axis=-1).astype(np.float64)
    with np.errstate(invalid="ignore"):  # a row with every token removed: NaN, and nothing more is removed
        probs = np.exp(sorted_logits - sorted_logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
    removed = np.empty_like(probs, dtype=bool)
    np.put_along_axis(removed, order, np.cumsum(probs, axis=-1) - probs >= p, axis=-1)
    return np.where(removed, np.float32(-np.inf), logits)


def _awkward_rows(seed, spread):
    """Five rows of 6000 logits with many ties, `spread` wide, and the cases a partial sort could get wrong."""
    rng = np.random.default_rng(seed)
    logits = (np.round(rng.normal(size=(5, 6000)) * 8) * spread / 8).astype(np.float32)  # many ties
    logits[1, ::3] = -np.inf  # some tokens removed by an earlier rule
    logits[2, 10:] = -np.inf  # fewer tokens left than candidates
    logits[3] = -np.inf  # none left: left as it is, for the sampler to report
    logits[4, 1:] = -np.inf  # one left
    return logits


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("spread", [0.25, 1.5, 4.0])  # flat rows need more than 64 candidates, peaked ones fewer
def test_top_p_sorting_only_candidates_gives_the_whole_sort(p, spread):
    logits = _awkward_rows(7, spread)
    got = sampling.TopP(p)(None, logits)
    np.testing.assert_array_equal(got, _top_p_by_sorting_everything(logits, p))


def _typical_by_sorting_everything(logits, mass):
    """Typical sampling by a stable sort of the whole vocabulary by distance, as transformers' TypicalLogitsWarper
    does (probabilities summed in float64, compared in float32)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        logp = ops.log_softmax(logits)
        p = np.exp(logp)
        distance = np.abs(-logp + (p * np.where(p > 0, logp, 0)).sum(axis=-1, keepdims=True))
    order = np.argsort(distance, axis=-1, kind="stable")
    sorted_distance = np.take_along_axis(distance, order, axis=-1)
    reached = np.cumsum(np.take_along_axis(p, order, axis=-1), axis=-1, dtype=np.float64).astype(np.float32)
    last = np.minimum((reached < np.float32(mass)).sum(axis=-1), logits.shape[-1] - 1)
    removed = sorted_distance > sorted_distance[np.arange(len(logits)), last][:, None]
    removed[:, 0] = False
    unsorted = np.empty_like(removed)
    np.put_along_axis(unsorted, order, removed, axis=-1)
    return np.where(unsorted, np.float32(-np.inf), logits)


@pytest.mark.parametrize("mass", [0.05, 0.5, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("spread", [0.25, 1.5, 4.0, 12.0])  # flat rows need the whole sort, peaked ones less
def test_typical_p_ranking_only_candidates_gives_the_whole_sort(mass, spread):
    logits = _awkward_rows(11, spread)
    got = sampling.TypicalP(mass)(None, logits)
    np.testing.assert_array_equal(got, _typical_by_sorting_everything(logits, mass))
    if spread == 12.0 and mass == 0.5:  # peaked: the first candidates hold the mass
        assert 0 < np.isfinite(got[0]).sum() < 64

@settings(max_examples=100, deadline=None)
@given(arrays(np.float32, (3, V), elements=st.floats(-10, 10, width=32)))
def test_temperature_towards_zero_is_greedy(logits):
    assume(all(np.sort(row)[-1] - np.sort(row)[-2] > 1e-3 for row in logits))  # a unique maximum
    rngs = [np.random.default_rng(i) for i in range(3)]
    sampler = Sampler(temperature=1e-5, vocab_size=V)
    processed = sampling.apply(sampler.rules(0), np.zeros((3, 0), np.int64), logits)
    np.testing.assert_array_equal(sampler.select(processed, rngs), logits.argmax(-1))
    np.testing.assert_allclose(next_token_distribution(logits, temperature=1e-5, vocab_size=V).max(-1), 1)


def test_min_p_scales_with_the_top_probability():
    logits = np.log(np.array([[0.5, 0.3, 0.1, 0.06, 0.04]], np.float32))
    kept = np.isfinite(sampling.MinP(0.19)(None, logits))[0]
    assert kept.tolist() == [True, True, True, False, False]  # p >= 0.19 * 0.5


def test_presence_and_frequency_penalties_follow_openai_on_generated_tokens_only():
    logits = np.zeros((1, 6), np.float32)
    ids = np.array([[1, 1, 2, 3, 3, 3]])  # the first two are the prompt
    out = sampling.PresenceFrequencyPenalty(0.5, 0.25, prompt_length=2)(ids, logits)[0]
    assert out.tolist() == [0.0, 0.0, -0.75, -1.25, 0.0, 0.0]  # count * 0.25 + 0.5 if count > 0


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = np.array([[2.0, -2.0, 2.0, -2.0]], np.float32)
    out = sampling.RepetitionPenalty(2.0)(np.array([[0, 1, 1, -1]]), logits)[0]
    assert out.tolist() == [1.0, -4.0, 2.0, -2.0]  # each seen token once; -1 (padding) is not a token


def test_no_repeat_ngram_bans_what_would_repeat_a_trigram():
    ids = np.array([[5, 6, 7, 1, 5, 6]])  # "5 6" was followed by 7: a 7 now would repeat "5 6 7"
    out = sampling.NoRepeatNGram(3)(ids, np.zeros((1, 10), np.float32))[0]
    assert np.isinf(out).nonzero()[0].tolist() == [7]


def test_min_new_tokens_suppresses_end_of_text_until_reached():
    rule = sampling.MinNewTokens(2, prompt_length=3, eos_token_id=4)
    assert np.isinf(rule(np.zeros((1, 4), int), np.zeros((1, 5), np.float32))[0, 4])
    assert not np.isinf(rule(np.zeros((1, 5), int), np.zeros((1, 5), np.float32))).any()


def test_logit_bias_by_word_covers_every_token_with_and_without_a_space():
    tok = npgpt.Tokenizer.gpt2()
    resolved = sampling.resolve_logit_bias({"gonna": -5.0, "ain't": -5.0, 50256: -100}, tok)
    for form in ("gonna", " gonna", "ain't", " ain't"):
        for token in tok.encode(form):
            assert resolved[token] <= -5.0
    assert resolved[50256] == -100
    assert sampling.resolve_logit_bias({"13": 1.0}) == {13: 1.0}  # a number is a token id
    with pytest.raises(npgpt.SettingsError, match="without a tokenizer"):
        sampling.resolve_logit_bias({"gonna": -5.0})


def test_next_token_distribution_with_a_word_bias_lowers_that_word():
    tok = npgpt.Tokenizer.gpt2()
    logits = np.zeros(50257, np.float32)
    gonna = tok.encode(" gonna")[0]
    plain = next_token_distribution(logits)
    biased = next_token_distribution(logits, logit_bias={"gonna": -5.0}, tokenizer=tok)
    np.testing.assert_allclose(biased[gonna] / biased[0], np.exp(-5.0), rtol=1e-4)
    assert plain.shape == (50257,)


@pytest.mark.parametrize("rule_settings, message", [
    ({"top_p": 0.0, "temperature": 1.0}, "top_p must be in \\(0, 1\\]"),
    ({"top_p": 1.5, "temperature": 1.0}, "top_p must be in \\(0, 1\\]"),
    ({"top_k": -1}, "top_k must be an integer >= 1 \\(0 turns it off\\)"),
    ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
    ({"repetition_penalty": 0.0}, "repetition_penalty must be a finite number > 0"),
    ({"repetition_penalty": -1.0}, "repetition_penalty must be a finite number > 0"),
    ({"min_p": 2.0, "temperature": 1.0}, "min_p must be in \\[0, 1\\]"),
    ({"typical_p": 0.0, "temperature": 1.0}, "typical_p must be in \\(0, 1\\]"),
    ({"presence_penalty": 3.0}, "presence_penalty must be in \\[-2, 2\\]"),
    ({"no_repeat_ngram_size": -2}, "no_repeat_ngram_size must be an integer >= 1"),
    ({"logit_bias": {60000: 1.0}}, "logit_bias: token id 60000 is outside the vocabulary"),
    ({"bad_words_ids": [[]]}, "bad_words_ids must be non-empty lists of token ids"),
    ({"top_k": 5, "temperature": 0.0}, "top_k applies only when sampling"),
])
def test_bad_settings_name_the_setting(rule_settings, message):
    with pytest.raises(npgpt.SettingsError, match=message):
        Sampler(**rule_settings)


def test_do_sample_false_is_greedy_whatever_the_temperature_as_transformers():
    sampler = Sampler(temperature=0.7, top_k=5, do_sample=False)
    assert not sampler.sampling and sampler.rules(0) == []


def test_when_decoding_samples():
    assert not Sampler().sampling and not Sampler(temperature=0).sampling
    assert Sampler(temperature=0.7).sampling and Sampler(top_k=50).sampling and Sampler(do_sample=True).sampling
    assert not Sampler(top_k=0, top_p=1.0).sampling  # the neutral values switch rules off
    assert Sampler(temperature=1.0, top_k=0, top_p=1.0).rules(0) == []  # notebook 001's "plain sampling"


@pytest.mark.parametrize("make, message", [
    (lambda: sampling.TopP(0.0), "top_p must be in \\(0, 1\\], got 0.0"),
    (lambda: sampling.TopP(float("nan")), "top_p must be in \\(0, 1\\]"),
    (lambda: sampling.Temperature(0), "temperature must be a finite number > 0"),
    (lambda: sampling.Temperature(float("inf")), "temperature must be a finite number > 0"),
    (lambda: sampling.TopK(-2), "top_k must be an integer >= 1"),
    (lambda: sampling.TopK(2.5), "top_k must be an integer >= 1"),
    (lambda: sampling.MinP(5.0), "min_p must be in \\[0, 1\\]"),
    (lambda: sampling.TypicalP(0.0), "typical_p must be in \\(0, 1\\]"),
    (lambda: sampling.RepetitionPenalty(1e-300), "repetition_penalty must be between"),
    (lambda: sampling.RepetitionPenalty(-1), "repetition_penalty must be a finite number > 0"),
    (lambda: sampling.NoRepeatNGram(0), "no_repeat_ngram_size must be an integer >= 1"),
    (lambda: sampling.LogitBias({3: float("inf")}), "below \\+inf"),
    (lambda: sampling.LogitBias({3: float("nan")}), "must be a number"),
    (lambda: sampling.BannedSequences([[1, -2]]), "bad_words_ids must be non-empty lists"),
    (lambda: sampling.PresenceFrequencyPenalty(3, 0, 0), "presence_penalty must be in \\[-2, 2\\]"),
    (lambda: sampling.MinNewTokens(-1, 0, 5), "min_new_tokens must be an integer >= 0"),
])
def test_each_public_rule_checks_its_argument(make, message):
    with pytest.raises(npgpt.SettingsError, match=message):
        make()


def test_rules_show_their_arguments():
    assert repr(sampling.TopP(0.9)) == "TopP(p=0.9)"
    assert repr(sampling.TopK(5)) == "TopK(k=5)"


def test_a_tiny_temperature_is_greedy_not_nan():
    logits = np.array([[1.0, 3.0, 2.0, 3.0 - 1e-3]], np.float32)
    for t in (1e-300, 1e-40, 1e-20):
        probs = next_token_distribution(logits, temperature=t)
        assert np.isfinite(probs).all() and probs[0, 1] == 1.0


def test_every_token_removed_is_an_error_naming_the_rule():
    logits = np.zeros((1, 5), np.float32)
    with pytest.raises(npgpt.DistributionError, match="LogitBias.*removes every token"):
        next_token_distribution(logits, logit_bias={i: -np.inf for i in range(5)})
    with pytest.raises(npgpt.DistributionError, match="model's logits are not finite"):
        next_token_distribution(np.full((1, 5), np.nan, np.float32))
    with pytest.raises(npgpt.DistributionError, match="RepetitionPenalty.*NaN or infinite"):
        next_token_distribution(np.array([[3e38, 1, 2, 3, 4]], np.float32), np.array([[0]]),
                                repetition_penalty=1e-30)


def test_an_unusable_distribution_is_never_sampled():
    with pytest.raises(npgpt.DistributionError):
        sampling.sample(np.array([[np.nan, 1.0]], np.float32), [np.random.default_rng(0)])
    with pytest.raises(npgpt.DistributionError):
        sampling.probabilities(np.full((2, 3), -np.inf, np.float32))
