"""Speculative decoding (prompt lookup and an assistant model): the same tokens as plain greedy decoding, the
same distribution as plain sampling, each row of a batch accepting its own drafts."""

import numpy as np
import pytest

import npgpt
from npgpt.speculative import DraftLength, PromptLookup

PROMPT = "The cat sat on the mat. The dog sat on the log. The cat sat on the mat. The dog"


def sharpened(config, seed, scale=6.0):
    """A random GPT-2 whose weights are scaled up: peaked distributions, varied tokens (as a trained model's)."""
    model = npgpt.GPT2.random(config, seed=seed)
    state = {k: v * scale if k.endswith("weight") and ".ln_" not in k and not k.startswith("ln_") else v
             for k, v in model.state.items()}
    return npgpt.GPT2(config, state)


@pytest.fixture(scope="module")
def target():
    return sharpened(npgpt.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=256), seed=1)


@pytest.fixture(scope="module")
def assistant():
    return sharpened(npgpt.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=256), seed=2)


RULES = [
    {},
    {"repetition_penalty": 1.3},
    {"no_repeat_ngram_size": 2, "min_new_tokens": 5, "presence_penalty": 0.5, "frequency_penalty": 0.3},
    {"logit_bias": {"the": -3.0}, "bad_words_ids": [[13]]},
    {"stop": ["at"]},
    {"eos_token_id": [50256, 3290]},
    {"min_length": 40, "eos_token_id": 3290},
]


@pytest.mark.parametrize("rules", RULES)
@pytest.mark.parametrize("drafting", ["lookup", "assistant", "itself"])
def test_greedy_output_is_plain_greedy_token_for_token(target, assistant, rules, drafting):
    draft = {"lookup": {"prompt_lookup_num_tokens": 5}, "assistant": {"assistant_model": assistant},
             "itself": {"assistant_model": target}}[drafting]
    plain = target.generate(PROMPT, max_new_tokens=40, **rules)
    fast = target.generate(PROMPT, max_new_tokens=40, **rules, **draft)
    assert fast.ids == plain.ids and fast == plain and fast.finish_reason == plain.finish_reason


@pytest.mark.parametrize("draft", [{"prompt_lookup_num_tokens": 4}, {"assistant_model": "assistant"}])
def test_each_row_of_a_batch_accepts_its_own_drafts(target, assistant, draft):
    draft = {k: assistant if v == "assistant" else v for k, v in draft.items()}
    prompts = [PROMPT, "Hello there, the cat sat", "the the the the the", "x"]
    plain = target.generate(prompts, max_new_tokens=30, repetition_penalty=1.2, stop=["og"])
    fast = target.generate(prompts, max_new_tokens=30, repetition_penalty=1.2, stop=["og"], **draft)
    assert [r.ids for r in fast] == [r.ids for r in plain]
    assert [r.finish_reason for r in fast] == [r.finish_reason for r in plain]


def test_streaming_yields_accepted_tokens_as_plain_streaming_does(target):
    plain = [(s.token_id, s.text) for s in target.stream_steps(PROMPT, max_new_tokens=40)]
    fast = [(s.token_id, s.text) for s in target.stream_steps(PROMPT, max_new_tokens=40, prompt_lookup_num_tokens=6)]
    assert fast == plain


def test_logprobs_are_the_models_own_as_without_drafts(target):
    plain = target.generate(PROMPT, max_new_tokens=25, logprobs=True, top_logprobs=3)
    fast = target.generate(PROMPT, max_new_tokens=25, logprobs=True, top_logprobs=3, prompt_lookup_num_tokens=5)
    assert [lp.id for lp in fast.logprobs] == [lp.id for lp in plain.logprobs]
    np.testing.assert_allclose([lp.logprob for lp in fast.logprobs], [lp.logprob for lp in plain.logprobs],
                               atol=1e-4)  # a verify step's several positions round a little differently
    assert [[a.id for a in lp.top_logprobs] for lp in fast.logprobs] == \
        [[a.id for a in lp.top_logprobs] for lp in plain.logprobs]


def test_sampling_with_prompt_lookup_draws_what_plain_sampling_draws(target):
    prompts = [PROMPT, "Hello there, the cat sat"]
    plain = target.generate(prompts, n=3, max_new_tokens=30, temperature=1.0, top_k=20, seed=5)
    fast = target.generate(prompts, n=3, max_new_tokens=30, temperature=1.0, top_k=20, seed=5,
                           prompt_lookup_num_tokens=4)
    assert [[s.ids for s in r] for r in fast] == [[s.ids for s in r] for r in plain]


def joint_first_two(model, prompt, samples):
    """The exact joint distribution of the first two tokens under top_k=4 sampling, over its 16 outcomes."""
    ids = model.tokenizer.encode(prompt)
    first = model.next_token_distribution(ids, temperature=1.0, top_k=4)
    outcomes, expected = [], []
    for a in np.flatnonzero(first):
        second = model.next_token_distribution(ids + [int(a)], temperature=1.0, top_k=4)
        for b in np.flatnonzero(second):
            outcomes.append((int(a), int(b)))
            expected.append(first[a] * second[b])
    counts = {o: 0 for o in outcomes}
    for s in samples:
        pair = tuple(s.ids[:2])
        assert pair in counts, f"{pair} is outside top_k=4's support"
        counts[pair] += 1
    return np.array([counts[o] for o in outcomes]), np.array(expected) * len(samples)


CHI2_15_AT_0_001 = 37.70  # chi-square's 99.9th percentile with 15 degrees of freedom


def chi_square(observed, expected):
    return float(((observed - expected) ** 2 / expected).sum())


def test_sampling_with_an_assistant_has_plain_samplings_distribution(target):
    """Leviathan et al.'s acceptance keeps the target's distribution though the assistant's differs: tested on
    the joint distribution of the first two tokens (top_k=4: 16 outcomes), 2000 samples. The assistant is the
    target less sharpened, so that their distributions overlap but differ: drawing from p instead of the
    residual max(0, p - q) gives chi-square 170 here, accepting every draft the target allows 222."""
    assistant = sharpened(target.config, seed=1, scale=4.0)
    prompt = "Hello there, the cat"
    first_p = target.next_token_distribution(prompt, temperature=1.0, top_k=4)
    first_q = assistant.next_token_distribution(prompt, temperature=1.0, top_k=4)
    assert 0.5 * np.abs(first_p - first_q).sum() > 0.3  # the drafts come from another distribution
    settings = dict(max_new_tokens=3, temperature=1.0, top_k=4, n=500)  # the second token is a checked draft
    drafted = [s for seed in range(4) for s in target.generate(prompt, assistant_model=assistant, seed=seed,
                                                                  **settings)]
    observed, expected = joint_first_two(target, prompt, drafted)
    assert len(observed) == 16 and chi_square(observed, expected) < CHI2_15_AT_0_001


def test_draft_length_adapts_as_transformers_and_stays_in_bounds():
    length = DraftLength(maximum=8)
    assert length.k == 5
    length.update(all_accepted=True)
    assert length.k == 7
    length.update(all_accepted=True)
    assert length.k == 8
    for _ in range(20):
        length.update(all_accepted=False)
    assert length.k == 1


def test_prompt_lookup_copies_what_followed_the_most_recent_match():
    lookup = PromptLookup(max_tokens=3, max_ngram=2)
    tokens = np.array([5, 6, 7, 8, 1, 5, 6, 9, 2, 5, 6])
    drafts, q = lookup.propose([tokens], [10])
    assert q is None and drafts[0].tolist() == [9, 2, 5]  # "5 6" last came before "9 2 5"
    assert lookup.propose([np.array([1, 2, 3])], [10])[0][0].tolist() == []  # nothing repeats
    assert lookup.propose([tokens], [1])[0][0].tolist() == [9]  # no drafts past the row's budget


def test_prompt_lookup_prefers_a_match_followed_by_a_whole_draft():
    """A text that repeats itself: the last "3 4" before the tail is followed by one token only; the one before
    it by a whole draft. With no such match, the earliest gives the longest draft there is."""
    lookup = PromptLookup(max_tokens=4, max_ngram=2)
    looping = np.array([9, 3, 4, 3, 4, 3, 4, 3, 4])
    assert lookup.propose([looping], [10])[0][0].tolist() == [3, 4, 3, 4]
    short = np.array([1, 2, 7, 8, 1, 2, 5, 1, 2])  # "1 2" is followed by 7 8 1 2 (4 tokens) and by 5 1 2 (3)
    assert lookup.propose([short], [10])[0][0].tolist() == [7, 8, 1, 2]
    assert PromptLookup(max_tokens=5, max_ngram=2).propose([short], [10])[0][0].tolist() == [7, 8, 1, 2, 5]


@pytest.mark.parametrize("settings, message", [
    ({"prompt_lookup_num_tokens": 0}, "prompt_lookup_num_tokens must be an integer >= 1"),
    ({"prompt_lookup_num_tokens": 500}, "at most 64"),
    ({"prompt_lookup_num_tokens": 3, "num_beams": 2}, "not with beam search"),
    ({"prompt_lookup_num_tokens": 3, "sliding_window": True}, "not with beam search or sliding_window"),
    ({"assistant_model": "distilgpt2"}, "assistant_model must be an npgpt model"),
])
def test_bad_speculative_settings_name_the_setting(micro, settings, message):
    with pytest.raises(npgpt.SettingsError, match=message):
        micro.generate("Hi", **settings)


def test_an_assistant_with_another_vocabulary_is_refused(micro):
    other = npgpt.GPT2.random(npgpt.GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=32, vocab_size=1000))
    with pytest.raises(npgpt.SettingsError, match="share the model's tokenizer"):
        micro.generate("Hi", assistant_model=other)
