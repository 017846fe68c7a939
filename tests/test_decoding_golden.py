"""Decoding against transformers (tools/make_golden.py): each rule on fixed logits and on 200 rows of a
full-vocabulary model's logits, and generate() outputs (with decoding rules, beams and stop strings)."""

import hashlib
import os

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from npgpt import TokenCompletion, sampling

from conftest import GOLDEN, golden_dir

PROCESSORS = load_file(os.path.join(GOLDEN, "processors.safetensors"))
LOGITS, IDS = PROCESSORS["logits"], PROCESSORS["input_ids"]
LOGITS.flags.writeable = IDS.flags.writeable = False  # a rule that writes into its input fails every test below
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
    got = RULES[name](IDS, LOGITS)
    assert got.dtype == np.float32
    assert_same_processed(got, PROCESSORS[name], name)


def test_banned_sequences_equal_no_bad_words():
    # transformers drops a ban of end-of-text alone; the Sampler does the same (see test below)
    rule = sampling.BannedSequences([[7], [int(IDS[0, -1]), 11], [3, 4, 5]])
    assert_same_processed(rule(IDS, LOGITS), PROCESSORS["bad_words_ids"], "bad_words_ids")
    sampler = sampling.Sampler(bad_words_ids=[[7], [int(IDS[0, -1]), 11], [3, 4, 5], [EOS]], eos_token_id=EOS,
                               vocab_size=1000)
    got = sampling.apply(sampler.processors(prompt_length=12), IDS, LOGITS)
    assert_same_processed(got, PROCESSORS["bad_words_ids"], "bad_words_ids")


def test_the_sampler_chains_rules_in_transformers_order():
    sampler = sampling.Sampler(repetition_penalty=1.2, no_repeat_ngram_size=2, bad_words_ids=[[7]], min_new_tokens=5,
                               temperature=0.8, top_k=40, top_p=0.9, min_p=0.02, typical_p=0.95, eos_token_id=EOS,
                               vocab_size=1000)
    got = sampling.apply(sampler.rules(prompt_length=8), IDS, LOGITS)
    assert_same_processed(got, PROCESSORS["chain"], "chain")


def every_rule():
    """Each rule the goldens cover, each rule of the Sampler's chain, and the rules no golden covers."""
    sampler = sampling.Sampler(repetition_penalty=1.2, no_repeat_ngram_size=2, bad_words_ids=[[7]], min_new_tokens=5,
                               temperature=0.8, top_k=40, top_p=0.9, min_p=0.02, typical_p=0.95, presence_penalty=0.5,
                               frequency_penalty=0.3, logit_bias={5: -5.0}, eos_token_id=EOS, vocab_size=1000,
                               suppress_ids=(3, 4))
    rules = dict(RULES)
    rules["bad_words_ids"] = sampling.BannedSequences([[7], [int(IDS[0, -1]), 11], [3, 4, 5]])
    rules["presence_frequency"] = sampling.PresenceFrequencyPenalty(0.5, 0.3, prompt_length=4)
    rules["suppress_tokens"] = sampling.SuppressTokens([3, 4, 998])
    rules.update({f"sampler[{i}] {type(rule).__name__}": rule for i, rule in enumerate(sampler.rules(prompt_length=8))})
    return rules


EVERY_RULE = every_rule()


@pytest.mark.parametrize("name", sorted(EVERY_RULE))
def test_no_rule_changes_its_input(name):
    logits, ids = np.array(LOGITS), np.array(IDS)  # writeable copies: an in-place change would show
    got = EVERY_RULE[name](ids, logits)
    np.testing.assert_array_equal(logits, LOGITS, err_msg=f"{name} changed the logits it was given")
    np.testing.assert_array_equal(ids, IDS, err_msg=f"{name} changed the input ids it was given")
    assert got is not logits or np.array_equal(got, LOGITS)  # returning its input is only fine unchanged


# ------------------------------------------------------------------ the rules on 200 rows of full-vocabulary logits

VOCAB_PATH = os.path.join(GOLDEN, "processors_vocab.safetensors")
VOCAB_EOS = 50256


def vocab_logits(hidden: np.ndarray, wte: np.ndarray) -> np.ndarray:
    """tools/make_golden.py's vocab_logits: hidden [R, C] @ wte.T, one correctly rounded float32 multiply and
    add per channel in a fixed order, so that the rules see the very logits transformers' processors saw."""
    logits = hidden[:, :1] * wte[None, :, 0]
    for c in range(1, hidden.shape[1]):
        logits = logits + hidden[:, c:c + 1] * wte[None, :, c]
    return logits.astype(np.float32)


@pytest.fixture(scope="module")
def vocab_rows():
    """(logits [200, 50257] read-only, input ids [200, 16], each row's ranking by logit, the golden arrays)."""
    golden = load_file(VOCAB_PATH)
    with safe_open(VOCAB_PATH, "np") as f:
        sha256 = f.metadata()["logits_sha256"]
    wte = load_file(os.path.join(golden_dir("tiny"), "model.safetensors"))["wte.weight"]
    logits = vocab_logits(golden["hidden"], wte)
    assert hashlib.sha256(logits.tobytes()).hexdigest() == sha256, "the logits were not rebuilt bit for bit"
    logits.flags.writeable = False
    ids = golden["input_ids"]
    ids.flags.writeable = False
    return logits, ids, np.argsort(-logits, axis=-1, kind="stable"), golden


def vocab_rules(ids):
    """npgpt's twins of make_golden.vocab_rules."""
    first = int(ids[0, -1])
    chain = sampling.Sampler(repetition_penalty=1.2, no_repeat_ngram_size=2, bad_words_ids=[[262]], min_new_tokens=10,
                             temperature=0.8, top_k=40, top_p=0.9, min_p=0.02, typical_p=0.95,
                             eos_token_id=VOCAB_EOS).rules(prompt_length=8)
    return {
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
        "typical_p_0.95": sampling.TypicalP(0.95),
        "repetition_penalty_1.3": sampling.RepetitionPenalty(1.3),
        "repetition_penalty_0.7": sampling.RepetitionPenalty(0.7),
        "no_repeat_ngram_size_2": sampling.NoRepeatNGram(2),
        "no_repeat_ngram_size_3": sampling.NoRepeatNGram(3),
        # transformers drops the ban of end-of-text alone ([eos] in its list)
        "bad_words_ids": sampling.BannedSequences([[262], [first, 11], [290, 262, 1748]]),
        "min_new_tokens_10": sampling.MinNewTokens(10, prompt_length=8, eos_token_id=VOCAB_EOS),
        "min_new_tokens_8": sampling.MinNewTokens(8, prompt_length=8, eos_token_id=VOCAB_EOS),
        "logit_bias": sampling.LogitBias({262: -5.0, 11: 3.0, VOCAB_EOS: -100.0}),
        "chain": lambda input_ids, logits: sampling.apply(chain, input_ids, logits),
    }


VOCAB_RULES = sorted(vocab_rules(np.zeros((1, 1), np.int64)))


def kept_from_runs(order: np.ndarray, runs: np.ndarray) -> np.ndarray:
    """The kept-token mask [R, V] from make_golden.sorted_runs' runs over each row's ranking."""
    ranked = np.zeros(order.shape, bool)
    for row, start, stop in runs:
        ranked[row, start:stop] = True
    kept = np.empty_like(ranked)
    np.put_along_axis(kept, order, ranked, axis=-1)
    return kept


def exact_typical(logits: np.ndarray, mass: float):
    """Typical sampling in float64 (log-probabilities, entropy, distances, cumulative sums): the kept mask
    [R, V], the probabilities and the distances |-log p - entropy|."""
    logp = logits.astype(np.float64)
    logp -= logp.max(axis=-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=-1, keepdims=True))
    p = np.exp(logp)
    distance = np.abs(-logp + (p * logp).sum(axis=-1, keepdims=True))
    order = np.argsort(distance, axis=-1, kind="stable")
    ranked = np.take_along_axis(distance, order, axis=-1)
    last = np.minimum((np.cumsum(np.take_along_axis(p, order, axis=-1), axis=-1) < mass).sum(-1), p.shape[-1] - 1)
    kept = np.empty(p.shape, bool)
    np.put_along_axis(kept, order, ranked <= ranked[np.arange(len(p)), last][:, None], axis=-1)
    return kept, p, distance


def check_typical_differences(logits, kept, kept_want, differ, mass, tol=1e-5):
    """Typical sampling cuts where a cumulative sum of ~50k float32 probabilities crosses `mass`, after ranking
    the tokens by a distance computed from a float32 entropy; float32 rounding (transformers' own included)
    decides a token whose exact cumulative mass or distance is within ~1e-5 of the cut. So a row may differ
    from transformers only in such tokens, and in no more rows than exact (float64) arithmetic differs in."""
    _, p, distance = exact_typical(logits[differ], mass)
    for i, row in enumerate(differ):
        for token in np.flatnonzero(kept[row] != kept_want[row]):
            others = np.arange(p.shape[-1]) != token  # mass ranked before the token, distances give or take tol
            low = p[i][others & (distance[i] < distance[i, token] - tol)].sum()
            high = p[i][others & (distance[i] <= distance[i, token] + tol)].sum()
            assert low - tol <= mass <= high + tol, (
                f"typical_p {mass}: row {row}: npgpt {'keeps' if kept[row, token] else 'removes'} token {token} "
                f"that transformers does not, and float32 rounding cannot explain it (exact mass ranked before it: "
                f"{low:.7f} to {high:.7f})")
    exact_all, _, _ = exact_typical(logits, mass)
    exact_differ = int((exact_all != kept_want).any(axis=-1).sum())
    assert len(differ) <= exact_differ, (
        f"typical_p {mass}: npgpt keeps other tokens than transformers in {len(differ)} of {len(logits)} rows (rows "
        f"{differ[:10].tolist()}), exact float64 arithmetic in {exact_differ}: npgpt rounds more than it needs to")


@pytest.mark.parametrize("name", VOCAB_RULES)
def test_each_rule_on_200_rows_of_model_logits_equals_transformers(name, vocab_rows):
    """The same kept tokens in every row, and the same values to 1e-6."""
    logits, ids, order, golden = vocab_rows
    got = vocab_rules(ids)[name](ids, logits)
    assert got.dtype == np.float32 and got.shape == logits.shape
    kept = np.isfinite(got)
    assert (got[~kept] == -np.inf).all()
    kept_want = kept_from_runs(order, golden[f"{name}.runs"])
    differ = np.flatnonzero((kept != kept_want).any(axis=-1))
    if name.startswith("typical_p") and len(differ):
        mass = float(name.removeprefix("typical_p_"))
        check_typical_differences(logits, kept, kept_want, differ, mass)
        differ = []
    assert not len(differ), (
        f"{name}: npgpt keeps other tokens than transformers in {len(differ)} of {len(logits)} rows: rows "
        f"{differ[:8].tolist()} keep {kept[differ[:8]].sum(-1).tolist()} tokens, transformers "
        f"{kept_want[differ[:8]].sum(-1).tolist()}")
    if name.startswith("temperature"):  # every value changes: the golden has each row's 32 highest
        top = order[:, :32]
        np.testing.assert_allclose(np.take_along_axis(got, top, axis=-1), golden[f"{name}.values"], rtol=0,
                                   atol=1e-6, err_msg=name)
        return
    want = np.array(logits)  # the kept values are the input's but where transformers changed them
    rows, cols = golden[f"{name}.changed"].T
    want[rows, cols] = golden[f"{name}.values"]
    np.testing.assert_allclose(got[kept], want[kept], rtol=0, atol=1e-6, err_msg=name)


def test_the_200_rows_look_like_a_trained_models(vocab_rows):
    """Some rows peaked, some flat: the nucleus of top-p 0.9 ranges from a handful of tokens to thousands."""
    logits, _, order, golden = vocab_rows
    sizes = np.bincount(golden["top_p_0.9.runs"][:, 0], weights=np.diff(golden["top_p_0.9.runs"][:, 1:]).ravel(),
                        minlength=len(logits))
    assert len(logits) == 200 and sizes.min() < 20 and sizes.max() > 2000
    assert (golden["no_repeat_ngram_size_2.runs"][:, 0] >= 0).all() and len(golden["repetition_penalty_1.3.changed"])


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


# ----------------------------------------------------------------------------------------------- stop strings

# tools/make_golden.py's STOP_RUNS, with npgpt's name for stop_strings
STOP_RUNS = {
    "beam_stop": (["Every effort moves you"], dict(max_new_tokens=12, num_beams=4, num_return_sequences=4,
                                                   stop=[" preset"])),
    "beam_stop_span": (["Every day holds a"], dict(max_new_tokens=12, num_beams=3, num_return_sequences=3,
                                                   stop=["yAm", "ruar"])),
    "beam_stop_batch": (["Every effort moves you", "Every day holds a"],
                        dict(max_new_tokens=12, num_beams=3, num_return_sequences=2, stop=[" Columb", "Act"])),
    "greedy_stop": (["Hello, I am"], dict(max_new_tokens=12, stop=[" Bub"])),
    "greedy_stop_batch": (["Every effort moves you", "Every day holds a"], dict(max_new_tokens=12, stop=["isance"])),
}


@pytest.mark.parametrize("run", sorted(STOP_RUNS))
def test_stop_strings_end_sequences_and_beams_as_in_transformers(run, tiny):
    """transformers' generate(stop_strings=...): a stop string ends a row, and a beam, as <|endoftext|> does
    (a beam that hits one is finished and scored; the ids include the token that completed it)."""
    model, _ = tiny
    golden = load_file(os.path.join(golden_dir("tiny"), "stop.safetensors"))
    prompts, settings = STOP_RUNS[run]
    ids = [model.tokenizer.encode(p) for p in prompts]
    assert ids == [row[mask == 1].tolist() for row, mask in zip(golden[f"{run}.prompt"], golden[f"{run}.mask"])]
    batched = len(ids) > 1
    sequences = sequences_of(model.generate(ids if batched else ids[0], **settings), batched)
    want = [until_end(row) for row in golden[f"{run}.tokens"]]
    assert [list(s) for s in sequences] == want
    for got, tokens in zip(sequences, want):
        stopped = any(stop in model.tokenizer.decode(tokens) for stop in settings["stop"])
        assert got.finish_reason == ("stop" if stopped else "length")
    if f"{run}.scores" in golden:
        np.testing.assert_allclose([c.score for c in sequences], golden[f"{run}.scores"], rtol=0, atol=1e-5)


def test_stop_string_goldens_finish_beams_early():
    """The stop-string cases test something: some returned sequences end on a stop string before the limit."""
    golden = load_file(os.path.join(golden_dir("tiny"), "stop.safetensors"))
    for run in ("beam_stop_span", "beam_stop_batch", "greedy_stop", "greedy_stop_batch"):
        lengths = [len(until_end(row)) for row in golden[f"{run}.tokens"]]
        assert min(lengths) < STOP_RUNS[run][1]["max_new_tokens"], run
